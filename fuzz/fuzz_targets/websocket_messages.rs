//! Bytes from a WebSocket client: frames read by the gateway's own reader
//! (`ws_wire::FrameReader`) under a message limit, each message decoded as the session
//! does (binary: protobuf, text: JSON). Never a panic; oversized messages and protocol
//! violations are read errors with a close code.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use weir::gateway::decode::{ContentKind, decode_request};
use weir::gateway::ws_wire::{FrameReader, Incoming};

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new(LIMIT);
    let mut io: &[u8] = data;
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..64 {
        let (kind, payload) = match reader.poll_message(&mut cx, Pin::new(&mut io)) {
            Poll::Ready(Ok(Incoming::Binary(bytes))) => (ContentKind::Protobuf, bytes),
            Poll::Ready(Ok(Incoming::Text(bytes))) => {
                assert!(std::str::from_utf8(&bytes).is_ok());
                (ContentKind::Json, bytes)
            }
            Poll::Ready(Ok(Incoming::End)) => return,
            Poll::Ready(Ok(Incoming::Ping(bytes))) => {
                assert!(bytes.len() <= 125);
                continue;
            }
            Poll::Ready(Ok(_)) => continue,
            Poll::Ready(Err(error)) => {
                let _ = error.close_code();
                return;
            }
            // A slice never waits.
            Poll::Pending => panic!("reading from a slice returned Pending"),
        };
        assert!(payload.len() <= LIMIT);
        let _ = decode_request(kind, payload, 100);
    }
});
