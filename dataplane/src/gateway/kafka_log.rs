//! The Kafka [`EventLog`]: librdkafka's threaded producer, with delivery reports
//! settled on its polling thread.
//!
//! Beyond what every [`EventLog`] keeps: librdkafka's idempotent producer keeps
//! per-partition order, so events with one key stay in order; the producer is created
//! with `acks=all` and idempotence on unless the user's librdkafka properties say
//! otherwise.
//!
//! A producer that can deliver no more is replaced: librdkafka's fatal errors (an
//! idempotent producer whose sequence the broker lost) and a broker that fenced its
//! producer id leave it failing every event for good. The first batch after such an
//! error creates a new producer (a new producer id) and publishes through it; events
//! still with the old one fail and are answered so, never acknowledged. Errors of an
//! old producer never replace its successor: each producer's reports mark only itself.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use weir_proto::{Code, EventResult};

use super::ack;
use super::metrics::Metrics;
use super::publish::{
    BatchContext, BatchState, DeliveryCounters, EventLog, LogError, Outgoing, PendingBatch,
    unix_micros,
};
use crate::record;

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
    /// Why this producer can deliver no more, once it cannot ([`Broken`] as a byte).
    broken: AtomicU8,
}

/// Why a producer can deliver no more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Broken {
    No = 0,
    /// The broker fenced its producer id (or epoch).
    Fenced = 1,
    /// librdkafka raised a fatal error.
    Fatal = 2,
}

impl Broken {
    fn of(code: Option<RDKafkaErrorCode>) -> Self {
        match code {
            Some(RDKafkaErrorCode::Fatal) => Self::Fatal,
            Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch) => {
                Self::Fenced
            }
            _ => Self::No,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::No => "none",
            Self::Fenced => "fenced",
            Self::Fatal => "fatal",
        }
    }
}

impl DeliveryReports {
    fn mark(&self, code: Option<RDKafkaErrorCode>) {
        let broken = Broken::of(code);
        if broken != Broken::No {
            self.broken.store(broken as u8, Ordering::Release);
        }
    }

    fn broken(&self) -> Broken {
        match self.broken.load(Ordering::Acquire) {
            1 => Broken::Fenced,
            2 => Broken::Fatal,
            _ => Broken::No,
        }
    }
}

impl ClientContext for DeliveryReports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.logs.log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.mark(error.rdkafka_error_code());
        self.logs.error(&error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics.kafka.observe(&statistics);
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
                self.mark(error.rdkafka_error_code());
                let (code, reason) = ack::kafka_failure(error, &pending.counters.topic);
                pending.counters.failed(&self.metrics, code);
                self.logs.delivery_failed(&pending.counters.topic, error);
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

type Producer = ThreadedProducer<DeliveryReports>;

/// The Kafka producer shared by all connections.
pub struct KafkaLog {
    producer: RwLock<Arc<Producer>>,
    config: ClientConfig,
    metrics: Arc<Metrics>,
}

impl KafkaLog {
    /// Creates the producer from a complete client configuration.
    pub fn new(config: &ClientConfig, metrics: Arc<Metrics>) -> rdkafka::error::KafkaResult<Self> {
        // Statistics feed the weir_kafka_* gauges (DeliveryReports::stats).
        let mut config = config.clone();
        config.set(
            "statistics.interval.ms",
            weir_runtime::kafka::STATISTICS_INTERVAL,
        );
        let producer = create_producer(&config, &metrics)?;
        Ok(Self {
            producer: RwLock::new(Arc::new(producer)),
            config,
            metrics,
        })
    }

    /// The producer to publish through: a new one when the current one can deliver
    /// no more.
    fn producer(&self) -> Arc<Producer> {
        let current = self.current();
        if current.context().broken() == Broken::No {
            return current;
        }
        let mut slot = self.producer.write().unwrap_or_else(|e| e.into_inner());
        // Another batch may have replaced it meanwhile.
        if !Arc::ptr_eq(&slot, &current) {
            return slot.clone();
        }
        let why = current.context().broken();
        match create_producer(&self.config, &self.metrics) {
            Ok(fresh) => {
                let fatal = current.client().fatal_error().map(|(_, reason)| reason);
                tracing::error!(
                    reason = why.label(),
                    ?fatal,
                    "the Kafka producer can deliver no more; publishing through a new one"
                );
                self.metrics
                    .producer_replacements
                    .with_label_values(&[why.label()])
                    .inc();
                let old = std::mem::replace(&mut *slot, Arc::new(fresh));
                // Dropping a producer waits for its threads: not on a runtime thread.
                std::thread::spawn(move || drop(old));
                slot.clone()
            }
            Err(error) => {
                tracing::error!(%error, "cannot create a new Kafka producer; trying again with the next batch");
                current
            }
        }
    }

    fn current(&self) -> Arc<Producer> {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn create_producer(
    config: &ClientConfig,
    metrics: &Arc<Metrics>,
) -> rdkafka::error::KafkaResult<Producer> {
    config.create_with_context(DeliveryReports {
        metrics: metrics.clone(),
        logs: Default::default(),
        broken: AtomicU8::new(Broken::No as u8),
    })
}

impl EventLog for KafkaLog {
    fn publish(
        &self,
        outgoing: &mut dyn ExactSizeIterator<Item = Outgoing<'_>>,
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
        let producer = self.producer();
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
                tenant: context.tenant,
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
            if let Err((error, record)) = producer.send(record) {
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
        PendingBatch::new(state, indices)
    }

    fn in_flight(&self) -> usize {
        usize::try_from(self.current().in_flight_count()).unwrap_or(0)
    }

    fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        Ok(self.current().flush(timeout)?)
    }

    fn check_reachable(&self, timeout: Duration) -> Result<(), LogError> {
        self.current().client().fetch_metadata(None, timeout)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_and_fatal_producers_are_told_from_failed_events() {
        assert_eq!(
            Broken::of(Some(RDKafkaErrorCode::ProducerFenced)),
            Broken::Fenced
        );
        assert_eq!(
            Broken::of(Some(RDKafkaErrorCode::InvalidProducerEpoch)),
            Broken::Fenced
        );
        assert_eq!(Broken::of(Some(RDKafkaErrorCode::Fatal)), Broken::Fatal);
        // A timed-out event or a broker that is down says nothing about the producer.
        assert_eq!(
            Broken::of(Some(RDKafkaErrorCode::MessageTimedOut)),
            Broken::No
        );
        assert_eq!(
            Broken::of(Some(RDKafkaErrorCode::AllBrokersDown)),
            Broken::No
        );
        assert_eq!(Broken::of(None), Broken::No);
    }
}
