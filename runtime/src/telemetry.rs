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

/// What [`init`] installed that must outlive the process's work: the trace exporter,
/// whose last spans are sent when this is dropped.
#[must_use = "dropping it at once stops trace export"]
pub struct Telemetry {
    traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: the last trace spans were not exported: {error}");
        }
    }
}

/// Whether OTLP trace export is configured: the OpenTelemetry standard variables
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` are set and
/// `OTEL_SDK_DISABLED` is not `true`. Off by default.
fn traces_configured(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// The OTLP (gRPC) trace pipeline, named `service` unless `OTEL_SERVICE_NAME` says
/// otherwise. Must run inside a Tokio runtime (the exporter's channel lives there).
fn trace_provider(
    service: &str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The target of the spans made for traces (a gateway batch, a sink flush and their
/// steps). Logs never record them, so with trace export off they cost nothing: no
/// layer wants them, and tracing skips them at the call site.
pub const TRACE_TARGET: &str = "weir::trace";

/// Installs the tracing subscriber. `WEIR_LOG` (or `RUST_LOG`) sets the filter; the
/// default is `info`. Text logs are coloured only when stderr is a terminal. When OTLP
/// export is configured ([`traces_configured`]), spans (a gateway batch: route, publish,
/// ack; a sink flush: encode, claim, upload; commits) also go to the collector as
/// `service`; the standard `OTEL_*` variables (headers, timeout, sampler) apply. Call
/// inside a Tokio runtime and keep the result until the process ends.
pub fn init(format: LogFormat, service: &str) -> Telemetry {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let directives = std::env::var("WEIR_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::new(format!("{directives},{TRACE_TARGET}=off"));
    // Colour codes only for a terminal: in a pod or a file they are noise.
    let text = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => text.boxed(),
        LogFormat::Json => text.json().boxed(),
    };
    let mut problem = None;
    let traces = if traces_configured(|name| std::env::var(name).ok()) {
        trace_provider(service)
            .map_err(|error| problem = Some(error))
            .ok()
    } else {
        None
    };
    // Traces take the trace spans whatever the log filter says: `WEIR_LOG=warn` quiets
    // the logs, not the traces.
    let otel = traces.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider;
        let weir = tracing_subscriber::filter::Targets::new()
            .with_target(TRACE_TARGET, tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("weir"))
            .with_filter(weir)
    });
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(otel)
        .try_init();
    if let Some(error) = problem {
        tracing::warn!(%error, "OTLP trace export is configured but cannot start; spans are not exported");
    } else if traces.is_some() {
        tracing::info!("exporting trace spans over OTLP");
    }
    Telemetry { traces }
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

#[cfg(test)]
mod tests {
    #[test]
    fn traces_are_off_unless_an_endpoint_is_set() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(!super::traces_configured(vars(&[])));
        assert!(super::traces_configured(vars(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4317"
        )])));
        assert!(super::traces_configured(vars(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4317"
        )])));
        assert!(!super::traces_configured(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SDK_DISABLED", "true")
        ])));
    }
}
