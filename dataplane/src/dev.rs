//! `weir dev`: the gateway and the sink on an in-process Kafka, writing files to a
//! local directory, with nothing installed.
//!
//! Reads the same pipeline YAML as a cluster deployment (bare spec or IngestPipeline
//! manifest), and optionally a sink YAML (bare spec or SinkBinding manifest); only the
//! Kafka address, the listen addresses and the sink's directory are replaced. Without
//! a sink file the sink reads every topic and flushes every 10 seconds, so files appear
//! soon after events are sent.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::gateway::Gateway;
use crate::sink::Sink;
use weir_crds::SinkSpec;
use weir_crds::config;
use weir_crds::settings::{GatewaySettings, SinkSettings};
use weir_crds::sink::OffsetRegressionPolicy;
use weir_runtime::kafka::EmbeddedKafka;

/// Options of `weir dev`.
#[derive(Clone, Debug, clap::Args)]
pub struct DevOptions {
    /// Pipeline YAML: a bare spec or an IngestPipeline manifest.
    #[arg(short = 'f', long = "config", env = "WEIR_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP and WebSocket address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// gRPC address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub grpc: String,
    /// Metrics and health address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub metrics: String,
    /// Brokers in the embedded Kafka cluster.
    #[arg(long, default_value_t = 1)]
    pub brokers: i32,
    /// Sink YAML: a bare spec or a SinkBinding manifest. Default: every topic, Parquet,
    /// flushed every 10 s.
    #[arg(long)]
    pub sink_config: Option<PathBuf>,
    /// Directory the sink writes files to.
    #[arg(long, default_value = "./weir-data")]
    pub data_dir: String,
    /// Sink metrics and health address.
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub sink_metrics: String,
    /// Run the gateway only.
    #[arg(long)]
    pub no_sink: bool,
}

/// The sink settings of `weir dev`.
fn dev_sink_settings(options: &DevOptions, bootstrap: String) -> anyhow::Result<SinkSettings> {
    let mut spec = match &options.sink_config {
        Some(path) => config::read_sink(Some(path), std::env::vars())?,
        None => {
            let mut spec = SinkSpec::default();
            spec.source.topic_pattern = Some("^[^_].*".into());
            spec.flush.max_age = Duration::from_secs(10);
            spec
        }
    };
    spec.kafka.bootstrap_servers = bootstrap;
    // The embedded Kafka starts empty every run: a directory written by an earlier run
    // gets the new run's files beside its own, as the next generation.
    spec.source.on_offset_regression = OffsetRegressionPolicy::NewGeneration;
    // Pick up topics the gateway creates within seconds.
    spec.kafka
        .properties
        .entry("topic.metadata.refresh.interval.ms".into())
        .or_insert_with(|| "2000".into());
    spec.storage.url = options.data_dir.clone();
    spec.listen.metrics = options.sink_metrics.clone();
    Ok(SinkSettings::try_from(spec)?)
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    let mut spec = config::read_pipeline(options.config.as_deref(), std::env::vars())?;
    let embedded =
        EmbeddedKafka::start(options.brokers).context("cannot start the embedded Kafka")?;
    spec.kafka.bootstrap_servers = embedded.bootstrap_servers();
    spec.listen.http = options.http.clone();
    spec.listen.grpc = options.grpc.clone();
    spec.listen.metrics = options.metrics.clone();
    let settings = GatewaySettings::try_from(spec)?;
    embedded.create_topics(&settings.topics)?;
    let gateway = Gateway::start(settings).await?;
    let sink = if options.no_sink {
        None
    } else {
        let settings = dev_sink_settings(&options, embedded.bootstrap_servers())?;
        Some(
            Sink::start(settings)
                .await
                .context("cannot start the sink")?,
        )
    };
    println!("Weir dev is running. Ctrl-C stops it.");
    println!(
        "  HTTP      POST http://{}/api/v1/events",
        gateway.http_addr
    );
    println!("  WebSocket ws://{}/api/v1/events", gateway.http_addr);
    println!("  gRPC      {}", gateway.grpc_addr);
    println!("  metrics   http://{}/metrics", gateway.metrics_addr);
    println!(
        "  Kafka     {} (embedded; e.g. kcat -b {} -L)",
        embedded.bootstrap_servers(),
        embedded.bootstrap_servers()
    );
    if let Some(sink) = &sink {
        println!(
            "  files     {} (Parquet; sink metrics http://{}/metrics)",
            options.data_dir, sink.metrics_addr
        );
    }
    println!(
        "Try: weir send --url http://{} --type page_view --json '{{\"page\":\"/home\"}}'",
        gateway.http_addr
    );
    weir_runtime::telemetry::shutdown_signal().await;
    gateway.shutdown().await;
    if let Some(sink) = sink {
        let report = sink.shutdown().await?;
        println!(
            "sink: {} records written to {}",
            report.records_written, options.data_dir
        );
    }
    // The embedded cluster goes with the process, not before: background tasks the
    // runtime has not dropped yet (the gateway's last Kafka check) still hold clients,
    // which would log the cluster's end as an outage.
    std::mem::forget(embedded);
    Ok(())
}
