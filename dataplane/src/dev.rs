//! `weir dev`: the gateway on an in-process Kafka, with nothing installed.
//!
//! Reads the same pipeline YAML as a cluster deployment (bare spec or IngestPipeline
//! manifest); only the Kafka address and the listen addresses are replaced.

use std::path::PathBuf;

use anyhow::Context;

use crate::config;
use crate::gateway::Gateway;
use crate::kafka::EmbeddedKafka;

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
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    let mut spec = config::load_pipeline(options.config.as_deref(), std::env::vars())?;
    let embedded =
        EmbeddedKafka::start(options.brokers).context("cannot start the embedded Kafka")?;
    spec.kafka.bootstrap_servers = embedded.bootstrap_servers();
    spec.listen.http = options.http;
    spec.listen.grpc = options.grpc;
    spec.listen.metrics = options.metrics;
    embedded.create_topics(&spec.topics)?;
    let gateway = Gateway::start(spec).await?;
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
    println!(
        "Try: weir send --url http://{} --type page_view --json '{{\"page\":\"/home\"}}'",
        gateway.http_addr
    );
    crate::telemetry::shutdown_signal().await;
    gateway.shutdown().await;
    drop(embedded);
    Ok(())
}
