//! Operations plumbing shared by the gateway, the sink and the operator: logging,
//! process signals, the ops HTTP server, Prometheus text rendering and label budgets.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::RwLock;

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Log format.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The logging options every Weir binary takes.
#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "WEIR_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

/// Installs the tracing subscriber. `WEIR_LOG` (or `RUST_LOG`) sets the filter; the
/// default is `info`. Text logs are coloured only when stderr is a terminal.
pub fn init(format: LogFormat) {
    let filter = std::env::var("WEIR_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .map(EnvFilter::new)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a terminal: in a pod or a file they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Serves an axum app until `stop`, letting requests in progress finish.
pub fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    stop: CancellationToken,
    what: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "{what} server failed");
        }
    })
}

/// The label value shared by values past a label's budget.
pub const OTHER: &str = "__other__";

/// A label whose distinct values are capped.
pub struct BoundedLabels {
    limit: usize,
    seen: RwLock<HashSet<String>>,
}

impl BoundedLabels {
    /// A label with at most `limit` distinct values besides [`OTHER`].
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            seen: RwLock::new(HashSet::new()),
        }
    }

    /// `value` if it has (or can get) its own series, else [`OTHER`].
    pub fn get<'a>(&self, value: &'a str) -> &'a str {
        if self.seen.read().expect("label lock").contains(value) {
            return value;
        }
        let mut seen = self.seen.write().expect("label lock");
        if seen.len() < self.limit {
            seen.insert(value.to_string());
            value
        } else if seen.contains(value) {
            value
        } else {
            OTHER
        }
    }
}

/// Distinct event types, topics and groups given their own series.
pub const LABEL_LIMIT: usize = 200;

/// The Prometheus text exposition of a registry.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding");
    String::from_utf8(out).expect("text exposition is UTF-8")
}

/// Registers what every Weir process exports besides its own metrics:
/// `weir_build_info{component, version}` (always 1, to join versions onto other series
/// and see a rollout's progress) and, on Linux, the `process_*` metrics (CPU, resident
/// memory, open file descriptors against their limit, threads).
pub fn register_process_metrics(registry: &Registry, component: &str) {
    let info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "weir_build_info",
            "1, labelled with the component and the version of the running binary.",
        ),
        &["component", "version"],
    )
    .expect("valid metric");
    info.with_label_values(&[component, env!("CARGO_PKG_VERSION")])
        .set(1);
    registry.register(Box::new(info)).expect("register");
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("register");
}
