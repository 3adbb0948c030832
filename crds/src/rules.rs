//! The CRDs' CEL validation rules (`x-kubernetes-validations`), evaluated offline by
//! kube's CEL validator, the library the CRD tests use, so `weir-operator render` and
//! the data plane's loaders refuse what an API server with the CRDs would refuse.
//!
//! The rules are taken from the generated CRDs ([`crate::crds`]), never restated, so a
//! rule added to a type applies everywhere at once.

use std::sync::LazyLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The CRDs' schemas as JSON, generated once per process.
static SCHEMAS: LazyLock<[serde_json::Value; 2]> =
    LazyLock::new(|| crate::crds().map(|c| schema(&c)));

fn schema(crd: &CustomResourceDefinition) -> serde_json::Value {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).expect("a schema serializes"))
        .unwrap_or_default()
}

/// One of Weir's custom resource kinds; its value is its index in [`crate::crds`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `ingestpipelines.weir.dev`.
    IngestPipeline = 0,
    /// `sinkbindings.weir.dev`.
    SinkBinding = 1,
}

impl Kind {
    /// The kind as manifests name it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::IngestPipeline => "IngestPipeline",
            Kind::SinkBinding => "SinkBinding",
        }
    }

    /// The kind a manifest's `kind` names, if it is one of Weir's.
    pub fn from_name(name: &str) -> Option<Self> {
        [Kind::IngestPipeline, Kind::SinkBinding]
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

/// One broken rule: the field's path from the object's root and the rule's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenRule {
    /// e.g. `spec.workload.autoscaling`.
    pub field: String,
    /// The rule's message.
    pub message: String,
}

impl std::fmt::Display for BrokenRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The rules `object` (a whole resource, or `{"spec": …}`) breaks; empty when it passes.
/// Fields must already have the right types: typed parsing comes first.
pub fn broken(kind: Kind, object: &serde_json::Value) -> Vec<BrokenRule> {
    let schema = &SCHEMAS[kind as usize];
    match kube::core::cel::Validator::new().validate(schema, object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| BrokenRule {
                field: e.field_path.to_string(),
                message: e.message.to_string(),
            })
            .collect(),
    }
}

/// [`broken`] for a bare spec (`{"spec": spec}`), with fields as paths under `spec`.
pub fn broken_in_spec(kind: Kind, spec: &serde_json::Value) -> Vec<BrokenRule> {
    let object = serde_json::json!({ "spec": spec });
    broken(kind, &object)
        .into_iter()
        .map(|rule| BrokenRule {
            field: rule
                .field
                .strip_prefix("spec.")
                .unwrap_or(&rule.field)
                .to_string(),
            message: rule.message,
        })
        .collect()
}
