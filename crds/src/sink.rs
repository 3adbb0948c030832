//! The data-plane part of a sink: everything `weir sink` reads. The operator's
//! SinkBinding resource embeds this spec (plus `pipelineRef` and `workload`, which only
//! the operator reads), and `weir dev` runs the same YAML against its embedded Kafka.
//!
//! Same conventions as [`crate::pipeline`]: camelCase keys, every field optional with a
//! default, unknown keys rejected.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::pipeline::{KafkaSpec, ShutdownSpec};

/// What a sink reads, how it buffers, and where and how it writes files.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SinkSpec {
    /// The Kafka cluster to read from. `deliveryTimeout` bounds dead-letter publishing.
    pub kafka: KafkaSpec,
    /// The consumer group and the topics it reads.
    pub source: SourceSpec,
    /// Where files are written.
    pub storage: StorageSpec,
    /// File format and compression.
    pub format: FormatSpec,
    /// How files are laid out under the storage prefix.
    pub layout: LayoutSpec,
    /// When buffered records are written out.
    pub flush: FlushSpec,
    /// Optional typed decoding of payloads into columns.
    pub schema: SchemaSpec,
    /// Where records that cannot be decoded go.
    pub dead_letter: DeadLetterSpec,
    /// Run forever (`continuous`), or drain the topics up to their end offsets at start
    /// and exit (`batch`, for scheduled jobs).
    pub mode: SinkMode,
    /// Addresses the sink listens on.
    pub listen: SinkListenSpec,
    /// Graceful shutdown: on SIGTERM buffered records are flushed and committed.
    pub shutdown: ShutdownSpec,
}

/// The consumer group and its topics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SourceSpec {
    /// Kafka consumer group; sink replicas with the same group share the partitions.
    pub group_id: String,
    /// Topics to read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// A regular expression of topics to read (librdkafka syntax, e.g.
    /// `^clickstream-.*-log$`); topics created later are picked up. Used with or instead
    /// of `topics`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_pattern: Option<String>,
    /// Only these event types are written; records of other types are skipped (and
    /// counted). Empty: every type.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    /// What to do when a partition's log no longer holds what the progress markers say
    /// was written (the topic was deleted and re-created, the sink points at another
    /// cluster, or an in-memory Kafka restarted): `fail` stops writing that partition
    /// and reports it (metric, log, `/readyz`); `newGeneration` writes the new log from
    /// its start under a new generation, beside the old files.
    pub on_offset_regression: OffsetRegressionPolicy,
}

impl Default for SourceSpec {
    fn default() -> Self {
        Self {
            group_id: "weir-sink".into(),
            topics: Vec::new(),
            topic_pattern: Some("^clickstream-.*-log$".into()),
            event_types: Vec::new(),
            on_offset_regression: OffsetRegressionPolicy::Fail,
        }
    }
}

/// What the sink does when a partition's offsets went back below what it wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OffsetRegressionPolicy {
    /// Stop writing the partition and report it until an operator decides.
    #[default]
    Fail,
    /// Write the new log from its start as the next generation: its files and markers
    /// carry the generation in their names, so nothing of the old log is overwritten.
    NewGeneration,
}

/// An object store: a local directory, S3 or another cloud store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StorageSpec {
    /// Where files go, prefix included: a local directory (`./weir-data`,
    /// `file:///data`), `s3://bucket/prefix`, `gs://bucket/prefix` or
    /// `az://container/prefix`. S3 credentials come from the usual `AWS_*` environment
    /// variables (or the files below); other clouds read their own environment.
    pub url: String,
    /// S3-compatible endpoint, e.g. `http://minio:9000`. Unset: AWS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region. Unset: `AWS_REGION`, else `us-east-1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style S3 requests (`endpoint/bucket/key`), which most S3-compatible servers
    /// need. `false` uses virtual-hosted style (`bucket.endpoint/key`).
    pub path_style: bool,
    /// A file holding the S3 access key id (e.g. a mounted Secret). Overrides the
    /// environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id_file: Option<String>,
    /// A file holding the S3 secret access key. Overrides the environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<String>,
    /// Files larger than this are uploaded in parts of this size (multipart upload).
    #[serde(with = "crate::byte_size")]
    #[schemars(schema_with = "crate::byte_size::schema")]
    pub part_size: usize,
    /// Further object-store options passed through (the `object_store` crate's keys,
    /// e.g. `aws_session_token`, `google_service_account`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            url: "./weir-data".into(),
            endpoint: None,
            region: None,
            path_style: true,
            access_key_id_file: None,
            secret_access_key_file: None,
            part_size: 16 << 20,
            options: BTreeMap::new(),
        }
    }
}

/// File format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FormatSpec {
    /// `parquet` (columnar, typed) or `jsonl` (one JSON object per line).
    pub kind: FileFormat,
    /// Compression. Parquet: `zstd`, `snappy`, `gzip` or `none`; JSON lines: `gzip` or
    /// `none`. Unset: zstd for Parquet, gzip for JSON lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Rows per Parquet row group.
    pub row_group_records: usize,
}

impl Default for FormatSpec {
    fn default() -> Self {
        Self {
            kind: FileFormat::Parquet,
            compression: None,
            row_group_records: 1_000_000,
        }
    }
}

/// File format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FileFormat {
    /// Apache Parquet.
    #[default]
    Parquet,
    /// Newline-delimited JSON.
    Jsonl,
}

/// File compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Compression {
    /// Zstandard.
    Zstd,
    /// Snappy (Parquet only).
    Snappy,
    /// gzip.
    Gzip,
    /// Uncompressed.
    None,
}

/// Hive-style layout: `<prefix>/event_type=<t>/dt=YYYY-MM-DD/hour=HH/<file>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LayoutSpec {
    /// Which time places a record in `dt=`/`hour=`: `receiveTime` (the gateway's clock),
    /// `sentTime` (the client's clock) or `kafkaTimestamp`. A record without the chosen
    /// time uses its Kafka timestamp.
    pub event_time: EventTime,
    /// `hour` adds `hour=HH` under `dt=`; `day` stops at `dt=`.
    pub granularity: Granularity,
}

impl Default for LayoutSpec {
    fn default() -> Self {
        Self {
            event_time: EventTime::ReceiveTime,
            granularity: Granularity::Hour,
        }
    }
}

/// The time that partitions files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EventTime {
    /// When the gateway received the event.
    ReceiveTime,
    /// The client's `sent_time`.
    SentTime,
    /// The Kafka record timestamp.
    KafkaTimestamp,
}

/// Time partition granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Granularity {
    /// `dt=YYYY-MM-DD/hour=HH`.
    Hour,
    /// `dt=YYYY-MM-DD`.
    Day,
}

/// Flush policy. A partition's buffer is written when any limit is reached; idle
/// partitions are flushed by age too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FlushSpec {
    /// Records buffered per Kafka partition before a flush.
    pub max_records: usize,
    /// Payload bytes buffered per Kafka partition before a flush.
    #[serde(with = "crate::byte_size")]
    #[schemars(schema_with = "crate::byte_size::schema")]
    pub max_bytes: usize,
    /// Longest time a record waits in a buffer.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,
    /// Bytes buffered across all partitions; above it the biggest buffers are flushed
    /// first.
    #[serde(with = "crate::byte_size")]
    #[schemars(schema_with = "crate::byte_size::schema")]
    pub memory_budget: usize,
}

impl Default for FlushSpec {
    fn default() -> Self {
        Self {
            max_records: 1_000_000,
            max_bytes: 128 << 20,
            max_age: Duration::from_secs(300),
            memory_budget: 1 << 30,
        }
    }
}

/// Typed payload decoding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SchemaSpec {
    /// A protobuf FileDescriptorSet file (`protoc --include_imports
    /// --descriptor_set_out`, `buf build -o`). Needed by any `types` entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub descriptor_set: Option<String>,
    /// Event type → how its payload decodes. Types not listed keep their payload as raw
    /// bytes in a `payload` column.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub types: BTreeMap<String, TypeSchema>,
}

/// How one event type's payload decodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TypeSchema {
    /// Fully qualified message name in the descriptor set, e.g. `shop.v1.PageView`.
    pub message: String,
    /// How the payload is encoded: protobuf binary or proto3 JSON.
    #[serde(default)]
    pub encoding: PayloadEncoding,
}

/// Payload encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PayloadEncoding {
    /// Protobuf binary.
    #[default]
    Protobuf,
    /// Proto3 JSON mapping.
    Json,
}

/// Dead letters: records whose payload cannot be decoded, with the reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DeadLetterSpec {
    /// Object prefix (under the storage prefix) where dead letters are written as JSON
    /// lines, exactly once like data files. Used when `topic` is unset.
    pub prefix: String,
    /// A Kafka topic to publish dead letters to instead (reason in the
    /// `weir-dead-letter-reason` header). At-least-once: a flush redone after a crash
    /// publishes its dead letters again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl Default for DeadLetterSpec {
    fn default() -> Self {
        Self {
            prefix: "_dead_letter".into(),
            topic: None,
        }
    }
}

/// Whether the sink runs forever or drains and exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SinkMode {
    /// Consume until stopped.
    #[default]
    Continuous,
    /// Consume up to the end offsets seen at start, flush, commit and exit.
    Batch,
}

/// Listen addresses of the sink.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SinkListenSpec {
    /// Prometheus `/metrics`, `/healthz` and `/readyz`, `host:port`.
    pub metrics: String,
}

impl Default for SinkListenSpec {
    fn default() -> Self {
        Self {
            metrics: "0.0.0.0:9091".into(),
        }
    }
}
