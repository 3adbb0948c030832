//! A gzip-compressed batch (HTTP `Content-Encoding: gzip`, gRPC `grpc-encoding: gzip`):
//! decompressed within the limit or refused, then decoded or refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::gateway::decode::{ContentKind, decode_request, gunzip};

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    match gunzip(data, LIMIT) {
        Ok(body) => {
            assert!(body.len() <= LIMIT);
            let _ = decode_request(ContentKind::Protobuf, body.clone(), 100);
            let _ = decode_request(ContentKind::Json, body, 100);
        }
        Err(rejection) => assert!(matches!(
            rejection.code(),
            weir_proto::Code::BadRequest | weir_proto::Code::PayloadTooLarge
        )),
    }
});
