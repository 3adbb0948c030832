//! The `weir` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir::telemetry::{self, LogFormat};

// glibc malloc spent ~40% of the gateway's CPU under load (arena contention between
// tokio workers and librdkafka threads). `override` makes librdkafka use it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Weir: event ingestion into Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "WEIR_LOG_FORMAT"
    )]
    log_format: LogFormat,
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
    /// Run the gateway on an embedded Kafka: nothing to install.
    Dev(weir::dev::DevOptions),
    /// Send events to a gateway.
    Send(weir::client::send::SendOptions),
    /// Load-test a gateway over WebSocket.
    Loadgen(weir::client::loadgen::LoadgenOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
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
            let spec = weir::config::load_pipeline(config.as_deref(), std::env::vars())?;
            if print_config {
                print!("{}", serde_yaml::to_string(&spec)?);
                return Ok(ExitCode::SUCCESS);
            }
            if ensure_topics {
                weir::kafka::ensure_topics(&spec.kafka, &spec.topics).await?;
            }
            let gateway = weir::gateway::Gateway::start(spec).await?;
            telemetry::shutdown_signal().await;
            gateway.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev(options) => weir::dev::run(options).await.map(|()| ExitCode::SUCCESS),
        Command::Send(options) => weir::client::send::run(options).await,
        Command::Loadgen(options) => weir::client::loadgen::run(options)
            .await
            .map(|()| ExitCode::SUCCESS),
    }
}
