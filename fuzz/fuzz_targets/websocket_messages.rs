//! Bytes from a WebSocket client: frames read by the server side of the protocol under
//! the gateway's message limit, each message decoded as the session does (binary:
//! protobuf, text: JSON). Never a panic; oversized messages are read errors.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::Message;
use weir::gateway::decode::{ContentKind, decode_request};

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let config = WebSocketConfig::default()
        .max_message_size(Some(LIMIT))
        .max_frame_size(Some(LIMIT));
    let mut socket = WebSocket::from_raw_socket(Cursor::new(data.to_vec()), Role::Server, Some(config));
    for _ in 0..64 {
        let (kind, payload) = match socket.read() {
            Ok(Message::Binary(bytes)) => (ContentKind::Protobuf, bytes),
            Ok(Message::Text(text)) => (ContentKind::Json, bytes::Bytes::from(text)),
            Ok(_) => continue,
            Err(_) => return,
        };
        assert!(payload.len() <= LIMIT);
        let _ = decode_request(kind, payload, 100);
    }
});
