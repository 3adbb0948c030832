//! JSON lines: a record's metadata and payload as one JSON object per line.

use std::io::Write;

use base64::Engine;
use bytes::Bytes;
use prost_reflect::DynamicMessage;
use serde_json::{Map, Value as Json, json};

use super::{METADATA_COLUMNS, RAW_PAYLOAD_COLUMN};
use crate::sink::buffer::SinkRecord;

/// The metadata columns of a record as a JSON object (times as Unix numbers: ms for
/// `_timestamp`, µs for the others; the key as base64).
pub(super) fn metadata_json(topic: &str, partition: i32, r: &SinkRecord) -> Map<String, Json> {
    let b64 = |v: &Vec<u8>| base64::engine::general_purpose::STANDARD.encode(v);
    let values = [
        json!(topic),
        json!(partition),
        json!(r.offset),
        json!(r.timestamp_ms),
        json!(r.key.as_ref().map(b64)),
        json!(r.event_type),
        json!(r.req_guid),
        json!(r.conn_group),
        json!(r.sent_time_us),
        json!(r.receive_time_us),
        json!(r.tenant),
    ];
    METADATA_COLUMNS
        .iter()
        .zip(values)
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// A dead letter: the record's metadata, why its payload did not decode, and the
/// payload as base64.
pub(super) fn dead_letter_json(
    topic: &str,
    partition: i32,
    record: &SinkRecord,
    reason: &str,
) -> Map<String, Json> {
    let mut object = metadata_json(topic, partition, record);
    object.insert("reason".into(), Json::String(reason.to_string()));
    object.insert(
        "payload_base64".into(),
        Json::String(base64::engine::general_purpose::STANDARD.encode(&record.payload)),
    );
    object
}

/// A payload in JSON lines: `payload` holds the decoded message as proto3 JSON, or
/// the payload itself when it is JSON; any other payload is `payload_base64`.
pub(super) fn payload_json(
    r: &SinkRecord,
    message: Option<&DynamicMessage>,
) -> (&'static str, Json) {
    if let Some(message) = message {
        return (
            RAW_PAYLOAD_COLUMN,
            serde_json::to_value(message).unwrap_or(Json::Null),
        );
    }
    match serde_json::from_slice(&r.payload) {
        Ok(value) => (RAW_PAYLOAD_COLUMN, value),
        Err(_) => (
            "payload_base64",
            Json::String(base64::engine::general_purpose::STANDARD.encode(&r.payload)),
        ),
    }
}

/// The lines, gzipped when `gzip`.
pub(super) fn jsonl(
    lines: impl Iterator<Item = Map<String, Json>>,
    gzip: bool,
) -> Result<Bytes, std::io::Error> {
    let mut text = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut text, &line)?;
        text.push(b'\n');
    }
    if !gzip {
        return Ok(Bytes::from(text));
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&text)?;
    Ok(Bytes::from(encoder.finish()?))
}
