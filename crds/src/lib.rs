//! Types shared by Weir's data plane and its operator.
//!
//! `pipeline::PipelineSpec` is the whole configuration of the ingestion gateway. The
//! operator's IngestPipeline custom resource carries it as its spec (plus workload
//! settings under `spec.workload`), and `weir dev` / `weir gateway` read the same YAML.
//! [`config`] reads that YAML, [`settings`] checks it once into what the data plane
//! runs on (the operator validates with the same code), and [`routing`] compiles the
//! routing table. Nothing here does network I/O, so the operator links none of the
//! data plane's dependencies.

pub mod auth;
pub mod byte_size;
pub mod config;
pub mod kafka_names;
pub mod pipeline;
pub mod resources;
pub mod routing;
pub mod rules;
pub mod settings;
pub mod sink;
pub mod yaml;

pub use pipeline::PipelineSpec;
pub use sink::SinkSpec;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The key under an IngestPipeline's `spec` that only the operator reads (image,
/// replicas, resources, service). The data plane ignores it.
pub const WORKLOAD_KEY: &str = "workload";

/// The key under a SinkBinding's `spec` naming its IngestPipeline; only the operator
/// reads it.
pub const PIPELINE_REF_KEY: &str = "pipelineRef";

/// The CRD manifests generated from the types: `(file name, YAML)`, as committed in
/// `crds/generated/` and printed by `weir-operator crds`.
pub fn crd_manifests() -> Vec<(&'static str, String)> {
    let render = |crd| {
        format!(
            "# Generated from crds/src/resources.rs: do not edit.\n{}",
            serde_yaml::to_string(&crd).expect("CRDs serialize to YAML")
        )
    };
    let [pipelines, sinks] = crds();
    vec![
        ("ingestpipelines.weir.dev.yaml", render(pipelines)),
        ("sinkbindings.weir.dev.yaml", render(sinks)),
    ]
}

/// The CustomResourceDefinitions, IngestPipeline first, in the form an API server
/// accepts without warnings.
pub fn crds() -> [CustomResourceDefinition; 2] {
    use kube::CustomResourceExt;
    [
        kubernetes_formats(resources::IngestPipeline::crd()),
        kubernetes_formats(resources::SinkBinding::crd()),
    ]
}

/// schemars marks unsigned integers `format: uint*`, which the API server does not know
/// and warns about on every apply; `int64` with the `minimum: 0` schemars already sets
/// says the same in formats it knows.
fn kubernetes_formats(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(format)) = map.get_mut("format")
                    && format.starts_with("uint")
                {
                    *format = "int64".into();
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(crd).expect("a CRD serializes");
    walk(&mut value);
    serde_json::from_value(value).expect("only formats changed")
}
