//! Every configuration field has a line in the README's configuration reference.

use schemars::schema_for;
use serde_json::Value;
use weir_crds::{PipelineSpec, SinkSpec};

fn collect(schema: &Value, defs: &Value, prefix: &str, out: &mut Vec<String>) {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        // Kubernetes' own types (tolerations, affinity, env, …) are documented by
        // Kubernetes: their insides are not listed.
        Some(r) if r.contains("io.k8s.") => return,
        Some(r) => &defs[r.trim_start_matches("#/$defs/")],
        None => schema,
    };
    if let Some(items) = schema.get("items") {
        return collect(items, defs, &format!("{prefix}[]"), out);
    }
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, property) in properties {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        out.push(path.clone());
        collect(property, defs, &path, out);
    }
}

fn assert_documented(schema: schemars::Schema, minimum: usize) {
    assert_documented_under(schema, "", minimum);
}

/// Fields of `schema` as paths under `prefix`. Kubernetes' own types (container
/// resources) are documented by Kubernetes, so their insides are not listed.
fn assert_documented_under(schema: schemars::Schema, prefix: &str, minimum: usize) {
    let schema = serde_json::to_value(schema).unwrap();
    let mut fields = Vec::new();
    collect(&schema, &schema["$defs"], prefix, &mut fields);
    fields.retain(|f| !f.contains(".resources."));
    assert!(fields.len() > minimum, "{fields:?}");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| !readme.contains(&format!("| `{f}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md lacks reference lines for {missing:?}"
    );
}

#[test]
fn every_pipeline_field_is_in_the_readme() {
    assert_documented(schema_for!(PipelineSpec), 30);
}

#[test]
fn every_sink_field_is_in_the_readme() {
    assert_documented(schema_for!(SinkSpec), 30);
}

#[test]
fn every_operator_field_is_in_the_readme() {
    use weir_crds::resources::{GatewayWorkload, PipelineRef, SinkWorkload};
    assert_documented_under(schema_for!(GatewayWorkload), "workload", 10);
    assert_documented_under(schema_for!(SinkWorkload), "workload", 5);
    assert_documented_under(schema_for!(PipelineRef), "pipelineRef", 0);
}
