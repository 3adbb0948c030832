//! A protobuf batch as a client sends it (HTTP body, WebSocket binary frame, gRPC
//! message): decoded or refused with BAD_REQUEST, never a panic, and never more events
//! than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::gateway::decode::{ContentKind, decode_request};

const MAX_EVENTS: usize = 100;

fuzz_target!(|data: &[u8]| {
    match decode_request(ContentKind::Protobuf, bytes::Bytes::copy_from_slice(data), MAX_EVENTS) {
        Ok((request, _)) => assert!(request.events.len() <= MAX_EVENTS),
        Err(rejection) => assert_eq!(rejection.code(), weir_proto::Code::BadRequest),
    }
});
