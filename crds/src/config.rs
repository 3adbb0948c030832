//! Configuration text: one YAML file plus environment overrides, read into typed specs,
//! and the error every configuration check returns.
//!
//! The file is either a bare spec ([`PipelineSpec`] for the gateway, [`SinkSpec`] for the
//! sink) or a Kubernetes manifest of kind `IngestPipeline` / `SinkBinding`, whose `spec`
//! is used (minus `workload` and `pipelineRef`, which only the operator reads).
//! Environment variables named `WEIR__<PATH>` override single fields: `__` separates
//! levels and snake_case segments become camelCase, so
//! `WEIR__KAFKA__BOOTSTRAP_SERVERS=broker:9092` sets `kafka.bootstrapServers`. A segment
//! containing a `.` is kept verbatim (`WEIR__KAFKA__PROPERTIES__linger.ms=5`). Values are
//! read as YAML scalars (quote a number that must stay a string), except in the string
//! maps `kafka.properties` and `storage.options`, whose keys and values are taken
//! exactly as written: a password `abc #x` or a value `0x1F` must reach librdkafka or
//! the store unchanged, not as a YAML comment or the number 31.
//!
//! Reading only parses; [`crate::settings`] checks what the types alone cannot, once.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use crate::rules::Kind;
use crate::{PipelineSpec, SinkSpec};

/// A configuration that cannot be used, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML or one of its fields is malformed.
    #[error("{0}")]
    Parse(String),
    /// A field holds a value that cannot work.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, as a path in the spec.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Deserializes YAML text into `T`, naming the path of a field that does not fit.
pub fn from_yaml_str<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    crate::yaml::check_nesting(text).map_err(ConfigError::Parse)?;
    let value: Value = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    from_value(value)
}

fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ConfigError> {
    // An empty file is an empty mapping: every field takes its default.
    let value = if value.is_null() {
        Value::Mapping(Mapping::new())
    } else {
        value
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ConfigError::Parse(e.into_inner().to_string())
        } else {
            ConfigError::Parse(format!("{path}: {}", e.into_inner()))
        }
    })
}

/// The error for a field whose value cannot work.
pub(crate) fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The prefix of override variables.
pub const ENV_PREFIX: &str = "WEIR__";

/// Reads the pipeline spec from an optional file and the given environment. The spec
/// is checked when it becomes [`crate::settings::GatewaySettings`].
pub fn read_pipeline(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<PipelineSpec, ConfigError> {
    read_spec(path, env, Kind::IngestPipeline)
}

/// Reads the sink spec from an optional file and the given environment. The spec is
/// checked when it becomes [`crate::settings::SinkSettings`].
pub fn read_sink(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<SinkSpec, ConfigError> {
    read_spec(path, env, Kind::SinkBinding)
}

/// The spec of a `kind` manifest (or a bare spec) with the environment's overrides,
/// typed, then held to the CRD's rules.
fn read_spec<T: DeserializeOwned>(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    kind: Kind,
) -> Result<T, ConfigError> {
    let value = load_value(path, env, kind.name())?;
    let spec = from_value(value.clone())?;
    check_rules(kind, &value)?;
    Ok(spec)
}

/// The CRD's CEL rules on a spec whose fields have the right types: what the API server
/// refuses, `weir gateway -f` and `weir sink -f` refuse too.
fn check_rules(kind: Kind, value: &Value) -> Result<(), ConfigError> {
    let json = serde_json::to_value(value).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let broken = crate::rules::broken_in_spec(kind, &json);
    let Some(first) = broken.first() else {
        return Ok(());
    };
    // The first rule names the field; the others follow in the message.
    let mut message = first.message.clone();
    for other in &broken[1..] {
        message.push_str(&format!("; {other}"));
    }
    Err(invalid(&first.field, message))
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
            crate::yaml::check_nesting(&text)
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
        map.remove(crate::WORKLOAD_KEY);
        map.remove(crate::PIPELINE_REF_KEY);
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

/// The maps of strings whose entries environment overrides set verbatim.
const STRING_MAPS: [[&str; 2]; 2] = [["kafka", "properties"], ["storage", "options"]];

fn apply_env_overrides(value: &mut Value, env: impl IntoIterator<Item = (String, String)>) {
    for (key, raw) in env {
        let Some(path) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let mut segments: Vec<String> = path.split("__").map(camel_case).collect();
        let in_string_map =
            segments.len() == 3 && STRING_MAPS.iter().any(|m| segments[..2] == m[..]);
        if in_string_map {
            // A map's key is the option's own name (`aws_secret_access_key`), as written.
            segments[2] = path.rsplit("__").next().unwrap_or_default().to_string();
        }
        let parsed = if in_string_map {
            Value::String(raw)
        } else {
            match crate::yaml::check_nesting(&raw) {
                Ok(()) => serde_yaml::from_str::<Value>(&raw).unwrap_or(Value::String(raw)),
                Err(_) => Value::String(raw),
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deeply_nested_yaml_is_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep.yaml");
        std::fs::write(&path, format!("limits: {}", "[".repeat(100_000))).unwrap();
        let started = std::time::Instant::now();
        let error = read_pipeline(Some(&path), []).unwrap_err().to_string();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(
            error.contains("line 1: YAML nested deeper than 64 levels"),
            "{error}"
        );
    }
    use crate::pipeline::AckMode;
    use crate::settings::GatewaySettings;
    use std::time::Duration;

    /// Reads and checks a pipeline spec, as the gateway does.
    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<PipelineSpec, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, text).unwrap();
        let spec = read_pipeline(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        GatewaySettings::try_from(spec.clone())?;
        Ok(spec)
    }

    #[test]
    fn defaults_match_raccoon() {
        let spec = read_pipeline(None, []).unwrap();
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
    fn string_map_overrides_are_taken_verbatim() {
        let spec = load_text(
            "",
            &[
                ("WEIR__KAFKA__PROPERTIES__sasl.password", "abc #x"),
                ("WEIR__KAFKA__PROPERTIES__batch.num.messages", "0x1F"),
                ("WEIR__KAFKA__PROPERTIES__enable.idempotence", "true"),
                ("WEIR__LIMITS__MAX_EVENTS_PER_BATCH", "0x1F"),
            ],
        )
        .unwrap();
        let properties = &spec.kafka.properties;
        assert_eq!(properties["sasl.password"], "abc #x");
        assert_eq!(properties["batch.num.messages"], "0x1F");
        assert_eq!(properties["enable.idempotence"], "true");
        assert_eq!(
            spec.limits.max_events_per_batch, 31,
            "other fields stay YAML"
        );
        let sink = read_sink(
            None,
            [(
                "WEIR__STORAGE__OPTIONS__aws_secret_access_key".to_string(),
                "s3cr3t: #1".to_string(),
            )],
        )
        .unwrap();
        assert_eq!(sink.storage.options["aws_secret_access_key"], "s3cr3t: #1");
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
                // The CRD's rule on the item, as the API server reports it.
                "topics[1]: a topic name is",
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
        let err = read_pipeline(Some(Path::new("/nonexistent/weir.yaml")), []).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/weir.yaml"));
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn shipped_example_pipeline_loads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pipeline.yaml");
        let spec = super::read_pipeline(Some(&path), []).unwrap();
        crate::settings::GatewaySettings::try_from(spec.clone())
            .expect("examples/pipeline.yaml is valid");
        assert_eq!(spec.topics.len(), 3);
        assert_eq!(spec.kafka.properties["linger.ms"], "5");
    }

    #[test]
    fn shipped_example_sink_loads_without_the_operator_keys() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sink.yaml");
        let spec = super::read_sink(Some(&path), []).unwrap();
        crate::settings::SinkSettings::try_from(spec.clone()).expect("examples/sink.yaml is valid");
        assert_eq!(spec.source.group_id, "clickstream-parquet");
        assert_eq!(spec.storage.url, "s3://analytics/events");
        assert!(!spec.storage.path_style);
    }

    #[test]
    fn a_sink_refuses_a_pipeline_manifest_and_env_overrides_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, "kind: IngestPipeline\nspec: {}\n").unwrap();
        let error = super::read_sink(Some(&path), []).unwrap_err().to_string();
        assert_eq!(
            error,
            "kind: expected SinkBinding, found String(\"IngestPipeline\")"
        );
        let spec = super::read_sink(
            None,
            [("WEIR__FLUSH__MAX_AGE".to_string(), "10s".to_string())],
        )
        .unwrap();
        assert_eq!(spec.flush.max_age, std::time::Duration::from_secs(10));
    }
}
