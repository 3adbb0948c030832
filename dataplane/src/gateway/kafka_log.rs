//! The Kafka [`EventLog`]: librdkafka's threaded producer, with delivery reports
//! settled on its polling thread.
//!
//! Beyond what every [`EventLog`] keeps: librdkafka's idempotent producer keeps
//! per-partition order, so events with one key stay in order; the producer is created
//! with `acks=all` and idempotence on unless the user's librdkafka properties say
//! otherwise.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
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
}

impl ClientContext for DeliveryReports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.logs.log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
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

/// The Kafka producer shared by all connections.
pub struct KafkaLog {
    producer: ThreadedProducer<DeliveryReports>,
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
        let producer = config.create_with_context(DeliveryReports {
            metrics: metrics.clone(),
            logs: Default::default(),
        })?;
        Ok(Self { producer, metrics })
    }
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
        PendingBatch::new(state, indices)
    }

    fn in_flight(&self) -> usize {
        usize::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }

    fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        Ok(self.producer.flush(timeout)?)
    }

    fn check_reachable(&self, timeout: Duration) -> Result<(), LogError> {
        self.producer.client().fetch_metadata(None, timeout)?;
        Ok(())
    }
}
