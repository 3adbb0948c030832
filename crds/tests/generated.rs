//! The CRD YAML in `crds/generated/` is generated from the Rust types; this test fails
//! when it is stale. The Helm chart carries a real copy in `charts/weir-operator/crds/`
//! (a symlink would draw a warning from `helm lint` and break `helm package` on some
//! systems), checked the same way. Regenerate both with
//! `WEIR_UPDATE_CRDS=1 cargo test -p weir-crds --test generated`.

use weir_crds::resources::{IngestPipeline, SinkBinding};

#[test]
fn generated_crds_are_current() {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [
        crate_dir.join("generated"),
        crate_dir.join("../charts/weir-operator/crds"),
    ];
    for (file, rendered) in weir_crds::crd_manifests() {
        for dir in &dirs {
            let path = dir.join(file);
            if std::env::var_os("WEIR_UPDATE_CRDS").is_some() {
                std::fs::write(&path, &rendered).unwrap();
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == rendered,
                "{} is stale: run `WEIR_UPDATE_CRDS=1 cargo test -p weir-crds --test generated` and commit it",
                path.display()
            );
        }
    }
}

#[test]
fn the_examples_are_valid_resources() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let pipeline: IngestPipeline =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("pipeline.yaml")).unwrap())
            .expect("examples/pipeline.yaml is an IngestPipeline");
    assert_eq!(pipeline.spec.pipeline.topics.len(), 3);
    let sink: SinkBinding =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("sink.yaml")).unwrap())
            .expect("examples/sink.yaml is a SinkBinding");
    assert_eq!(sink.spec.pipeline_ref.name, "clickstream");
    // Unknown keys: the API server prunes them (the schema is structural) and `weir`'s
    // loaders reject them; serde's flatten cannot, so this type accepts them.
}

/// Every field of both CRD schemas has a description (`kubectl explain` shows it).
#[test]
fn every_field_is_described() {
    fn walk(node: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(properties) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, property) in properties {
                let path = format!("{path}.{name}");
                if property.get("description").is_none() {
                    missing.push(path.clone());
                }
                walk(property, &path, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
        if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
            walk(values, &format!("{path}{{}}"), missing);
        }
    }
    for (file, rendered) in weir_crds::crd_manifests() {
        let crd: serde_json::Value = serde_yaml::from_str(&rendered).unwrap();
        let mut missing = Vec::new();
        walk(
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
            "",
            &mut missing,
        );
        assert!(missing.is_empty(), "{file}: no description on {missing:?}");
    }
}

/// The API server knows these integer formats; any other draws a warning on every apply
/// (schemars' `uint` did, on ten fields).
#[test]
fn only_formats_the_api_server_knows() {
    fn walk(node: &serde_json::Value, path: &str, unknown: &mut Vec<String>) {
        match node {
            serde_json::Value::Object(map) => {
                if map.get("type").and_then(|t| t.as_str()) == Some("integer")
                    && let Some(format) = map.get("format").and_then(|f| f.as_str())
                    && !["int32", "int64"].contains(&format)
                {
                    unknown.push(format!("{path}: {format}"));
                }
                for (key, value) in map {
                    walk(value, &format!("{path}.{key}"), unknown);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), unknown);
                }
            }
            _ => {}
        }
    }
    for (file, rendered) in weir_crds::crd_manifests() {
        let crd: serde_json::Value = serde_yaml::from_str(&rendered).unwrap();
        let mut unknown = Vec::new();
        walk(&crd, "", &mut unknown);
        assert!(unknown.is_empty(), "{file}: {unknown:?}");
    }
}
