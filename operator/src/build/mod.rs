//! The desired state: pure functions from a custom resource to the Kubernetes objects
//! that run it. No I/O happens here; `apply` sends what these return.
//!
//! [`gateway`] and [`sink`] validate a resource, then collect its children, each built
//! by its kind's file (`configmap.rs`, `deployment.rs`, `cronjob.rs`, `service.rs`,
//! `hpa.rs`, `pdb.rs`); `pod.rs` builds the pod template both workloads run.
//!
//! Invariants every builder keeps:
//! - Children carry Weir's own labels ([`labels`]), never copies of the resource's, so
//!   GitOps tools that prune by label never mistake them for their own objects.
//! - Every child has a controller owner reference to its resource, so deleting the
//!   resource lets Kubernetes' garbage collector delete the children.
//! - Every child is annotated with the hash of its own desired content
//!   ([`APPLIED_HASH`]), so the shell can tell a spec change from a hand edit of a live
//!   object whose desired content did not change.
//! - Pod templates carry the hash of the configuration they mount ([`CONFIG_HASH`]), so a
//!   configuration change rolls the pods, while the routing table (a separate ConfigMap,
//!   mounted as a directory so the kubelet refreshes it) reloads in place.

mod configmap;
mod cronjob;
mod deployment;
pub mod gateway;
mod hpa;
mod pdb;
mod pod;
mod service;
pub mod sink;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, EnvFromSource, SecretEnvSource, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The annotation holding the hash of a child's desired content.
pub const APPLIED_HASH: &str = "weir.dev/applied-hash";
/// The pod-template annotation holding the hash of the mounted configuration.
pub const CONFIG_HASH: &str = "weir.dev/config-hash";
/// The label naming the resource a child belongs to: `<kind>.<name>`, e.g.
/// `ingestpipeline.clickstream`. The shell prunes by it.
pub const OWNER_LABEL: &str = "weir.dev/owner";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "weir-operator";
/// The longest name Kubernetes accepts for a Service (a DNS-1035 label).
const MAX_SERVICE_NAME: usize = 63;
/// The longest CronJob name (its Jobs append 11 characters to it).
const MAX_CRONJOB_NAME: usize = 52;

/// Why a resource cannot be turned into objects. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field_prefix(field))]
pub struct InvalidSpec {
    /// Path of the offending field under `spec`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// `spec.<field>: `, or nothing for an error of the whole resource (its name).
fn field_prefix(field: &str) -> String {
    match field {
        "" => String::new(),
        field => format!("spec.{field}: "),
    }
}

impl InvalidSpec {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A data-plane configuration error, which already names its field.
    pub(crate) fn from_config(error: weir_crds::config::ConfigError) -> Self {
        match error {
            weir_crds::config::ConfigError::Invalid { field, message } => Self { field, message },
            other => Self::new("", other.to_string()),
        }
    }
}

/// Operator-wide settings the builders need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// Image used when a resource does not name one.
    pub image: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            image: format!("ghcr.io/weir-dev/weir:{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// One object the operator manages.
// A reconcile holds at most six of these; boxing the big variants buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Child {
    ConfigMap(ConfigMap),
    Deployment(Deployment),
    Service(Service),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    PodDisruptionBudget(PodDisruptionBudget),
    CronJob(CronJob),
}

impl Child {
    /// `Kind/name`, for messages and events.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    /// The object's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Child::ConfigMap(_) => "ConfigMap",
            Child::Deployment(_) => "Deployment",
            Child::Service(_) => "Service",
            Child::HorizontalPodAutoscaler(_) => "HorizontalPodAutoscaler",
            Child::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Child::CronJob(_) => "CronJob",
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Child::ConfigMap(o) => &o.metadata,
            Child::Deployment(o) => &o.metadata,
            Child::Service(o) => &o.metadata,
            Child::HorizontalPodAutoscaler(o) => &o.metadata,
            Child::PodDisruptionBudget(o) => &o.metadata,
            Child::CronJob(o) => &o.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Child::ConfigMap(o) => &mut o.metadata,
            Child::Deployment(o) => &mut o.metadata,
            Child::Service(o) => &mut o.metadata,
            Child::HorizontalPodAutoscaler(o) => &mut o.metadata,
            Child::PodDisruptionBudget(o) => &mut o.metadata,
            Child::CronJob(o) => &mut o.metadata,
        }
    }

    /// The object as JSON, with `apiVersion` and `kind` (what server-side apply sends).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Child::ConfigMap(o) => with_type(o),
            Child::Deployment(o) => with_type(o),
            Child::Service(o) => with_type(o),
            Child::HorizontalPodAutoscaler(o) => with_type(o),
            Child::PodDisruptionBudget(o) => with_type(o),
            Child::CronJob(o) => with_type(o),
        }
    }

    /// The hash of the desired content, as stored in [`APPLIED_HASH`].
    pub fn applied_hash(&self) -> Option<&str> {
        self.meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(APPLIED_HASH))
            .map(String::as_str)
    }

    /// Stamps [`APPLIED_HASH`] with the hash of everything else.
    fn stamp(mut self) -> Self {
        let hash = hash_of(&self.to_json());
        self.meta_mut()
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(APPLIED_HASH.into(), hash);
        self
    }
}

fn with_type<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> serde_json::Value {
    let mut value = serde_json::to_value(object).expect("Kubernetes objects serialize");
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    value
}

/// The first 16 hex digits of the SHA-256 of the value's JSON (map keys are sorted, so
/// equal content gives an equal hash).
pub fn hash_of(value: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(value).expect("values serialize");
    hex::encode(&Sha256::digest(&bytes)[..8])
}

/// The resource the children belong to.
#[derive(Clone, Debug)]
pub struct Owner {
    /// `IngestPipeline` or `SinkBinding`.
    pub kind: String,
    pub name: String,
    pub namespace: String,
    /// None for a resource rendered offline (no uid yet): nothing to point at.
    reference: Option<OwnerReference>,
}

impl Owner {
    /// The owner of `resource`'s children. A resource read from the API has a uid; one
    /// rendered offline has none, and its children get no owner reference.
    pub fn of<K: Resource<DynamicType = ()>>(resource: &K) -> Self {
        let meta = resource.meta();
        let name = meta.name.clone().unwrap_or_default();
        Self {
            kind: K::kind(&()).into_owned(),
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            reference: meta.uid.clone().map(|uid| OwnerReference {
                api_version: K::api_version(&()).into_owned(),
                kind: K::kind(&()).into_owned(),
                name: name.clone(),
                uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }),
            name,
        }
    }

    /// Value of [`OWNER_LABEL`] on this resource's children.
    pub fn label_value(&self) -> String {
        format!("{}.{}", self.kind.to_lowercase(), self.name)
    }

    /// Label selector matching every child of this resource.
    pub fn selector(&self) -> String {
        format!("{OWNER_LABEL}={}", self.label_value())
    }

    /// Labels of a child serving as `component`. The pod selector is the subset
    /// [`Owner::selector_labels`], which never changes for the life of the resource.
    fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels(component);
        labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
        labels.insert("app.kubernetes.io/part-of".into(), "weir".into());
        labels
    }

    /// No `app.kubernetes.io/instance`: it is Argo CD's default tracking label, and a
    /// child carrying it with the name of an Argo CD application would be taken for
    /// that application's own object and pruned.
    fn selector_labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), format!("weir-{component}")),
            ("app.kubernetes.io/component".into(), component.into()),
            (OWNER_LABEL.into(), self.label_value()),
        ])
    }

    /// Metadata of a child named `name`.
    fn meta(&self, name: &str, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: self.reference.clone().map(|r| vec![r]),
            ..ObjectMeta::default()
        }
    }
}

/// The longest label value Kubernetes accepts.
const MAX_LABEL_VALUE: usize = 63;

/// Checks the names derived from metadata.name against what Kubernetes accepts: the
/// child name `name` against `limit`; when the workload has a Service, that name as a
/// DNS-1035 label (a letter first, no dots), which resource names need not be; and the
/// owner label's value (`<kind>.<name>`, part of every selector) against 63 characters.
fn check_names(owner: &Owner, name: &str, limit: usize, service: bool) -> Result<(), InvalidSpec> {
    let refuse = |why: String| Err(InvalidSpec::new("", why));
    if name.len() > limit {
        return refuse(format!(
            "the object name {name} derived from metadata.name is longer than {limit} \
             characters; use a shorter resource name"
        ));
    }
    let dns_1035 = name.starts_with(|c: char| c.is_ascii_lowercase()) && !name.contains('.');
    if service && !dns_1035 {
        return refuse(format!(
            "the Service name {name} derived from metadata.name must start with a letter and \
             hold no dots; use a name of lowercase letters, digits and '-'"
        ));
    }
    let label = owner.label_value();
    if label.len() > MAX_LABEL_VALUE {
        return refuse(format!(
            "the label value {label} derived from metadata.name is longer than \
             {MAX_LABEL_VALUE} characters; use a resource name of at most {} characters",
            MAX_LABEL_VALUE - (label.len() - owner.name.len())
        ));
    }
    Ok(())
}

/// The port of a listen address (parsed by the settings), for container ports and
/// probes; port 0 (pick any) is refused.
fn listen_port(field: &str, address: std::net::SocketAddr) -> Result<i32, InvalidSpec> {
    let port = address.port();
    if port == 0 {
        return Err(InvalidSpec::new(
            field,
            "port 0 (pick any) cannot be used in a cluster: name a fixed port",
        ));
    }
    Ok(i32::from(port))
}

/// A Secret's keys as `WEIR__KAFKA__PROPERTIES__<key>` variables: Kafka credentials
/// reach librdkafka without appearing in any ConfigMap.
fn kafka_secret_env(secret: Option<&String>) -> Option<Vec<EnvFromSource>> {
    secret.map(|name| {
        vec![EnvFromSource {
            prefix: Some(format!(
                "{}KAFKA__PROPERTIES__",
                weir_crds::config::ENV_PREFIX
            )),
            secret_ref: Some(SecretEnvSource {
                name: name.clone(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]
    })
}
