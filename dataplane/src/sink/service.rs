//! The sink as a service: start (open the store, probe it, join the group), the
//! operations endpoints (`/metrics`, `/healthz`, `/readyz`), stop and wait.

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use object_store::ObjectStoreExt as _;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weir_crds::settings::SinkSettings;
use weir_crds::sink::SinkMode;

use super::consume::{Core, FLUSH_CONCURRENCY};
use super::encode::Encoder;
use super::flush::FlushContext;
use super::kafka_source;
use super::metrics::SinkMetrics;
use super::partitions::{Partitions, SinkReport};
use super::upload::Storage;

/// A running sink.
pub struct Sink {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<SinkReport>>>,
}

impl Sink {
    /// Opens the store (failing with the store's own error when it cannot be reached,
    /// e.g. wrong credentials), joins the consumer group and starts consuming. Needs a
    /// multi-threaded Tokio runtime (the rebalance hook blocks its thread while it reads
    /// the store).
    pub async fn start(settings: SinkSettings) -> anyhow::Result<Self> {
        if Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread {
            anyhow::bail!("the sink needs a multi-threaded Tokio runtime");
        }
        let encoder = Encoder::new(&settings)?;
        let storage = open_storage(&settings).await?;
        let metrics = Arc::new(SinkMetrics::new());
        let dead_letter_topic = match &settings.dead_letter.topic {
            Some(topic) => Some((
                weir_runtime::kafka::producer_config(&settings.kafka)
                    .create()
                    .context("cannot create the dead-letter producer (check kafka.properties)")?,
                topic.clone(),
                settings.kafka.delivery_timeout,
            )),
            None => None,
        };
        let core = Arc::new(Core {
            flush: FlushContext {
                storage,
                encoder,
                dead_letter_topic,
                metrics: metrics.clone(),
            },
            metrics,
            partitions: Mutex::new(Partitions::default()),
            changed: Condvar::new(),
            runtime: Handle::current(),
            slots: Arc::new(Semaphore::new(FLUSH_CONCURRENCY)),
            batch: settings.mode == SinkMode::Batch,
            settings,
        });
        let consumer = kafka_source::subscribe(core.clone())?;
        let consumer = Arc::new(consumer);

        let listener = tokio::net::TcpListener::bind(core.settings.metrics_addr)
            .await
            .with_context(|| format!("cannot listen on {}", core.settings.metrics_addr))?;
        let metrics_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let ops = axum::Router::new()
            .route("/metrics", get(render_metrics))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(core.clone());
        let server_stop = CancellationToken::new();
        let server =
            weir_runtime::telemetry::serve_http(listener, ops, server_stop.clone(), "sink metrics");
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let result = super::consume::run(core, consumer, stop).await;
                server_stop.cancel();
                let _ = server.await;
                result
            }
        });
        Ok(Self {
            metrics_addr,
            stop,
            task: Some(task),
        })
    }

    /// Asks the sink to flush what it holds, commit and stop.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until the sink stops: after [`Self::stop`], at the end of a batch run, or
    /// on a fatal error. Cancel-safe.
    pub async fn wait(&mut self) -> anyhow::Result<SinkReport> {
        let Some(task) = self.task.as_mut() else {
            anyhow::bail!("the sink has already stopped");
        };
        let result = task.await;
        self.task = None;
        result.context("the sink task failed")?
    }

    /// Stops the sink and waits for it.
    pub async fn shutdown(mut self) -> anyhow::Result<SinkReport> {
        self.stop();
        self.wait().await
    }
}

/// Opens the store and probes it, so that wrong credentials, a missing bucket or a
/// directory the sink may not write fail at start, with a hint chosen by error kind.
async fn open_storage(settings: &SinkSettings) -> anyhow::Result<Storage> {
    let storage = Storage::open(&settings.storage)?;
    if let Err(error) = probe(&storage).await {
        anyhow::bail!(
            "cannot use storage {}{}: {error}",
            settings.storage.url,
            storage_hint(&error)
        );
    }
    Ok(storage)
}

/// What to check, from the kind of a storage error.
fn storage_hint(error: &object_store::Error) -> &'static str {
    use object_store::Error as E;
    let io_kind = std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .find_map(|e| e.downcast_ref::<std::io::Error>())
    .map(std::io::Error::kind);
    match error {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            " (check the credentials: storage.accessKeyIdFile/secretAccessKeyFile or the AWS_* variables)"
        }
        E::NotFound { .. } => " (the bucket does not exist)",
        _ if io_kind == Some(std::io::ErrorKind::PermissionDenied) => {
            " (the sink may not write there: check the directory's owner and mode)"
        }
        _ => "",
    }
}

/// Writes a probe object, lists the prefix and deletes the probe, so wrong credentials,
/// a missing bucket or a directory the sink may not write fail at start rather than at
/// the first flush. The write comes first: object_store reports its failures by kind
/// (permission, not found), which picks the hint; a failed listing is reported as is.
async fn probe(storage: &Storage) -> Result<(), object_store::Error> {
    let probe = storage.path(&format!("{}/.write-probe", super::layout::PROGRESS_DIR));
    storage
        .store
        .put(&probe, bytes::Bytes::from_static(b"weir").into())
        .await?;
    let prefix = storage.path("");
    storage.store.list_with_delimiter(Some(&prefix)).await?;
    match storage.store.delete(&probe).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn render_metrics(State(core): State<Arc<Core>>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        weir_runtime::telemetry::render(&core.metrics.registry),
    )
}

async fn readyz(State(core): State<Arc<Core>>) -> impl IntoResponse {
    let state = core.lock();
    let failing = state
        .map
        .iter()
        .find_map(|((t, p), s)| s.failed.as_ref().map(|_| format!("{t}/{p}")));
    let regressed = state.map.values().find_map(|s| s.regressed.clone());
    match (&state.fatal, state.assigned_once, failing) {
        (Some(fatal), _, _) => (StatusCode::SERVICE_UNAVAILABLE, fatal.clone()),
        (None, true, _) if regressed.is_some() => (
            StatusCode::SERVICE_UNAVAILABLE,
            regressed.unwrap_or_default(),
        ),
        (None, false, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not yet assigned partitions by the consumer group".into(),
        ),
        (None, true, Some(partition)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("flushes of {partition} are failing and being retried (see the logs)"),
        ),
        (None, true, None) => (StatusCode::OK, "ready".into()),
    }
}
