//! The pod template every Weir workload runs: one data-plane container under a
//! restrictive security context, its configuration mounted read-only, probed on its
//! metrics port. The gateway and the sink differ only in what [`Pod`] says.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_crds::resources::PodSettings;

use super::{CONFIG_HASH, Owner, kafka_secret_env};

/// What one workload's pod runs and mounts.
pub(super) struct Pod<'a> {
    /// The container's name and the pod's `app.kubernetes.io/component`.
    pub component: &'static str,
    pub image: String,
    pub args: Vec<String>,
    /// Named container ports; the probes use `metrics`.
    pub ports: Vec<(&'static str, i32)>,
    /// The Secret of Kafka credentials (`workload.kafkaSecret`), if any.
    pub kafka_secret: Option<&'a String>,
    pub resources: Option<ResourceRequirements>,
    /// Seconds between readiness probes; `None` for a pod no one waits on (a batch job,
    /// whose exit code is its health).
    pub readiness_period: Option<i32>,
    /// Each volume with where it is mounted (read-only, under the volume's name).
    pub volumes: Vec<(Volume, String)>,
    /// The data plane's own drain timeout.
    pub drain_timeout: Duration,
    /// A batch job's pod: it runs once and is never restarted in place.
    pub run_once: bool,
    /// The hash of the mounted configuration ([`CONFIG_HASH`]): a change rolls the pods.
    pub config_hash: String,
    /// The resource's pod-level settings (`workload.pod`).
    pub settings: &'a PodSettings,
}

impl Pod<'_> {
    /// The pod template, labelled as `owner`'s `component`.
    pub(super) fn template(self, owner: &Owner) -> PodTemplateSpec {
        let mounts = self
            .volumes
            .iter()
            .map(|(volume, path)| mount(&volume.name, path))
            .collect();
        let container = self.container(mounts);
        let settings = self.settings;
        // Weir's own labels and annotation win: the selector and the roll on a
        // configuration change must keep working whatever the user adds.
        let mut labels = settings.labels.clone();
        labels.extend(owner.labels(self.component));
        let mut annotations = settings.annotations.clone();
        annotations.insert(CONFIG_HASH.into(), self.config_hash);
        let selector = owner.selector_labels(self.component);
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![container],
                security_context: Some(pod_security()),
                termination_grace_period_seconds: Some(grace_seconds(self.drain_timeout)),
                // Identity webhooks (IRSA, Workload Identity) inject their own projected
                // token; the data plane never calls the Kubernetes API.
                automount_service_account_token: Some(false),
                service_account_name: settings.service_account_name.clone(),
                node_selector: non_empty_map(&settings.node_selector),
                tolerations: non_empty(&settings.tolerations),
                affinity: settings.affinity.clone(),
                topology_spread_constraints: non_empty(&spread_constraints(
                    &settings.topology_spread_constraints,
                    &selector,
                )),
                image_pull_secrets: non_empty(&settings.image_pull_secrets),
                restart_policy: self.run_once.then(|| "Never".into()),
                volumes: Some(self.volumes.into_iter().map(|(volume, _)| volume).collect()),
                ..PodSpec::default()
            }),
        }
    }

    fn container(&self, mounts: Vec<VolumeMount>) -> Container {
        Container {
            name: self.component.into(),
            image: Some(self.image.clone()),
            args: Some(self.args.clone()),
            ports: Some(
                self.ports
                    .iter()
                    .map(|(name, port)| container_port(name, *port))
                    .collect(),
            ),
            env: Some(self.env()),
            env_from: kafka_secret_env(self.kafka_secret),
            resources: self.resources.clone(),
            readiness_probe: self
                .readiness_period
                .map(|period| http_probe("/readyz", "metrics", period)),
            liveness_probe: Some(http_probe("/healthz", "metrics", 10)),
            security_context: Some(container_security()),
            volume_mounts: Some(mounts),
            ..Container::default()
        }
    }
}

impl Pod<'_> {
    /// The log format, unless the user sets `WEIR_LOG_FORMAT` themselves, then the
    /// user's variables. Names stay unique: server-side apply refuses a list of
    /// containers' env with one name twice (the builders refuse the user's repeats).
    fn env(&self) -> Vec<EnvVar> {
        let format = self.settings.log_format.unwrap_or_default();
        let own = EnvVar {
            name: "WEIR_LOG_FORMAT".into(),
            value: Some(format.as_str().into()),
            ..EnvVar::default()
        };
        let overridden = self.settings.env.iter().any(|e| e.name == own.name);
        let mut env: Vec<EnvVar> = (!overridden).then_some(own).into_iter().collect();
        env.extend(self.settings.env.iter().cloned());
        env
    }
}

/// The user's constraints, each selecting this workload's pods unless it names its own
/// selector: without one a constraint counts no pods and spreads nothing.
fn spread_constraints(
    constraints: &[TopologySpreadConstraint],
    selector: &BTreeMap<String, String>,
) -> Vec<TopologySpreadConstraint> {
    constraints
        .iter()
        .map(|constraint| {
            let mut constraint = constraint.clone();
            constraint
                .label_selector
                .get_or_insert_with(|| LabelSelector {
                    match_labels: Some(selector.clone()),
                    ..LabelSelector::default()
                });
            constraint
        })
        .collect()
}

/// Refuses what Kubernetes would refuse of `workload.pod` before the pod is built: an
/// environment variable named twice.
pub(super) fn check_settings(settings: &PodSettings) -> Result<(), super::InvalidSpec> {
    let mut seen = std::collections::HashSet::new();
    for (index, var) in settings.env.iter().enumerate() {
        if !seen.insert(var.name.as_str()) {
            return Err(super::InvalidSpec::new(
                format!("workload.pod.env[{index}].name"),
                format!("{:?} is set twice; keep one entry per name", var.name),
            ));
        }
    }
    Ok(())
}

fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

fn non_empty_map(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then(|| map.clone())
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The restrictive security context every data-plane container runs with.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        fs_group: Some(65532),
        ..PodSecurityContext::default()
    }
}

fn http_probe(path: &str, port: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

/// Termination grace: the data plane's own drain timeout plus time to exit.
fn grace_seconds(drain: Duration) -> i64 {
    drain.as_secs() as i64 + 10
}
