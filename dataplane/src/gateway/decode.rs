//! Decoding batches from the wire and encoding answers back, for every transport.
//!
//! Pure functions: bytes in, a request (or a [`Rejection`] that names the problem) out.

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
    /// JSON in one of its dialects (`application/json`, WebSocket text frames).
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
        "application/json" => Ok(ContentKind::Json),
        _ => Err(Rejection::UnsupportedMediaType(raw.to_string())),
    }
}

impl Encoding {
    /// The HTTP content type of answers in this encoding. Protobuf answers use
    /// Raccoon's `application/proto` so Raccoon clients read them unchanged.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/proto",
            Encoding::Json(_) => "application/json",
        }
    }
}

/// Decodes a batch and checks the per-batch limits.
pub fn decode_request(
    kind: ContentKind,
    body: Bytes,
    max_events: usize,
) -> Result<(SendEventRequest, Encoding), Rejection> {
    let (request, encoding) = match kind {
        ContentKind::Protobuf => {
            let request = SendEventRequest::decode(body)
                .map_err(|e| Rejection::BadRequest(format!("invalid protobuf request: {e}")))?;
            (request, Encoding::Protobuf)
        }
        ContentKind::Json => {
            let (request, dialect) = json::parse_request(&body).map_err(Rejection::BadRequest)?;
            (request, Encoding::Json(dialect))
        }
    };
    check_batch(&request, max_events)?;
    Ok((request, encoding))
}

/// Checks a decoded batch against the per-batch limits (gRPC decodes on its own).
pub fn check_batch(request: &SendEventRequest, max_events: usize) -> Result<(), Rejection> {
    if request.events.len() > max_events {
        return Err(Rejection::BadRequest(format!(
            "batch has {} events; the limit is {max_events}",
            request.events.len()
        )));
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
        ] {
            assert_eq!(content_kind(Some(ct)).unwrap(), ContentKind::Json, "{ct}");
        }
        let err = content_kind(Some("text/plain")).unwrap_err();
        assert!(err.to_string().contains("text/plain"));
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
