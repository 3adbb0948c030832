//! Types shared by Weir's data plane and its operator.
//!
//! `pipeline::PipelineSpec` is the whole configuration of the ingestion gateway. The
//! operator's IngestPipeline custom resource carries it as its spec (plus workload
//! settings under `spec.workload`), and `weir dev` / `weir gateway` read the same YAML.

pub mod pipeline;
pub mod resources;
pub mod sink;

pub use pipeline::PipelineSpec;
pub use sink::SinkSpec;

/// The key under an IngestPipeline's `spec` that only the operator reads (image,
/// replicas, resources, service). The data plane ignores it.
pub const WORKLOAD_KEY: &str = "workload";

/// The key under a SinkBinding's `spec` naming its IngestPipeline; only the operator
/// reads it.
pub const PIPELINE_REF_KEY: &str = "pipelineRef";

/// The CRD manifests generated from the types: `(file name, YAML)`, as committed in
/// `crds/generated/` and printed by `weir-operator crds`.
pub fn crd_manifests() -> Vec<(&'static str, String)> {
    use kube::CustomResourceExt;
    let render = |crd| {
        format!(
            "# Generated from crds/src/resources.rs: do not edit.\n{}",
            serde_yaml::to_string(&crd).expect("CRDs serialize to YAML")
        )
    };
    vec![
        (
            "ingestpipelines.weir.dev.yaml",
            render(resources::IngestPipeline::crd()),
        ),
        (
            "sinkbindings.weir.dev.yaml",
            render(resources::SinkBinding::crd()),
        ),
    ]
}
