use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader as TFrameHeader};

use super::*;

/// A client frame as tungstenite's client writes it (masked), as the independent
/// encoder the reader is checked against.
fn client_frame(opcode: OpCode, payload: &[u8], fin: bool, mask: [u8; 4]) -> Vec<u8> {
    let header = TFrameHeader {
        is_final: fin,
        opcode,
        mask: Some(mask),
        ..TFrameHeader::default()
    };
    let mut out = Vec::new();
    Frame::from_payload(header, Bytes::copy_from_slice(payload))
        .format(&mut out)
        .unwrap();
    out
}

const BINARY: OpCode = OpCode::Data(Data::Binary);
const TEXT: OpCode = OpCode::Data(Data::Text);
const CONTINUE: OpCode = OpCode::Data(Data::Continue);
const PING: OpCode = OpCode::Control(Control::Ping);
const CLOSE: OpCode = OpCode::Control(Control::Close);
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// A stream that hands out its bytes in the given chunk sizes, answering Pending
/// between chunks (so the reader is polled again, as in a `select!`), and counts what
/// was taken.
struct Chunked {
    bytes: Vec<u8>,
    at: usize,
    chunks: Vec<usize>,
    pending: bool,
    /// At the end of its bytes, wait (a client that sends no more) rather than end.
    hold_open: bool,
}

impl Chunked {
    fn new(bytes: Vec<u8>, chunks: Vec<usize>) -> Self {
        Self {
            bytes,
            at: 0,
            chunks,
            pending: false,
            hold_open: false,
        }
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.hold_open && self.at == self.bytes.len() {
            return Poll::Pending;
        }
        if self.pending {
            self.pending = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pending = true;
        let chunk = if self.chunks.is_empty() {
            usize::MAX
        } else {
            self.chunks.remove(0).max(1)
        };
        let n = chunk.min(buf.remaining()).min(self.bytes.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.bytes[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

/// Reads messages until the stream ends or an error, polling as a session would.
fn read_all(reader: &mut FrameReader, io: &mut Chunked) -> Vec<Result<Incoming, String>> {
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut out = Vec::new();
    loop {
        match reader.poll_message(&mut cx, Pin::new(&mut *io)) {
            Poll::Pending => continue,
            Poll::Ready(Ok(Incoming::End)) => return out,
            Poll::Ready(Ok(message)) => out.push(Ok(message)),
            Poll::Ready(Err(error)) => {
                out.push(Err(error.to_string()));
                return out;
            }
        }
    }
}

fn read(bytes: Vec<u8>, max: usize) -> Vec<Result<Incoming, String>> {
    read_all(&mut FrameReader::new(max), &mut Chunked::new(bytes, vec![]))
}

#[test]
fn single_frames_of_every_length_encoding() {
    for len in [0, 1, 125, 126, 65_535, 65_536, 200_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let got = read(client_frame(BINARY, &payload, true, MASK), 1 << 20);
        assert_eq!(
            got,
            vec![Ok(Incoming::Binary(payload.into()))],
            "length {len}"
        );
    }
}

#[test]
fn fragments_are_joined_and_control_frames_come_between_them() {
    let mut bytes = client_frame(TEXT, b"hel", false, MASK);
    bytes.extend(client_frame(PING, b"p", true, [1, 2, 3, 4]));
    bytes.extend(client_frame(CONTINUE, b"lo ", false, [9, 9, 9, 9]));
    bytes.extend(client_frame(CONTINUE, "wörld".as_bytes(), true, MASK));
    bytes.extend(client_frame(CLOSE, &[0x03, 0xe8, b'o', b'k'], true, MASK));
    assert_eq!(
        read(bytes, 100),
        vec![
            Ok(Incoming::Ping(Bytes::from_static(b"p"))),
            Ok(Incoming::Text(Bytes::from("hello wörld"))),
            Ok(Incoming::Close(Some(1000))),
        ]
    );
}

#[test]
fn a_message_over_the_limit_is_refused_from_its_header() {
    // Only the header is sent: the reader must not wait for the payload.
    let frame = client_frame(BINARY, &[0; 5000], true, MASK);
    let got = read(frame[..8].to_vec(), 4096);
    assert_eq!(got, vec![Err("message exceeds 4096 bytes".to_string())]);
    // Fragments are counted together.
    let mut bytes = client_frame(BINARY, &[0; 3000], false, MASK);
    bytes.extend(client_frame(CONTINUE, &[0; 3000], true, MASK));
    let got = read(bytes, 4096);
    assert_eq!(got, vec![Err("message exceeds 4096 bytes".to_string())]);
    let mut reader = FrameReader::new(4096);
    let error = read_all(&mut reader, &mut Chunked::new(frame, vec![]));
    assert_eq!(error.len(), 1);
}

#[test]
fn protocol_violations_are_named() {
    let unmasked = {
        let mut f = client_frame(BINARY, b"x", true, MASK);
        f[1] &= 0x7f;
        f.remove(2);
        f.truncate(3);
        f
    };
    let rsv = {
        let mut f = client_frame(BINARY, b"x", true, MASK);
        f[0] |= 0x40;
        f
    };
    let reserved_opcode = {
        let mut f = client_frame(BINARY, b"x", true, MASK);
        f[0] = 0x83;
        f
    };
    let long_ping = client_frame(PING, &[0; 126], true, MASK);
    let fragmented_ping = client_frame(PING, b"x", false, MASK);
    let lone_continuation = client_frame(CONTINUE, b"x", true, MASK);
    let mut interleaved = client_frame(BINARY, b"x", false, MASK);
    interleaved.extend(client_frame(BINARY, b"y", true, MASK));
    let one_byte_close = client_frame(CLOSE, &[3], true, MASK);
    for (bytes, expected) in [
        (unmasked, "client frame is not masked"),
        (rsv, "reserved bits set without an extension"),
        (reserved_opcode, "reserved opcode"),
        (long_ping, "control frame longer than 125 bytes"),
        (fragmented_ping, "fragmented control frame"),
        (lone_continuation, "continuation frame without a message"),
        (interleaved, "new message inside a fragmented one"),
        (one_byte_close, "close frame with a one-byte payload"),
    ] {
        let got = read(bytes, 100);
        assert_eq!(got, vec![Err(expected.to_string())]);
        assert_eq!(
            WireError::Protocol("x").close_code(),
            Some(CloseCode::Protocol)
        );
    }
}

#[test]
fn text_must_be_utf8_and_an_end_inside_a_frame_is_an_error() {
    let got = read(client_frame(TEXT, &[0xff, 0xfe], true, MASK), 100);
    assert_eq!(got, vec![Err("text frame is not UTF-8".to_string())]);
    assert_eq!(WireError::NotUtf8.close_code(), Some(CloseCode::Invalid));
    let frame = client_frame(BINARY, b"abcdef", true, MASK);
    let got = read(frame[..frame.len() - 2].to_vec(), 100);
    assert_eq!(got.len(), 1);
    assert!(got[0].as_ref().unwrap_err().starts_with("connection error"));
    // Between frames, the end is just the end.
    assert_eq!(read(Vec::new(), 100), vec![]);
}

#[test]
fn reads_stop_at_the_end_of_the_frame() {
    let mut bytes = client_frame(BINARY, b"first", true, MASK);
    let first_len = bytes.len();
    bytes.extend(client_frame(BINARY, b"second", true, MASK));
    let mut io = Chunked::new(bytes, vec![]);
    let mut reader = FrameReader::new(100);
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let first = loop {
        if let Poll::Ready(message) = reader.poll_message(&mut cx, Pin::new(&mut io)) {
            break message.unwrap();
        }
    };
    assert_eq!(first, Incoming::Binary(Bytes::from_static(b"first")));
    assert_eq!(io.at, first_len, "nothing of the next frame was read");
    assert_eq!(
        reader.payload.capacity(),
        0,
        "no buffer kept between frames"
    );
}

#[test]
fn server_frames_are_read_back_by_tungstenite() {
    use tokio_tungstenite::tungstenite::protocol::frame::FrameSocket;
    let mut bytes = binary(vec![7; 300]).to_vec();
    bytes.extend_from_slice(&text("hé"));
    bytes.extend_from_slice(&ping());
    bytes.extend_from_slice(&pong(Bytes::from_static(b"x")));
    bytes.extend_from_slice(&binary(vec![1; 70_000]));
    bytes.extend_from_slice(&close(CloseCode::Policy, &"é".repeat(100)));
    let mut socket = FrameSocket::new(io::Cursor::new(bytes));
    let mut frames = Vec::new();
    while let Some(frame) = socket.read(None).unwrap() {
        frames.push((frame.header().opcode, frame.len()));
        if frame.header().opcode == CLOSE {
            let payload = frame.into_payload();
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
            assert!(payload.len() <= 125);
            assert!(std::str::from_utf8(&payload[2..]).is_ok());
        }
    }
    let opcodes: Vec<_> = frames.iter().map(|(op, _)| *op).collect();
    assert_eq!(
        opcodes,
        vec![
            BINARY,
            TEXT,
            PING,
            OpCode::Control(Control::Pong),
            BINARY,
            CLOSE
        ]
    );
}

proptest! {
    /// Any sequence of messages, cut into fragments, with pings between, delivered in
    /// any chunking, reads back as the same messages.
    #[test]
    fn messages_survive_any_fragmenting_and_chunking(
        messages in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..400), 1usize..4, any::<[u8; 4]>()),
            1..6,
        ),
        chunks in prop::collection::vec(1usize..40, 0..200),
    ) {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (is_text, payload, parts, mask) in messages {
            let payload = if is_text { String::from_utf8_lossy(&payload).into_owned().into_bytes() } else { payload };
            let pieces: Vec<&[u8]> = if payload.is_empty() {
                vec![&payload[..]]
            } else {
                payload.chunks(payload.len().div_ceil(parts)).collect()
            };
            for (i, piece) in pieces.iter().enumerate() {
                let opcode = match (i, is_text) {
                    (0, true) => TEXT,
                    (0, false) => BINARY,
                    _ => CONTINUE,
                };
                bytes.extend(client_frame(opcode, piece, i + 1 == pieces.len(), mask));
                if i == 0 {
                    // After the first fragment: inside the message unless it was whole.
                    bytes.extend(client_frame(PING, &mask, true, mask));
                }
            }
            let fragmented = pieces.len() > 1;
            let ping = Ok(Incoming::Ping(Bytes::copy_from_slice(&mask)));
            let payload = Bytes::from(payload);
            let message = Ok(if is_text { Incoming::Text(payload) } else { Incoming::Binary(payload) });
            if fragmented {
                expected.extend([ping, message]);
            } else {
                expected.extend([message, ping]);
            }
        }
        let got = read_all(&mut FrameReader::new(1 << 16), &mut Chunked::new(bytes, chunks));
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn a_large_announced_frame_holds_only_about_what_arrived() {
    let frame = client_frame(BINARY, &vec![0; 4 << 20], true, MASK);
    // The header (14 bytes) and one byte of payload, then nothing more for now.
    let mut io = Chunked::new(frame[..15].to_vec(), vec![]);
    io.hold_open = true;
    let mut reader = FrameReader::new(8 << 20);
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for _ in 0..10 {
        assert!(matches!(
            reader.poll_message(&mut cx, Pin::new(&mut io)),
            Poll::Pending
        ));
    }
    assert_eq!(reader.payload.len(), 1);
    assert!(
        reader.payload.capacity() <= super::GROWTH_STEP,
        "{}",
        reader.payload.capacity()
    );
    assert!(reader.take_progress(), "bytes of a message count as life");
    assert!(!reader.take_progress());
}

#[test]
fn close_codes_not_allowed_on_the_wire_are_refused() {
    for code in [999u16, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let got = read(client_frame(CLOSE, &code.to_be_bytes(), true, MASK), 100);
        assert_eq!(
            got,
            vec![Err(
                "close frame with a code not allowed on the wire".to_string()
            )],
            "code {code}"
        );
    }
    for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
        let got = read(client_frame(CLOSE, &code.to_be_bytes(), true, MASK), 100);
        assert_eq!(got, vec![Ok(Incoming::Close(Some(code)))], "code {code}");
    }
}
