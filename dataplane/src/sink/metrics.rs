//! The sink's Prometheus metrics. Topic and event-type labels are bounded like the
//! gateway's.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use weir_runtime::telemetry::{BoundedLabels, LABEL_LIMIT};

/// Every sink metric, registered in one registry.
pub struct SinkMetrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Records consumed, by topic.
    pub records_consumed: IntCounterVec,
    /// Record value bytes consumed, by topic.
    pub bytes_consumed: IntCounterVec,
    /// Records written to data files, by topic.
    pub records_written: IntCounterVec,
    /// Files uploaded, by kind (`data`, `dead_letter`).
    pub files_written: IntCounterVec,
    /// File bytes uploaded, by kind.
    pub bytes_written: IntCounterVec,
    /// Records dead-lettered, by topic and event type.
    pub dead_letters: IntCounterVec,
    /// Records skipped because their event type is not in `source.eventTypes`.
    pub records_skipped: IntCounterVec,
    /// Partitions whose log went back below what was written, by topic.
    pub offset_regressions: IntCounterVec,
    /// Records Kafka deleted (retention) before the sink wrote them, by topic.
    pub records_expired: IntCounterVec,
    /// Flush time from taking a buffer to committing its offsets, by reason.
    pub flush_seconds: HistogramVec,
    /// Flushes that failed and will be retried, by stage.
    pub flush_failures: IntCounterVec,
    /// Records in Kafka not yet committed to files, by topic (from librdkafka's
    /// statistics).
    pub consumer_lag: IntGaugeVec,
    /// The consumer's librdkafka statistics.
    pub kafka: weir_runtime::kafka::KafkaClientMetrics,
    /// Bytes buffered across partitions.
    pub buffered_bytes: IntGauge,
    /// Partitions assigned to this sink.
    pub assigned_partitions: IntGauge,
    /// Topic label values.
    pub topics: BoundedLabels,
    /// Event-type label values.
    pub event_types: BoundedLabels,
}

impl SinkMetrics {
    /// Creates and registers every metric. Long but flat: one registration per metric,
    /// in the order of the README's table.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let records_consumed = counter(
            "weir_sink_records_consumed_total",
            "Kafka records consumed.",
            &["topic"],
        );
        let bytes_consumed = counter(
            "weir_sink_bytes_consumed_total",
            "Kafka record value bytes consumed.",
            &["topic"],
        );
        let records_written = counter(
            "weir_sink_records_written_total",
            "Records written to data files.",
            &["topic"],
        );
        let files_written = counter(
            "weir_sink_files_written_total",
            "Files uploaded.",
            &["kind"],
        );
        let bytes_written = counter(
            "weir_sink_bytes_written_total",
            "File bytes uploaded.",
            &["kind"],
        );
        let dead_letters = counter(
            "weir_sink_dead_letters_total",
            "Records whose payload did not decode, sent to the dead-letter destination.",
            &["topic", "event_type"],
        );
        let records_skipped = counter(
            "weir_sink_records_skipped_total",
            "Records not written because source.eventTypes excludes their type.",
            &["topic"],
        );
        let offset_regressions = counter(
            "weir_sink_offset_regressions_total",
            "Partitions whose log went back below what was already written (re-created topic, another cluster, lost data); see source.onOffsetRegression.",
            &["topic"],
        );
        let records_expired = counter(
            "weir_sink_records_expired_total",
            "Records deleted by Kafka's retention before the sink wrote them.",
            &["topic"],
        );
        let flush_failures = counter(
            "weir_sink_flush_failures_total",
            "Flushes that failed (they are retried; offsets stay uncommitted).",
            &["stage"],
        );
        let flush_seconds = HistogramVec::new(
            HistogramOpts::new(
                "weir_sink_flush_seconds",
                "Time to encode, upload and commit one flushed range.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["reason"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(flush_seconds.clone()))
            .expect("unique metric");
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "weir_sink_consumer_lag_records",
                "Records in Kafka not yet in files: past the committed offset, or past the \
                 log start while the group has committed none.",
            ),
            &["topic"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(consumer_lag.clone()))
            .expect("unique metric");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let buffered_bytes = gauge(
            "weir_sink_buffered_bytes",
            "Bytes buffered across partitions, counted against flush.memoryBudget.",
        );
        let assigned_partitions = gauge(
            "weir_sink_assigned_partitions",
            "Kafka partitions assigned to this sink.",
        );
        weir_runtime::telemetry::register_process_metrics(&registry, "sink");
        let kafka = weir_runtime::kafka::KafkaClientMetrics::new(&registry);
        Self {
            registry,
            kafka,
            records_consumed,
            bytes_consumed,
            records_written,
            files_written,
            bytes_written,
            dead_letters,
            records_skipped,
            offset_regressions,
            records_expired,
            flush_seconds,
            flush_failures,
            consumer_lag,
            buffered_bytes,
            assigned_partitions,
            topics: BoundedLabels::new(LABEL_LIMIT),
            event_types: BoundedLabels::new(LABEL_LIMIT),
        }
    }
}

impl Default for SinkMetrics {
    fn default() -> Self {
        Self::new()
    }
}
