//! Reading configuration text into typed specs, and the error every configuration
//! check returns. The modules that validate parts of a spec (routing, auth, the sink's
//! settings) use this; the loader in the parent module uses them.

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

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
    weir_crds::yaml::check_nesting(text).map_err(ConfigError::Parse)?;
    let value: Value = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    from_value(value)
}

pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ConfigError> {
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
