//! Configuration: one YAML file plus environment overrides, validated once at start.
//!
//! The file is either a bare spec ([`PipelineSpec`] for the gateway, [`SinkSpec`] for the
//! sink) or a Kubernetes manifest of kind `IngestPipeline` / `SinkBinding`, whose `spec`
//! is used (minus `workload` and `pipelineRef`, which only the operator reads). Environment variables named `WEIR__<PATH>` override single fields:
//! `__` separates levels and snake_case segments become camelCase, so
//! `WEIR__KAFKA__BOOTSTRAP_SERVERS=broker:9092` sets `kafka.bootstrapServers`. A segment
//! containing a `.` is kept verbatim (`WEIR__KAFKA__PROPERTIES__linger.ms=5`). Values are
//! read as YAML scalars: quote a number that must stay a string.

use std::path::Path;

use serde_yaml::{Mapping, Value};
use weir_crds::{PipelineSpec, SinkSpec};

pub mod parse;
use parse::from_value;
pub(crate) use parse::invalid;
pub use parse::{ConfigError, from_yaml_str};

/// The prefix of override variables.
pub const ENV_PREFIX: &str = "WEIR__";

/// Loads the pipeline spec from an optional file and the given environment.
pub fn load_pipeline(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<PipelineSpec, ConfigError> {
    let value = load_value(path, env, "IngestPipeline")?;
    let spec: PipelineSpec = from_value(value)?;
    validate(&spec)?;
    Ok(spec)
}

/// Loads the sink spec from an optional file and the given environment.
pub fn load_sink(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<SinkSpec, ConfigError> {
    let value = load_value(path, env, "SinkBinding")?;
    let spec: SinkSpec = from_value(value)?;
    crate::sink::config::validate(&spec)?;
    Ok(spec)
}

/// The spec as YAML: the file's (bare or from a manifest of `kind`) with the
/// environment's overrides applied.
fn load_value(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    kind: &str,
) -> Result<Value, ConfigError> {
    let mut value = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            weir_crds::yaml::check_nesting(&text)
                .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?;
            let value: Value = serde_yaml::from_str(&text)
                .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?;
            spec_of(value, kind)?
        }
        None => Value::Mapping(Mapping::new()),
    };
    apply_env_overrides(&mut value, env);
    Ok(value)
}

/// The spec part of a manifest of `kind`, or the document itself when it is a bare
/// spec. Keys only the operator reads are removed.
fn spec_of(value: Value, kind: &str) -> Result<Value, ConfigError> {
    let Value::Mapping(mut doc) = value else {
        return if value.is_null() {
            Ok(Value::Mapping(Mapping::new()))
        } else {
            Err(ConfigError::Parse(
                "the configuration must be a YAML mapping".into(),
            ))
        };
    };
    let Some(found) = doc.get("kind").cloned() else {
        return Ok(Value::Mapping(doc));
    };
    if found.as_str() != Some(kind) {
        return Err(ConfigError::Invalid {
            field: "kind".into(),
            message: format!("expected {kind}, found {found:?}"),
        });
    }
    let mut spec = doc.remove("spec").unwrap_or(Value::Mapping(Mapping::new()));
    if let Value::Mapping(map) = &mut spec {
        map.remove(weir_crds::WORKLOAD_KEY);
        map.remove(weir_crds::PIPELINE_REF_KEY);
    }
    Ok(spec)
}

fn camel_case(segment: &str) -> String {
    if segment.contains('.') {
        return segment.to_string();
    }
    let mut out = String::with_capacity(segment.len());
    let mut upper = false;
    for c in segment.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

fn apply_env_overrides(value: &mut Value, env: impl IntoIterator<Item = (String, String)>) {
    for (key, raw) in env {
        let Some(path) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let segments: Vec<String> = path.split("__").map(camel_case).collect();
        let parsed = match weir_crds::yaml::check_nesting(&raw) {
            Ok(()) => serde_yaml::from_str::<Value>(&raw).unwrap_or(Value::String(raw)),
            Err(_) => Value::String(raw),
        };
        set_path(value, &segments, parsed);
    }
}

fn set_path(node: &mut Value, segments: &[String], leaf: Value) {
    let Some((first, rest)) = segments.split_first() else {
        *node = leaf;
        return;
    };
    if !node.is_mapping() {
        *node = Value::Mapping(Mapping::new());
    }
    let map = node.as_mapping_mut().expect("made a mapping above");
    let child = map
        .entry(Value::String(first.clone()))
        .or_insert(Value::Null);
    set_path(child, rest, leaf);
}

/// Checks what the types alone cannot.
pub fn validate(spec: &PipelineSpec) -> Result<(), ConfigError> {
    for (field, addr) in [
        ("listen.http", &spec.listen.http),
        ("listen.grpc", &spec.listen.grpc),
        ("listen.metrics", &spec.listen.metrics),
    ] {
        addr.parse::<std::net::SocketAddr>()
            .map_err(|e| invalid(field, format!("{addr:?} is not host:port ({e})")))?;
    }
    if spec.kafka.bootstrap_servers.trim().is_empty() {
        return Err(invalid(
            "kafka.bootstrapServers",
            "must name at least one broker",
        ));
    }
    let timeout = spec.kafka.delivery_timeout;
    if timeout.is_zero() || timeout.as_millis() > i32::MAX as u128 {
        return Err(invalid(
            "kafka.deliveryTimeout",
            "must be between 1ms and 24 days",
        ));
    }
    let limits = &spec.limits;
    for (field, value) in [
        ("limits.maxBatchBytes", limits.max_batch_bytes),
        ("limits.maxEventsPerBatch", limits.max_events_per_batch),
        ("limits.maxInflightBytes", limits.max_inflight_bytes),
        (
            "limits.maxInflightBatchesPerConnection",
            limits.max_inflight_batches_per_connection,
        ),
        ("websocket.maxConnections", spec.websocket.max_connections),
        ("limits.maxConnections", limits.max_connections),
    ] {
        if value == 0 {
            return Err(invalid(field, "must be greater than 0"));
        }
    }
    // Byte budgets held as semaphore permits, which are u32.
    for (field, value) in [
        (
            "limits.maxInflightBytesPerConnection",
            limits.max_inflight_bytes_per_connection,
        ),
        (
            "websocket.maxQueuedAnswerBytes",
            spec.websocket.max_queued_answer_bytes,
        ),
        (
            "websocket.maxQueuedAnswerBytesTotal",
            spec.websocket.max_queued_answer_bytes_total,
        ),
    ] {
        if value == 0 || value > u32::MAX as usize {
            return Err(invalid(field, "must be between 1 byte and 4 GiB"));
        }
    }
    for (field, value) in [
        ("limits.headerReadTimeout", limits.header_read_timeout),
        (
            "limits.idleConnectionTimeout",
            limits.idle_connection_timeout,
        ),
        ("limits.writeTimeout", limits.write_timeout),
        ("limits.readTimeout", limits.read_timeout),
    ] {
        if value.is_zero() {
            return Err(invalid(field, "must be greater than 0"));
        }
    }
    let longest_call = limits.read_timeout
        + limits.admission_timeout
        + spec.kafka.delivery_timeout
        + crate::gateway::ingest::DELIVERY_GRACE;
    if limits.idle_connection_timeout <= longest_call {
        return Err(invalid(
            "limits.idleConnectionTimeout",
            format!(
                "must be longer than the longest call ({longest_call:?}: limits.readTimeout + limits.admissionTimeout + kafka.deliveryTimeout + 5s), or a client waiting for its answer would be disconnected"
            ),
        ));
    }
    if limits.max_batch_bytes > limits.max_inflight_bytes {
        return Err(invalid(
            "limits.maxBatchBytes",
            format!(
                "{} is larger than limits.maxInflightBytes ({}), so such a batch could never be admitted",
                limits.max_batch_bytes, limits.max_inflight_bytes
            ),
        ));
    }
    if limits.max_batch_bytes > u32::MAX as usize {
        return Err(invalid("limits.maxBatchBytes", "must be below 4 GiB"));
    }
    if spec.websocket.ping_interval.is_zero() {
        return Err(invalid("websocket.pingInterval", "must be greater than 0"));
    }
    if spec.websocket.idle_timeout <= spec.websocket.ping_interval {
        return Err(invalid(
            "websocket.idleTimeout",
            "must be longer than websocket.pingInterval, or live clients would be closed",
        ));
    }
    if let Some(i) = spec.auth.tokens.iter().position(|t| t.trim().is_empty()) {
        return Err(invalid(
            &format!("auth.tokens[{i}]"),
            "is empty; a blank token would let a request with an empty credential in",
        ));
    }
    if spec.identity.id_header.trim().is_empty() {
        return Err(invalid("identity.idHeader", "must not be empty"));
    }
    if spec.topics.len() > weir_crds::pipeline::MAX_TOPICS {
        return Err(invalid(
            "topics",
            format!(
                "lists {} topics; at most {} are allowed",
                spec.topics.len(),
                weir_crds::pipeline::MAX_TOPICS
            ),
        ));
    }
    for (i, topic) in spec.topics.iter().enumerate() {
        weir_crds::kafka_names::check_topic_name(&topic.name)
            .map_err(|m| invalid(&format!("topics[{i}].name"), m))?;
        if topic.partitions < 1 {
            return Err(invalid(
                &format!("topics[{i}].partitions"),
                "must be at least 1",
            ));
        }
    }
    if spec.routing.file.is_none() {
        crate::gateway::route::RoutingTable::compile(&spec.routing)
            .map_err(|e| invalid(&e.field, e.message))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deeply_nested_yaml_is_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep.yaml");
        std::fs::write(&path, format!("limits: {}", "[".repeat(100_000))).unwrap();
        let started = std::time::Instant::now();
        let error = load_pipeline(Some(&path), []).unwrap_err().to_string();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(
            error.contains("line 1: YAML nested deeper than 64 levels"),
            "{error}"
        );
    }
    use std::time::Duration;
    use weir_crds::pipeline::AckMode;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<PipelineSpec, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, text).unwrap();
        load_pipeline(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_match_raccoon() {
        let spec = load_pipeline(None, []).unwrap();
        assert_eq!(spec.listen.http, "0.0.0.0:8080");
        assert_eq!(spec.listen.grpc, "0.0.0.0:8081");
        assert_eq!(spec.listen.metrics, "0.0.0.0:9090");
        assert_eq!(spec.routing.default_pattern, "clickstream-%s-log");
        assert_eq!(spec.identity.default_group, "--default--");
        assert_eq!(spec.acks, AckMode::Sync);
        assert_eq!(load_text("", &[]).unwrap(), spec, "empty file = defaults");
    }

    #[test]
    fn manifest_and_bare_spec_read_the_same() {
        let bare = "acks: async\nkafka:\n  bootstrapServers: k:9092\n";
        let manifest = "apiVersion: weir.dev/v1alpha1\nkind: IngestPipeline\nmetadata:\n  name: p\nspec:\n  workload:\n    replicas: 3\n  acks: async\n  kafka:\n    bootstrapServers: k:9092\n";
        assert_eq!(
            load_text(bare, &[]).unwrap(),
            load_text(manifest, &[]).unwrap()
        );
        let err = load_text("kind: SinkBinding\nspec: {}\n", &[]).unwrap_err();
        assert!(err.to_string().starts_with("kind:"), "{err}");
    }

    #[test]
    fn env_overrides_fields() {
        let spec = load_text(
            "kafka:\n  bootstrapServers: a:1\n",
            &[
                ("WEIR__KAFKA__BOOTSTRAP_SERVERS", "b:2,c:3"),
                ("WEIR__KAFKA__PROPERTIES__linger.ms", "5"),
                ("WEIR__KAFKA__DELIVERY_TIMEOUT", "10s"),
                ("WEIR__ACKS", "async"),
                ("WEIR__LIMITS__MAX_BATCH_BYTES", "1000"),
                ("WEIR_LOG", "ignored: not an override"),
            ],
        )
        .unwrap();
        assert_eq!(spec.kafka.bootstrap_servers, "b:2,c:3");
        assert_eq!(spec.kafka.properties["linger.ms"], "5");
        assert_eq!(spec.kafka.delivery_timeout, Duration::from_secs(10));
        assert_eq!(spec.acks, AckMode::Async);
        assert_eq!(spec.limits.max_batch_bytes, 1000);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "kafka:\n  bootstrapServer: x\n",
                &[][..],
                "kafka.bootstrapServer: unknown field `bootstrapServer`",
            ),
            (
                "limits:\n  maxBatchBytes: lots\n",
                &[],
                "limits.maxBatchBytes",
            ),
            ("acks: maybe\n", &[], "acks: unknown variant `maybe`"),
            ("listen:\n  http: nowhere\n", &[], "listen.http"),
            (
                "routing:\n  defaultPattern: 'bad topic %s'\n",
                &[],
                "routing.defaultPattern",
            ),
            (
                "",
                &[("WEIR__KAFKA__DELIVERY_TIMEOUT", "soon")],
                "kafka.deliveryTimeout",
            ),
            (
                "limits:\n  maxBatchBytes: 10\n  maxInflightBytes: 5\n",
                &[],
                "limits.maxBatchBytes",
            ),
            (
                "websocket:\n  idleTimeout: 1s\n",
                &[],
                "websocket.idleTimeout",
            ),
            (
                "topics:\n  - name: ok\n  - name: 'no good'\n",
                &[],
                "topics[1].name",
            ),
            (
                "auth:\n  tokens: [good, '']\n",
                &[],
                "auth.tokens[1]: is empty",
            ),
            ("- a\n- b\n", &[], "mapping"),
        ];
        for (text, env, needle) in cases {
            let err = load_text(text, env).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
        let err = load_pipeline(Some(Path::new("/nonexistent/weir.yaml")), []).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/weir.yaml"));
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn shipped_example_pipeline_loads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pipeline.yaml");
        let spec = super::load_pipeline(Some(&path), []).expect("examples/pipeline.yaml is valid");
        assert_eq!(spec.topics.len(), 3);
        assert_eq!(spec.kafka.properties["linger.ms"], "5");
    }

    #[test]
    fn shipped_example_sink_loads_without_the_operator_keys() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sink.yaml");
        let spec = super::load_sink(Some(&path), []).expect("examples/sink.yaml is valid");
        assert_eq!(spec.source.group_id, "clickstream-parquet");
        assert_eq!(spec.storage.url, "s3://analytics/events");
        assert!(!spec.storage.path_style);
    }

    #[test]
    fn a_sink_refuses_a_pipeline_manifest_and_env_overrides_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, "kind: IngestPipeline\nspec: {}\n").unwrap();
        let error = super::load_sink(Some(&path), []).unwrap_err().to_string();
        assert_eq!(
            error,
            "kind: expected SinkBinding, found String(\"IngestPipeline\")"
        );
        let spec = super::load_sink(
            None,
            [("WEIR__FLUSH__MAX_AGE".to_string(), "10s".to_string())],
        )
        .unwrap();
        assert_eq!(spec.flush.max_age, std::time::Duration::from_secs(10));
    }
}
