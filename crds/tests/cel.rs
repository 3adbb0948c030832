//! The CEL rules of the generated CRDs, evaluated as an API server would (kube-cel),
//! on the examples and on specs each rule must refuse.

mod common;

use common::schema;
use serde_json::{Value, json};

fn example(file: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The messages of the rules `object` breaks (empty when it passes).
fn broken(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(schema, object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

fn pipelines() -> Value {
    schema("ingestpipelines.weir.dev.yaml")
}

#[test]
fn the_examples_pass_every_rule() {
    assert_eq!(
        broken(&pipelines(), &example("pipeline.yaml"), None),
        Vec::<String>::new()
    );
    let sinks = schema("sinkbindings.weir.dev.yaml");
    assert_eq!(
        broken(&sinks, &example("sink.yaml"), None),
        Vec::<String>::new()
    );
}

fn with(mut object: Value, pointer: &str, value: Value) -> Value {
    *object
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer} exists")) = value;
    object
}

fn assert_refused(errors: Vec<String>, expected: &str) {
    assert!(
        errors.iter().any(|e| e.contains(expected)),
        "expected a failure containing {expected:?}, got {errors:?}"
    );
}

#[test]
fn autoscaling_minimum_cannot_exceed_maximum() {
    let object = with(
        example("pipeline.yaml"),
        "/spec/workload/autoscaling",
        json!({"minReplicas": 5, "maxReplicas": 2}),
    );
    assert_refused(
        broken(&pipelines(), &object, None),
        "minReplicas must not exceed maxReplicas",
    );
    let object = with(
        example("pipeline.yaml"),
        "/spec/workload/autoscaling",
        json!({"minReplicas": 1, "maxReplicas": 2, "targetCpuUtilization": 150}),
    );
    assert_refused(broken(&pipelines(), &object, None), "percentage");
}

#[test]
fn replicas_and_service_type_are_checked() {
    let mut object = example("pipeline.yaml");
    object["spec"]["workload"] = json!({"replicas": -1, "service": {"type": "Ingress"}});
    let errors = broken(&pipelines(), &object, None);
    assert_refused(errors.clone(), "replicas cannot be negative");
    assert_refused(errors, "type must be ClusterIP, NodePort or LoadBalancer");
}

#[test]
fn topic_names_follow_kafka_syntax() {
    for bad in ["", "with space", "slash/ed", "..", &"x".repeat(250)] {
        let object = with(
            example("pipeline.yaml"),
            "/spec/topics",
            json!([{"name": bad, "partitions": 3}]),
        );
        assert_refused(
            broken(&pipelines(), &object, None),
            "a topic name is 1 to 249",
        );
    }
    let object = with(
        example("pipeline.yaml"),
        "/spec/topics",
        json!([{"name": "Good.topic_name-1", "partitions": 0}]),
    );
    assert_refused(
        broken(&pipelines(), &object, None),
        "partitions must be at least 1",
    );
}

#[test]
fn partitions_can_grow_but_never_shrink() {
    let old = example("pipeline.yaml");
    let grown = with(old.clone(), "/spec/topics/0/partitions", json!(12));
    assert_eq!(
        broken(&pipelines(), &grown, Some(&old)),
        Vec::<String>::new()
    );
    let shrunk = with(old.clone(), "/spec/topics/0/partitions", json!(2));
    assert_refused(
        broken(&pipelines(), &shrunk, Some(&old)),
        "partitions can only grow",
    );
    // A new topic has no previous version to compare with.
    let mut added = old.clone();
    added["spec"]["topics"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "new-topic", "partitions": 1}));
    assert_eq!(
        broken(&pipelines(), &added, Some(&old)),
        Vec::<String>::new()
    );
}

#[test]
fn a_sink_must_name_its_pipeline() {
    let sinks = schema("sinkbindings.weir.dev.yaml");
    let object = with(example("sink.yaml"), "/spec/pipelineRef/name", json!(""));
    assert_refused(
        broken(&sinks, &object, None),
        "pipelineRef.name must name an IngestPipeline",
    );
}

/// Size fields take bytes or a size with a unit; the API server refuses negatives and
/// text that is not a size, as the loaders do.
#[test]
fn sizes_are_non_negative_numbers_or_sizes_with_units() {
    for good in [json!(4096), json!("128Mi"), json!("1.5GiB"), json!("64k")] {
        let mut object = example("pipeline.yaml");
        object["spec"]["limits"] = json!({"maxBatchBytes": good});
        assert_eq!(
            broken(&pipelines(), &object, None),
            Vec::<String>::new(),
            "{good}"
        );
    }
    for bad in [json!(-1), json!("12 parsecs"), json!("Mi")] {
        let mut object = example("pipeline.yaml");
        object["spec"]["limits"] = json!({"maxBatchBytes": bad});
        assert_refused(
            broken(&pipelines(), &object, None),
            "a size is a number of bytes",
        );
    }
}
