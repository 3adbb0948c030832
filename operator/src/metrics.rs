//! The operator's Prometheus metrics, served on `/metrics` beside `/healthz`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Counters of reconciles, their failures and the writes they made.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Reconciles by resource kind and result (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Reconcile duration by resource kind.
    pub reconcile_seconds: HistogramVec,
    /// API writes by object kind and operation (`apply`, `delete`, `status`).
    pub writes: IntCounterVec,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        weir_runtime::telemetry::register_process_metrics(&registry, "operator");
        let reconciles = IntCounterVec::new(
            Opts::new(
                "weir_operator_reconciles_total",
                "Reconciles by kind and result.",
            ),
            &["kind", "result"],
        )
        .expect("valid metric");
        let reconcile_seconds = HistogramVec::new(
            HistogramOpts::new(
                "weir_operator_reconcile_duration_seconds",
                "Time spent in one reconcile.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let writes = IntCounterVec::new(
            Opts::new(
                "weir_operator_writes_total",
                "Kubernetes API writes by object kind and operation.",
            ),
            &["kind", "operation"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "weir_operator_leader",
            "1 while this replica holds the leader lease.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_seconds.clone()),
            Box::new(writes.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(collector).expect("unique metric");
        }
        Self {
            registry,
            reconciles,
            reconcile_seconds,
            writes,
            leader,
        }
    }

    /// Counts one API write.
    pub fn record_write(&self, kind: &str, operation: &str) {
        self.writes.with_label_values(&[kind, operation]).inc();
    }

    /// Total API writes so far (tests assert a no-op reconcile adds none).
    pub fn total_writes(&self) -> u64 {
        use prometheus::core::Collector;
        self.writes
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().value() as u64)
            .sum()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
