//! A flushed range of records into files: decode payloads, group by partition
//! directory, write Parquet or JSON lines. Pure: the same records give the same files
//! (names and bytes), which is what lets the sink redo a range after a crash.
//!
//! Every record ends up in exactly one place: a data file of its (event type, time)
//! directory, or, when its payload does not decode as its configured message, the
//! dead letters of the range, with the reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, FieldRef, Schema, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use weir_crds::settings::SinkSettings;
use weir_crds::sink::{Compression, EventTime, FileFormat, Granularity, PayloadEncoding};

use super::buffer::SinkRecord;
use super::columns::{MessageColumns, UTC, timestamp_type};
use super::layout;
use jsonl::{dead_letter_json, jsonl, metadata_json, payload_json};

mod jsonl;

/// The metadata columns every file starts with, in order.
pub const METADATA_COLUMNS: [&str; 11] = [
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
    "_tenant",
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

/// The records of one file, with their decoded payloads.
type Rows<'a> = Vec<(&'a SinkRecord, Option<DynamicMessage>)>;

/// What puts records in one file: (tenant, event type, time bucket).
type FileKey<'a> = (Option<&'a str>, &'a str, i64);

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
        let width = layout::bucket_width_us(self.granularity);
        let (groups, dead_letters) = self.group(records, width);
        let gzip = self.compression == Compression::Gzip;
        let name = layout::file_name(
            topic,
            partition,
            start,
            layout::extension(self.format, gzip),
        );
        let mut files = Vec::with_capacity(groups.len() + 1);
        for ((tenant, event_type, bucket), rows) in groups {
            let dir = layout::partition_dir(tenant, event_type, bucket * width, self.granularity);
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
            let lines = dead_letters
                .iter()
                .map(|d| dead_letter_json(topic, partition, &records[d.index], &d.reason));
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

    /// Decodes the typed payloads and groups the records by (event type, time bucket),
    /// so each directory name is formatted once per group, not per record. Payloads
    /// that do not decode become dead letters.
    fn group<'a>(
        &self,
        records: &'a [SinkRecord],
        width: i64,
    ) -> (BTreeMap<FileKey<'a>, Rows<'a>>, Vec<DeadLetter>) {
        let mut groups: BTreeMap<FileKey<'_>, Rows<'_>> = BTreeMap::new();
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
                .entry((record.tenant.as_deref(), &record.event_type, bucket))
                .or_default()
                .push((record, decoded));
        }
        (groups, dead_letters)
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
    let mut tenants = StringBuilder::new();
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
        tenants.append_option(r.tenant.as_deref());
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
        (DataType::Utf8, true),
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
        Arc::new(tenants.finish()),
    ];
    (fields, columns)
}

#[cfg(test)]
mod tests;
