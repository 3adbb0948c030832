//! A WebSocket session: batches in as frames (binary = protobuf, text = JSON), answers
//! out in the same frame type, carrying `req_guid`.
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
//!   (`websocket.maxQueuedAnswerBytesTotal`); an answer waits for room, and a client
//!   whose answers find none within `limits.writeTimeout`, or whose socket takes a
//!   frame for longer than that, is disconnected. Memory per connection is therefore
//!   about its budget plus `maxInflightBatchesPerConnection` answers being built, each
//!   small (see `ack::batch_response`).
//! - Closing (shutdown, replacement by a newer connection, idle): the session stops
//!   reading, answers every batch it accepted, then sends a close frame.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use weir_proto::SendEventResponse;

use super::Shared;
use super::ack::{Rejection, truncate};
use super::decode::{self, ContentKind, Encoding};
use super::identity::{ConnectionGuard, Identity};
use super::ingest::Transport;
use super::json::Dialect;

/// How long a refused socket may take to receive its refusal.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Refuses an upgraded socket: the answer with the code, then close 1008, as Raccoon does.
pub async fn refuse(mut socket: WebSocket, rejection: &Rejection) {
    let body = decode::encode_response(&rejection.response(""), Encoding::Protobuf);
    let refusal = async {
        socket.send(Message::Binary(body.into())).await?;
        socket
            .send(Message::Close(Some(CloseFrame {
                code: close_code::POLICY,
                reason: truncate(&rejection.to_string(), 120).into(),
            })))
            .await
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refusal).await;
}

/// Why a session ends.
struct Closing {
    code: u16,
    reason: String,
}

impl Closing {
    fn new(code: u16, reason: impl Into<String>) -> Option<Self> {
        Some(Self {
            code,
            reason: reason.into(),
        })
    }

    /// A read error: an oversized message (1009), text that is not UTF-8 (1007), or
    /// another protocol violation (1002).
    fn read_error(error: axum::Error, limit: usize) -> Option<Self> {
        use tokio_tungstenite::tungstenite::Error as WsError;
        let source = error.into_inner();
        let text = source.to_string();
        match source.downcast_ref::<WsError>() {
            Some(WsError::Capacity(_)) => {
                Self::new(close_code::SIZE, format!("message exceeds {limit} bytes"))
            }
            Some(WsError::Utf8(_)) => Self::new(close_code::INVALID, "text frame is not UTF-8"),
            _ => Self::new(close_code::PROTOCOL, text),
        }
    }
}

/// Serves one admitted connection until it closes.
pub async fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    identity: Identity,
    guard: ConnectionGuard,
    event_results: bool,
) {
    let group_label = shared.metrics.groups.get(&identity.group).to_string();
    let gauge = shared
        .metrics
        .connections
        .with_label_values(&[&group_label]);
    gauge.inc();
    let identity = Arc::new(identity);
    let settings = &shared.settings.websocket;
    let max_inflight = shared.settings.limits.max_inflight_batches_per_connection;
    let (sink, mut stream) = socket.split();
    let (replies, outbox) = mpsc::channel::<Queued>(max_inflight + 2);
    let budget = AnswerBudget::for_connection(&shared);
    // Cancelled when the client stopped reading: its answers found no room in time, or
    // a frame did not go out in time.
    let not_reading = CancellationToken::new();

    let write_timeout = shared.settings.limits.write_timeout;
    let writer = tokio::spawn(write_answers(
        sink,
        outbox,
        write_timeout,
        not_reading.clone(),
    ));

    let permits = Arc::new(Semaphore::new(max_inflight));
    let max_inflight_bytes = shared.settings.limits.max_inflight_bytes_per_connection;
    let inflight_bytes = Arc::new(Semaphore::new(max_inflight_bytes));
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    let closing = loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => {
                break Closing::new(close_code::AWAY, "server shutting down");
            }
            _ = guard.kicked.cancelled() => {
                break Closing::new(close_code::POLICY, "replaced by a newer connection with the same identity");
            }
            _ = not_reading.cancelled() => {
                shared.metrics.connections_dropped.with_label_values(&["http", "not_reading"]).inc();
                break Closing::new(close_code::POLICY, "the client does not read its answers");
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= settings.idle_timeout {
                    break Closing::new(close_code::AWAY, "idle timeout");
                }
                if replies.try_send(Box::new((Message::Ping(Bytes::new()), None))).is_err() {
                    // The outbox is full of answers, which will do as a liveness probe.
                }
            }
            frame = stream.next() => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => break Closing::read_error(error, shared.settings.limits.max_batch_bytes),
                    None => break None,
                };
                last_heard = Instant::now();
                let (kind, payload) = match frame {
                    Message::Binary(bytes) => (ContentKind::Protobuf, bytes),
                    Message::Text(text) => (ContentKind::Json, Bytes::from(text)),
                    Message::Close(_) => break None,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                let received = Instant::now();
                let Ok(permit) = permits.clone().acquire_owned().await else { break None };
                let size = payload.len().min(max_inflight_bytes) as u32;
                let Ok(bytes_permit) = inflight_bytes.clone().acquire_many_owned(size).await else { break None };
                let batch = Batch { kind, payload, received, event_results };
                tokio::spawn(answer(
                    shared.clone(),
                    identity.clone(),
                    batch,
                    Answering {
                        replies: replies.clone(),
                        budget: budget.clone(),
                        not_reading: not_reading.clone(),
                    },
                    (permit, bytes_permit),
                ));
            }
        }
    };

    let to = Answering {
        replies,
        budget,
        not_reading,
    };
    // Boxed: its state is needed once, at the end, not in every connection's task.
    Box::pin(say_goodbye(
        &shared,
        closing,
        &permits,
        max_inflight,
        to,
        writer,
    ))
    .await;
    gauge.dec();
    drop(guard);
}

/// Answers what was accepted (within `shutdown.drainTimeout`, unless the client stopped
/// reading), sends the close frame, and lets the writer finish.
async fn say_goodbye(
    shared: &Shared,
    closing: Option<Closing>,
    in_flight: &Semaphore,
    max_inflight: usize,
    to: Answering,
    writer: tokio::task::JoinHandle<()>,
) {
    let drain = shared.settings.shutdown.drain_timeout;
    let answered = async {
        let _ = in_flight.acquire_many(max_inflight as u32).await;
    };
    tokio::select! {
        _ = tokio::time::timeout(drain, answered) => {}
        _ = to.not_reading.cancelled() => {}
    }
    if let Some(Closing { code, reason }) = closing {
        let close = Message::Close(Some(CloseFrame {
            code,
            // Close reasons are limited to 123 bytes by the protocol.
            reason: truncate(&reason, 120).into(),
        }));
        let write_timeout = shared.settings.limits.write_timeout;
        let _ = tokio::time::timeout(write_timeout, to.replies.send(Box::new((close, None)))).await;
    }
    drop(to);
    let _ = tokio::time::timeout(drain, writer).await;
}

/// Writes queued answers until the outbox closes or a close frame went out; each
/// answer's budget is given back once its frame is written. A frame that takes longer
/// than `write_timeout` means the client does not read: `not_reading` is cancelled.
async fn write_answers(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut outbox: mpsc::Receiver<Queued>,
    write_timeout: Duration,
    not_reading: CancellationToken,
) {
    while let Some(queued) = outbox.recv().await {
        let (message, permits) = *queued;
        let is_close = matches!(message, Message::Close(_));
        let sent = tokio::time::timeout(write_timeout, sink.send(message)).await;
        drop(permits);
        match sent {
            Ok(Ok(())) if !is_close => {}
            Ok(Ok(())) => break,
            Ok(Err(_)) => break,
            Err(_) => {
                not_reading.cancel();
                return;
            }
        }
    }
    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
}

/// One batch as it came off the socket.
struct Batch {
    kind: ContentKind,
    payload: Bytes,
    received: Instant,
    /// The connection asked for per-event results in Raccoon-dialect JSON answers.
    event_results: bool,
}

/// Where a batch's answer goes.
struct Answering {
    replies: mpsc::Sender<Queued>,
    budget: AnswerBudget,
    not_reading: CancellationToken,
}

/// Processes one batch and queues its answer; the connection's in-flight permits are
/// held until the answer is queued.
async fn answer(
    shared: Arc<Shared>,
    identity: Arc<Identity>,
    batch: Batch,
    to: Answering,
    inflight: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) {
    let (response, encoding) = process(
        &shared,
        &identity,
        batch.kind,
        batch.payload,
        batch.received,
    )
    .await;
    let encoding = encoding.with_event_results(batch.event_results);
    let body = decode::encode_response(&response, encoding);
    let Some(permits) = to.budget.reserve(body.len()).await else {
        to.not_reading.cancel();
        return;
    };
    let message = match encoding {
        Encoding::Protobuf => Message::Binary(body.into()),
        Encoding::Json(_) => Message::Text(String::from_utf8(body).expect("JSON is UTF-8").into()),
    };
    let _ = to.replies.send(Box::new((message, Some(permits)))).await;
    drop(inflight);
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

/// A frame for the writer and the answer budget it holds until written. Boxed: the
/// channel allocates its first 32 slots with the connection, and 10,000 idle
/// connections would hold 2.3 KiB each of slots for 72-byte frames.
type Queued = Box<(
    Message,
    Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
)>;

/// Room for answers waiting to be written: the connection's and everyone's.
#[derive(Clone)]
struct AnswerBudget {
    connection: Arc<Semaphore>,
    connection_size: usize,
    total: Arc<Semaphore>,
    total_size: usize,
    wait: Duration,
}

impl AnswerBudget {
    /// A new connection's budget, beside the gateway-wide one.
    fn for_connection(shared: &Shared) -> Self {
        let settings = &shared.settings.websocket;
        Self {
            connection: Arc::new(Semaphore::new(settings.max_queued_answer_bytes)),
            connection_size: settings.max_queued_answer_bytes,
            total: shared.answer_budget.clone(),
            total_size: settings.max_queued_answer_bytes_total,
            wait: shared.settings.limits.write_timeout,
        }
    }

    /// Waits up to the write timeout for room for `bytes` (an answer larger than a
    /// whole budget takes all of it); `None` when there was none.
    async fn reserve(&self, bytes: usize) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let own = bytes.min(self.connection_size) as u32;
        let all = bytes.min(self.total_size) as u32;
        let reserve = async {
            let own = self.connection.clone().acquire_many_owned(own).await.ok()?;
            let all = self.total.clone().acquire_many_owned(all).await.ok()?;
            Some((own, all))
        };
        tokio::time::timeout(self.wait, reserve)
            .await
            .ok()
            .flatten()
    }
}
