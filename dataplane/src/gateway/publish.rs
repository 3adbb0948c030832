//! Publishing: the [`EventLog`] the gateway hands routed events to, and the per-batch
//! delivery bookkeeping every log shares. Kafka ([`super::kafka_log`]) is the one log
//! today; a log with shards and sequence numbers (Amazon Kinesis) implements the same
//! trait: it takes a batch's events in order and settles each with one outcome.
//!
//! Invariants every [`EventLog`] keeps:
//! - every event handed to [`EventLog::publish`] gets exactly one outcome: a failure
//!   recorded at once, or a delivery report recorded later through [`BatchState`]. A
//!   batch is complete when its count of outstanding events reaches zero;
//! - events are enqueued in batch order, and after the first enqueue failure the rest
//!   of the batch is failed too rather than enqueued, so a retry of the failed suffix
//!   cannot overtake it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use tokio::sync::Notify;
use weir_proto::{Code, EventResult};

use super::metrics::Metrics;

/// One event ready to publish.
pub struct Outgoing<'a> {
    /// Index in the request.
    pub index: usize,
    /// Destination topic.
    pub topic: &'a str,
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value.
    pub payload: &'a [u8],
    /// Event type, for the header and metrics.
    pub event_type: &'a str,
    /// Why the event was dead-lettered, if it was.
    pub dead_letter_reason: Option<&'a str>,
}

/// What every record of one batch shares.
pub struct BatchContext<'a> {
    /// The request id.
    pub req_guid: &'a str,
    /// The connection group.
    pub group: &'a str,
    /// The sender's tenant.
    pub tenant: Option<&'a str>,
    /// The client's send time, Unix microseconds.
    pub sent_time_micros: Option<i64>,
    /// When the gateway received the batch.
    pub received_at: SystemTime,
}

/// The delivery state of one batch.
pub struct BatchState {
    outstanding: AtomicUsize,
    failures: Mutex<Vec<EventResult>>,
    done: Notify,
    /// When the batch was handed to the log.
    pub enqueued: Instant,
}

impl BatchState {
    /// The state of a batch of `events`, all outstanding.
    pub fn new(events: usize) -> Arc<Self> {
        Arc::new(Self {
            outstanding: AtomicUsize::new(events),
            failures: Mutex::new(Vec::new()),
            done: Notify::new(),
            enqueued: Instant::now(),
        })
    }

    /// Records an event's failure (its outcome is settled separately).
    pub fn fail(&self, failure: EventResult) {
        self.failures.lock().expect("failures lock").push(failure);
    }

    /// Records that `n` events have their outcome.
    pub fn settle(&self, n: usize) {
        if n > 0 && self.outstanding.fetch_sub(n, Ordering::AcqRel) == n {
            // `notify_one` stores a permit, so a waiter that arrives later still wakes.
            self.done.notify_one();
        }
    }

    fn take_failures(&self) -> Vec<EventResult> {
        std::mem::take(&mut *self.failures.lock().expect("failures lock"))
    }
}

/// The metrics of one (event type, topic), resolved once for a run of events rather
/// than looked up by label on every delivery report.
pub struct DeliveryCounters {
    /// The real topic name, for failure reasons (the label may be `__other__`).
    pub topic: String,
    event_type_label: String,
    topic_label: String,
    /// Events delivered.
    pub published: IntCounter,
    /// Payload bytes delivered.
    pub bytes: IntCounter,
}

impl DeliveryCounters {
    /// The counters of `(event_type, topic)`.
    pub fn new(metrics: &Metrics, event_type: &str, topic: &str) -> Arc<Self> {
        let labels = [
            metrics.event_types.get(event_type),
            metrics.topics.get(topic),
        ];
        Arc::new(Self {
            topic: topic.to_string(),
            event_type_label: labels[0].to_string(),
            topic_label: labels[1].to_string(),
            published: metrics.events_published.with_label_values(&labels),
            bytes: metrics.bytes_published.with_label_values(&labels),
        })
    }

    /// Counts a failed event.
    pub fn failed(&self, metrics: &Metrics, code: Code) {
        metrics
            .events_failed
            .with_label_values(&[
                &self.event_type_label,
                &self.topic_label,
                code.as_str_name(),
            ])
            .inc();
    }
}

/// A batch whose events are enqueued; await its delivery reports with [`Self::wait`].
pub struct PendingBatch {
    state: Arc<BatchState>,
    /// Request indices of the events enqueued or attempted.
    indices: Vec<u32>,
}

impl PendingBatch {
    /// A batch whose events (request `indices`) settle through `state`.
    pub fn new(state: Arc<BatchState>, indices: Vec<u32>) -> Self {
        Self { state, indices }
    }

    /// Waits for every delivery report, at most `deadline`, and returns the failures.
    /// Past the deadline the events without a report are answered UNAVAILABLE: they may
    /// still arrive in Kafka, so a retry can duplicate them, but none is called a success.
    pub async fn wait(self, deadline: Duration) -> Vec<EventResult> {
        let notified = self.state.done.notified();
        if self.state.outstanding.load(Ordering::Acquire) != 0
            && tokio::time::timeout(deadline, notified).await.is_err()
        {
            let mut failures = self.state.take_failures();
            let failed: std::collections::HashSet<u32> = failures.iter().map(|f| f.index).collect();
            for &index in &self.indices {
                if !failed.contains(&index) {
                    failures.push(EventResult {
                        index,
                        code: Code::Unavailable as i32,
                        reason: format!("Kafka did not confirm the event within {deadline:?}"),
                    });
                }
            }
            return failures;
        }
        self.state.take_failures()
    }

    /// Failures known now (enqueue failures), for async acks.
    pub fn enqueue_failures(&self) -> Vec<EventResult> {
        self.state.failures.lock().expect("failures lock").clone()
    }
}

/// Reads a timestamp as Unix microseconds.
pub fn unix_micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Where the gateway publishes events: Kafka today, Kinesis next.
pub trait EventLog: Send + Sync {
    /// Enqueues the events of a batch that passed routing, in order. Every event gets
    /// exactly one outcome through the returned batch.
    fn publish(
        &self,
        outgoing: &mut dyn ExactSizeIterator<Item = Outgoing<'_>>,
        context: &BatchContext<'_>,
    ) -> PendingBatch;

    /// Events waiting for their outcome.
    fn in_flight(&self) -> usize;

    /// Waits for every queued event to be delivered or fail, at most `timeout`.
    fn flush(&self, timeout: Duration) -> Result<(), LogError>;

    /// Whether the log answers (readiness); blocks at most `timeout`.
    fn check_reachable(&self, timeout: Duration) -> Result<(), LogError>;
}

/// A log's own error, passed through for logs and readiness.
pub type LogError = Box<dyn std::error::Error + Send + Sync>;
