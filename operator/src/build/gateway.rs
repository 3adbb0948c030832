//! An IngestPipeline's gateway: two ConfigMaps (configuration, routing table), a
//! Deployment (built here: its pod is the gateway's own), a Service, and, when asked, a
//! HorizontalPodAutoscaler and a PodDisruptionBudget (built by their kinds' files).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodTemplateSpec, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use weir_crds::PipelineSpec;
use weir_crds::pipeline::RoutingSpec;
use weir_crds::resources::IngestPipeline;

use super::configmap::{config_map, config_volume, to_yaml};
use super::{
    CONFIG_HASH, Child, Defaults, InvalidSpec, MAX_SERVICE_NAME, Owner, check_name,
    container_security, grace_seconds, hash_of, hpa, http_probe, kafka_secret_env, listen_port,
    pdb, pod_security, service,
};

const COMPONENT: &str = "gateway";
/// Replicas when the spec sets neither `replicas` nor `autoscaling`.
pub const DEFAULT_REPLICAS: i32 = 2;
const CONFIG_DIR: &str = "/etc/weir/config";
const CONFIG_FILE: &str = "pipeline.yaml";
const ROUTING_DIR: &str = "/etc/weir/routing";
const ROUTING_FILE: &str = "routing.yaml";

/// Names of a pipeline's gateway objects.
pub fn workload_name(pipeline: &str) -> String {
    format!("{pipeline}-gateway")
}

/// The in-cluster address of a pipeline's gateway (its Service).
pub fn endpoint(pipeline: &IngestPipeline) -> String {
    let owner = Owner::of(pipeline);
    let port = service_ports(pipeline).0;
    format!(
        "{}.{}.svc:{port}",
        workload_name(&owner.name),
        owner.namespace
    )
}

/// The replicas the pipeline asks for: the autoscaler's minimum when autoscaling.
pub fn desired_replicas(pipeline: &IngestPipeline) -> i32 {
    let workload = &pipeline.spec.workload;
    match &workload.autoscaling {
        Some(a) => a.min_replicas,
        None => workload.replicas.unwrap_or(DEFAULT_REPLICAS),
    }
}

/// The label selector of the gateway pods, as the scale subresource reports it.
pub fn selector(pipeline: &IngestPipeline) -> String {
    Owner::of(pipeline)
        .selector_labels(COMPONENT)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn service_ports(pipeline: &IngestPipeline) -> (i32, i32) {
    let service = pipeline.spec.workload.service.clone().unwrap_or_default();
    (
        service.http_port.unwrap_or(80),
        service.grpc_port.unwrap_or(81),
    )
}

/// Every object the pipeline's gateway needs, in apply order (configuration first).
pub fn build(pipeline: &IngestPipeline, defaults: &Defaults) -> Result<Vec<Child>, InvalidSpec> {
    let owner = Owner::of(pipeline);
    let spec = &pipeline.spec.pipeline;
    let workload = &pipeline.spec.workload;
    weir_crds::settings::GatewaySettings::try_from(spec.clone())
        .map_err(InvalidSpec::from_config)?;
    if spec.routing.file.is_some() {
        return Err(InvalidSpec::new(
            "routing.file",
            "the operator mounts the routing table itself: list the rules under routing",
        ));
    }
    let name = workload_name(&owner.name);
    check_name(&name, MAX_SERVICE_NAME)?;
    let http = listen_port("listen.http", &spec.listen.http)?;
    let grpc = listen_port("listen.grpc", &spec.listen.grpc)?;
    let metrics = listen_port("listen.metrics", &spec.listen.metrics)?;

    // The routing table lives in its own ConfigMap: the gateway reloads the mounted file
    // when the kubelet refreshes it, so routing changes never restart pods.
    let routing = RoutingSpec {
        file: None,
        ..spec.routing.clone()
    };
    let config = PipelineSpec {
        routing: RoutingSpec {
            rules: Vec::new(),
            dead_letter_topic: None,
            file: Some(format!("{ROUTING_DIR}/{ROUTING_FILE}")),
            reload_interval: spec.routing.reload_interval,
            ..RoutingSpec::default()
        },
        // The operator creates topics; the gateway only publishes.
        topics: Vec::new(),
        ..spec.clone()
    };
    let config_name = format!("{name}-config");
    let routing_name = format!("{name}-routing");
    let config_map = config_map(
        &owner,
        &config_name,
        COMPONENT,
        CONFIG_FILE,
        to_yaml(&config),
    );
    let routing_map = config_map_routing(&owner, &routing_name, &routing);
    let config_hash = hash_of(&(&config_map.data, &workload.kafka_secret));

    let selector_labels = owner.selector_labels(COMPONENT);
    let container = Container {
        name: COMPONENT.into(),
        image: Some(workload.image.clone().unwrap_or(defaults.image.clone())),
        args: Some(vec![
            "gateway".into(),
            "-f".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        ports: Some(vec![
            container_port("http", http),
            container_port("grpc", grpc),
            container_port("metrics", metrics),
        ]),
        env_from: kafka_secret_env(workload.kafka_secret.as_ref()),
        resources: workload.resources.clone(),
        readiness_probe: Some(http_probe("/readyz", "metrics", 5)),
        liveness_probe: Some(http_probe("/healthz", "metrics", 10)),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "routing".into(),
                mount_path: ROUTING_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: owner.meta(&name, COMPONENT),
        spec: Some(DeploymentSpec {
            // With an autoscaler the replica count is its to set: leaving the field out
            // of the apply keeps the two from fighting.
            replicas: match workload.autoscaling {
                Some(_) => None,
                None => Some(workload.replicas.unwrap_or(DEFAULT_REPLICAS)),
            },
            selector: LabelSelector {
                match_labels: Some(selector_labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(owner.labels(COMPONENT)),
                    annotations: Some(BTreeMap::from([(CONFIG_HASH.into(), config_hash)])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(pod_security()),
                    termination_grace_period_seconds: Some(grace_seconds(
                        spec.shutdown.drain_timeout,
                    )),
                    automount_service_account_token: Some(false),
                    volumes: Some(vec![
                        config_volume("config", &config_name),
                        config_volume("routing", &routing_name),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };

    let (http_port, grpc_port) = service_ports(pipeline);
    let service = service::service(
        &owner,
        &name,
        COMPONENT,
        &workload.service.clone().unwrap_or_default(),
        selector_labels.clone(),
        &[
            ("http", http_port),
            ("grpc", grpc_port),
            ("metrics", metrics),
        ],
    );

    let mut children = vec![
        Child::ConfigMap(config_map),
        Child::ConfigMap(routing_map),
        Child::Deployment(deployment),
        Child::Service(service),
    ];
    if let Some(autoscaling) = &workload.autoscaling {
        children.push(Child::HorizontalPodAutoscaler(hpa::cpu_autoscaler(
            &owner,
            &name,
            COMPONENT,
            autoscaling,
        )));
    }
    // A disruption budget only means something with more than one pod; with one it
    // would let a node drain take the whole gateway down anyway.
    if desired_replicas(pipeline) > 1 {
        children.push(Child::PodDisruptionBudget(pdb::one_at_a_time(
            &owner,
            &name,
            COMPONENT,
            selector_labels,
        )));
    }
    Ok(children.into_iter().map(Child::stamp).collect())
}

fn config_map_routing(
    owner: &Owner,
    name: &str,
    routing: &RoutingSpec,
) -> k8s_openapi::api::core::v1::ConfigMap {
    config_map(owner, name, COMPONENT, ROUTING_FILE, to_yaml(routing))
}

pub(super) fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}
