//! The sink's settings: a [`SinkSpec`] checked once. The sink reads nothing else; the
//! operator builds the same settings to validate a binding before it deploys it.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::SinkSpec;
use crate::config::{ConfigError, invalid};
use crate::pipeline::{KafkaSpec, ShutdownSpec};
use crate::sink::{
    Compression, DeadLetterSpec, FileFormat, FlushSpec, FormatSpec, LayoutSpec, SchemaSpec,
    SinkMode, SourceSpec, StorageSpec,
};

/// A sink spec, checked.
#[derive(Clone, Debug)]
pub struct SinkSettings {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    /// The brokers and client properties.
    pub kafka: KafkaSpec,
    /// The consumer group, its topics, and what to do when a log goes back.
    pub source: SourceSpec,
    /// `source.eventTypes` as a set; empty keeps every type.
    pub event_types: HashSet<String>,
    /// The object store written to.
    pub storage: StorageSpec,
    /// File format and compression.
    pub format: FormatSpec,
    /// How file paths are partitioned.
    pub layout: LayoutSpec,
    /// When a partition's buffer is written.
    pub flush: FlushSpec,
    /// Typed decoding of protobuf payloads.
    pub schema: SchemaSpec,
    /// Where records that cannot be encoded go.
    pub dead_letter: DeadLetterSpec,
    /// Continuous, or one batch up to the end offsets seen at start.
    pub mode: SinkMode,
    /// Draining on stop.
    pub shutdown: ShutdownSpec,
}

impl TryFrom<SinkSpec> for SinkSettings {
    type Error = ConfigError;

    fn try_from(spec: SinkSpec) -> Result<Self, ConfigError> {
        let metrics_addr = super::parse_addr("listen.metrics", &spec.listen.metrics)?;
        check(&spec)?;
        Ok(Self {
            metrics_addr,
            event_types: spec.source.event_types.iter().cloned().collect(),
            kafka: spec.kafka,
            source: spec.source,
            storage: spec.storage,
            format: spec.format,
            layout: spec.layout,
            flush: spec.flush,
            schema: spec.schema,
            dead_letter: spec.dead_letter,
            mode: spec.mode,
            shutdown: spec.shutdown,
        })
    }
}

impl SinkSettings {
    /// Whether records of `event_type` are written (`source.eventTypes`).
    pub fn keeps(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.contains(event_type)
    }
}

/// Checks what the types alone cannot, except the metrics address, which is checked by
/// parsing it; the descriptor set is checked when the encoder loads it.
fn check(spec: &SinkSpec) -> Result<(), ConfigError> {
    super::gateway::check_kafka(&spec.kafka)?;
    check_source(&spec.source)?;
    check_output(spec)
}

fn check_source(source: &SourceSpec) -> Result<(), ConfigError> {
    if source.group_id.trim().is_empty() {
        return Err(invalid("source.groupId", "must not be empty"));
    }
    let pattern = source.topic_pattern.as_deref().unwrap_or("");
    if source.topics.is_empty() && pattern.is_empty() {
        return Err(invalid(
            "source.topics",
            "name at least one topic, or set source.topicPattern",
        ));
    }
    if !pattern.is_empty() && !pattern.starts_with('^') {
        return Err(invalid(
            "source.topicPattern",
            format!(
                "{pattern:?} must start with '^' (Kafka reads it as a regular expression only then)"
            ),
        ));
    }
    for (i, topic) in source.topics.iter().enumerate() {
        crate::kafka_names::check_topic_name(topic)
            .map_err(|m| invalid(&format!("source.topics[{i}]"), m))?;
    }
    Ok(())
}

/// Storage, format, flush limits, dead letters and schema.
fn check_output(spec: &SinkSpec) -> Result<(), ConfigError> {
    if spec.storage.url.trim().is_empty() {
        return Err(invalid("storage.url", "must name a directory or bucket"));
    }
    if spec.storage.part_size < 5 << 20 {
        return Err(invalid(
            "storage.partSize",
            "must be at least 5 MiB (S3's smallest multipart part)",
        ));
    }
    if let (FileFormat::Jsonl, Some(c @ (Compression::Zstd | Compression::Snappy))) =
        (spec.format.kind, spec.format.compression)
    {
        return Err(invalid(
            "format.compression",
            format!("{c:?} is for Parquet; JSON lines take gzip or none"),
        ));
    }
    if spec.format.row_group_records == 0 {
        return Err(invalid("format.rowGroupRecords", "must be greater than 0"));
    }
    let flush = &spec.flush;
    for (field, value) in [
        ("flush.maxRecords", flush.max_records),
        ("flush.maxBytes", flush.max_bytes),
        ("flush.memoryBudget", flush.memory_budget),
    ] {
        if value == 0 {
            return Err(invalid(field, "must be greater than 0"));
        }
    }
    if flush.max_bytes > 1 << 30 {
        return Err(invalid(
            "flush.maxBytes",
            "must be at most 1 GiB (a flushed range is encoded in memory)",
        ));
    }
    if flush.max_age.is_zero() {
        return Err(invalid("flush.maxAge", "must be greater than 0"));
    }
    if spec.dead_letter.topic.is_none() && spec.dead_letter.prefix.trim_matches('/').is_empty() {
        return Err(invalid(
            "deadLetter.prefix",
            "must not be empty (dead letters would mix with data files)",
        ));
    }
    if let Some(topic) = &spec.dead_letter.topic {
        crate::kafka_names::check_topic_name(topic).map_err(|m| invalid("deadLetter.topic", m))?;
    }
    if !spec.schema.types.is_empty() && spec.schema.descriptor_set.is_none() {
        return Err(invalid(
            "schema.descriptorSet",
            "schema.types needs a descriptor set to decode with",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml_str;

    fn check(yaml: &str) -> Result<(), String> {
        let spec: SinkSpec = from_yaml_str(yaml).map_err(|e| e.to_string())?;
        SinkSettings::try_from(spec)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid() {
        check("{}").unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        for (yaml, field) in [
            (
                "source: {topicPattern: 'clickstream'}",
                "source.topicPattern",
            ),
            ("source: {topicPattern: null}", "source.topics"),
            ("source: {topics: ['bad topic']}", "source.topics[0]"),
            ("storage: {partSize: 1024}", "storage.partSize"),
            (
                "format: {kind: jsonl, compression: zstd}",
                "format.compression",
            ),
            ("flush: {maxRecords: 0}", "flush.maxRecords"),
            ("flush: {maxAge: 0s}", "flush.maxAge"),
            ("deadLetter: {prefix: '/'}", "deadLetter.prefix"),
            (
                "schema: {types: {a: {message: x.Y}}}",
                "schema.descriptorSet",
            ),
            ("listen: {metrics: nowhere}", "listen.metrics"),
            ("flush: {maxAge: soon}", "flush.maxAge"),
            ("format: {kind: csv}", "format.kind"),
        ] {
            let error = check(yaml).expect_err(yaml);
            assert!(error.contains(field), "{yaml}: {error}");
        }
    }
}
