//! The two JSON dialects clients send, and answers in the dialect each request used.
//!
//! - Raccoon's dialect: snake_case keys, `sent_time` as `{"seconds":N,"nanos":N}` (or
//!   absent: Raccoon's Java client never sets it), `event_bytes` as base64 or as a list of
//!   byte values (what Raccoon's JS client sends), and answers with exactly the fields
//!   Raccoon's clients parse: numeric enums, `sent_time` as a number, `data`, and a
//!   non-empty `reason`. Raccoon's Java and Python clients fail on any other field, so
//!   per-event results are added only on request ([`Dialect::RaccoonWithResults`]).
//! - Canonical proto3 JSON: camelCase keys, `sentTime` as an RFC 3339 string, and answers
//!   with enum names and int64 as a string.
//!
//! A request is canonical when it uses any camelCase key; otherwise it is Raccoon's. Both
//! timestamp forms are accepted under either key, and base64 may be standard or URL-safe,
//! padded or not.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use weir_proto::{Event, SendEventRequest, SendEventResponse};

/// The JSON dialect of a request, which its answer uses too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Raccoon's snake_case dialect, answered with Raccoon's fields only.
    Raccoon,
    /// Raccoon's dialect from a client that asked for per-event results
    /// (`X-Weir-Event-Results: true` or `?event_results=true`).
    RaccoonWithResults,
    /// Canonical proto3 JSON (its answers always carry per-event results: proto3 JSON
    /// parsers are told to ignore unknown fields or know them from Weir's proto).
    Canonical,
}

impl Dialect {
    /// This dialect for a client that did (or did not) ask for per-event results.
    pub fn with_event_results(self, wanted: bool) -> Self {
        match self {
            Dialect::Raccoon if wanted => Dialect::RaccoonWithResults,
            other => other,
        }
    }
}

/// Why a JSON request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// More events than allowed; reading stopped at the first one past the limit.
    TooManyEvents,
    /// Not a request: why, naming the place.
    Invalid(String),
}

std::thread_local! {
    /// The event limit of the parse running on this thread, and whether it was hit:
    /// serde's derived readers take no arguments, and a parse never leaves its thread.
    static EVENT_LIMIT: std::cell::Cell<(usize, bool)> = const { std::cell::Cell::new((usize::MAX, false)) };
}

/// Parses a JSON request in either dialect, reading at most `max_events` events.
pub fn parse_request(
    body: &[u8],
    max_events: usize,
) -> Result<(SendEventRequest, Dialect), ParseError> {
    let previous = EVENT_LIMIT.replace((max_events, false));
    let parsed = serde_json::from_slice::<RawRequest>(body);
    let (_, limit_hit) = EVENT_LIMIT.replace(previous);
    let raw = match parsed {
        Ok(raw) => raw,
        Err(_) if limit_hit => return Err(ParseError::TooManyEvents),
        Err(e) => return Err(ParseError::Invalid(format!("invalid JSON request: {e}"))),
    };
    request_from_raw(raw).map_err(ParseError::Invalid)
}

fn request_from_raw(raw: RawRequest) -> Result<(SendEventRequest, Dialect), String> {
    let mut camel = raw.req_guid_camel.is_some() || raw.sent_time_camel.is_some();
    let mut events = Vec::with_capacity(raw.events.len());
    for (index, event) in raw.events.into_iter().enumerate() {
        camel |= event.event_bytes_camel.is_some() || event.partition_key_camel.is_some();
        let event_bytes = match event.event_bytes.or(event.event_bytes_camel) {
            None => Vec::new(),
            Some(Payload::Bytes(bytes)) => bytes,
            Some(Payload::Base64(text)) => decode_base64(&text)
                .map_err(|e| format!("events[{index}].event_bytes is not base64: {e}"))?,
        };
        events.push(Event {
            event_bytes: Bytes::from(event_bytes),
            r#type: event.event_type.unwrap_or_default(),
            partition_key: event
                .partition_key
                .or(event.partition_key_camel)
                .unwrap_or_default(),
        });
    }
    let request = SendEventRequest {
        req_guid: raw.req_guid.or(raw.req_guid_camel).unwrap_or_default(),
        sent_time: raw.sent_time.or(raw.sent_time_camel).map(|t| t.0),
        events,
    };
    let dialect = if camel {
        Dialect::Canonical
    } else {
        Dialect::Raccoon
    };
    Ok((request, dialect))
}

/// Renders an answer in the given dialect.
pub fn render_response(response: &SendEventResponse, dialect: Dialect) -> Vec<u8> {
    let raccoon = |event_results: &[weir_proto::EventResult]| {
        serde_json::to_vec(&RaccoonResponse {
            status: response.status,
            code: response.code,
            sent_time: response.sent_time,
            reason: &response.reason,
            data: &response.data,
            event_results: event_results
                .iter()
                .map(|r| RaccoonEventResult {
                    index: r.index,
                    code: r.code,
                    reason: &r.reason,
                })
                .collect(),
        })
    };
    let rendered = match dialect {
        Dialect::Raccoon => raccoon(&[]),
        Dialect::RaccoonWithResults => raccoon(&response.event_results),
        Dialect::Canonical => serde_json::to_vec(&CanonicalResponse {
            status: response.status().as_str_name(),
            code: response.code().as_str_name(),
            sent_time: response.sent_time.to_string(),
            reason: &response.reason,
            data: &response.data,
            event_results: response
                .event_results
                .iter()
                .map(|r| CanonicalEventResult {
                    index: r.index,
                    code: r.code().as_str_name(),
                    reason: &r.reason,
                })
                .collect(),
        }),
    };
    rendered.expect("responses always serialize")
}

/// Renders a request in Raccoon's dialect (for clients and tests).
pub fn render_request(request: &SendEventRequest) -> Vec<u8> {
    let events: Vec<serde_json::Value> = request
        .events
        .iter()
        .map(|e| {
            let mut event = serde_json::json!({
                "event_bytes": base64::engine::general_purpose::STANDARD.encode(&e.event_bytes),
                "type": e.r#type,
            });
            if !e.partition_key.is_empty() {
                event["partition_key"] = e.partition_key.clone().into();
            }
            event
        })
        .collect();
    let mut body = serde_json::json!({ "req_guid": request.req_guid, "events": events });
    if let Some(t) = &request.sent_time {
        body["sent_time"] = serde_json::json!({ "seconds": t.seconds, "nanos": t.nanos });
    }
    serde_json::to_vec(&body).expect("requests always serialize")
}

const BASE64_CONFIG: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, BASE64_CONFIG);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, BASE64_CONFIG);

fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD.decode(text).or_else(|e| {
        // Proto3 JSON allows the URL-safe alphabet; only fall back when it could apply.
        if text.contains(['-', '_']) {
            URL_SAFE.decode(text)
        } else {
            Err(e)
        }
    })
}

#[derive(Deserialize)]
struct RawRequest {
    req_guid: Option<String>,
    #[serde(rename = "reqGuid")]
    req_guid_camel: Option<String>,
    sent_time: Option<JsonTimestamp>,
    #[serde(rename = "sentTime")]
    sent_time_camel: Option<JsonTimestamp>,
    #[serde(default, deserialize_with = "null_as_empty")]
    events: Vec<RawEvent>,
}

#[derive(Deserialize)]
struct RawEvent {
    event_bytes: Option<Payload>,
    #[serde(rename = "eventBytes")]
    event_bytes_camel: Option<Payload>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    partition_key: Option<String>,
    #[serde(rename = "partitionKey")]
    partition_key_camel: Option<String>,
}

/// `events`: null reads as none; reading stops past the thread's event limit.
fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RawEvent>, D::Error> {
    struct Events;
    impl<'de> de::Visitor<'de> for Events {
        type Value = Vec<RawEvent>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of events or null")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let (max, _) = EVENT_LIMIT.get();
            let mut events = Vec::new();
            while let Some(event) = seq.next_element()? {
                if events.len() == max {
                    EVENT_LIMIT.set((max, true));
                    return Err(de::Error::custom("too many events"));
                }
                events.push(event);
            }
            Ok(events)
        }
    }
    d.deserialize_any(Events)
}

/// An event's bytes: base64 text, or a list of byte values (`[123,34,…]`, what
/// `JSON.stringify(Array.from(uint8Array))` gives).
enum Payload {
    Base64(String),
    Bytes(Vec<u8>),
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PayloadVisitor;
        impl<'de> de::Visitor<'de> for PayloadVisitor {
            type Value = Payload;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("base64 text or a list of byte values 0-255")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Payload, E> {
                Ok(Payload::Base64(v.to_string()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Payload, E> {
                Ok(Payload::Base64(v))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Payload, A::Error> {
                // Each value takes at least two bytes of JSON, so the body limit bounds
                // this list.
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(byte) = seq.next_element::<u8>()? {
                    bytes.push(byte);
                }
                Ok(Payload::Bytes(bytes))
            }
        }
        d.deserialize_any(PayloadVisitor)
    }
}

/// A timestamp as Raccoon's `{seconds, nanos}` object or an RFC 3339 string.
struct JsonTimestamp(prost_types::Timestamp);

impl<'de> Deserialize<'de> for JsonTimestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Object {
                #[serde(default)]
                seconds: i64,
                #[serde(default)]
                nanos: i32,
            },
            Text(String),
        }
        let timestamp = match Form::deserialize(d)? {
            Form::Object { seconds, nanos } => prost_types::Timestamp { seconds, nanos },
            Form::Text(text) => text.parse().map_err(|e| {
                de::Error::custom(format!("sent_time {text:?} is not an RFC 3339 time: {e}"))
            })?,
        };
        if !(0..1_000_000_000).contains(&timestamp.nanos) {
            return Err(de::Error::custom("sent_time nanos must be in 0..1e9"));
        }
        Ok(JsonTimestamp(timestamp))
    }
}

#[derive(Serialize)]
struct RaccoonResponse<'a> {
    status: i32,
    code: i32,
    sent_time: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    data: &'a std::collections::HashMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    event_results: Vec<RaccoonEventResult<'a>>,
}

#[derive(Serialize)]
struct RaccoonEventResult<'a> {
    index: u32,
    code: i32,
    reason: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CanonicalResponse<'a> {
    status: &'static str,
    code: &'static str,
    sent_time: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    data: &'a std::collections::HashMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    event_results: Vec<CanonicalEventResult<'a>>,
}

#[derive(Serialize)]
struct CanonicalEventResult<'a> {
    index: u32,
    code: &'static str,
    reason: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::ack;
    use weir_proto::Code;

    #[test]
    fn raccoon_dialect_request() {
        let body = br#"{"req_guid":"abc","sent_time":{"seconds":1700000000,"nanos":5},
            "events":[{"event_bytes":"aGVsbG8=","type":"click"}]}"#;
        let (req, dialect) = parse_request(body, 100).unwrap();
        assert_eq!(dialect, Dialect::Raccoon);
        assert_eq!(req.req_guid, "abc");
        assert_eq!(req.sent_time.unwrap().seconds, 1_700_000_000);
        assert_eq!(req.sent_time.unwrap().nanos, 5);
        assert_eq!(&req.events[0].event_bytes[..], b"hello");
        assert_eq!(req.events[0].r#type, "click");
    }

    #[test]
    fn canonical_dialect_request() {
        let body = br#"{"reqGuid":"abc","sentTime":"2023-11-14T22:13:20.5Z",
            "events":[{"eventBytes":"aGVsbG8","type":"click","partitionKey":"u1"}]}"#;
        let (req, dialect) = parse_request(body, 100).unwrap();
        assert_eq!(dialect, Dialect::Canonical);
        assert_eq!(req.sent_time.unwrap().seconds, 1_700_000_000);
        assert_eq!(req.sent_time.unwrap().nanos, 500_000_000);
        assert_eq!(&req.events[0].event_bytes[..], b"hello", "unpadded base64");
        assert_eq!(req.events[0].partition_key, "u1");
    }

    #[test]
    fn url_safe_base64_and_null_events() {
        let (req, _) =
            parse_request(br#"{"events":[{"eventBytes":"-_8","type":"t"}]}"#, 100).unwrap();
        assert_eq!(&req.events[0].event_bytes[..], &[0xfb, 0xff]);
        let (req, dialect) = parse_request(br#"{"req_guid":"x","events":null}"#, 100).unwrap();
        assert!(req.events.is_empty());
        assert_eq!(dialect, Dialect::Raccoon);
    }

    #[test]
    fn malformed_json_names_the_problem() {
        for (body, needle) in [
            (&b"{not json"[..], "invalid JSON"),
            (
                br#"{"events":[{"event_bytes":"***","type":"t"}]}"#,
                "events[0].event_bytes",
            ),
            (br#"{"events":"many"}"#, "invalid JSON"),
            (br#"{"sent_time":"yesterday"}"#, "RFC 3339"),
            (br#"{"sent_time":{"seconds":1,"nanos":-1}}"#, "nanos"),
            (br#"[1,2]"#, "invalid JSON"),
            (b"", "invalid JSON"),
        ] {
            let Err(ParseError::Invalid(err)) = parse_request(body, 100) else {
                panic!("{body:?} is refused as invalid");
            };
            assert!(err.contains(needle), "{err} should contain {needle}");
        }
    }

    #[test]
    fn reading_stops_at_the_first_event_past_the_limit() {
        let events = vec!["{}"; 1000].join(",");
        let body = format!(r#"{{"events":[{events}]}}"#);
        assert_eq!(
            parse_request(body.as_bytes(), 999).unwrap_err(),
            ParseError::TooManyEvents
        );
        assert_eq!(
            parse_request(body.as_bytes(), 1000).unwrap().0.events.len(),
            1000
        );
        // The limit is per parse: an invalid body after a limited one is just invalid.
        assert!(matches!(
            parse_request(b"{not json", 1),
            Err(ParseError::Invalid(_))
        ));
    }

    #[test]
    fn raccoon_answer_uses_numbers_and_omits_empty_reason() {
        let ok = ack::batch_response("g", 1, vec![]);
        let v: serde_json::Value =
            serde_json::from_slice(&render_response(&ok, Dialect::Raccoon)).unwrap();
        assert_eq!(v["status"], 1);
        assert_eq!(v["code"], 1);
        assert!(v["sent_time"].is_i64());
        assert_eq!(v["data"]["req_guid"], "g");
        assert!(v.get("reason").is_none());
        assert!(v.get("event_results").is_none());
    }

    /// What Raccoon's JS client sends (bytes as a list of numbers) and its Java client
    /// (no `sent_time`); a byte value out of range names the problem.
    #[test]
    fn byte_lists_and_missing_sent_time() {
        let body = br#"{"req_guid":"g1","sent_time":{"seconds":1691366400,"nanos":123000000},"events":[{"event_bytes":[123,34,97,34,125],"type":"page"}]}"#;
        let (req, dialect) = parse_request(body, 100).unwrap();
        assert_eq!(dialect, Dialect::Raccoon);
        assert_eq!(&req.events[0].event_bytes[..], br#"{"a"}"#);
        let (req, _) = parse_request(
            br#"{"req_guid":"g","events":[{"event_bytes":"e30=","type":"p"}]}"#,
            9,
        )
        .unwrap();
        assert_eq!(
            (req.sent_time, &req.events[0].event_bytes[..]),
            (None, &b"{}"[..])
        );
        let Err(ParseError::Invalid(reason)) =
            parse_request(br#"{"events":[{"event_bytes":[1,256],"type":"p"}]}"#, 9)
        else {
            panic!("a byte of 256 is refused");
        };
        assert!(reason.contains("256"), "{reason}");
    }

    /// Raccoon's Java and Python clients refuse unknown fields: per-event results go only
    /// to clients that asked for them.
    #[test]
    fn raccoon_answers_carry_event_results_only_on_request() {
        let failed =
            ack::batch_response("g", 2, vec![ack::event_failure(1, Code::Unavailable, "x")]);
        let plain: serde_json::Value =
            serde_json::from_slice(&render_response(&failed, Dialect::Raccoon)).unwrap();
        let keys: Vec<&String> = plain.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["code", "data", "reason", "sent_time", "status"]);
        let asked = Dialect::Raccoon.with_event_results(true);
        let detailed: serde_json::Value =
            serde_json::from_slice(&render_response(&failed, asked)).unwrap();
        assert_eq!(detailed["event_results"][0]["index"], 1);
        assert_eq!(
            Dialect::Canonical.with_event_results(false),
            Dialect::Canonical
        );
    }

    #[test]
    fn canonical_answer_uses_names() {
        let failed =
            ack::batch_response("g", 2, vec![ack::event_failure(1, Code::Unavailable, "x")]);
        let v: serde_json::Value =
            serde_json::from_slice(&render_response(&failed, Dialect::Canonical)).unwrap();
        assert_eq!(v["status"], "STATUS_ERROR");
        assert_eq!(v["code"], "CODE_UNAVAILABLE");
        assert!(v["sentTime"].is_string());
        assert_eq!(v["eventResults"][0]["index"], 1);
        assert_eq!(v["eventResults"][0]["code"], "CODE_UNAVAILABLE");
    }

    #[test]
    fn rendered_request_parses_back() {
        let req = SendEventRequest {
            req_guid: "r".into(),
            sent_time: Some(prost_types::Timestamp {
                seconds: 9,
                nanos: 1,
            }),
            events: vec![Event {
                event_bytes: Bytes::from_static(b"\x00\x01"),
                r#type: "t".into(),
                partition_key: "k".into(),
            }],
        };
        let (back, dialect) = parse_request(&render_request(&req), 100).unwrap();
        assert_eq!(back, req);
        assert_eq!(dialect, Dialect::Raccoon);
    }
}
