//! The ingestion gateway: receive → decode → route → publish → ack.
//!
//! `receive` is three transports ([`http`], [`ws`], [`grpc`]) that decode with
//! [`decode`]/[`json`] and hand batches to one [`ingest::Ingestor`], which routes
//! ([`route`]), publishes ([`publish`]) and builds the answer ([`ack`]).
//!
//! Shutdown (SIGTERM), in order: readiness turns false; listeners stop accepting;
//! WebSocket sessions stop reading, answer what they accepted and send close 1001;
//! HTTP and gRPC calls in progress finish; the producer is flushed; the process exits.
//! Every phase shares one `shutdown.drainTimeout` budget.

pub mod ack;
pub mod auth;
pub mod decode;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod json;
pub mod kafka_log;
pub mod listener;
pub mod metrics;
pub mod ops;
pub mod publish;
pub mod quota;
pub mod reload;
pub mod route;
pub mod tls;
pub mod ws;
pub mod ws_wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use listener::ConnectionLimits;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_crds::settings::{GatewaySettings, RoutingSource};

use auth::Authenticator;
use identity::ConnectionRegistry;
use ingest::Ingestor;
use kafka_log::KafkaLog;
use metrics::Metrics;
use ops::Health;
use publish::EventLog;
use quota::Quotas;
use route::Router;

/// State every transport shares.
pub struct Shared {
    /// The settings, checked once.
    pub settings: GatewaySettings,
    /// The batch processor.
    pub ingestor: Ingestor,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Credentials check.
    pub auth: Arc<Authenticator>,
    /// Tenants' and keys' quotas.
    pub quotas: Arc<Quotas>,
    /// Open WebSocket connections.
    pub connections: Arc<ConnectionRegistry>,
    /// Cancelled when shutdown starts.
    pub shutdown: CancellationToken,
    /// WebSocket sessions, awaited at shutdown.
    pub sessions: TaskTracker,
    /// Readiness.
    pub health: Arc<Health>,
    /// WebSocket answer bytes waiting to be written, across connections.
    pub answer_budget: Arc<Semaphore>,
}

impl Shared {
    /// The state of a starting gateway.
    fn new(
        settings: GatewaySettings,
        ingestor: Ingestor,
        metrics: Arc<Metrics>,
        auth: Arc<Authenticator>,
        quotas: Arc<Quotas>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            auth,
            quotas,
            connections: Arc::new(ConnectionRegistry::new(
                settings.websocket.max_connections,
                settings.identity.duplicates,
            )),
            ingestor,
            metrics,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            health: Arc::new(Health::default()),
            answer_budget: Arc::new(Semaphore::new(
                settings.websocket.max_queued_answer_bytes_total,
            )),
            settings,
        })
    }
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    publisher: Arc<dyn EventLog>,
    /// The bound HTTP/WebSocket address.
    pub http_addr: SocketAddr,
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound metrics address.
    pub metrics_addr: SocketAddr,
    servers: Vec<JoinHandle<()>>,
    background: CancellationToken,
    ops_server: JoinHandle<()>,
}

/// Connections the kernel completes and queues before the gateway accepts them (Linux
/// caps it at `net.core.somaxconn`). The default of 128 drops the SYNs of a fleet that
/// reconnects at once, and each dropped client waits a second or more to retry.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let listen = || {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // As std's bind does: a restarted gateway rebinds while old sockets linger.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Serves gRPC until shutdown starts. A call may take the read time plus the whole
/// wait for Kafka, and no longer.
fn serve_grpc(
    shared: Arc<Shared>,
    listener: TcpListener,
    connections: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> JoinHandle<()> {
    let stop = shared.shutdown.clone();
    let (raccoon, weir) = grpc::services(shared.clone());
    let call_timeout = shared.settings.longest_call();
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .timeout(call_timeout)
            .layer(grpc::decode_batches(shared))
            .add_service(raccoon)
            .add_service(weir)
            .serve_with_incoming_shutdown(
                listener::incoming(listener, connections, tls),
                async move { stop.cancelled().await },
            )
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "gRPC server failed");
        }
    })
}

impl Gateway {
    /// Starts the gateway. Returns once every port is listening.
    pub async fn start(settings: GatewaySettings) -> anyhow::Result<Self> {
        let spec = &settings;
        let metrics = Arc::new(Metrics::new());
        let table = match &spec.routing {
            RoutingSource::File { path, .. } => Arc::new(route::load_routing_file(path)?),
            RoutingSource::Inline(table) => table.clone(),
        };
        let router = Arc::new(Router::new(table));
        let publisher = Arc::new(
            KafkaLog::new(
                &weir_runtime::kafka::producer_config(&spec.kafka),
                metrics.clone(),
            )
            .context("cannot create the Kafka producer (check kafka.properties)")?,
        );
        let auth = Arc::new(Authenticator::load(&spec.auth).await?);
        let tls = match &spec.tls {
            Some(files) => Some(Arc::new(tls::Tls::load(files)?)),
            None => None,
        };
        let quotas = Arc::new(Quotas::new(&spec.tenants, metrics.clone()));
        let ingestor = Ingestor::new(
            router.clone(),
            publisher.clone(),
            metrics.clone(),
            quotas.clone(),
            spec,
        );
        // Each port may hold `limits.maxConnections` sockets.
        let connections = 2 * spec.limits.max_connections as u64;
        weir_runtime::open_files::ensure(
            connections + weir_runtime::open_files::RESERVED_FILES,
            "limits.maxConnections (per port, HTTP and gRPC)",
        );
        let http_listener = bind(spec.listen.http, "listen.http")?;
        let grpc_listener = bind(spec.listen.grpc, "listen.grpc")?;
        let metrics_listener = bind(spec.listen.metrics, "listen.metrics")?;
        let shared = Arc::new(Shared::new(
            settings,
            ingestor,
            metrics.clone(),
            auth.clone(),
            quotas,
        )?);
        let http_addr = http_listener.local_addr()?;
        let grpc_addr = grpc_listener.local_addr()?;
        let metrics_addr = metrics_listener.local_addr()?;
        let background = CancellationToken::new();

        let http_server = listener::serve(
            http_listener,
            http::routes(shared.clone()),
            ConnectionLimits::new(&shared.settings.limits, metrics.clone(), "http"),
            tls.as_ref().map(|t| t.http.clone()),
            shared.shutdown.clone(),
        );
        let grpc_connections =
            ConnectionLimits::new(&shared.settings.limits, metrics.clone(), "grpc");

        let grpc_server = serve_grpc(
            shared.clone(),
            grpc_listener,
            grpc_connections,
            tls.as_ref().map(|t| t.grpc.clone()),
        );
        if let (Some(tls), Some(files)) = (&tls, &shared.settings.tls) {
            tls.watch(files, metrics.clone(), &background);
        }

        // The metrics port outlives the drain, so readiness can say "draining".
        let ops_server = weir_runtime::telemetry::serve_http(
            metrics_listener,
            ops::routes(shared.clone()),
            background.clone(),
            "metrics",
        );

        tokio::spawn(ops::watch_kafka(
            publisher.clone(),
            shared.health.clone(),
            background.clone(),
        ));
        auth.watch(metrics.clone(), &background);
        if let RoutingSource::File {
            path,
            reload_interval,
        } = &shared.settings.routing
        {
            tokio::spawn(route::watch_routing_file(
                router,
                path.clone(),
                *reload_interval,
                metrics,
                background.clone(),
            ));
        }
        tracing::info!(%http_addr, %grpc_addr, %metrics_addr, "gateway listening");
        Ok(Self {
            shared,
            publisher,
            http_addr,
            grpc_addr,
            metrics_addr,
            servers: vec![http_server, grpc_server],
            background,
            ops_server,
        })
    }

    /// Readiness as `/readyz` reports it.
    pub fn readiness(&self) -> Result<(), String> {
        self.shared.health.readiness()
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Drains and stops: see the module docs for the order.
    pub async fn shutdown(self) {
        let started = Instant::now();
        let budget = self.shared.settings.shutdown.drain_timeout;
        tracing::info!("draining");
        self.shared.health.start_draining();
        self.shared.shutdown.cancel();
        self.shared.sessions.close();
        let servers = futures_util::future::join_all(self.servers);
        let drained = async {
            servers.await;
            self.shared.sessions.wait().await;
        };
        if tokio::time::timeout(budget, drained).await.is_err() {
            tracing::warn!(?budget, "drain timeout reached with work still in flight");
        }
        self.shared.ingestor.close();
        let remaining = budget.saturating_sub(started.elapsed());
        let publisher = self.publisher.clone();
        let flushed = tokio::task::spawn_blocking(move || publisher.flush(remaining)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("producer flushed"),
            Ok(Err(error)) => tracing::error!(%error, "producer flush incomplete"),
            Err(error) => tracing::error!(%error, "producer flush panicked"),
        }
        self.background.cancel();
        let _ = self.ops_server.await;
        tracing::info!(elapsed = ?started.elapsed(), "gateway stopped");
    }
}
