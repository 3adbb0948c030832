//! The `weir` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir_crds::config;
use weir_crds::settings::{GatewaySettings, SinkSettings};
use weir_runtime::telemetry::{self, LogArgs};

// glibc malloc spent ~40% of the gateway's CPU under load (arena contention between
// tokio workers and librdkafka threads). `override` makes librdkafka use it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option: its place in `mi_option_e` (the same in mimalloc 2
/// and 3, which libmimalloc-sys builds), which libmimalloc-sys does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes the gateway give freed memory back to the OS at once, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. A fleet that reconnects at once frees thousands
/// of handshakes' buffers, which mimalloc 3's default delay (1 s, ten times that for
/// its arenas) kept resident: 10,000 connections, half of them reconnecting at once,
/// peaked at 164 MB with it and stayed at 85-91 MB without, for no CPU cost we could
/// measure.
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option, which mimalloc reads atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

/// Weir: event ingestion into Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ingestion gateway against a Kafka cluster.
    Gateway {
        /// Pipeline YAML: a bare spec or an IngestPipeline manifest.
        #[arg(short = 'f', long = "config", env = "WEIR_CONFIG")]
        config: Option<PathBuf>,
        /// Create or grow the spec's `topics` before serving.
        #[arg(long)]
        ensure_topics: bool,
        /// Print the effective configuration (defaults filled in) and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Write Kafka topics to Parquet or JSON-lines files in an object store.
    Sink {
        /// Sink YAML: a bare spec or a SinkBinding manifest.
        #[arg(short = 'f', long = "config", env = "WEIR_CONFIG")]
        config: Option<PathBuf>,
        /// Drain the topics up to their current end and exit (overrides `mode`).
        #[arg(long)]
        batch: bool,
        /// Print the effective configuration (defaults filled in) and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Read a sink's files back and check that every record is in exactly one file.
    SinkAudit {
        /// Sink YAML: a bare spec or a SinkBinding manifest (only `storage` is used).
        #[arg(short = 'f', long = "config", env = "WEIR_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the gateway and the sink on an embedded Kafka: nothing to install.
    Dev(weir::dev::DevOptions),
    /// Send events to a gateway.
    Send(weir::client::send::SendOptions),
    /// Load-test a gateway over WebSocket.
    Loadgen(weir::client::loadgen::LoadgenOptions),
}

impl Command {
    /// The service name of this command's trace spans.
    fn service_name(&self) -> &'static str {
        match self {
            Command::Gateway { .. } => "weir-gateway",
            Command::Sink { .. } => "weir-sink",
            Command::Dev(_) => "weir-dev",
            Command::SinkAudit { .. } => "weir-sink-audit",
            Command::Send(_) | Command::Loadgen(_) => "weir-client",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = {
        // The trace exporter's channel lives on the runtime.
        let _entered = runtime.enter();
        telemetry::init(cli.log.log_format, cli.command.service_name())
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Gateway {
            config,
            ensure_topics,
            print_config,
        } => {
            let spec = config::read_pipeline(config.as_deref(), std::env::vars())?;
            let settings = GatewaySettings::try_from(spec.clone())?;
            if print_config {
                print!("{}", serde_yaml::to_string(&spec)?);
                return Ok(ExitCode::SUCCESS);
            }
            if ensure_topics {
                weir_runtime::kafka::ensure_topics(&settings.kafka, &settings.topics).await?;
            }
            purge_freed_memory_at_once();
            let gateway = weir::gateway::Gateway::start(settings).await?;
            telemetry::shutdown_signal().await;
            gateway.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sink {
            config,
            batch,
            print_config,
        } => {
            let mut spec = config::read_sink(config.as_deref(), std::env::vars())?;
            if batch {
                spec.mode = weir_crds::sink::SinkMode::Batch;
            }
            let settings = SinkSettings::try_from(spec.clone())?;
            if print_config {
                print!("{}", serde_yaml::to_string(&spec)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut sink = weir::sink::Sink::start(settings).await?;
            tracing::info!(metrics = %sink.metrics_addr, "sink running");
            let report = tokio::select! {
                _ = telemetry::shutdown_signal() => None,
                report = sink.wait() => Some(report),
            };
            let report = match report {
                Some(report) => report?,
                None => sink.shutdown().await?,
            };
            eprintln!(
                "sink stopped: {} records written, {} dead-lettered, {} ranges flushed",
                report.records_written, report.dead_letters, report.flushes
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::SinkAudit { config } => sink_audit(config.as_deref()).await,
        Command::Dev(options) => weir::dev::run(options).await.map(|()| ExitCode::SUCCESS),
        Command::Send(options) => weir::client::send::run(options).await,
        Command::Loadgen(options) => weir::client::loadgen::run(options)
            .await
            .map(|()| ExitCode::SUCCESS),
    }
}

/// `weir sink-audit`: reads every marker and file of the sink's storage and prints what
/// is wrong; fails unless every record is there exactly once.
async fn sink_audit(config: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let spec = config::read_sink(config, std::env::vars())?;
    let settings = SinkSettings::try_from(spec)?;
    let storage = weir::sink::upload::Storage::open(&settings.storage)?;
    let report = weir::sink::audit::audit(&storage).await?;
    for ((topic, partition), records) in &report.records {
        println!("{topic}/{partition}: {records} records");
    }
    for ((topic, partition, generation, offset), files) in &report.duplicates {
        println!("DUPLICATE {topic}/{partition}@{offset} (generation {generation}) in {files:?}");
    }
    for file in &report.orphans {
        println!("ORPHAN {file} (in no progress marker)");
    }
    for file in &report.missing {
        println!("MISSING {file} (listed by a progress marker; redone at the next start)");
    }
    for (file, why) in &report.unreadable {
        println!("UNREADABLE {file}: {why}");
    }
    for ((topic, partition, generation), from, to) in &report.gaps {
        println!(
            "gap {topic}/{partition} {from}..={to} (generation {generation}; skipped or compacted records)"
        );
    }
    println!(
        "{} files, {} records: {}",
        report.files,
        report.total(),
        if report.exactly_once() {
            "exactly once"
        } else {
            "PROBLEMS FOUND"
        }
    );
    Ok(if report.exactly_once() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // mimalloc 3's default purge delay is 1000 ms; another option at that place
        // would say another value.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads one integer option.
            assert_eq!(
                unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
                1000
            );
        }
    }
}
