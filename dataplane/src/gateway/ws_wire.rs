//! The WebSocket wire (RFC 6455), server side: the opening handshake and the frames.
//!
//! Why not tungstenite's socket: it keeps a read buffer in every connection (zero-filled
//! before each read and grown to the largest frame seen), which at 10,000 connections
//! was most of the gateway's memory. Here nothing is held between frames: a frame's
//! header is read into its 14 bytes, then its payload straight into a buffer of exactly
//! its length, which becomes the batch (no copy) and is freed with it. Reads never go
//! past the current frame, so no bytes of the next one wait in memory either.
//!
//! Invariants:
//! - [`FrameReader::poll_message`] is cancel-safe: every byte read is kept in the
//!   reader, so a session may poll it in a `select!` beside its other work.
//! - A message longer than the limit is refused from its header (or from the running
//!   total of its fragments) before any of it is buffered. A buffer grows with the bytes
//!   that arrive (at most doubling what came), not to the length a header announces, so
//!   a client that announces a large frame and sends it slowly holds about what it sent.
//! - Client frames must be masked, use no reserved bits or opcodes (no extension is
//!   negotiated), and control frames must be whole and at most 125 bytes; anything else
//!   is a protocol error (close 1002). Text messages must be UTF-8 (1007), checked once
//!   the message is complete.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};

/// Longest payload of a control frame.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// One message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A binary message.
    Binary(Bytes),
    /// A text message, checked to be UTF-8.
    Text(Bytes),
    /// A ping, to be answered with a pong carrying the same bytes.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// The client's close frame (its code, if it gave one).
    Close(Option<u16>),
    /// The connection ended between frames without a close frame.
    End,
}

/// Why the client's bytes cannot be read as WebSocket messages.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A message over the size limit.
    #[error("message exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A text message that is not UTF-8.
    #[error("text frame is not UTF-8")]
    NotUtf8,
    /// A frame that breaks the protocol.
    #[error("{0}")]
    Protocol(&'static str),
    /// The connection failed or ended inside a frame.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
}

impl WireError {
    /// The close code that answers the error; `None` when the connection is gone.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Self::TooLarge { .. } => Some(CloseCode::Size),
            Self::NotUtf8 => Some(CloseCode::Invalid),
            Self::Protocol(_) => Some(CloseCode::Protocol),
            Self::Io(_) => None,
        }
    }
}

/// A frame header's length in bytes, known from its first two bytes.
fn header_size(first_two: [u8; 2]) -> usize {
    let extended = match first_two[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if first_two[1] & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// Parses a whole header (tungstenite's parser, on exactly `header_size` bytes) and
/// checks what can be checked of a client frame from its header alone.
fn parse_header(bytes: &[u8]) -> Result<(FrameHeader, u64), WireError> {
    let (header, length) = match FrameHeader::parse(&mut io::Cursor::new(bytes)) {
        Ok(Some(parsed)) => parsed,
        // Its only refusal of a whole header.
        Err(_) => return Err(WireError::Protocol("reserved opcode")),
        Ok(None) => return Err(WireError::Protocol("incomplete frame header")),
    };
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(WireError::Protocol(
            "reserved bits set without an extension",
        ));
    }
    if header.mask.is_none() {
        return Err(WireError::Protocol("client frame is not masked"));
    }
    if let OpCode::Control(_) = header.opcode {
        if !header.is_final {
            return Err(WireError::Protocol("fragmented control frame"));
        }
        if length > MAX_CONTROL_PAYLOAD as u64 {
            return Err(WireError::Protocol("control frame longer than 125 bytes"));
        }
    }
    Ok((header, length))
}

/// The frame being read: its header, its payload length, and where its payload starts
/// in the message buffer.
#[derive(Debug)]
struct CurrentFrame {
    header: FrameHeader,
    length: usize,
    start: usize,
}

/// The first buffer of a frame whose bytes come in several reads; it doubles from here.
const GROWTH_STEP: usize = 16 * 1024;

/// Reads client messages from a stream, holding nothing between frames but the state
/// of a fragmented message.
#[derive(Debug)]
pub struct FrameReader {
    max_message: usize,
    /// The current frame's header bytes read so far.
    head: [u8; 14],
    head_read: u8,
    /// The current frame, once its header is read.
    frame: Option<CurrentFrame>,
    /// The message being read: its first frame's kind and (in `payload`) its bytes so
    /// far.
    message: Option<Data>,
    payload: Vec<u8>,
    /// The current control frame's payload.
    control: Vec<u8>,
    /// Whether bytes arrived since [`Self::take_progress`] last asked.
    progress: bool,
}

impl FrameReader {
    /// A reader refusing messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            head: [0; 14],
            head_read: 0,
            frame: None,
            message: None,
            payload: Vec::new(),
            control: Vec::new(),
            progress: false,
        }
    }

    /// Whether any bytes arrived since the last call: a message still coming in counts
    /// as a live client.
    pub fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.progress)
    }

    /// Reads until a whole message (or a control frame) is in.
    pub fn poll_message<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut io: Pin<&mut R>,
    ) -> Poll<Result<Incoming, WireError>> {
        loop {
            let Some(frame) = &self.frame else {
                // The header: two bytes, then the rest they announce; never more.
                let have = usize::from(self.head_read);
                let want = if have < 2 {
                    2
                } else {
                    header_size([self.head[0], self.head[1]])
                };
                if have < want {
                    let mut buf = ReadBuf::new(&mut self.head[have..want]);
                    ready!(io.as_mut().poll_read(cx, &mut buf))?;
                    let n = buf.filled().len();
                    if n == 0 {
                        return Poll::Ready(if have == 0 && self.message.is_none() {
                            Ok(Incoming::End)
                        } else {
                            Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())
                        });
                    }
                    self.head_read += n as u8;
                    self.progress = true;
                    continue;
                }
                self.head_read = 0;
                let (header, length) = parse_header(&self.head[..want])?;
                let start = match header.opcode {
                    OpCode::Control(_) => 0,
                    OpCode::Data(kind) => {
                        match (kind, self.message) {
                            (Data::Continue, None) => {
                                return Poll::Ready(Err(WireError::Protocol(
                                    "continuation frame without a message",
                                )));
                            }
                            // Reserved data opcodes are refused with the header.
                            (Data::Text | Data::Binary | Data::Reserved(_), Some(_)) => {
                                return Poll::Ready(Err(WireError::Protocol(
                                    "new message inside a fragmented one",
                                )));
                            }
                            (Data::Continue, Some(_)) => {}
                            (first, None) => self.message = Some(first),
                        }
                        let start = self.payload.len();
                        if (start as u64).saturating_add(length) > self.max_message as u64 {
                            return Poll::Ready(Err(WireError::TooLarge {
                                limit: self.max_message,
                            }));
                        }
                        start
                    }
                };
                // At most `max_message` (or 125 for control frames): fits a usize.
                let length = length as usize;
                self.frame = Some(CurrentFrame {
                    header,
                    length,
                    start,
                });
                continue;
            };
            let (start, length) = (frame.start, frame.length);
            let mask = frame.header.mask.expect("client frames are masked");
            let (control, is_final) = match frame.header.opcode {
                OpCode::Control(kind) => (Some(kind), true),
                OpCode::Data(_) => (None, frame.header.is_final),
            };
            let is_control = control.is_some();
            // Control frames may come between the fragments of a message: their few
            // bytes go to a buffer of their own.
            let buffer = if is_control {
                &mut self.control
            } else {
                &mut self.payload
            };
            let have = buffer.len() - start;
            if have < length {
                // Room for this frame only, so a read never takes the next one's bytes.
                // The buffer grows with what arrives (from GROWTH_STEP, at most doubling),
                // not to the length a header announces; `Vec`'s own doubling keeps a
                // message of many small fragments from being copied again and again.
                if buffer.len() == buffer.capacity() {
                    buffer.reserve((length - have).min(have.max(GROWTH_STEP)));
                }
                let mut limited = buffer.limit(length - have);
                let n = ready!(tokio_util::io::poll_read_buf(io.as_mut(), cx, &mut limited))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()));
                }
                self.progress = true;
                continue;
            }
            self.frame = None;
            if let Some(kind) = control {
                let mut bytes = std::mem::take(&mut self.control);
                unmask(&mut bytes, mask);
                return Poll::Ready(control_message(kind, bytes.into()));
            }
            unmask(&mut self.payload[start..], mask);
            if !is_final {
                continue;
            }
            let kind = self.message.take().expect("a data frame starts a message");
            let message = Bytes::from(std::mem::take(&mut self.payload));
            return Poll::Ready(if kind == Data::Text {
                match std::str::from_utf8(&message) {
                    Ok(_) => Ok(Incoming::Text(message)),
                    Err(_) => Err(WireError::NotUtf8),
                }
            } else {
                Ok(Incoming::Binary(message))
            });
        }
    }
}

fn control_message(kind: Control, payload: Bytes) -> Result<Incoming, WireError> {
    match kind {
        Control::Ping => Ok(Incoming::Ping(payload)),
        Control::Pong => Ok(Incoming::Pong),
        // Reserved control opcodes are refused with the header.
        Control::Close | Control::Reserved(_) => match payload.len() {
            0 => Ok(Incoming::Close(None)),
            1 => Err(WireError::Protocol("close frame with a one-byte payload")),
            _ => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                if !CloseCode::from(code).is_allowed() {
                    return Err(WireError::Protocol(
                        "close frame with a code not allowed on the wire",
                    ));
                }
                if std::str::from_utf8(&payload[2..]).is_err() {
                    return Err(WireError::NotUtf8);
                }
                Ok(Incoming::Close(Some(code)))
            }
        },
    }
}

/// Undoes the client's masking (XOR with the 4-byte key, RFC 6455 §5.3), four bytes
/// at a time so that the compiler can vectorize it: it runs over every batch's bytes.
fn unmask(bytes: &mut [u8], mask: [u8; 4]) {
    let mut words = bytes.chunks_exact_mut(4);
    for word in &mut words {
        for (byte, key) in word.iter_mut().zip(mask) {
            *byte ^= key;
        }
    }
    for (byte, key) in words.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

/// A whole server frame (unmasked) in one buffer, so that it goes out in one write.
fn encode(frame: Frame) -> Bytes {
    let mut out = Vec::with_capacity(frame.len());
    frame.format(&mut out).expect("writing to a Vec");
    out.into()
}

/// A binary message.
pub fn binary(payload: impl Into<Bytes>) -> Bytes {
    encode(Frame::message(payload, OpCode::Data(Data::Binary), true))
}

/// A text message (`payload` is UTF-8).
pub fn text(payload: impl Into<Bytes>) -> Bytes {
    encode(Frame::message(payload, OpCode::Data(Data::Text), true))
}

/// A ping with no payload.
pub fn ping() -> Bytes {
    encode(Frame::ping(Bytes::new()))
}

/// The answer to a ping.
pub fn pong(payload: Bytes) -> Bytes {
    encode(Frame::pong(payload))
}

/// A close frame; the reason is cut to fit a control frame, at a character boundary.
pub fn close(code: CloseCode, reason: &str) -> Bytes {
    let reason = super::ack::truncate(reason, MAX_CONTROL_PAYLOAD - 2);
    encode(Frame::close(Some(CloseFrame {
        code,
        reason: reason.into(),
    })))
}

/// A WebSocket opening handshake over HTTP/1.1 (RFC 6455 §4.2), taken from the request
/// as axum's extractor checks it; [`Handshake::accept`] gives the answer and the
/// connection once hyper hands it over.
pub struct Handshake {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// Why a request is not a WebSocket handshake.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Not a GET.
    #[error("a WebSocket handshake is a GET request")]
    NotGet,
    /// A header missing or wrong.
    #[error("not a WebSocket handshake: {0}")]
    Header(&'static str),
    /// HTTP/2, or a connection hyper cannot hand over.
    #[error("this connection cannot be upgraded to a WebSocket (use HTTP/1.1)")]
    NotUpgradable,
}

impl IntoResponse for HandshakeError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::NotGet => StatusCode::METHOD_NOT_ALLOWED,
            Self::Header(_) => StatusCode::BAD_REQUEST,
            Self::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
        };
        (status, self.to_string()).into_response()
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = HandshakeError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.version > axum::http::Version::HTTP_11 {
            return Err(HandshakeError::NotUpgradable);
        }
        if parts.method != Method::GET {
            return Err(HandshakeError::NotGet);
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(HandshakeError::Header("Connection must include upgrade"));
        }
        if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(HandshakeError::Header("Upgrade must be websocket"));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(HandshakeError::Header("Sec-WebSocket-Version must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(HandshakeError::Header("Sec-WebSocket-Key is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(HandshakeError::NotUpgradable)?;
        Ok(Self { key, on_upgrade })
    }
}

impl Handshake {
    /// The 101 answer, and the connection once hyper hands it over (after the answer
    /// is written).
    pub fn accept(self) -> (Response, hyper::upgrade::OnUpgrade) {
        let accept =
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
            .header(header::UPGRADE, HeaderValue::from_static("websocket"))
            .header(
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&accept).expect("base64 is a header value"),
            )
            .body(axum::body::Body::empty())
            .expect("a valid 101 response");
        (response, self.on_upgrade)
    }
}

#[cfg(test)]
mod tests;
