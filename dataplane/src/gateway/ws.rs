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
//!   and `limits.maxInflightBytesPerConnection` bytes of them (a larger batch takes the
//!   whole budget and goes alone), of one connection are being processed or waiting to
//!   be queued for writing; past that the session stops reading, so TCP pushes back on
//!   the client, while answers keep flowing. One message read past the byte budget waits,
//!   unprocessed, until there is room.
//! - Batches always run to their end, even while their answers cannot be written, so a
//!   client that does not read holds nothing of the gateway's admission budget.
//! - Liveness: the server pings every `websocket.pingInterval`; any bytes from the
//!   client count as alive, and one silent for `websocket.idleTimeout` is closed (1001).
//!   Every ping from the client is answered, the latest one's pong ahead of queued
//!   answers.
//! - Answers waiting to be written are bounded in bytes, per connection
//!   (`websocket.maxQueuedAnswerBytes`) and across connections
//!   (`websocket.maxQueuedAnswerBytesTotal`). An answer that finds no room within
//!   `limits.writeTimeout` means the client does not read: it gets close 1008. A socket
//!   that takes no bytes for `limits.writeTimeout` ends the connection at once (the
//!   listener's socket wrapper fails the write). Both count as `not_reading`.
//! - Closing (shutdown, replacement by a newer connection, idle, the client's close, a
//!   protocol error): the session stops reading, answers every batch it accepted
//!   (within `shutdown.drainTimeout`, unless the client stopped reading), then sends a
//!   close frame, closes its side and reads what the client still sends for a moment,
//!   so that the kernel does not reset the connection before the client has read it
//!   all. A client that closes gets its answers before the close that replies.

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
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::PollSemaphore;
use weir_proto::SendEventResponse;

use super::Shared;
use super::ack::Rejection;
use super::decode::{self, ContentKind, Encoding};
use super::identity::{ConnectionGuard, Identity};
use super::ingest::Transport;
use super::json::Dialect;
use super::quota::ConnectionQuota;
use super::ws_wire::{self, FrameReader, Incoming};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The upgraded connection.
pub type Connection = TokioIo<hyper::upgrade::Upgraded>;

/// How long a refused socket may take to receive its refusal.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Refuses an upgraded socket: the answer with the code, then close 1008, as Raccoon does.
pub async fn refuse(mut io: Connection, rejection: &Rejection) {
    let body = decode::encode_response(&rejection.response(""), Encoding::Protobuf);
    let refusal = async {
        io.write_all(&ws_wire::binary(body)).await?;
        io.write_all(&ws_wire::close(CloseCode::Policy, &rejection.to_string()))
            .await?;
        io.shutdown().await
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refusal).await;
}

/// Why a session stops reading, and the close frame it ends with.
enum Ending {
    /// Answer what was accepted, then close with this code and reason.
    Close(CloseCode, String),
    /// Answer what was accepted, then end without a close frame (the client went).
    Quietly,
    /// An answer found no room in time: the client does not read. Close with 1008 now.
    NotReading,
    /// The socket took no bytes for `limits.writeTimeout`: the client does not read,
    /// and nothing more can be written. End now.
    Stuck,
    /// The connection failed: end now.
    Gone,
}

/// Serves one admitted connection until it closes.
pub async fn serve(
    io: Connection,
    shared: Arc<Shared>,
    identity: Identity,
    guards: (ConnectionGuard, ConnectionQuota),
    event_results: bool,
) {
    let (guard, quota) = guards;
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
    drop(quota);
}

/// The close code for credentials that stopped holding (IANA's 3000, "Unauthorized").
const CLOSE_UNAUTHORIZED: CloseCode = CloseCode::Iana(3000);

/// How long a closing session keeps reading (and discarding) after its last frame, so
/// that unread client bytes do not make the kernel reset the connection before the
/// client has read its answers and the close frame.
const LINGER: Duration = Duration::from_secs(1);

/// What one connection holds between frames.
struct Session {
    reader: FrameReader,
    outbox: Outbox,
    total_budget: TotalBudget,
    /// A message read but not started: it waits for the in-flight byte budget.
    pending: Option<Batch>,
    /// Answers done but not yet queued for writing, in order, each with when it was
    /// done; the first waits for room in the answer budgets.
    done: VecDeque<(Answered, Instant)>,
    /// Bytes of the batches being processed or answered but not yet queued.
    inflight_bytes: usize,
    max_inflight: usize,
    max_inflight_bytes: usize,
}

/// One message as it came off the socket.
struct Batch {
    kind: ContentKind,
    payload: Bytes,
    received: Instant,
}

/// A batch's answer, ready to write.
struct Answered {
    frame: Bytes,
    /// The batch's share of the in-flight budget ([`Session::share`]), given back once
    /// the answer is queued.
    share: usize,
}

impl Session {
    fn new(shared: &Shared) -> Self {
        let limits = &shared.settings.limits;
        Self {
            reader: FrameReader::new(limits.max_batch_bytes),
            outbox: Outbox::new(shared),
            total_budget: TotalBudget::new(shared),
            pending: None,
            done: VecDeque::new(),
            inflight_bytes: 0,
            max_inflight: limits.max_inflight_batches_per_connection,
            max_inflight_bytes: limits.max_inflight_bytes_per_connection,
        }
    }

    /// A batch's share of the in-flight byte budget: a batch larger than the whole
    /// budget takes all of it, and so goes through alone.
    fn share(&self, batch: &Batch) -> usize {
        batch.payload.len().min(self.max_inflight_bytes)
    }

    /// Whether the pending batch fits the in-flight byte budget now.
    fn pending_fits(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|batch| self.inflight_bytes + self.share(batch) <= self.max_inflight_bytes)
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
        // most connections are idle between batches. Always polled, so a batch runs to
        // its end (and gives back what it holds of the gateway) even while its answer
        // cannot be written.
        let mut batches: FuturesUnordered<BoxFuture<'_, Answered>> = FuturesUnordered::new();
        let mut ending: Option<(Ending, tokio::time::Instant)> = None;
        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + settings.websocket.ping_interval,
            settings.websocket.ping_interval,
        );
        let drain = settings.shutdown.drain_timeout;
        let write_timeout = settings.limits.write_timeout;
        let stop = |why: Ending| Some((why, tokio::time::Instant::now() + drain));
        let now = || Some((Ending::Gone, tokio::time::Instant::now()));
        // A JWT's expiry ends the connection; a revoked key is noticed at the next ping
        // (and each batch after it is refused, see `process`).
        let expires = identity.principal.expires.map(|at| {
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::Instant::now() + left + settings.auth.jwt.leeway
        });
        loop {
            if let Some((Ending::NotReading | Ending::Stuck | Ending::Gone, _)) = ending {
                break;
            }
            if self.pending_fits() {
                let batch = self.pending.take().expect("a pending batch");
                let share = self.share(&batch);
                self.inflight_bytes += share;
                batches.push(answer(shared, identity, batch, share, event_results).boxed());
            }
            let in_flight = batches.len() + self.done.len() + usize::from(self.pending.is_some());
            if ending.is_some() && in_flight == 0 {
                break;
            }
            let reading =
                ending.is_none() && self.pending.is_none() && in_flight < self.max_inflight;
            let first_done = self
                .done
                .front()
                .map(|(answer, since)| (answer.frame.len(), *since));
            let room = first_done.is_some_and(|(size, _)| self.outbox.has_room(size));
            let give_up_at =
                first_done.map(|(_, since)| tokio::time::Instant::from_std(since + write_timeout));
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled(), if ending.is_none() => {
                    ending = stop(Ending::Close(CloseCode::Away, "server shutting down".into()));
                }
                _ = guard.kicked.cancelled(), if ending.is_none() => {
                    ending = stop(Ending::Close(
                        CloseCode::Policy,
                        "replaced by a newer connection with the same identity".into(),
                    ));
                }
                written = poll_fn(|cx| self.outbox.poll_write(cx, Pin::new(&mut write_half))), if self.outbox.has_frames() => {
                    if let Err(error) = written {
                        // The listener's socket wrapper fails a write that makes no
                        // progress for `limits.writeTimeout` with TimedOut.
                        ending = if error.kind() == io::ErrorKind::TimedOut {
                            Some((Ending::Stuck, tokio::time::Instant::now()))
                        } else {
                            now()
                        };
                    }
                }
                Some(answer) = batches.next(), if !batches.is_empty() => {
                    self.done.push_back((answer, Instant::now()));
                }
                permit = poll_fn(|cx| self.total_budget.poll_reserve(cx, first_done.map_or(0, |(size, _)| size))), if room => {
                    let (answer, _) = self.done.pop_front().expect("an answer is done");
                    self.inflight_bytes -= answer.share;
                    self.outbox.push_answer(answer.frame, permit);
                }
                _ = tokio::time::sleep_until(give_up_at.unwrap_or_else(tokio::time::Instant::now)), if give_up_at.is_some() => {
                    ending = Some((Ending::NotReading, tokio::time::Instant::now()));
                }
                _ = tokio::time::sleep_until(expires.unwrap_or_else(tokio::time::Instant::now)), if ending.is_none() && expires.is_some() => {
                    ending = stop(Ending::Close(CLOSE_UNAUTHORIZED, "the JWT expired".into()));
                }
                _ = ping.tick(), if ending.is_none() => {
                    if self.reader.take_progress() {
                        last_heard = Instant::now();
                    }
                    if let Err(error) = shared.auth.still_valid(&identity.principal) {
                        ending = stop(Ending::Close(CLOSE_UNAUTHORIZED, error.to_string()));
                    } else if last_heard.elapsed() >= settings.websocket.idle_timeout {
                        ending = stop(Ending::Close(CloseCode::Away, "idle timeout".into()));
                    } else if !self.outbox.has_frames() {
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
                            self.outbox.set_pong(ws_wire::pong(payload));
                            continue;
                        }
                        Ok(Incoming::Pong) => continue,
                        Ok(Incoming::Close(_)) => {
                            ending = stop(Ending::Close(CloseCode::Normal, String::new()));
                            continue;
                        }
                        Ok(Incoming::End) => {
                            ending = stop(Ending::Quietly);
                            continue;
                        }
                        Err(error) => {
                            ending = match error.close_code() {
                                Some(code) => stop(Ending::Close(code, error.to_string())),
                                None => now(),
                            };
                            continue;
                        }
                    };
                    self.pending = Some(Batch { kind, payload, received });
                }
                _ = tokio::time::sleep_until(ending.as_ref().map_or_else(tokio::time::Instant::now, |(_, by)| *by)), if ending.is_some() => {
                    // Out of drain time: what is still in flight goes unanswered.
                    break;
                }
            }
        }
        // Batches still in flight are dropped here. Each enqueues its events to Kafka in
        // one synchronous step, so none is cut halfway: what was enqueued is delivered,
        // unanswered, as for any client that goes before its answer.
        drop(batches);
        let close = match ending {
            Some((Ending::NotReading | Ending::Stuck, _)) => {
                shared
                    .metrics
                    .connections_dropped
                    .with_label_values(&["http", "not_reading"])
                    .inc();
                match ending {
                    Some((Ending::NotReading, _)) => Some((
                        CloseCode::Policy,
                        "the client does not read its answers".to_string(),
                    )),
                    _ => return,
                }
            }
            Some((Ending::Gone, _)) => return,
            Some((Ending::Close(code, reason), _)) => Some((code, reason)),
            Some((Ending::Quietly, _)) | None => None,
        };
        if let Some((code, reason)) = close {
            self.outbox.push_control(ws_wire::close(code, &reason));
        }
        let outbox = &mut self.outbox;
        let finished = tokio::time::timeout(write_timeout, async {
            poll_fn(|cx| outbox.poll_write(cx, Pin::new(&mut write_half))).await?;
            write_half.shutdown().await
        })
        .await;
        if matches!(finished, Ok(Ok(()))) {
            let mut discard = [0u8; 512];
            let _ = tokio::time::timeout(LINGER, async {
                while read_half.read(&mut discard).await.is_ok_and(|n| n > 0) {}
            })
            .await;
        }
    }
}

/// Processes one batch and builds its answer frame; `share` travels with it.
async fn answer(
    shared: &Shared,
    identity: &Identity,
    batch: Batch,
    share: usize,
    event_results: bool,
) -> Answered {
    let (response, encoding) =
        process(shared, identity, batch.kind, batch.payload, batch.received).await;
    let encoding = encoding.with_event_results(event_results);
    let body = decode::encode_response(&response, encoding);
    let frame = match encoding {
        Encoding::Protobuf => ws_wire::binary(body),
        Encoding::Json(_) => ws_wire::text(body),
    };
    Answered { frame, share }
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
            if let Err(error) = shared.auth.still_valid(&identity.principal) {
                let rejection = Rejection::from(error);
                shared
                    .ingestor
                    .answered(Transport::WebSocket, rejection.code(), received);
                return (rejection.response(&request.req_guid), encoding);
            }
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
/// it is written; control frames (pings, pongs, the close) hold none. A pong waits in a
/// slot of its own, the latest ping's (RFC 6455 §5.5.3 allows answering only that one),
/// and goes out at the next frame boundary, ahead of queued answers.
struct Outbox {
    /// Each frame with its share of the connection's budget and its permit of the
    /// gateway-wide one.
    frames: VecDeque<(Bytes, usize, Option<OwnedSemaphorePermit>)>,
    pong: Option<Bytes>,
    /// Bytes of the first frame already written.
    written: usize,
    /// Answer bytes queued, against `connection_size`.
    queued: usize,
    connection_size: usize,
}

/// The gateway-wide answer budget, as one connection waits on it: the wait keeps its
/// place in the queue across polls while the same size is asked for (cancel-safe).
struct TotalBudget {
    semaphore: PollSemaphore,
    size: usize,
}

impl TotalBudget {
    fn new(shared: &Shared) -> Self {
        Self {
            semaphore: PollSemaphore::new(shared.answer_budget.clone()),
            size: shared.settings.websocket.max_queued_answer_bytes_total,
        }
    }

    /// Waits for the share of an answer of `bytes` (one larger than the whole budget
    /// takes all of it).
    fn poll_reserve(
        &mut self,
        cx: &mut Context<'_>,
        bytes: usize,
    ) -> Poll<Option<OwnedSemaphorePermit>> {
        let share = u32::try_from(bytes.min(self.size)).unwrap_or(u32::MAX);
        self.semaphore.poll_acquire_many(cx, share)
    }
}

impl Outbox {
    fn new(shared: &Shared) -> Self {
        let settings = &shared.settings.websocket;
        Self {
            frames: VecDeque::new(),
            pong: None,
            written: 0,
            queued: 0,
            connection_size: settings.max_queued_answer_bytes,
        }
    }

    fn has_frames(&self) -> bool {
        !self.frames.is_empty() || self.pong.is_some()
    }

    /// An answer's share of the connection's budget (one larger than the whole budget
    /// takes all of it).
    fn connection_share(&self, bytes: usize) -> usize {
        bytes.min(self.connection_size)
    }

    /// Whether the connection's budget has room for an answer of `bytes`.
    fn has_room(&self, bytes: usize) -> bool {
        self.queued + self.connection_share(bytes) <= self.connection_size
    }

    fn push_answer(&mut self, frame: Bytes, permit: Option<OwnedSemaphorePermit>) {
        let share = self.connection_share(frame.len());
        self.queued += share;
        self.frames.push_back((frame, share, permit));
    }

    fn push_control(&mut self, frame: Bytes) {
        self.frames.push_back((frame, 0, None));
    }

    /// Answers a ping, replacing an answer to an earlier one not yet written.
    fn set_pong(&mut self, frame: Bytes) {
        self.pong = Some(frame);
    }

    /// Writes queued frames until none is left; cancel-safe (progress is kept here).
    fn poll_write<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut to: Pin<&mut W>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.written == 0
                && let Some(pong) = self.pong.take()
            {
                self.frames.push_front((pong, 0, None));
            }
            let Some((frame, share, _)) = self.frames.front() else {
                break;
            };
            let (length, share) = (frame.len(), *share);
            let n = std::task::ready!(to.as_mut().poll_write(cx, &frame[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            if self.written == length {
                self.queued -= share;
                self.frames.pop_front();
                self.written = 0;
            }
        }
        to.poll_flush(cx)
    }
}
