//! `weir-operator`: run the controllers, render manifests offline, or print the CRDs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weir_operator::build::Defaults;
use weir_operator::controller::Context;
use weir_operator::metrics::Metrics;
use weir_operator::render::{Manifests, to_yaml_stream};
use weir_operator::run::{RunSettings, run};
use weir_operator::topics::{KafkaTopicAdmin, TopicSettings};
use weir_runtime::telemetry::LogArgs;

#[derive(Parser)]
#[command(name = "weir-operator", version, about = "Weir's Kubernetes operator")]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile IngestPipeline and SinkBinding resources (in a cluster).
    Run {
        /// Address of `/metrics`, `/healthz` and `/readyz`.
        #[arg(long, env = "WEIR_OPERATOR_METRICS", default_value = "0.0.0.0:8080")]
        metrics: SocketAddr,
        /// Image of the gateway and sink pods when a resource names none.
        #[arg(long, env = "WEIR_IMAGE")]
        image: Option<String>,
        /// Namespace of the leader Lease (the operator's own).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// Name of the leader Lease.
        #[arg(long, default_value = "weir-operator-leader")]
        lease_name: String,
        /// This replica's identity in the Lease and in the Events it records. Unset: the
        /// host name and process id, so two replicas never share one.
        #[arg(long, env = "POD_NAME")]
        holder: Option<String>,
        /// How long the Lease stays valid without renewal.
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        lease_ttl: Duration,
        /// Reconcile only the resources of these namespaces (comma-separated), with
        /// namespaced watches only. Unset: every namespace.
        #[arg(long, env = "WEIR_WATCH_NAMESPACES", value_delimiter = ',')]
        watch_namespaces: Vec<String>,
    },
    /// Print the objects the operator would apply for these manifests; no cluster needed.
    Render {
        /// Files with IngestPipeline and SinkBinding documents (other kinds are skipped).
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// Namespace of resources that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Image of the gateway and sink pods when a resource names none.
        #[arg(long)]
        image: Option<String>,
    },
    /// Print the CustomResourceDefinitions.
    Crds,
}

fn defaults(image: Option<String>) -> Defaults {
    let mut defaults = Defaults::default();
    if let Some(image) = image {
        defaults.image = image;
    }
    defaults
}

/// `<host name>-<process id>`: unique per replica outside a pod too.
fn replica_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "weir-operator".into());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Builds that link rustls (test builds do, through dev dependencies) must name a
    // crypto provider before the first TLS connection.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            let manifests = weir_crds::crd_manifests();
            let texts: Vec<_> = manifests.into_iter().map(|(_, text)| text).collect();
            print!("{}", texts.join("---\n"));
        }
        Command::Render {
            files,
            namespace,
            image,
        } => {
            let children = Manifests::read(&files, &namespace)?.children(&defaults(image))?;
            print!("{}", to_yaml_stream(&children));
        }
        Command::Run {
            metrics,
            image,
            lease_namespace,
            lease_name,
            holder,
            lease_ttl,
            watch_namespaces,
        } => {
            let _telemetry = weir_runtime::telemetry::init(cli.log.log_format, "weir-operator");
            let holder = holder.unwrap_or_else(replica_identity);
            let client = kube::Client::try_default().await?;
            let ctx = Arc::new(Context::new(
                client.clone(),
                defaults(image),
                Arc::new(KafkaTopicAdmin),
                TopicSettings::default(),
                Metrics::new(),
                &holder,
            ));
            let settings = RunSettings {
                metrics,
                lease_namespace,
                lease_name,
                holder,
                lease_ttl,
                // Sorted and without repeats: two controllers on one namespace would
                // race each other's applies.
                watch_namespaces: watch_namespaces
                    .into_iter()
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            };
            run(client, ctx, settings).await?;
        }
    }
    Ok(())
}
