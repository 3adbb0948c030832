//! Checks of a [`SinkSpec`] that the types alone cannot make.

use weir_crds::SinkSpec;
use weir_crds::sink::{Compression, FileFormat};

use crate::config::parse::{ConfigError, invalid};

/// Checks the spec; the descriptor set is checked when the encoder loads it.
pub fn validate(spec: &SinkSpec) -> Result<(), ConfigError> {
    spec.listen
        .metrics
        .parse::<std::net::SocketAddr>()
        .map_err(|e| {
            invalid(
                "listen.metrics",
                format!("{:?} is not host:port ({e})", spec.listen.metrics),
            )
        })?;
    if spec.kafka.bootstrap_servers.trim().is_empty() {
        return Err(invalid(
            "kafka.bootstrapServers",
            "must name at least one broker",
        ));
    }
    if spec.source.group_id.trim().is_empty() {
        return Err(invalid("source.groupId", "must not be empty"));
    }
    let pattern = spec.source.topic_pattern.as_deref().unwrap_or("");
    if spec.source.topics.is_empty() && pattern.is_empty() {
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
    for (i, topic) in spec.source.topics.iter().enumerate() {
        weir_crds::kafka_names::check_topic_name(topic)
            .map_err(|m| invalid(&format!("source.topics[{i}]"), m))?;
    }
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
        weir_crds::kafka_names::check_topic_name(topic)
            .map_err(|m| invalid("deadLetter.topic", m))?;
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
    use crate::config::parse::from_yaml_str;

    fn check(yaml: &str) -> Result<(), String> {
        let spec: SinkSpec = from_yaml_str(yaml).map_err(|e| e.to_string())?;
        validate(&spec).map_err(|e| e.to_string())
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
