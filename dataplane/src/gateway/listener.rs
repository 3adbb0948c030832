//! Accepting client connections on the HTTP and gRPC ports.
//!
//! Invariants:
//! - At most `limits.maxConnections` connections per port are open; one past it is
//!   closed as soon as it is accepted (and counted), so a flood never exhausts file
//!   descriptors that live clients need.
//! - Every socket has an idle timeout (`limits.idleConnectionTimeout`: nothing read for
//!   that long ends the connection) and a write timeout (`limits.writeTimeout`: a write
//!   that makes no progress for that long ends it), so a client that stops reading or
//!   sending cannot hold memory or a descriptor forever. HTTP/1 request headers must
//!   arrive within `limits.headerReadTimeout`, counted from when the connection is ready
//!   for a request, which also closes idle keep-alive connections.
//! - Accept errors (out of descriptors, for one) are logged and retried after a pause
//!   that doubles up to a second, instead of spinning or stopping the port.
//! - The HTTP port takes one new connection per turn of the scheduler, so the
//!   handshakes of a connection storm interleave with the work of connections already
//!   sending rather than queue ahead of it.
//! - With TLS, each connection's handshake runs in a task of its own and must end within
//!   `limits.headerReadTimeout`; a failed handshake closes only its connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use weir_crds::pipeline::LimitsSpec;

use super::metrics::Metrics;

/// First and longest pause after an accept error.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// What every accepted connection of a port is held to.
#[derive(Clone)]
pub struct ConnectionLimits {
    slots: Arc<Semaphore>,
    idle_timeout: Duration,
    write_timeout: Duration,
    header_read_timeout: Duration,
    metrics: Arc<Metrics>,
    port: &'static str,
}

impl ConnectionLimits {
    /// The limits of `port` (`http` or `grpc`, the metric label).
    pub fn new(limits: &LimitsSpec, metrics: Arc<Metrics>, port: &'static str) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            idle_timeout: limits.idle_connection_timeout,
            write_timeout: limits.write_timeout,
            header_read_timeout: limits.header_read_timeout,
            metrics,
            port,
        }
    }

    /// The next connection within the limit; waits out accept errors.
    async fn accept(&self, listener: &TcpListener) -> GuardedStream {
        let mut backoff = ACCEPT_BACKOFF.0;
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(port = self.port, %error, retry_in = ?backoff, "cannot accept a connection");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    continue;
                }
            };
            backoff = ACCEPT_BACKOFF.0;
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                self.metrics
                    .connections_dropped
                    .with_label_values(&[self.port, "connection_limit"])
                    .inc();
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let mut io = TimeoutStream::new(stream);
            io.set_read_timeout(Some(self.idle_timeout));
            io.set_write_timeout(Some(self.write_timeout));
            return GuardedStream {
                io: Box::pin(io),
                remote,
                _slot: permit,
            };
        }
    }

    /// The TLS handshake of an accepted connection, within `limits.headerReadTimeout`.
    async fn secure(&self, stream: GuardedStream, tls: &TlsAcceptor) -> io::Result<GuardedStream> {
        let GuardedStream { io, remote, _slot } = stream;
        let handshake = tokio::time::timeout(self.header_read_timeout, tls.accept(io))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(GuardedStream {
            io: Box::pin(handshake),
            remote,
            _slot,
        })
    }
}

/// What a connection reads and writes: the socket, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// An accepted socket with its timeouts, holding its connection slot until dropped.
pub struct GuardedStream {
    io: Pin<Box<dyn Io>>,
    remote: SocketAddr,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for GuardedStream {
    type ConnectInfo = SocketAddr;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.remote
    }
}

/// The gRPC port's connections, for `serve_with_incoming_shutdown`. With TLS, accepted
/// sockets are handshaken concurrently and come out as their handshakes end; failed
/// handshakes are dropped (and logged at debug level).
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
) -> impl Stream<Item = io::Result<GuardedStream>> {
    let handshakes = FuturesUnordered::new();
    futures_util::stream::unfold(
        (listener, limits, tls, handshakes),
        |(listener, limits, tls, mut handshakes)| async move {
            let Some(acceptor) = &tls else {
                let stream = limits.accept(&listener).await;
                return Some((Ok(stream), (listener, limits, tls, handshakes)));
            };
            loop {
                tokio::select! {
                    stream = limits.accept(&listener) => {
                        let (limits, acceptor) = (limits.clone(), acceptor.clone());
                        handshakes.push(tokio::spawn(async move {
                            limits.secure(stream, &acceptor).await
                        }));
                    }
                    Some(done) = handshakes.next(), if !handshakes.is_empty() => match done {
                        Ok(Ok(stream)) => return Some((Ok(stream), (listener, limits, tls, handshakes))),
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(error) => tracing::warn!(%error, "TLS handshake task failed"),
                    },
                }
            }
        },
    )
}

/// Serves an axum app (WebSocket upgrades included) on `listener` under `limits` until
/// `stop`, then lets requests in progress finish.
pub fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => break,
                stream = limits.accept(&listener) => stream,
            };
            let service = TowerToHyperService::new(app.clone());
            // Counted by the graceful shutdown from here, before its task runs.
            let watcher = graceful.watcher();
            let (limits, tls, builder) = (limits.clone(), tls.clone(), builder.clone());
            tokio::spawn(async move {
                let stream = match &tls {
                    None => stream,
                    Some(acceptor) => match limits.secure(stream, acceptor).await {
                        Ok(stream) => stream,
                        Err(error) => {
                            tracing::debug!(%error, "TLS handshake failed");
                            return;
                        }
                    },
                };
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                // Errors here are clients going away or timing out.
                if let Err(error) = watcher.watch(connection).await {
                    tracing::debug!(%error, "HTTP connection ended");
                }
            });
            // One new connection per turn of the scheduler: in a storm of thousands the
            // handshakes are spread between the work of connections already sending,
            // instead of a burst of them queued ahead of it.
            tokio::task::yield_now().await;
        }
        drop(listener);
        graceful.shutdown().await;
    })
}
