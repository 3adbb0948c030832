//! The metrics port: Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz`.
//!
//! Ready means: Kafka metadata was fetched within the last check interval and the
//! gateway is not draining. Load balancers stop sending new connections to a pod that
//! is not ready, which is what a SIGTERM or a Kafka outage should cause.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::publish::EventLog;

/// How often Kafka reachability is checked.
pub const KAFKA_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What readiness depends on.
#[derive(Default)]
pub struct Health {
    draining: AtomicBool,
    kafka_error: Mutex<Option<String>>,
    kafka_checked: AtomicBool,
}

impl Health {
    /// Marks the gateway as draining: no longer ready.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining: the gateway is shutting down".into());
        }
        if !self.kafka_checked.load(Ordering::Acquire) {
            return Err("Kafka not checked yet".into());
        }
        match &*self.kafka_error.lock().expect("health lock") {
            Some(error) => Err(format!("Kafka metadata unreachable: {error}")),
            None => Ok(()),
        }
    }

    /// Whether the last Kafka check failed.
    fn kafka_failing(&self) -> bool {
        self.kafka_error.lock().expect("health lock").is_some()
    }

    fn record_kafka(&self, result: Result<(), String>) {
        *self.kafka_error.lock().expect("health lock") = result.err();
        self.kafka_checked.store(true, Ordering::Release);
    }
}

/// Checks that the log answers until `stop`.
pub async fn watch_kafka(log: Arc<dyn EventLog>, health: Arc<Health>, stop: CancellationToken) {
    loop {
        let log = log.clone();
        let result = tokio::task::spawn_blocking(move || {
            log.check_reachable(KAFKA_CHECK_INTERVAL)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        // Logged when the state changes, not at every check: an outage is one line
        // going down and one coming back; `/readyz` says why meanwhile.
        let was_failing = health.kafka_failing();
        match &result {
            Err(error) if !was_failing => {
                tracing::warn!(%error, "Kafka metadata check failed; not ready until it answers");
            }
            Ok(()) if was_failing => tracing::info!("Kafka metadata reachable again; ready"),
            _ => {}
        }
        health.record_kafka(result);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(KAFKA_CHECK_INTERVAL) => {}
        }
    }
}

/// The metrics and health routes.
pub fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared.ingestor.sample_queue_depth();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match shared.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}
