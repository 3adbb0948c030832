//! ConfigMap: one YAML document under one key, mounted read-only into a workload.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Volume};
use serde::Serialize;

use super::Owner;

/// The ConfigMap `name` holding `yaml` under `key`.
pub(super) fn config_map(
    owner: &Owner,
    name: &str,
    component: &str,
    key: &str,
    yaml: String,
) -> ConfigMap {
    ConfigMap {
        metadata: owner.meta(name, component),
        data: Some(BTreeMap::from([(key.to_string(), yaml)])),
        ..ConfigMap::default()
    }
}

/// The pod volume `name` of the ConfigMap `config_map`.
pub(super) fn config_volume(name: &str, config_map: &str) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A spec as the YAML a data-plane binary reads.
pub(super) fn to_yaml(value: &impl Serialize) -> String {
    serde_yaml::to_string(value).expect("specs serialize to YAML")
}
