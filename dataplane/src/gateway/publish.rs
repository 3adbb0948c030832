//! Publishing events to Kafka and collecting their delivery reports per batch.
//!
//! Invariants:
//! - Every event handed to [`Publisher::publish`] gets exactly one outcome: enqueue
//!   failure (recorded at once) or a delivery report (recorded by librdkafka's callback).
//!   A batch is complete when its count of outstanding events reaches zero.
//! - Order: events are enqueued in batch order, and librdkafka's idempotent producer
//!   keeps per-partition order, so events with one key stay in order. After the first
//!   enqueue failure the rest of the batch is failed too rather than enqueued, so a
//!   retry of the failed suffix cannot overtake it.
//! - The producer is created with `acks=all` and idempotence on unless the user's
//!   librdkafka properties say otherwise.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::Notify;
use weir_proto::{Code, EventResult};

use super::ack;
use super::metrics::Metrics;
use crate::record;

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
    enqueued: Instant,
}

impl BatchState {
    fn new(events: usize) -> Arc<Self> {
        Arc::new(Self {
            outstanding: AtomicUsize::new(events),
            failures: Mutex::new(Vec::new()),
            done: Notify::new(),
            enqueued: Instant::now(),
        })
    }

    fn fail(&self, failure: EventResult) {
        self.failures.lock().expect("failures lock").push(failure);
    }

    /// Records that `n` events have their outcome.
    fn settle(&self, n: usize) {
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
    topic: String,
    event_type_label: String,
    topic_label: String,
    published: IntCounter,
    bytes: IntCounter,
}

impl DeliveryCounters {
    fn new(metrics: &Metrics, event_type: &str, topic: &str) -> Arc<Self> {
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

    fn failed(&self, metrics: &Metrics, code: Code) {
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

/// What travels with each record to its delivery report.
pub struct Pending {
    batch: Arc<BatchState>,
    index: u32,
    counters: Arc<DeliveryCounters>,
    payload_len: usize,
}

/// Receives librdkafka's delivery reports on its polling thread.
pub struct DeliveryReports {
    metrics: Arc<Metrics>,
    logs: weir_runtime::kafka::KafkaLogs,
}

impl ClientContext for DeliveryReports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.logs.log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.logs.error(&error, reason);
    }
}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        self.metrics
            .delivery_latency
            .observe(pending.batch.enqueued.elapsed().as_secs_f64());
        match result {
            Ok(_) => {
                pending.counters.published.inc();
                pending.counters.bytes.inc_by(pending.payload_len as u64);
            }
            Err((error, _)) => {
                let (code, reason) = ack::kafka_failure(error, &pending.counters.topic);
                pending.counters.failed(&self.metrics, code);
                tracing::warn!(topic = %pending.counters.topic, %error, "Kafka delivery failed");
                pending.batch.fail(EventResult {
                    index: pending.index,
                    code: code as i32,
                    reason,
                });
            }
        }
        pending.batch.settle(1);
    }
}

/// A batch whose events are enqueued; await its delivery reports with [`Self::wait`].
pub struct PendingBatch {
    state: Arc<BatchState>,
    /// Request indices of the events enqueued or attempted.
    indices: Vec<u32>,
}

impl PendingBatch {
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

/// The Kafka producer shared by all connections.
pub struct Publisher {
    producer: ThreadedProducer<DeliveryReports>,
    metrics: Arc<Metrics>,
}

/// Reads a timestamp as Unix microseconds.
pub fn unix_micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Publisher {
    /// Creates the producer from a complete client configuration.
    pub fn new(config: &ClientConfig, metrics: Arc<Metrics>) -> rdkafka::error::KafkaResult<Self> {
        let producer = config.create_with_context(DeliveryReports {
            metrics: metrics.clone(),
            logs: Default::default(),
        })?;
        Ok(Self { producer, metrics })
    }

    /// The underlying client, for metadata checks.
    pub fn client(&self) -> &rdkafka::client::Client<DeliveryReports> {
        self.producer.client()
    }

    /// Events awaiting a delivery report.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Enqueues the events of a batch that passed routing.
    pub fn publish<'a>(
        &self,
        outgoing: impl ExactSizeIterator<Item = Outgoing<'a>>,
        context: &BatchContext<'_>,
    ) -> PendingBatch {
        let state = BatchState::new(outgoing.len());
        let received = unix_micros(context.received_at).to_string();
        let sent = context.sent_time_micros.map(|t| t.to_string());
        let mut aborted: Option<(Code, String)> = None;
        let mut settled_here = 0;
        let mut indices = Vec::with_capacity(outgoing.len());
        // Counters per (type, topic) of this batch. Batches carry few types, so a short
        // list beats hashing; past the cap, resolve each time.
        const RESOLVED_CAP: usize = 32;
        let mut resolved: Vec<(&str, &str, Arc<DeliveryCounters>)> = Vec::new();
        for event in outgoing {
            indices.push(event.index as u32);
            if let Some((code, reason)) = &aborted {
                state.fail(ack::event_failure(event.index, *code, reason.clone()));
                settled_here += 1;
                continue;
            }
            let known = resolved
                .iter()
                .find(|(t, to, _)| *t == event.event_type && *to == event.topic);
            let counters = match known {
                Some((_, _, counters)) => counters.clone(),
                None => {
                    let counters =
                        DeliveryCounters::new(&self.metrics, event.event_type, event.topic);
                    if resolved.len() < RESOLVED_CAP {
                        resolved.push((event.event_type, event.topic, counters.clone()));
                    }
                    counters
                }
            };
            let headers = record::GatewayHeaders {
                event_type: event.event_type,
                req_guid: context.req_guid,
                conn_group: context.group,
                receive_time: &received,
                sent_time: sent.as_deref(),
                dead_letter_reason: event.dead_letter_reason,
            }
            .to_kafka();
            let pending = Box::new(Pending {
                batch: state.clone(),
                index: event.index as u32,
                counters,
                payload_len: event.payload.len(),
            });
            let mut record = BaseRecord::with_opaque_to(event.topic, pending)
                .payload(event.payload)
                .headers(headers);
            if let Some(key) = event.key {
                record = record.key(key);
            }
            if let Err((error, record)) = self.producer.send(record) {
                let (code, reason) = ack::kafka_failure(&error, event.topic);
                record.delivery_opaque.counters.failed(&self.metrics, code);
                state.fail(ack::event_failure(event.index, code, reason.clone()));
                settled_here += 1;
                aborted = Some((
                    code,
                    format!("not sent after an earlier event failed: {reason}"),
                ));
            }
        }
        state.settle(settled_here);
        PendingBatch { state, indices }
    }

    /// Waits for every queued event to be delivered or fail, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> rdkafka::error::KafkaResult<()> {
        self.producer.flush(timeout)
    }
}
