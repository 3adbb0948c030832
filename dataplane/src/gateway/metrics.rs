//! The gateway's Prometheus metrics.
//!
//! Label values that clients choose (event types, connection groups, and topics, which
//! follow event types) pass through [`BoundedLabels`]: the first values seen keep their
//! own series, the rest share `__other__`, so a client cannot grow the series count
//! without bound. Request ids and user ids are never labels.

pub use weir_runtime::telemetry::{BoundedLabels, LABEL_LIMIT, OTHER, render};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every gateway metric, registered in one registry.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Open WebSocket connections by group.
    pub connections: IntGaugeVec,
    /// Batches answered, by transport and code.
    pub batches: IntCounterVec,
    /// Events received, by event type.
    pub events_received: IntCounterVec,
    /// Payload bytes received, by event type.
    pub bytes_received: IntCounterVec,
    /// Events Kafka acknowledged, by event type and topic.
    pub events_published: IntCounterVec,
    /// Payload bytes Kafka acknowledged, by event type and topic.
    pub bytes_published: IntCounterVec,
    /// Events that failed, by event type, topic and code.
    pub events_failed: IntCounterVec,
    /// Time from receiving a batch to answering it, by transport.
    pub ack_latency: HistogramVec,
    /// Time from enqueueing an event to its Kafka delivery report.
    pub delivery_latency: Histogram,
    /// Events waiting in the producer for a delivery report.
    pub producer_queue: IntGauge,
    /// Batch bytes admitted and not yet answered.
    pub inflight_bytes: IntGauge,
    /// The producer's librdkafka statistics.
    pub kafka: weir_runtime::kafka::KafkaClientMetrics,
    /// Routing file reloads, by result.
    pub routing_reloads: IntCounterVec,
    /// Connections the gateway closed to protect itself, by port (`http`, `grpc`) and
    /// reason (`not_reading`, `connection_limit`).
    pub connections_dropped: IntCounterVec,
    /// Kafka producers replaced because they could deliver no more, by reason.
    pub producer_replacements: IntCounterVec,
    /// Credentials refused, by reason (`missing`, `empty`, `unknown`, `revoked`,
    /// `invalid_jwt`, `expired`).
    pub auth_refused: IntCounterVec,
    /// Reloads of credential files, by file (`apiKeys`, `jwks`, `hmacSecret`, `tls`)
    /// and result.
    pub credential_reloads: IntCounterVec,
    /// Events received, by tenant.
    pub tenant_events: IntCounterVec,
    /// Batches and connections refused over a quota, by tenant.
    pub tenant_rate_limited: IntCounterVec,
    /// Label budget for tenants.
    pub tenants: BoundedLabels,
    /// Label budget for event types.
    pub event_types: BoundedLabels,
    /// Label budget for topics.
    pub topics: BoundedLabels,
    /// Label budget for connection groups.
    pub groups: BoundedLabels,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Creates and registers the metrics, with the process collector. Long but flat:
    /// one registration per metric, in the order of the README's table.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let events_received = counter(
            "weir_gateway_events_received_total",
            "Events received.",
            &["event_type"],
        );
        let bytes_received = counter(
            "weir_gateway_event_bytes_received_total",
            "Event payload bytes received.",
            &["event_type"],
        );
        let events_published = counter(
            "weir_gateway_events_published_total",
            "Events acknowledged by Kafka.",
            &["event_type", "topic"],
        );
        let bytes_published = counter(
            "weir_gateway_event_bytes_published_total",
            "Event payload bytes acknowledged by Kafka.",
            &["event_type", "topic"],
        );
        let events_failed = counter(
            "weir_gateway_events_failed_total",
            "Events that failed, by the code they were answered with.",
            &["event_type", "topic", "code"],
        );
        let batches = counter(
            "weir_gateway_batches_total",
            "Batches answered.",
            &["transport", "code"],
        );
        let routing_reloads = counter(
            "weir_gateway_routing_reloads_total",
            "Routing file reloads.",
            &["result"],
        );
        let connections_dropped = counter(
            "weir_gateway_connections_dropped_total",
            "Connections closed by the gateway: clients that did not read their answers within limits.writeTimeout, or past limits.maxConnections.",
            &["port", "reason"],
        );
        let producer_replacements = counter(
            "weir_gateway_kafka_producer_replacements_total",
            "Kafka producers replaced by a new one because they could deliver no more: fenced (the broker fenced the idempotent producer's id) or fatal (librdkafka's fatal error).",
            &["reason"],
        );
        let auth_refused = counter(
            "weir_gateway_auth_refused_total",
            "Requests and connections refused for their credentials.",
            &["reason"],
        );
        let credential_reloads = counter(
            "weir_gateway_credential_reloads_total",
            "Reloads of the API keys, JWKS, HMAC secret and TLS files.",
            &["file", "result"],
        );
        let tenant_events = counter(
            "weir_gateway_tenant_events_received_total",
            "Events received, by tenant.",
            &["tenant"],
        );
        let tenant_rate_limited = counter(
            "weir_gateway_tenant_rate_limited_total",
            "Batches and WebSocket connections refused over a tenant's or key's quota.",
            &["tenant"],
        );
        let connections = IntGaugeVec::new(
            Opts::new("weir_gateway_connections", "Open WebSocket connections."),
            &["group"],
        )
        .expect("metric");
        registry
            .register(Box::new(connections.clone()))
            .expect("register");
        let ack_latency = HistogramVec::new(
            HistogramOpts::new(
                "weir_gateway_batch_ack_seconds",
                "Time from receiving a batch to answering it.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["transport"],
        )
        .expect("metric");
        registry
            .register(Box::new(ack_latency.clone()))
            .expect("register");
        let delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "weir_gateway_kafka_delivery_seconds",
                "Time from enqueueing an event to its Kafka delivery report.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("metric");
        registry
            .register(Box::new(delivery_latency.clone()))
            .expect("register");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let producer_queue = gauge(
            "weir_gateway_producer_queue_depth",
            "Events in the Kafka producer awaiting a delivery report.",
        );
        let inflight_bytes = gauge(
            "weir_gateway_inflight_bytes",
            "Batch bytes admitted and not yet answered.",
        );
        weir_runtime::telemetry::register_process_metrics(&registry, "gateway");
        let kafka = weir_runtime::kafka::KafkaClientMetrics::new(&registry);
        Self {
            kafka,
            registry,
            connections,
            batches,
            events_received,
            bytes_received,
            events_published,
            bytes_published,
            events_failed,
            ack_latency,
            delivery_latency,
            producer_queue,
            inflight_bytes,
            routing_reloads,
            connections_dropped,
            producer_replacements,
            auth_refused,
            credential_reloads,
            tenant_events,
            tenant_rate_limited,
            tenants: BoundedLabels::new(LABEL_LIMIT),
            event_types: BoundedLabels::new(LABEL_LIMIT),
            topics: BoundedLabels::new(LABEL_LIMIT),
            groups: BoundedLabels::new(LABEL_LIMIT),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        let labels = BoundedLabels::new(2);
        assert_eq!(labels.get("a"), "a");
        assert_eq!(labels.get("b"), "b");
        assert_eq!(labels.get("c"), OTHER);
        assert_eq!(labels.get("a"), "a");
    }

    #[test]
    fn renders_text_exposition() {
        let m = Metrics::new();
        m.events_received.with_label_values(&["click"]).inc_by(3);
        let text = m.render();
        assert!(text.contains("weir_gateway_events_received_total{event_type=\"click\"} 3"));
    }
}
