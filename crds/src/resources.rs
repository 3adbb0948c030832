//! The custom resources, API group `weir.dev`, version `v1alpha1`.
//!
//! - `IngestPipeline`: a [`PipelineSpec`] (what `weir gateway` reads) plus `workload`,
//!   how the operator runs the gateway (image, replicas or autoscaling, resources,
//!   service, Kafka credentials).
//! - `SinkBinding`: a [`SinkSpec`] (what `weir sink` reads) plus `pipelineRef`, the
//!   pipeline whose Kafka cluster it reads, and `workload` (replicas, or a cron schedule
//!   that makes it a batch job).
//!
//! Optional fields never serialize as null, and the operator never writes spec: what a
//! user applies is what GitOps tools compare against.

// kube's `printcolumn(type_ = …)` repeats per column, which clippy takes for a duplicate.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{PipelineSpec, SinkSpec};

/// An ingestion gateway: its data-plane configuration and how it runs.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "IngestPipeline",
    namespaced,
    status = "IngestPipelineStatus",
    derive = "Default",
    derive = "PartialEq",
    shortname = "ipl",
    category = "weir",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    scale(
        spec_replicas_path = ".spec.workload.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    doc = "An ingestion gateway: WebSocket, HTTP and gRPC in, Kafka out."
)]
#[serde(rename_all = "camelCase")]
pub struct IngestPipelineSpec {
    /// How the operator runs the gateway. `weir dev` and `weir gateway` ignore it.
    #[serde(default)]
    pub workload: GatewayWorkload,
    /// The gateway's configuration, exactly as `weir gateway -f` reads it.
    #[serde(flatten)]
    pub pipeline: PipelineSpec,
}

/// How the gateway runs.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayWorkload {
    /// Container image; unset uses the operator's default Weir image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Fixed replica count (also set by `kubectl scale`); ignored while `autoscaling` is
    /// set. Unset: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("replicas cannot be negative"))]
    pub replicas: Option<i32>,
    /// Horizontal autoscaling on CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The Service in front of the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSettings>,
    /// A Secret whose keys become `WEIR__KAFKA__PROPERTIES__<key>` environment variables
    /// (e.g. `sasl.username`, `sasl.password`, `ssl.ca.pem`): Kafka credentials stay out
    /// of the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_secret: Option<String>,
    /// Secrets the gateway's credentials and certificate come from. Each is mounted as
    /// files and the matching setting (`auth.apiKeysFile`, `auth.jwt.jwksFile`,
    /// `auth.jwt.hmacSecretFile`, `auth.tokensFile`, `listen.tls`) points at them; the
    /// gateway reloads them when the kubelet updates the mount, without a restart.
    #[serde(default, skip_serializing_if = "GatewaySecrets::is_empty")]
    pub secrets: GatewaySecrets,
    /// Scheduling, identity and logging of the gateway's pods.
    #[serde(default, skip_serializing_if = "PodSettings::is_empty")]
    pub pod: PodSettings,
}

/// Where the gateway's credentials and certificate come from.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySecrets {
    /// The API keys file (`auth.apiKeysFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<SecretKeyRef>,
    /// A JWKS document (`auth.jwt.jwksFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<SecretKeyRef>,
    /// The HS256 secret (`auth.jwt.hmacSecretFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<SecretKeyRef>,
    /// Static tokens, one per line (`auth.tokensFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<SecretKeyRef>,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`), for example one
    /// cert-manager keeps renewed (`listen.tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
}

impl GatewaySecrets {
    /// Whether nothing is set (so it does not serialize).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One key of a Secret in the resource's namespace.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret.
    pub name: String,
    /// The key within it.
    pub key: String,
}

/// What a workload's pods carry besides the container Weir defines: the pod-level
/// settings platform teams set on every workload. Each is passed to the pod template
/// unchanged; Kubernetes validates them as it does for any pod.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSettings {
    /// The ServiceAccount the pods run as, e.g. one annotated for IRSA or Workload
    /// Identity so the sink reaches S3 without static keys. Unset: the namespace's
    /// `default`. The API token is still not mounted: those webhooks inject their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,
    /// Node labels the pods must run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod (anti-)affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the pods spread across zones and nodes. A constraint without a
    /// `labelSelector` gets one matching this workload's pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Secrets for pulling the image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Extra environment variables of the container, after Weir's own, e.g. `WEIR_LOG`
    /// for the log filter or `WEIR__…` configuration overrides from a Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Annotations of the pods (not of the Deployment).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra labels of the pods. Weir's own labels win over these, so the selector keeps
    /// matching.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Log format of the container: `json` (unset; one object per line, for log
    /// collectors) or `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<PodLogFormat>,
}

impl PodSettings {
    /// Whether nothing is set (so it does not serialize).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A pod's log format. The names are those of `weir --log-format`.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines, no colour.
    Text,
}

impl PodLogFormat {
    /// The value of `--log-format`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Text => "text",
        }
    }
}

/// CPU-based horizontal autoscaling.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct Autoscaling {
    /// Fewest replicas.
    #[x_kube(validation = Rule::new("self >= 1").message("minReplicas must be at least 1"))]
    pub min_replicas: i32,
    /// Most replicas.
    pub max_replicas: i32,
    /// Target average CPU utilization, percent of the request.
    #[serde(default = "default_cpu_target")]
    #[x_kube(validation = Rule::new("self > 0 && self <= 100").message("targetCpuUtilization is a percentage"))]
    pub target_cpu_utilization: i32,
}

fn default_cpu_target() -> i32 {
    70
}

/// The gateway's Service.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSettings {
    /// `ClusterIP` (unset), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self in ['ClusterIP', 'NodePort', 'LoadBalancer']").message("type must be ClusterIP, NodePort or LoadBalancer"))]
    pub type_: Option<String>,
    /// Service port for HTTP and WebSocket. Unset: 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<i32>,
    /// Service port for gRPC. Unset: 81.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_port: Option<i32>,
    /// Annotations for the Service (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What the operator observed about an IngestPipeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestPipelineStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, with a reason a person can act on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Desired replicas (the scale subresource reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Replicas passing readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Label selector of the gateway pods (the scale subresource reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// In-cluster address of the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Topics created or grown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics_ensured: Vec<String>,
}

/// A sink reading a pipeline's topics into files.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "SinkBinding",
    namespaced,
    status = "SinkBindingStatus",
    derive = "Default",
    derive = "PartialEq",
    shortname = "snk",
    category = "weir",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Pipeline",
        type_ = "string",
        json_path = ".spec.pipelineRef.name"
    ),
    printcolumn(name = "Group", type_ = "string", json_path = ".status.consumerGroup"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A sink: a pipeline's Kafka topics into exactly-once Parquet or JSON-lines files."
)]
#[serde(rename_all = "camelCase")]
pub struct SinkBindingSpec {
    /// The IngestPipeline (same namespace) whose Kafka cluster this sink reads.
    pub pipeline_ref: PipelineRef,
    /// How the operator runs the sink. `weir sink` ignores it.
    #[serde(default)]
    pub workload: SinkWorkload,
    /// The sink's configuration, exactly as `weir sink -f` reads it. `kafka` is taken
    /// from the pipeline when unset here.
    #[serde(flatten)]
    pub sink: SinkSpec,
}

/// A reference to an IngestPipeline.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineRef {
    /// The pipeline's name.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self != ''").message("pipelineRef.name must name an IngestPipeline"))]
    pub name: String,
}

/// How the sink runs.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkWorkload {
    /// Container image; unset uses the operator's default Weir image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Replicas of a continuous sink (they share the partitions). Unset: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("replicas cannot be negative"))]
    pub replicas: Option<i32>,
    /// A cron schedule (`0 * * * *`): run as a CronJob in batch mode instead of a
    /// continuous Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// A Secret with `accessKeyId` and `secretAccessKey` for S3, mounted as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_secret: Option<String>,
    /// A ConfigMap holding the protobuf descriptor set (key `descriptors.pb`), mounted
    /// for `schema.descriptorSet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor_config_map: Option<String>,
    /// Scheduling, identity and logging of the sink's pods.
    #[serde(default, skip_serializing_if = "PodSettings::is_empty")]
    pub pod: PodSettings,
}

/// What the operator observed about a SinkBinding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SinkBindingStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, with a reason a person can act on (e.g. `PipelineNotFound`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Replicas passing readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The Kafka consumer group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
}
