//! A WebSocket session: batches in as messages (binary = protobuf, text = JSON), answers
//! out in the same message type, carrying `req_guid`.
//!
//! One task per connection does everything: it reads frames ([`ws_wire::FrameReader`]),
//! runs the connection's batches as futures of its own (decode → route → publish →
//! wait for Kafka), and writes their answers. Nothing is spawned per batch and there is
//! no writer task or answer channel, so an idle connection is its socket, this task
//! and a few counters (about 4 KiB at 10,000 connections), and an answer goes out from
//! the task that Kafka's delivery report wakes, with no hand-over between tasks.
//!
//! Invariants:
//! - Pipelining is bounded: at most `limits.maxInflightBatchesPerConnection` batches,
//!   and `limits.maxInflightBytesPerConnection` bytes of them, of one connection are
//!   being processed; past that the session stops reading, so TCP pushes back on the
//!   client, while answers keep flowing.
//! - Liveness: the server pings every `websocket.pingInterval`; any frame from the
//!   client counts as alive, and one silent for `websocket.idleTimeout` is closed.
//! - Answers waiting to be written are bounded in bytes, per connection
//!   (`websocket.maxQueuedAnswerBytes`) and across connections
//!   (`websocket.maxQueuedAnswerBytesTotal`); while an answer finds no room the session
//!   takes no more answers (and so, soon, no more batches). A client whose answer finds
//!   none within `limits.writeTimeout`, or whose socket takes no bytes for that long, is
//!   disconnected as not reading. Pongs are not queued behind a full outbox.
//! - Closing (shutdown, replacement by a newer connection, idle, the client's close, a
//!   protocol error): the session stops reading, answers every batch it accepted
//!   (within `shutdown.drainTimeout`, unless the client stopped reading), then sends a
//!   close frame. A client that closes gets its answers before the close that replies.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::FuturesUnordered;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use weir_proto::SendEventResponse;

use super::Shared;
use super::ack::Rejection;
use super::decode::{self, ContentKind, Encoding};
use super::identity::{ConnectionGuard, Identity};
use super::ingest::Transport;
use super::json::Dialect;
use super::ws_wire::{self, FrameReader, Incoming, close_code};

/// The upgraded connection.
pub type Connection = TokioIo<hyper::upgrade::Upgraded>;

/// How long a refused socket may take to receive its refusal.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Refuses an upgraded socket: the answer with the code, then close 1008, as Raccoon does.
pub async fn refuse(mut io: Connection, rejection: &Rejection) {
    let body = decode::encode_response(&rejection.response(""), Encoding::Protobuf);
    let refusal = async {
        io.write_all(&ws_wire::binary(&body)).await?;
        io.write_all(&ws_wire::close(close_code::POLICY, &rejection.to_string()))
            .await?;
        io.shutdown().await
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refusal).await;
}

/// Why a session stops reading, and the close frame it ends with.
enum Ending {
    /// Answer what was accepted, then close with this code and reason.
    Close(u16, String),
    /// Answer what was accepted, then end without a close frame (the client went).
    Quietly,
    /// The client does not read its answers: end now.
    NotReading,
    /// The connection failed: end now.
    Gone,
}

/// Serves one admitted connection until it closes.
pub async fn serve(
    io: Connection,
    shared: Arc<Shared>,
    identity: Identity,
    guard: ConnectionGuard,
    event_results: bool,
) {
    let gauge = {
        let group_label = shared.metrics.groups.get(&identity.group);
        shared.metrics.connections.with_label_values(&[group_label])
    };
    gauge.inc();
    let ending = Session::new(&shared).run(io, &shared, &identity, &guard, event_results);
    // Boxed: at 10,000 connections the session's state is memory per connection, and
    // the box holds exactly it rather than the largest of this function's states.
    Box::pin(ending).await;
    gauge.dec();
    drop(guard);
}

/// What one connection holds between frames.
struct Session {
    reader: FrameReader,
    outbox: Outbox,
    /// Bytes of the batches being processed.
    inflight_bytes: usize,
    max_inflight: usize,
    max_inflight_bytes: usize,
}

/// A batch's answer, ready to write.
struct Answered {
    frame: Bytes,
    /// The batch's size, given back to the in-flight budget.
    wire_bytes: usize,
}

impl Session {
    fn new(shared: &Shared) -> Self {
        let limits = &shared.settings.limits;
        Self {
            reader: FrameReader::new(limits.max_batch_bytes),
            outbox: Outbox::new(shared),
            inflight_bytes: 0,
            max_inflight: limits.max_inflight_batches_per_connection,
            max_inflight_bytes: limits.max_inflight_bytes_per_connection,
        }
    }

    async fn run(
        mut self,
        io: Connection,
        shared: &Shared,
        identity: &Identity,
        guard: &ConnectionGuard,
        event_results: bool,
    ) {
        let settings = &shared.settings;
        let (mut read_half, mut write_half) = tokio::io::split(io);
        // Boxed: the set keeps a placeholder of its future type even when empty, and
        // most connections are idle between batches.
        let mut batches: FuturesUnordered<BoxFuture<'_, Answered>> = FuturesUnordered::new();
        // An answer that found no room yet, and since when.
        let mut waiting: Option<(Answered, Instant)> = None;
        let mut ending: Option<(Ending, tokio::time::Instant)> = None;
        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + settings.websocket.ping_interval,
            settings.websocket.ping_interval,
        );
        let drain = settings.shutdown.drain_timeout;
        let write_timeout = settings.limits.write_timeout;
        let stop = |why: Ending| Some((why, tokio::time::Instant::now() + drain));
        loop {
            if let Some((Ending::NotReading | Ending::Gone, _)) = ending {
                break;
            }
            if ending.is_some() && batches.is_empty() && waiting.is_none() {
                break;
            }
            let reading = ending.is_none()
                && batches.len() < self.max_inflight
                && self.inflight_bytes < self.max_inflight_bytes;
            let room = waiting
                .as_ref()
                .is_some_and(|(answer, _)| self.outbox.has_room(answer.frame.len()));
            let waiting_share = waiting
                .as_ref()
                .map_or(0, |(answer, _)| self.outbox.total_share(answer.frame.len()));
            let waiting_until = waiting
                .as_ref()
                .map(|(_, since)| tokio::time::Instant::from_std(*since + write_timeout));
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled(), if ending.is_none() => {
                    ending = stop(Ending::Close(close_code::AWAY, "server shutting down".into()));
                }
                _ = guard.kicked.cancelled(), if ending.is_none() => {
                    ending = stop(Ending::Close(
                        close_code::POLICY,
                        "replaced by a newer connection with the same identity".into(),
                    ));
                }
                written = poll_fn(|cx| self.outbox.poll_write(cx, Pin::new(&mut write_half))), if !self.outbox.is_empty() => {
                    if let Err(error) = written {
                        ending = Some((
                            if error.kind() == io::ErrorKind::TimedOut { Ending::NotReading } else { Ending::Gone },
                            tokio::time::Instant::now(),
                        ));
                    }
                }
                permit = shared.answer_budget.clone().acquire_many_owned(waiting_share), if room => {
                    let (answer, _) = waiting.take().expect("an answer waits");
                    self.inflight_bytes -= answer.wire_bytes;
                    self.outbox.push_answer(answer.frame, permit.ok());
                }
                _ = tokio::time::sleep_until(waiting_until.unwrap_or_else(tokio::time::Instant::now)), if waiting_until.is_some() => {
                    ending = Some((Ending::NotReading, tokio::time::Instant::now()));
                }
                Some(answer) = batches.next(), if waiting.is_none() && !batches.is_empty() => {
                    let size = answer.frame.len();
                    match self.outbox.try_reserve(size) {
                        Some(permit) => {
                            self.inflight_bytes -= answer.wire_bytes;
                            self.outbox.push_answer(answer.frame, permit);
                        }
                        None => waiting = Some((answer, Instant::now())),
                    }
                }
                _ = ping.tick(), if ending.is_none() => {
                    if last_heard.elapsed() >= settings.websocket.idle_timeout {
                        ending = stop(Ending::Close(close_code::AWAY, "idle timeout".into()));
                    } else if self.outbox.is_empty() {
                        // A busy outbox will do as a liveness probe.
                        self.outbox.push_control(ws_wire::ping());
                    }
                }
                incoming = poll_fn(|cx| self.reader.poll_message(cx, Pin::new(&mut read_half))), if reading => {
                    let received = Instant::now();
                    last_heard = received;
                    let (kind, payload) = match incoming {
                        Ok(Incoming::Binary(payload)) => (ContentKind::Protobuf, payload),
                        Ok(Incoming::Text(payload)) => (ContentKind::Json, payload),
                        Ok(Incoming::Ping(payload)) => {
                            if self.outbox.len() <= self.max_inflight {
                                self.outbox.push_control(ws_wire::pong(&payload));
                            }
                            continue;
                        }
                        Ok(Incoming::Pong) => continue,
                        Ok(Incoming::Close(_)) => {
                            ending = stop(Ending::Close(1000, String::new()));
                            continue;
                        }
                        Ok(Incoming::End) => {
                            ending = stop(Ending::Quietly);
                            continue;
                        }
                        Err(error) => {
                            ending = stop(match error.close_code() {
                                Some(code) => Ending::Close(code, error.to_string()),
                                None => Ending::Gone,
                            });
                            continue;
                        }
                    };
                    self.inflight_bytes += payload.len().min(self.max_inflight_bytes);
                    batches.push(answer(shared, identity, kind, payload, received, event_results).boxed());
                }
                _ = tokio::time::sleep_until(ending.as_ref().map_or_else(tokio::time::Instant::now, |(_, by)| *by)), if ending.is_some() => {
                    // Out of drain time: what is still in flight goes unanswered.
                    break;
                }
            }
        }
        match ending {
            Some((Ending::NotReading, _)) => {
                shared
                    .metrics
                    .connections_dropped
                    .with_label_values(&["http", "not_reading"])
                    .inc();
            }
            Some((Ending::Gone, _)) => {}
            Some((Ending::Close(code, reason), _)) => {
                self.outbox.push_control(ws_wire::close(code, &reason));
                self.finish(&mut write_half, write_timeout).await;
            }
            Some((Ending::Quietly, _)) | None => {
                self.finish(&mut write_half, write_timeout).await;
            }
        }
    }

    /// Writes what is queued and closes the write side, within the write timeout.
    async fn finish<W: AsyncWrite + Unpin>(&mut self, to: &mut W, write_timeout: Duration) {
        let outbox = &mut self.outbox;
        let _ = tokio::time::timeout(write_timeout, async {
            poll_fn(|cx| outbox.poll_write(cx, Pin::new(&mut *to))).await?;
            to.shutdown().await
        })
        .await;
    }
}

/// Processes one batch and builds its answer frame.
async fn answer(
    shared: &Shared,
    identity: &Identity,
    kind: ContentKind,
    payload: Bytes,
    received: Instant,
    event_results: bool,
) -> Answered {
    let wire_bytes = payload.len();
    let (response, encoding) = process(shared, identity, kind, payload, received).await;
    let encoding = encoding.with_event_results(event_results);
    let body = decode::encode_response(&response, encoding);
    let frame = match encoding {
        Encoding::Protobuf => ws_wire::binary(&body),
        Encoding::Json(_) => ws_wire::text(&body),
    };
    Answered {
        frame,
        wire_bytes: wire_bytes.min(shared.settings.limits.max_inflight_bytes_per_connection),
    }
}

async fn process(
    shared: &Shared,
    identity: &Identity,
    kind: ContentKind,
    payload: Bytes,
    received: Instant,
) -> (SendEventResponse, Encoding) {
    let wire_bytes = payload.len();
    match decode::decode_request_async(kind, payload, shared.settings.limits.max_events_per_batch)
        .await
    {
        Ok((request, encoding)) => {
            let response = shared
                .ingestor
                .ingest(
                    identity,
                    request,
                    wire_bytes,
                    Transport::WebSocket,
                    received,
                )
                .await;
            (response, encoding)
        }
        Err(rejection) => {
            shared
                .ingestor
                .answered(Transport::WebSocket, rejection.code(), received);
            let encoding = match kind {
                ContentKind::Protobuf => Encoding::Protobuf,
                ContentKind::Json => Encoding::Json(Dialect::Raccoon),
            };
            (rejection.response(""), encoding)
        }
    }
}

/// Frames waiting to be written, in order, and how far the first one is written. An
/// answer holds its share of the connection's and the gateway-wide answer budgets until
/// it is written; control frames (pings, pongs, the close) hold none.
struct Outbox {
    /// Each frame with its share of the connection's budget and its permit of the
    /// gateway-wide one.
    frames: VecDeque<(Bytes, usize, Option<OwnedSemaphorePermit>)>,
    /// Bytes of the first frame already written.
    written: usize,
    /// Answer bytes queued, against `connection_size`.
    queued: usize,
    connection_size: usize,
    total: Arc<tokio::sync::Semaphore>,
    total_size: usize,
}

impl Outbox {
    fn new(shared: &Shared) -> Self {
        let settings = &shared.settings.websocket;
        Self {
            frames: VecDeque::new(),
            written: 0,
            queued: 0,
            connection_size: settings.max_queued_answer_bytes,
            total: shared.answer_budget.clone(),
            total_size: settings.max_queued_answer_bytes_total,
        }
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn len(&self) -> usize {
        self.frames.len()
    }

    /// An answer's share of the connection's budget (one larger than the whole budget
    /// takes all of it).
    fn connection_share(&self, bytes: usize) -> usize {
        bytes.min(self.connection_size)
    }

    /// An answer's share of the gateway-wide budget.
    fn total_share(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.min(self.total_size)).unwrap_or(u32::MAX)
    }

    /// Whether the connection's budget has room for an answer of `bytes`.
    fn has_room(&self, bytes: usize) -> bool {
        self.queued + self.connection_share(bytes) <= self.connection_size
    }

    /// Room for an answer of `bytes` now, if both budgets have it.
    fn try_reserve(&self, bytes: usize) -> Option<Option<OwnedSemaphorePermit>> {
        if !self.has_room(bytes) {
            return None;
        }
        self.total
            .clone()
            .try_acquire_many_owned(self.total_share(bytes))
            .ok()
            .map(Some)
    }

    fn push_answer(&mut self, frame: Bytes, permit: Option<OwnedSemaphorePermit>) {
        let share = self.connection_share(frame.len());
        self.queued += share;
        self.frames.push_back((frame, share, permit));
    }

    fn push_control(&mut self, frame: Bytes) {
        self.frames.push_back((frame, 0, None));
    }

    /// Writes queued frames until none is left; cancel-safe (progress is kept here).
    fn poll_write<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut to: Pin<&mut W>,
    ) -> Poll<io::Result<()>> {
        while let Some((frame, share, _)) = self.frames.front() {
            let n = std::task::ready!(to.as_mut().poll_write(cx, &frame[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            if self.written == frame.len() {
                self.queued -= share;
                self.frames.pop_front();
                self.written = 0;
            }
        }
        to.poll_flush(cx)
    }
}
