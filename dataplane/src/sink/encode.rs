//! A flushed range of records into files: decode payloads, group by partition
//! directory, write Parquet or JSON lines. Pure: the same records give the same files
//! (names and bytes), which is what lets the sink redo a range after a crash.
//!
//! Every record ends up in exactly one place: a data file of its (event type, time)
//! directory, or, when its payload does not decode as its configured message, the
//! dead letters of the range, with the reason.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, FieldRef, Schema, TimeUnit};
use base64::Engine;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde_json::{Map, Value as Json, json};
use weir_crds::settings::SinkSettings;
use weir_crds::sink::{Compression, EventTime, FileFormat, Granularity, PayloadEncoding};

use super::buffer::SinkRecord;
use super::columns::{MessageColumns, UTC, timestamp_type};
use super::layout;

/// The metadata columns every file starts with, in order.
pub const METADATA_COLUMNS: [&str; 10] = [
    "_topic",
    "_partition",
    "_offset",
    "_timestamp",
    "_key",
    "_event_type",
    "_req_guid",
    "_conn_group",
    "_sent_time",
    "_receive_time",
];

/// The column holding an undecoded payload.
pub const RAW_PAYLOAD_COLUMN: &str = "payload";

/// A schema setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The descriptor set file cannot be read or parsed.
    #[error("schema.descriptorSet: cannot load {path}: {reason}")]
    DescriptorSet {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A type maps to a message the descriptor set lacks.
    #[error("schema.types.{event_type}.message: {message:?} is not in the descriptor set")]
    UnknownMessage {
        /// The event type.
        event_type: String,
        /// The message name.
        message: String,
    },
    /// Types are listed without a descriptor set.
    #[error("schema.types needs schema.descriptorSet")]
    NoDescriptorSet,
    /// A message field would shadow a metadata column.
    #[error(
        "schema.types.{event_type}: field {field:?} of {message} collides with a metadata column; metadata columns start with '_'"
    )]
    Collision {
        /// The event type.
        event_type: String,
        /// The message name.
        message: String,
        /// The field.
        field: String,
    },
}

/// Writing a file failed (a bug or resource exhaustion, not bad input).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Arrow or Parquet refused the data.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Arrow refused the columns.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// Compression failed.
    #[error("compression: {0}")]
    Io(#[from] std::io::Error),
}

/// One file of a flushed range.
#[derive(Clone, Debug)]
pub struct EncodedFile {
    /// Path relative to the storage prefix.
    pub path: String,
    /// The file's bytes.
    pub bytes: Bytes,
    /// Records in it.
    pub records: usize,
    /// True for the dead-letter file.
    pub dead_letter: bool,
}

/// A record that could not be decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Its index in the encoded slice.
    pub index: usize,
    /// Why, for a person.
    pub reason: String,
}

/// The files of one flushed range.
#[derive(Debug, Default)]
pub struct EncodedRange {
    /// Data files, plus the dead-letter file when dead letters go to objects.
    pub files: Vec<EncodedFile>,
    /// Records that did not decode.
    pub dead_letters: Vec<DeadLetter>,
}

#[derive(Clone)]
struct TypedPayload {
    message: MessageDescriptor,
    encoding: PayloadEncoding,
}

/// Turns ranges of records into files, following the spec's format, layout and schema.
#[derive(Clone)]
pub struct Encoder {
    format: FileFormat,
    compression: Compression,
    row_group_records: usize,
    event_time: EventTime,
    granularity: Granularity,
    types: HashMap<String, TypedPayload>,
    /// `Some(prefix)` when dead letters are written as objects.
    dead_letter_prefix: Option<String>,
}

impl Encoder {
    /// Builds the encoder, loading the descriptor set if the spec names one.
    pub fn new(spec: &SinkSettings) -> Result<Self, SchemaError> {
        let pool = match &spec.schema.descriptor_set {
            Some(path) => Some(load_descriptor_set(path)?),
            None => None,
        };
        Self::with_pool(spec, pool.as_ref())
    }

    /// Builds the encoder with an already loaded descriptor pool.
    pub fn with_pool(
        spec: &SinkSettings,
        pool: Option<&DescriptorPool>,
    ) -> Result<Self, SchemaError> {
        let mut types = HashMap::new();
        for (event_type, schema) in &spec.schema.types {
            let pool = pool.ok_or(SchemaError::NoDescriptorSet)?;
            let message = pool.get_message_by_name(&schema.message).ok_or_else(|| {
                SchemaError::UnknownMessage {
                    event_type: event_type.clone(),
                    message: schema.message.clone(),
                }
            })?;
            if let Some(field) = message
                .fields()
                .find(|f| METADATA_COLUMNS.contains(&f.name()))
            {
                return Err(SchemaError::Collision {
                    event_type: event_type.clone(),
                    message: schema.message.clone(),
                    field: field.name().to_string(),
                });
            }
            types.insert(
                event_type.clone(),
                TypedPayload {
                    message,
                    encoding: schema.encoding,
                },
            );
        }
        let compression = spec.format.compression.unwrap_or(match spec.format.kind {
            FileFormat::Parquet => Compression::Zstd,
            FileFormat::Jsonl => Compression::Gzip,
        });
        Ok(Self {
            format: spec.format.kind,
            compression,
            row_group_records: spec.format.row_group_records,
            event_time: spec.layout.event_time,
            granularity: spec.layout.granularity,
            types,
            dead_letter_prefix: spec
                .dead_letter
                .topic
                .is_none()
                .then(|| spec.dead_letter.prefix.clone()),
        })
    }

    /// Encodes the range of `topic`/`partition` that starts at `start`.
    pub fn encode(
        &self,
        topic: &str,
        partition: i32,
        start: layout::RangeStart,
        records: &[SinkRecord],
    ) -> Result<EncodedRange, EncodeError> {
        // Grouped by (event type, time bucket); the directory name is formatted once
        // per group, not per record.
        type Rows<'a> = Vec<(&'a SinkRecord, Option<DynamicMessage>)>;
        let mut groups: BTreeMap<(&str, i64), Rows<'_>> = BTreeMap::new();
        let width = layout::bucket_width_us(self.granularity);
        let mut dead_letters = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let decoded = match self.types.get(&record.event_type) {
                None => None,
                Some(typed) => match decode(typed, &record.payload) {
                    Ok(message) => Some(message),
                    Err(reason) => {
                        dead_letters.push(DeadLetter { index, reason });
                        continue;
                    }
                },
            };
            let bucket = record.event_time_us(self.event_time).div_euclid(width);
            groups
                .entry((&record.event_type, bucket))
                .or_default()
                .push((record, decoded));
        }
        let gzip = self.compression == Compression::Gzip;
        let name = layout::file_name(
            topic,
            partition,
            start,
            layout::extension(self.format, gzip),
        );
        let mut files = Vec::with_capacity(groups.len() + 1);
        for ((event_type, bucket), rows) in groups {
            let dir = layout::partition_dir(event_type, bucket * width, self.granularity);
            let bytes = match self.format {
                FileFormat::Parquet => self.parquet(topic, partition, event_type, &rows)?,
                FileFormat::Jsonl => {
                    let lines = rows.iter().map(|(r, m)| {
                        let mut object = metadata_json(topic, partition, r);
                        let (key, value) = payload_json(r, m.as_ref());
                        object.insert(key.into(), value);
                        object
                    });
                    jsonl(lines, gzip)?
                }
            };
            files.push(EncodedFile {
                path: format!("{dir}/{name}"),
                bytes,
                records: rows.len(),
                dead_letter: false,
            });
        }
        if let (Some(prefix), false) = (&self.dead_letter_prefix, dead_letters.is_empty()) {
            let lines = dead_letters.iter().map(|d| {
                let record = &records[d.index];
                let mut object = metadata_json(topic, partition, record);
                object.insert("reason".into(), Json::String(d.reason.clone()));
                object.insert(
                    "payload_base64".into(),
                    Json::String(base64::engine::general_purpose::STANDARD.encode(&record.payload)),
                );
                object
            });
            files.push(EncodedFile {
                path: format!(
                    "{}/{}",
                    layout::dead_letter_dir(prefix, topic),
                    layout::file_name(topic, partition, start, "jsonl")
                ),
                bytes: jsonl(lines, false)?,
                records: dead_letters.len(),
                dead_letter: true,
            });
        }
        Ok(EncodedRange {
            files,
            dead_letters,
        })
    }

    fn parquet(
        &self,
        topic: &str,
        partition: i32,
        event_type: &str,
        rows: &[(&SinkRecord, Option<DynamicMessage>)],
    ) -> Result<Bytes, EncodeError> {
        let records: Vec<&SinkRecord> = rows.iter().map(|(r, _)| *r).collect();
        let (mut fields, mut columns) = metadata_columns(topic, partition, &records);
        match self.types.get(event_type) {
            Some(typed) => {
                let mut message_columns = MessageColumns::new(&typed.message);
                for (_, message) in rows {
                    if let Some(message) = message {
                        message_columns.append(message);
                    }
                }
                fields.extend(message_columns.arrow_fields());
                columns.extend(message_columns.finish());
            }
            None => {
                let mut payload = BinaryBuilder::with_capacity(
                    records.len(),
                    records.iter().map(|r| r.payload.len()).sum(),
                );
                for r in &records {
                    payload.append_value(&r.payload);
                }
                fields.push(Arc::new(Field::new(
                    RAW_PAYLOAD_COLUMN,
                    DataType::Binary,
                    false,
                )));
                columns.push(Arc::new(payload.finish()));
            }
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let compression = match self.compression {
            Compression::Zstd => ParquetCompression::ZSTD(ZstdLevel::default()),
            Compression::Snappy => ParquetCompression::SNAPPY,
            Compression::Gzip => ParquetCompression::GZIP(GzipLevel::default()),
            Compression::None => ParquetCompression::UNCOMPRESSED,
        };
        let mut properties = WriterProperties::builder().set_compression(compression);
        // Dictionaries pay off for repeated values (topic, type, group); for unique
        // ones (offsets, times, payloads) they only cost hashing.
        for column in [
            "_offset",
            "_timestamp",
            "_key",
            "_sent_time",
            "_receive_time",
            RAW_PAYLOAD_COLUMN,
        ] {
            properties = properties.set_column_dictionary_enabled(ColumnPath::from(column), false);
        }
        let properties = properties
            .set_max_row_group_row_count(Some(self.row_group_records.max(1)))
            .set_created_by(concat!("weir ", env!("CARGO_PKG_VERSION")).into())
            .build();
        let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(properties))?;
        writer.write(&batch)?;
        Ok(Bytes::from(writer.into_inner()?))
    }
}

fn decode(typed: &TypedPayload, payload: &[u8]) -> Result<DynamicMessage, String> {
    match typed.encoding {
        PayloadEncoding::Protobuf => DynamicMessage::decode(typed.message.clone(), payload)
            .map_err(|e| {
                format!(
                    "payload is not a valid protobuf {}: {e}",
                    typed.message.full_name()
                )
            }),
        PayloadEncoding::Json => {
            let mut deserializer = serde_json::Deserializer::from_slice(payload);
            DynamicMessage::deserialize(typed.message.clone(), &mut deserializer)
                .and_then(|m| deserializer.end().map(|()| m))
                .map_err(|e| {
                    format!(
                        "payload is not valid JSON for {}: {e}",
                        typed.message.full_name()
                    )
                })
        }
    }
}

/// Loads a FileDescriptorSet file.
pub fn load_descriptor_set(path: &str) -> Result<DescriptorPool, SchemaError> {
    let fail = |reason: String| SchemaError::DescriptorSet {
        path: path.into(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    DescriptorPool::decode(bytes.as_slice()).map_err(|e| {
        fail(format!(
            "not a protobuf FileDescriptorSet (build one with `protoc --include_imports --descriptor_set_out` or `buf build -o`): {e}"
        ))
    })
}

fn metadata_columns(
    topic: &str,
    partition: i32,
    records: &[&SinkRecord],
) -> (Vec<FieldRef>, Vec<ArrayRef>) {
    let n = records.len();
    let mut topics = StringBuilder::with_capacity(n, n * topic.len());
    let mut partitions = Int32Builder::with_capacity(n);
    let mut offsets = Int64Builder::with_capacity(n);
    let mut timestamps = TimestampMillisecondBuilder::with_capacity(n).with_timezone(UTC);
    let mut keys = BinaryBuilder::new();
    let mut types = StringBuilder::new();
    let mut guids = StringBuilder::new();
    let mut groups = StringBuilder::new();
    let mut sent = TimestampMicrosecondBuilder::with_capacity(n).with_timezone(UTC);
    let mut received = TimestampMicrosecondBuilder::with_capacity(n).with_timezone(UTC);
    for r in records {
        topics.append_value(topic);
        partitions.append_value(partition);
        offsets.append_value(r.offset);
        timestamps.append_option(r.timestamp_ms);
        keys.append_option(r.key.as_deref());
        types.append_value(&r.event_type);
        guids.append_option(r.req_guid.as_deref());
        groups.append_option(r.conn_group.as_deref());
        sent.append_option(r.sent_time_us);
        received.append_option(r.receive_time_us);
    }
    let types_of = [
        (DataType::Utf8, false),
        (DataType::Int32, false),
        (DataType::Int64, false),
        (
            DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
            true,
        ),
        (DataType::Binary, true),
        (DataType::Utf8, false),
        (DataType::Utf8, true),
        (DataType::Utf8, true),
        (timestamp_type(), true),
        (timestamp_type(), true),
    ];
    let fields = METADATA_COLUMNS
        .iter()
        .zip(types_of)
        .map(|(name, (t, nullable))| Arc::new(Field::new(*name, t, nullable)))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(topics.finish()),
        Arc::new(partitions.finish()),
        Arc::new(offsets.finish()),
        Arc::new(timestamps.finish()),
        Arc::new(keys.finish()),
        Arc::new(types.finish()),
        Arc::new(guids.finish()),
        Arc::new(groups.finish()),
        Arc::new(sent.finish()),
        Arc::new(received.finish()),
    ];
    (fields, columns)
}

/// The metadata columns of a record as a JSON object (times as Unix numbers: ms for
/// `_timestamp`, µs for the others; the key as base64).
fn metadata_json(topic: &str, partition: i32, r: &SinkRecord) -> Map<String, Json> {
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
    ];
    METADATA_COLUMNS
        .iter()
        .zip(values)
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// A payload in JSON lines: `payload` holds the decoded message as proto3 JSON, or
/// the payload itself when it is JSON; any other payload is `payload_base64`.
fn payload_json(r: &SinkRecord, message: Option<&DynamicMessage>) -> (&'static str, Json) {
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

fn jsonl(
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

#[cfg(test)]
mod tests {
    use super::*;
    use weir_crds::SinkSpec;

    fn settings(spec: SinkSpec) -> SinkSettings {
        SinkSettings::try_from(spec).expect("a valid spec")
    }
    use arrow_array::cast::AsArray;
    use arrow_array::types::{
        Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType, UInt32Type,
        UInt64Type,
    };
    use arrow_array::{Array, StructArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use prost::Message as _;
    use prost_reflect::Value;
    use weir_crds::sink::TypeSchema;

    fn shop_pool() -> DescriptorPool {
        let set = protox::compile(
            ["shop.proto"],
            [concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")],
        )
        .unwrap();
        DescriptorPool::decode(set.encode_to_vec().as_slice()).unwrap()
    }

    /// A spec typing `page_view`; its descriptor set is the pool the tests pass to
    /// `with_pool`, so the file named here is never read.
    fn spec_for(encoding: PayloadEncoding) -> SinkSpec {
        let mut spec = SinkSpec::default();
        spec.schema.descriptor_set = Some("given-as-a-pool.binpb".into());
        spec.schema.types.insert(
            "page_view".into(),
            TypeSchema {
                message: "shop.v1.PageView".into(),
                encoding,
            },
        );
        spec
    }

    fn record(offset: i64, event_type: &str, payload: Vec<u8>) -> SinkRecord {
        SinkRecord {
            offset,
            timestamp_ms: Some(1_795_320_306_000),
            key: Some(b"k".to_vec()),
            payload,
            event_type: event_type.into(),
            req_guid: Some("g".into()),
            conn_group: None,
            sent_time_us: Some(1),
            receive_time_us: Some(1_795_320_306_000_000),
        }
    }

    fn full_page_view(pool: &DescriptorPool) -> DynamicMessage {
        let desc = pool.get_message_by_name("shop.v1.PageView").unwrap();
        let json = r#"{
            "flag": true, "i32": -5, "i64": "-6", "u32": 7, "u64": "18446744073709551615",
            "s32": -8, "s64": "-9", "fx32": 10, "fx64": "11", "sfx32": -12, "sfx64": "-13",
            "fl": 1.5, "db": 2.25, "page": "/home", "blob": "AAE=", "kind": "KIND_CLICK",
            "item": {"sku": "a", "quantity": 2, "price": 9.5},
            "items": [{"sku": "b"}, {"sku": "c", "quantity": 3}],
            "tags": ["x", "y"], "counts": {"zeta": "2", "alpha": "1"},
            "at": "2026-11-22T04:05:06.123456789Z", "maybe": "42", "note": "n",
            "tree": {"name": "root", "children": [{"name": "leaf"}]},
            "extra": {"k": [1, "two"]}
        }"#;
        let mut de = serde_json::Deserializer::from_str(json);
        DynamicMessage::deserialize(desc, &mut de).unwrap()
    }

    fn read_parquet(bytes: &Bytes) -> RecordBatch {
        let mut reader = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
            .unwrap()
            .build()
            .unwrap();
        let batch = reader.next().unwrap().unwrap();
        assert!(reader.next().is_none());
        batch
    }

    #[test]
    fn every_protobuf_type_becomes_its_column() {
        let pool = shop_pool();
        let encoder =
            Encoder::with_pool(&settings(spec_for(PayloadEncoding::Protobuf)), Some(&pool))
                .unwrap();
        let full = full_page_view(&pool).encode_to_vec();
        let empty = Vec::new();
        let records = [
            record(10, "page_view", full),
            record(11, "page_view", empty),
        ];
        let range = encoder.encode("t", 0, 10.into(), &records).unwrap();
        assert!(range.dead_letters.is_empty());
        assert_eq!(range.files.len(), 1);
        assert_eq!(
            range.files[0].path,
            "event_type=page_view/dt=2026-11-22/hour=04/t+0+00000000000000000010.parquet"
        );
        let batch = read_parquet(&range.files[0].bytes);
        assert_eq!(batch.num_rows(), 2);
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        assert_eq!(
            col("_offset").as_primitive::<Int64Type>().values(),
            &[10, 11]
        );
        assert!(col("flag").as_boolean().value(0));
        assert_eq!(col("i32").as_primitive::<Int32Type>().value(0), -5);
        assert_eq!(col("i64").as_primitive::<Int64Type>().value(0), -6);
        assert_eq!(col("u32").as_primitive::<UInt32Type>().value(0), 7);
        assert_eq!(col("u64").as_primitive::<UInt64Type>().value(0), u64::MAX);
        assert_eq!(col("s32").as_primitive::<Int32Type>().value(0), -8);
        assert_eq!(col("s64").as_primitive::<Int64Type>().value(0), -9);
        assert_eq!(col("fx32").as_primitive::<UInt32Type>().value(0), 10);
        assert_eq!(col("fx64").as_primitive::<UInt64Type>().value(0), 11);
        assert_eq!(col("sfx32").as_primitive::<Int32Type>().value(0), -12);
        assert_eq!(col("sfx64").as_primitive::<Int64Type>().value(0), -13);
        assert_eq!(col("fl").as_primitive::<Float32Type>().value(0), 1.5);
        assert_eq!(col("db").as_primitive::<Float64Type>().value(0), 2.25);
        assert_eq!(col("page").as_string::<i32>().value(0), "/home");
        assert_eq!(col("blob").as_binary::<i32>().value(0), &[0, 1]);
        assert_eq!(col("kind").as_string::<i32>().value(0), "KIND_CLICK");
        // Unset proto3 scalars carry their default; the unset enum its zero name.
        assert_eq!(col("i32").as_primitive::<Int32Type>().value(1), 0);
        assert_eq!(col("kind").as_string::<i32>().value(1), "KIND_UNSPECIFIED");

        let item = col("item");
        let item: &StructArray = item.as_struct();
        assert_eq!(
            item.column_by_name("sku")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "a"
        );
        assert_eq!(
            item.column_by_name("price")
                .unwrap()
                .as_primitive::<Float64Type>()
                .value(0),
            9.5
        );
        assert!(item.is_null(1), "an unset message is null");

        let items = col("items");
        let items = items.as_list::<i32>();
        assert_eq!(items.value_length(0), 2);
        assert_eq!(items.value_length(1), 0);
        let first = items.value(0);
        assert_eq!(
            first
                .as_struct()
                .column_by_name("sku")
                .unwrap()
                .as_string::<i32>()
                .value(1),
            "c"
        );
        let tags = col("tags");
        assert_eq!(
            tags.as_list::<i32>().value(0).as_string::<i32>().value(1),
            "y"
        );

        let counts = col("counts");
        let counts = counts.as_map();
        let keys = counts.value(0);
        let keys = keys.column(0).as_string::<i32>();
        assert_eq!(
            (keys.value(0), keys.value(1)),
            ("alpha", "zeta"),
            "map entries sorted"
        );

        let at = col("at");
        assert_eq!(
            at.data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert_eq!(
            at.as_primitive::<TimestampMicrosecondType>().value(0),
            1_795_320_306_123_456
        );
        assert!(at.is_null(1));
        assert_eq!(col("maybe").as_primitive::<Int64Type>().value(0), 42);
        assert!(col("maybe").is_null(1), "an unset wrapper is null");
        assert_eq!(col("note").as_string::<i32>().value(0), "n");
        assert!(col("note").is_null(1), "an unset optional is null");

        let tree = col("tree");
        let tree = tree.as_struct();
        let children = tree.column_by_name("children").unwrap();
        let children = children.as_list::<i32>().value(0);
        assert_eq!(
            children.as_string::<i32>().value(0),
            r#"{"name":"leaf"}"#,
            "a recursive message recurs as JSON"
        );
        let extra = col("extra");
        assert_eq!(extra.data_type(), &DataType::Utf8, "Struct is recursive");
        assert_eq!(extra.as_string::<i32>().value(0), r#"{"k":[1.0,"two"]}"#);
    }

    #[test]
    fn json_payloads_decode_with_the_same_descriptors() {
        let pool = shop_pool();
        let encoder =
            Encoder::with_pool(&settings(spec_for(PayloadEncoding::Json)), Some(&pool)).unwrap();
        let records = [
            record(
                0,
                "page_view",
                br#"{"page":"/a","kind":"KIND_VIEW","i64":"3"}"#.to_vec(),
            ),
            record(1, "page_view", br#"{"page": 5}"#.to_vec()),
            record(2, "page_view", br#"{"nope": 1}"#.to_vec()),
            record(3, "page_view", br#"{"page":"/b"} trailing"#.to_vec()),
        ];
        let range = encoder.encode("t", 1, 0.into(), &records).unwrap();
        let reasons: Vec<(usize, &str)> = range
            .dead_letters
            .iter()
            .map(|d| (d.index, d.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        for (_, reason) in &reasons {
            assert!(
                reason.starts_with("payload is not valid JSON for shop.v1.PageView"),
                "{reason}"
            );
        }
        assert!(reasons[1].1.contains("nope"), "{}", reasons[1].1);
        let data = &range.files[0];
        let batch = read_parquet(&data.bytes);
        assert_eq!(batch.num_rows(), 1);
        let page = batch.column_by_name("page").unwrap();
        assert_eq!(page.as_string::<i32>().value(0), "/a");
        // The dead letters of the range: one JSON line each, with the reason.
        let dead = range.files.iter().find(|f| f.dead_letter).unwrap();
        assert_eq!(
            dead.path,
            "_dead_letter/topic=t/t+1+00000000000000000000.jsonl"
        );
        let lines: Vec<serde_json::Value> = dead
            .bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["_offset"], 1);
        assert!(lines[0]["reason"].as_str().unwrap().contains("PageView"));
        assert!(lines[0]["payload_base64"].is_string());
    }

    #[test]
    fn a_bad_protobuf_payload_is_dead_lettered_with_the_reason() {
        let pool = shop_pool();
        let encoder =
            Encoder::with_pool(&settings(spec_for(PayloadEncoding::Protobuf)), Some(&pool))
                .unwrap();
        let records = [
            record(0, "page_view", vec![0xff, 0xff, 0xff]),
            record(1, "other", b"raw".to_vec()),
        ];
        let range = encoder.encode("t", 0, 0.into(), &records).unwrap();
        assert_eq!(range.dead_letters.len(), 1);
        assert!(
            range.dead_letters[0]
                .reason
                .starts_with("payload is not a valid protobuf shop.v1.PageView"),
            "{}",
            range.dead_letters[0].reason
        );
        // The untyped event keeps its bytes in `payload`.
        let data = range.files.iter().find(|f| !f.dead_letter).unwrap();
        assert!(data.path.starts_with("event_type=other/"));
        let batch = read_parquet(&data.bytes);
        let payload = batch.column_by_name(RAW_PAYLOAD_COLUMN).unwrap();
        assert_eq!(payload.as_binary::<i32>().value(0), b"raw");
    }

    #[test]
    fn a_range_splits_by_type_and_hour_and_encodes_deterministically() {
        let encoder = Encoder::new(&settings(SinkSpec::default())).unwrap();
        let hour = 3_600_000_000;
        let mut records = Vec::new();
        for (offset, (event_type, t)) in [("a", 0), ("b", 0), ("a", hour), ("a", 1)]
            .into_iter()
            .enumerate()
        {
            let mut r = record(offset as i64, event_type, vec![offset as u8]);
            r.receive_time_us = Some(1_795_320_000_000_000 + t);
            records.push(r);
        }
        let range = encoder.encode("t", 0, 0.into(), &records).unwrap();
        let paths: Vec<(&str, usize)> = range
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.records))
            .collect();
        assert_eq!(
            paths,
            vec![
                (
                    "event_type=a/dt=2026-11-22/hour=04/t+0+00000000000000000000.parquet",
                    2
                ),
                (
                    "event_type=a/dt=2026-11-22/hour=05/t+0+00000000000000000000.parquet",
                    1
                ),
                (
                    "event_type=b/dt=2026-11-22/hour=04/t+0+00000000000000000000.parquet",
                    1
                ),
            ]
        );
        let again = encoder.encode("t", 0, 0.into(), &records).unwrap();
        for (a, b) in range.files.iter().zip(&again.files) {
            assert_eq!(a.bytes, b.bytes, "same records, same bytes");
        }
    }

    #[test]
    fn json_lines_carry_metadata_and_payloads() {
        let mut spec = SinkSpec::default();
        spec.format.kind = FileFormat::Jsonl;
        let encoder = Encoder::new(&settings(spec)).unwrap();
        let records = [
            record(0, "a", br#"{"x":1}"#.to_vec()),
            record(1, "a", vec![0xff]),
        ];
        let range = encoder.encode("t", 0, 0.into(), &records).unwrap();
        let file = &range.files[0];
        assert!(file.path.ends_with("t+0+00000000000000000000.jsonl.gz"));
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(file.bytes.as_ref()),
            &mut text,
        )
        .unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["payload"]["x"], 1);
        assert_eq!(lines[0]["_topic"], "t");
        assert_eq!(lines[0]["_key"], "aw==");
        assert_eq!(lines[1]["payload_base64"], "/w==");
        assert!(lines[1].get("payload").is_none());
    }

    #[test]
    fn schema_errors_name_the_setting() {
        let pool = shop_pool();
        let mut spec = spec_for(PayloadEncoding::Protobuf);
        spec.schema.types.get_mut("page_view").unwrap().message = "shop.v1.Nope".into();
        let error = Encoder::with_pool(&settings(spec), Some(&pool))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            error,
            "schema.types.page_view.message: \"shop.v1.Nope\" is not in the descriptor set"
        );
        let error = load_descriptor_set("/nonexistent.pb")
            .err()
            .unwrap()
            .to_string();
        assert!(error.starts_with("schema.descriptorSet: cannot load /nonexistent.pb"));
        let garbage = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(garbage.path(), b"\xff\xff").unwrap();
        let error = load_descriptor_set(garbage.path().to_str().unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("not a protobuf FileDescriptorSet"),
            "{error}"
        );
        let _ = Value::Bool(true);
    }
}
