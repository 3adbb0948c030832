//! A JSON batch in either dialect (Raccoon's or canonical proto3 JSON): decoded or
//! refused with BAD_REQUEST, never a panic; what decodes survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::gateway::decode::{ContentKind, decode_request};
use weir::gateway::json;

const MAX_EVENTS: usize = 100;

fuzz_target!(|data: &[u8]| {
    match decode_request(ContentKind::Json, bytes::Bytes::copy_from_slice(data), MAX_EVENTS) {
        Ok((request, _)) => {
            assert!(request.events.len() <= MAX_EVENTS);
            let again = json::parse_request(&json::render_request(&request), MAX_EVENTS)
                .expect("a rendered request parses");
            assert_eq!(again.0.events, request.events);
            assert_eq!(again.0.req_guid, request.req_guid);
        }
        Err(rejection) => assert_eq!(rejection.code(), weir_proto::Code::BadRequest),
    }
});
