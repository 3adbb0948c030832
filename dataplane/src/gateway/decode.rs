//! Decoding batches from the wire and encoding answers back, for every transport.
//!
//! Pure functions: bytes in, a request (or a [`Rejection`] that names the problem) out.
//!
//! Decoding costs memory per event, so a batch with more than `maxEventsPerBatch` events
//! is refused before any event is decoded: protobuf by counting the `events` fields in
//! one pass over the bytes, JSON by a reader that stops at the first event past the
//! limit. Bodies of [`BLOCKING_DECODE_BYTES`] or more are decoded on the blocking pool,
//! not on the threads that serve connections.

use bytes::Bytes;
use prost::Message;
use weir_proto::{SendEventRequest, SendEventResponse};

use super::ack::Rejection;
use super::json::{self, Dialect};

/// How a request was encoded; its answer is encoded the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Protobuf (`application/proto`, `application/x-protobuf`, WebSocket binary frames).
    Protobuf,
    /// JSON in one of its dialects (`application/json`, `text/plain`, WebSocket text
    /// frames).
    Json(Dialect),
}

/// The encoding family an HTTP content type selects, before the JSON dialect is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentKind {
    /// A protobuf body.
    Protobuf,
    /// A JSON body.
    Json,
}

/// Reads an HTTP `Content-Type`, ignoring parameters such as `charset` and case.
pub fn content_kind(content_type: Option<&str>) -> Result<ContentKind, Rejection> {
    let raw = content_type.unwrap_or("");
    let media = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/proto" | "application/x-protobuf" | "application/protobuf" => {
            Ok(ContentKind::Protobuf)
        }
        // `text/plain` is what `navigator.sendBeacon` sends for a string body, and what
        // browsers send without a CORS preflight.
        "application/json" | "text/plain" => Ok(ContentKind::Json),
        _ => Err(Rejection::UnsupportedMediaType(raw.to_string())),
    }
}

impl Encoding {
    /// This encoding for a client that did (or did not) ask for per-event results.
    pub fn with_event_results(self, wanted: bool) -> Self {
        match self {
            Encoding::Json(dialect) => Encoding::Json(dialect.with_event_results(wanted)),
            Encoding::Protobuf => Encoding::Protobuf,
        }
    }

    /// The HTTP content type of answers in this encoding. Protobuf answers use
    /// Raccoon's `application/proto` so Raccoon clients read them unchanged.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/proto",
            Encoding::Json(_) => "application/json",
        }
    }
}

/// Bodies at least this large are decoded on the blocking pool.
pub const BLOCKING_DECODE_BYTES: usize = 256 * 1024;

/// Large decodes running at once, process-wide: one per core. Decoding is CPU work, so
/// more would not finish sooner, and each holds its batch decoded (several times its
/// wire size) until it is done.
static LARGE_DECODES: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        tokio::sync::Semaphore::new(cores)
    });

/// [`decode_request`], on the blocking pool for large bodies, a few at a time.
pub async fn decode_request_async(
    kind: ContentKind,
    body: Bytes,
    max_events: usize,
) -> Result<(SendEventRequest, Encoding), Rejection> {
    if body.len() < BLOCKING_DECODE_BYTES {
        return decode_request(kind, body, max_events);
    }
    let _slot = LARGE_DECODES
        .acquire()
        .await
        .map_err(|e| Rejection::Internal(format!("decoding the batch failed: {e}")))?;
    tokio::task::spawn_blocking(move || decode_request(kind, body, max_events))
        .await
        .map_err(|e| Rejection::Internal(format!("decoding the batch failed: {e}")))?
}

/// Decodes a batch and checks the per-batch limits.
pub fn decode_request(
    kind: ContentKind,
    body: Bytes,
    max_events: usize,
) -> Result<(SendEventRequest, Encoding), Rejection> {
    let (request, encoding) = match kind {
        ContentKind::Protobuf => {
            let events = count_protobuf_events(&body)
                .map_err(|e| Rejection::BadRequest(format!("invalid protobuf request: {e}")))?;
            if events > max_events {
                return Err(too_many_events(Some(events), max_events));
            }
            let request = SendEventRequest::decode(body)
                .map_err(|e| Rejection::BadRequest(format!("invalid protobuf request: {e}")))?;
            (request, Encoding::Protobuf)
        }
        ContentKind::Json => {
            let (request, dialect) =
                json::parse_request(&body, max_events).map_err(|e| match e {
                    json::ParseError::TooManyEvents => too_many_events(None, max_events),
                    json::ParseError::Invalid(reason) => Rejection::BadRequest(reason),
                })?;
            (request, Encoding::Json(dialect))
        }
    };
    check_batch(&request, max_events)?;
    Ok((request, encoding))
}

/// `seen`: the count, when it is known.
fn too_many_events(seen: Option<usize>, max_events: usize) -> Rejection {
    let seen = match seen {
        Some(n) => n.to_string(),
        None => format!("more than {max_events}"),
    };
    Rejection::BadRequest(format!(
        "batch has {seen} events; the limit is {max_events}"
    ))
}

/// Decompresses a gzip body of at most `limit` bytes decompressed; more is TooLarge, so
/// a small compressed bomb costs at most `limit`.
pub fn gunzip(compressed: &[u8], limit: usize) -> Result<Bytes, Rejection> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Rejection::BadRequest(format!("the gzip body does not decompress: {e}")))?;
    if out.len() > limit {
        return Err(Rejection::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}

/// The number of `events` (field 3) in an encoded `SendEventRequest`, read in one pass
/// without decoding any of them.
fn count_protobuf_events(mut body: &[u8]) -> Result<usize, prost::DecodeError> {
    use prost::encoding::{DecodeContext, WireType, decode_key, skip_field};
    const EVENTS: u32 = 3;
    let mut events = 0;
    while !body.is_empty() {
        let (tag, wire_type) = decode_key(&mut body)?;
        if tag == EVENTS && wire_type == WireType::LengthDelimited {
            events += 1;
        }
        skip_field(wire_type, tag, &mut body, DecodeContext::default())?;
    }
    Ok(events)
}

/// Checks a decoded batch against the per-batch limits (gRPC decodes on its own).
pub fn check_batch(request: &SendEventRequest, max_events: usize) -> Result<(), Rejection> {
    if request.events.len() > max_events {
        return Err(too_many_events(Some(request.events.len()), max_events));
    }
    Ok(())
}

/// Encodes an answer for the wire.
pub fn encode_response(response: &SendEventResponse, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => response.encode_to_vec(),
        Encoding::Json(dialect) => json::render_response(response, dialect),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::Event;

    #[test]
    fn content_types() {
        for ct in [
            "application/proto",
            "application/x-protobuf",
            "Application/Protobuf",
            "application/x-protobuf; proto=raystack.raccoon.v1beta1.SendEventRequest",
        ] {
            assert_eq!(
                content_kind(Some(ct)).unwrap(),
                ContentKind::Protobuf,
                "{ct}"
            );
        }
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON;charset=UTF-8",
            "text/plain;charset=UTF-8",
        ] {
            assert_eq!(content_kind(Some(ct)).unwrap(), ContentKind::Json, "{ct}");
        }
        let err = content_kind(Some("text/html")).unwrap_err();
        assert!(err.to_string().contains("text/html"));
        assert!(content_kind(None).is_err());
    }

    fn request(n: usize) -> SendEventRequest {
        SendEventRequest {
            req_guid: "g".into(),
            sent_time: None,
            events: (0..n)
                .map(|i| Event {
                    event_bytes: Bytes::from(vec![i as u8; 10]),
                    r#type: "t".into(),
                    partition_key: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn protobuf_round_trip() {
        let bytes = Bytes::from(request(3).encode_to_vec());
        let (decoded, enc) = decode_request(ContentKind::Protobuf, bytes, 10).unwrap();
        assert_eq!(decoded, request(3));
        assert_eq!(enc, Encoding::Protobuf);
    }

    #[test]
    fn too_many_events_are_refused_before_decoding() {
        // 2,000 empty events (`1a 00`), as the probe sent 2 million.
        let body = Bytes::from([0x1a, 0x00].repeat(2_000));
        let err = decode_request(ContentKind::Protobuf, body.clone(), 1_999).unwrap_err();
        assert_eq!(err.code(), weir_proto::Code::BadRequest);
        assert!(
            err.to_string()
                .contains("batch has 2000 events; the limit is 1999"),
            "{err}"
        );
        assert_eq!(count_protobuf_events(&body).unwrap(), 2_000);
        let (request, _) = decode_request(ContentKind::Protobuf, body, 2_000).unwrap();
        assert_eq!(request.events.len(), 2_000);
        let json = format!(r#"{{"events":[{}]}}"#, ["{}"; 11].join(","));
        let err = decode_request(ContentKind::Json, Bytes::from(json), 10).unwrap_err();
        assert!(err.to_string().contains("more than 10 events"), "{err}");
    }

    #[test]
    fn truncated_and_garbage_protobuf_are_bad_requests() {
        let full = request(3).encode_to_vec();
        for cut in [1, full.len() / 2, full.len() - 1] {
            let err = decode_request(
                ContentKind::Protobuf,
                Bytes::copy_from_slice(&full[..cut]),
                10,
            )
            .unwrap_err();
            assert!(
                matches!(err, Rejection::BadRequest(ref m) if m.contains("invalid protobuf")),
                "{err}"
            );
        }
        // Field 1 (req_guid) with wire type 0 where a string is expected.
        let err = decode_request(ContentKind::Protobuf, Bytes::from_static(&[0x08, 0x01]), 10)
            .unwrap_err();
        assert!(matches!(err, Rejection::BadRequest(_)));
        let garbage: Vec<u8> = (0..=255u8).rev().cycle().take(4096).collect();
        assert!(decode_request(ContentKind::Protobuf, Bytes::from(garbage), 10).is_err());
    }

    #[test]
    fn event_count_limit() {
        let bytes = Bytes::from(request(11).encode_to_vec());
        let err = decode_request(ContentKind::Protobuf, bytes, 10).unwrap_err();
        assert!(err.to_string().contains("11 events"), "{err}");
    }
}
