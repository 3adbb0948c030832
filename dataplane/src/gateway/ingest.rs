//! One batch's way through the gateway, whatever transport brought it:
//! admit → route → publish → ack.
//!
//! Invariants:
//! - Memory: a batch holds `wire_bytes` of the in-flight budget from admission until its
//!   answer is built, so admitted-but-unanswered data is bounded by
//!   `limits.maxInflightBytes`. A batch that finds no room within
//!   `limits.admissionTimeout` is answered RATE_LIMITED at once: a full gateway never
//!   makes a client hang.
//! - Acks: with sync acks the answer waits for every delivery report (bounded by
//!   `kafka.deliveryTimeout`), and only reported deliveries count as success.
//! - Tenants: quotas are taken for the whole batch before admission
//!   ([`super::quota`]), so a batch over quota is refused whole and nothing of it is
//!   published; each event routes with its sender's tenant, and an event type the
//!   sender's API key does not allow is refused per event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument;

use tokio::sync::Semaphore;
use weir_crds::pipeline::AckMode;
use weir_crds::settings::GatewaySettings;
use weir_proto::{Code, SendEventRequest, SendEventResponse};

use super::ack::{self, Rejection};
use super::identity::Identity;
use super::metrics::Metrics;
use super::publish::{BatchContext, EventLog, Outgoing};
use super::quota::Quotas;
use super::route::{Route, Router};

/// The transport a batch came in on, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `POST /api/v1/events`.
    Http,
    /// WebSocket frames.
    WebSocket,
    /// gRPC `SendEvent`.
    Grpc,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::WebSocket => "websocket",
            Transport::Grpc => "grpc",
        }
    }
}

/// Processes batches; shared by every transport.
pub struct Ingestor {
    router: Arc<Router>,
    publisher: Arc<dyn EventLog>,
    metrics: Arc<Metrics>,
    quotas: Arc<Quotas>,
    inflight: Semaphore,
    admission_timeout: Duration,
    ack_deadline: Duration,
    acks: AckMode,
}

impl Ingestor {
    /// A new ingestor.
    pub fn new(
        router: Arc<Router>,
        publisher: Arc<dyn EventLog>,
        metrics: Arc<Metrics>,
        quotas: Arc<Quotas>,
        settings: &GatewaySettings,
    ) -> Self {
        Self {
            router,
            publisher,
            metrics,
            quotas,
            inflight: Semaphore::new(settings.limits.max_inflight_bytes),
            admission_timeout: settings.limits.admission_timeout,
            // librdkafka reports a little before this (see `kafka::librdkafka_timeout`);
            // the deadline only answers for a report that never comes, so a batch is
            // always answered within the delivery timeout.
            ack_deadline: settings.kafka.delivery_timeout,
            acks: settings.acks,
        }
    }

    /// Processes one batch and builds its answer. `wire_bytes` is the batch's encoded
    /// size; `received` is when its first byte arrived.
    pub async fn ingest(
        &self,
        identity: &Identity,
        request: SendEventRequest,
        wire_bytes: usize,
        transport: Transport,
        received: Instant,
    ) -> SendEventResponse {
        // One span per batch (exported when OTLP traces are on): admission, route,
        // publish and the wait for Kafka's acks are its children.
        let span = tracing::info_span!(
            target: weir_runtime::telemetry::TRACE_TARGET,
            "batch",
            transport = transport.label(),
            req_guid = %request.req_guid,
            events = request.events.len(),
            bytes = wire_bytes,
            code = tracing::field::Empty,
        );
        let response = match self
            .admit_and_publish(identity, &request, wire_bytes)
            .instrument(span.clone())
            .await
        {
            Ok(response) => response,
            Err(rejection) => rejection.response_for(&request.req_guid, request.events.len()),
        };
        span.record("code", response.code().as_str_name());
        self.answered(transport, response.code(), received);
        response
    }

    /// Records an answered batch; transports call it for batches refused before ingest.
    pub fn answered(&self, transport: Transport, code: Code, received: Instant) {
        self.metrics
            .batches
            .with_label_values(&[transport.label(), code.as_str_name()])
            .inc();
        self.metrics
            .ack_latency
            .with_label_values(&[transport.label()])
            .observe(received.elapsed().as_secs_f64());
    }

    async fn admit_and_publish(
        &self,
        identity: &Identity,
        request: &SendEventRequest,
        wire_bytes: usize,
    ) -> Result<SendEventResponse, Rejection> {
        let sent_time_micros = sent_time_micros(request.sent_time.as_ref())?;
        let tenant = identity.tenant();
        self.quotas
            .take(&identity.principal, request.events.len(), wire_bytes)?;
        let permits = u32::try_from(wire_bytes.max(1)).map_err(|_| Rejection::TooLarge {
            limit: u32::MAX as usize,
        })?;
        let _admitted =
            tokio::time::timeout(self.admission_timeout, self.inflight.acquire_many(permits))
                .instrument(
                    tracing::info_span!(target: weir_runtime::telemetry::TRACE_TARGET, "admit"),
                )
                .await
                .map_err(|_| {
                    Rejection::Overloaded(format!(
                        "the gateway has no room for another batch within {:?}; retry later",
                        self.admission_timeout
                    ))
                })?
                .map_err(|_| Rejection::Unavailable("the gateway is shutting down".into()))?;
        self.metrics.inflight_bytes.add(wire_bytes as i64);
        let _release = InflightGauge(&self.metrics, wire_bytes);

        let received_at = SystemTime::now();
        self.count_received(request, tenant);
        let route_span =
            tracing::info_span!(target: weir_runtime::telemetry::TRACE_TARGET, "route").entered();
        let table = self.router.table();
        let mut failures = Vec::new();
        let mut routed = Vec::with_capacity(request.events.len());
        for (index, event) in request.events.iter().enumerate() {
            let route = if identity.principal.allows(&event.r#type) {
                table.route(tenant, &event.r#type)
            } else {
                Route::Reject(
                    format!(
                        "event type {:?} is not allowed for this API key (eventTypes)",
                        event.r#type
                    )
                    .into(),
                )
            };
            match route {
                Route::Topic(topic) => routed.push((index, topic, None)),
                Route::DeadLetter { topic, reason } => routed.push((index, topic, Some(reason))),
                Route::Reject(reason) => {
                    let event_type = self.metrics.event_types.get(&event.r#type);
                    self.metrics
                        .events_failed
                        .with_label_values(&[event_type, "", Code::BadRequest.as_str_name()])
                        .inc();
                    failures.push(ack::event_failure(index, Code::BadRequest, &*reason));
                }
            }
        }
        drop(route_span);
        let connection_key = identity.id.as_deref().map(str::as_bytes);
        let mut outgoing = routed.iter().map(|(index, topic, reason)| {
            let event = &request.events[*index];
            let key = if event.partition_key.is_empty() {
                connection_key
            } else {
                Some(event.partition_key.as_bytes())
            };
            Outgoing {
                index: *index,
                topic,
                key,
                payload: &event.event_bytes,
                event_type: &event.r#type,
                dead_letter_reason: reason.as_deref(),
            }
        });
        let context = BatchContext {
            req_guid: &request.req_guid,
            group: &identity.group,
            tenant,
            sent_time_micros,
            received_at,
        };
        let pending = tracing::info_span!(target: weir_runtime::telemetry::TRACE_TARGET, "publish", events = routed.len())
            .in_scope(|| self.publisher.publish(&mut outgoing, &context));
        let delivery_failures =
            match self.acks {
                AckMode::Sync => pending
                    .wait(self.ack_deadline)
                    .instrument(
                        tracing::info_span!(target: weir_runtime::telemetry::TRACE_TARGET, "ack"),
                    )
                    .await,
                AckMode::Async => pending.enqueue_failures(),
            };
        failures.extend(delivery_failures);
        Ok(ack::batch_response(
            &request.req_guid,
            request.events.len(),
            failures,
        ))
    }

    fn count_received(&self, request: &SendEventRequest, tenant: Option<&str>) {
        if let Some(tenant) = tenant {
            self.metrics
                .tenant_events
                .with_label_values(&[self.metrics.tenants.get(tenant)])
                .inc_by(request.events.len() as u64);
        }
        let mut by_type: HashMap<&str, (u64, u64)> = HashMap::new();
        for event in &request.events {
            let entry = by_type.entry(&event.r#type).or_default();
            entry.0 += 1;
            entry.1 += event.event_bytes.len() as u64;
        }
        for (event_type, (events, bytes)) in by_type {
            let label = [self.metrics.event_types.get(event_type)];
            self.metrics
                .events_received
                .with_label_values(&label)
                .inc_by(events);
            self.metrics
                .bytes_received
                .with_label_values(&label)
                .inc_by(bytes);
        }
    }

    /// Refuses new batches (they get UNAVAILABLE) once in-flight ones are done.
    pub fn close(&self) {
        self.inflight.close();
    }

    /// Updates the producer queue gauge.
    pub fn sample_queue_depth(&self) {
        self.metrics
            .producer_queue
            .set(i64::try_from(self.publisher.in_flight()).unwrap_or(i64::MAX));
    }
}

/// Lowers the in-flight gauge when a batch is answered, however it ends.
struct InflightGauge<'a>(&'a Metrics, usize);

impl Drop for InflightGauge<'_> {
    fn drop(&mut self) {
        self.0.inflight_bytes.sub(self.1 as i64);
    }
}

/// Earliest and latest `sent_time` seconds: 0001-01-01T00:00:00Z and
/// 9999-12-31T23:59:59Z, the range of `google.protobuf.Timestamp`.
const SENT_TIME_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// The client's `sent_time` as Unix microseconds; a time outside the protobuf
/// Timestamp range (or with nanos outside 0..1e9) is refused rather than wrapped.
fn sent_time_micros(sent_time: Option<&prost_types::Timestamp>) -> Result<Option<i64>, Rejection> {
    let Some(t) = sent_time else {
        return Ok(None);
    };
    if !SENT_TIME_SECONDS.contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Rejection::BadRequest(format!(
            "sent_time {}s {}ns is outside years 0001 to 9999 (or nanos outside 0..1e9)",
            t.seconds, t.nanos
        )));
    }
    // In range, seconds × 10⁶ fits an i64 with room to spare.
    Ok(Some(t.seconds * 1_000_000 + i64::from(t.nanos / 1000)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::publish::{BatchState, LogError, PendingBatch};
    use prost_types::Timestamp;

    #[test]
    fn sent_time_outside_the_timestamp_range_is_refused_not_wrapped() {
        let at = |seconds, nanos| sent_time_micros(Some(&Timestamp { seconds, nanos }));
        assert_eq!(at(1_700_000_000, 5_000), Ok(Some(1_700_000_000_000_005)));
        assert_eq!(sent_time_micros(None), Ok(None));
        assert!(at(253_402_300_799, 999_999_999).is_ok());
        assert!(at(-62_135_596_800, 0).is_ok());
        // i64::MAX seconds, year 10000, year 0, negative nanos.
        for (seconds, nanos) in [
            (i64::MAX, 0),
            (253_402_300_800, 0),
            (-62_135_596_801, 0),
            (0, -1),
            (0, 1_000_000_000),
        ] {
            assert!(
                matches!(at(seconds, nanos), Err(Rejection::BadRequest(m)) if m.contains("sent_time")),
                "{seconds} {nanos}"
            );
        }
    }

    /// A log that fails the events at the given indices and delivers the rest.
    struct FailingLog(Vec<u32>);

    impl EventLog for FailingLog {
        fn publish(
            &self,
            outgoing: &mut dyn ExactSizeIterator<Item = Outgoing<'_>>,
            _context: &BatchContext<'_>,
        ) -> PendingBatch {
            let state = BatchState::new(outgoing.len());
            let indices: Vec<u32> = outgoing.map(|e| e.index as u32).collect();
            for &index in indices.iter().filter(|i| self.0.contains(i)) {
                state.fail(ack::event_failure(
                    index as usize,
                    Code::Unavailable,
                    "shard busy",
                ));
            }
            state.settle(indices.len());
            PendingBatch::new(state, indices)
        }

        fn in_flight(&self) -> usize {
            0
        }

        fn flush(&self, _: Duration) -> Result<(), LogError> {
            Ok(())
        }

        fn check_reachable(&self, _: Duration) -> Result<(), LogError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn any_event_log_settles_each_event_of_a_batch_once() {
        let settings = GatewaySettings::try_from(weir_crds::PipelineSpec::default()).unwrap();
        let weir_crds::settings::RoutingSource::Inline(table) = &settings.routing else {
            unreachable!("the default routes inline")
        };
        let ingestor = Ingestor::new(
            Arc::new(Router::new(table.clone())),
            Arc::new(FailingLog(vec![1])),
            Arc::new(Metrics::new()),
            Arc::new(Quotas::new(&settings.tenants, Arc::default())),
            &settings,
        );
        let event = |t: &str| weir_proto::Event {
            r#type: t.into(),
            event_bytes: b"{}".to_vec().into(),
            ..Default::default()
        };
        let request = SendEventRequest {
            req_guid: "g".into(),
            events: vec![event("click"), event("view"), event("bad type!")],
            ..Default::default()
        };
        let identity = Identity {
            id: None,
            group: "g".into(),
            principal: Default::default(),
        };
        let answer = ingestor
            .ingest(&identity, request, 10, Transport::Http, Instant::now())
            .await;
        let failed: Vec<u32> = answer.event_results.iter().map(|f| f.index).collect();
        assert_eq!(failed, vec![1, 2], "{answer:?}");
    }
}
