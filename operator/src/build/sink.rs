//! A SinkBinding's sink: its configuration ConfigMap and either a Deployment
//! (continuous) or a CronJob running `weir sink --batch` (when `workload.schedule` is
//! set).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, PodSpec, PodTemplateSpec, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use weir_crds::SinkSpec;
use weir_crds::pipeline::KafkaSpec;
use weir_crds::resources::{IngestPipeline, SinkBinding};
use weir_crds::sink::{SinkMode, SourceSpec};

use super::configmap::{config_map, config_volume, to_yaml};
use super::gateway::container_port;
use super::{
    CONFIG_HASH, Child, Defaults, InvalidSpec, MAX_CRONJOB_NAME, Owner, check_name,
    container_security, grace_seconds, hash_of, http_probe, kafka_secret_env, listen_port,
    pod_security,
};

const COMPONENT: &str = "sink";
const CONFIG_DIR: &str = "/etc/weir/config";
const CONFIG_FILE: &str = "sink.yaml";
const STORAGE_SECRET_DIR: &str = "/var/run/weir/storage";
const DESCRIPTOR_DIR: &str = "/etc/weir/descriptors";
/// The key of the descriptor set in `workload.descriptorConfigMap`.
pub const DESCRIPTOR_KEY: &str = "descriptors.pb";
/// URL schemes of object stores a pod can write to durably.
const REMOTE_SCHEMES: [&str; 6] = ["s3://", "s3a://", "gs://", "az://", "abfs://", "azure://"];

/// Names of a binding's sink objects.
pub fn workload_name(binding: &str) -> String {
    format!("{binding}-sink")
}

/// The consumer group the sink uses: the spec's, or one of the binding's own when the
/// spec keeps the default (two bindings must never share a group by accident).
pub fn consumer_group(binding: &SinkBinding) -> String {
    let group = &binding.spec.sink.source.group_id;
    if *group == SourceSpec::default().group_id {
        let owner = Owner::of(binding);
        format!("weir-sink.{}.{}", owner.namespace, owner.name)
    } else {
        group.clone()
    }
}

/// The sink's configuration as it runs: the binding's spec, with the pipeline's Kafka
/// connection unless the binding names its own, and paths of what the pod mounts.
pub fn effective_spec(binding: &SinkBinding, pipeline: &IngestPipeline) -> SinkSpec {
    let workload = &binding.spec.workload;
    let mut spec = binding.spec.sink.clone();
    if spec.kafka == KafkaSpec::default() {
        spec.kafka = pipeline.spec.pipeline.kafka.clone();
    }
    spec.source.group_id = consumer_group(binding);
    if workload.storage_secret.is_some() {
        spec.storage.access_key_id_file = Some(format!("{STORAGE_SECRET_DIR}/accessKeyId"));
        spec.storage.secret_access_key_file = Some(format!("{STORAGE_SECRET_DIR}/secretAccessKey"));
    }
    if workload.descriptor_config_map.is_some() {
        spec.schema.descriptor_set = Some(format!("{DESCRIPTOR_DIR}/{DESCRIPTOR_KEY}"));
    }
    spec.mode = if workload.schedule.is_some() {
        SinkMode::Batch
    } else {
        SinkMode::Continuous
    };
    spec
}

/// Every object the binding's sink needs, in apply order.
pub fn build(
    binding: &SinkBinding,
    pipeline: &IngestPipeline,
    defaults: &Defaults,
) -> Result<Vec<Child>, InvalidSpec> {
    let owner = Owner::of(binding);
    let workload = &binding.spec.workload;
    let spec = effective_spec(binding, pipeline);
    weir_crds::settings::SinkSettings::try_from(spec.clone()).map_err(InvalidSpec::from_config)?;
    if !REMOTE_SCHEMES
        .iter()
        .any(|s| spec.storage.url.starts_with(s))
    {
        return Err(InvalidSpec::new(
            "storage.url",
            format!(
                "{:?} is a local path, which a pod loses when it restarts: use an object \
                 store URL (s3://, gs://, az://)",
                spec.storage.url
            ),
        ));
    }
    if let Some(replicas) = workload.replicas
        && replicas < 0
    {
        return Err(InvalidSpec::new(
            "workload.replicas",
            "replicas cannot be negative",
        ));
    }
    let name = workload_name(&owner.name);
    check_name(&name, MAX_CRONJOB_NAME)?;
    let metrics = listen_port("listen.metrics", &spec.listen.metrics)?;

    let config_name = format!("{name}-config");
    let config_map = config_map(&owner, &config_name, COMPONENT, CONFIG_FILE, to_yaml(&spec));
    let kafka_secret = pipeline.spec.workload.kafka_secret.as_ref();
    let config_hash = hash_of(&(
        &config_map.data,
        kafka_secret,
        &workload.storage_secret,
        &workload.descriptor_config_map,
    ));

    let mut volumes = vec![config_volume("config", &config_name)];
    let mut mounts = vec![mount("config", CONFIG_DIR)];
    if let Some(secret) = &workload.storage_secret {
        volumes.push(Volume {
            name: "storage-credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("storage-credentials", STORAGE_SECRET_DIR));
    }
    if let Some(descriptors) = &workload.descriptor_config_map {
        volumes.push(config_volume("descriptors", descriptors));
        mounts.push(mount("descriptors", DESCRIPTOR_DIR));
    }
    let mut args = vec![
        "sink".to_string(),
        "-f".into(),
        format!("{CONFIG_DIR}/{CONFIG_FILE}"),
    ];
    let batch = workload.schedule.is_some();
    if batch {
        args.push("--batch".into());
    }
    let container = Container {
        name: COMPONENT.into(),
        image: Some(workload.image.clone().unwrap_or(defaults.image.clone())),
        args: Some(args),
        ports: Some(vec![container_port("metrics", metrics)]),
        env_from: kafka_secret_env(kafka_secret),
        resources: workload.resources.clone(),
        // A batch job has no one to report readiness to; its exit code is its health.
        readiness_probe: (!batch).then(|| http_probe("/readyz", "metrics", 10)),
        liveness_probe: Some(http_probe("/healthz", "metrics", 10)),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let pod_spec = PodSpec {
        containers: vec![container],
        security_context: Some(pod_security()),
        termination_grace_period_seconds: Some(grace_seconds(spec.shutdown.drain_timeout)),
        automount_service_account_token: Some(false),
        restart_policy: batch.then(|| "Never".into()),
        volumes: Some(volumes),
        ..PodSpec::default()
    };
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(owner.labels(COMPONENT)),
            annotations: Some(BTreeMap::from([(CONFIG_HASH.into(), config_hash)])),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec),
    };

    let workload_object = match &workload.schedule {
        Some(schedule) => Child::CronJob(CronJob {
            metadata: owner.meta(&name, COMPONENT),
            spec: Some(CronJobSpec {
                schedule: schedule.clone(),
                // Two batch runs of one group would only split the partitions between
                // them; the next run picks up whatever a slow one left.
                concurrency_policy: Some("Forbid".into()),
                job_template: JobTemplateSpec {
                    metadata: None,
                    spec: Some(JobSpec {
                        backoff_limit: Some(3),
                        template,
                        ..JobSpec::default()
                    }),
                },
                ..CronJobSpec::default()
            }),
            ..CronJob::default()
        }),
        None => Child::Deployment(Deployment {
            metadata: owner.meta(&name, COMPONENT),
            spec: Some(DeploymentSpec {
                replicas: Some(workload.replicas.unwrap_or(1)),
                selector: LabelSelector {
                    match_labels: Some(owner.selector_labels(COMPONENT)),
                    ..LabelSelector::default()
                },
                // Old and new pods of one group would rebalance twice per rollout;
                // replacing them at once rebalances once. Exactly-once holds either way.
                strategy: Some(DeploymentStrategy {
                    type_: Some("Recreate".into()),
                    ..DeploymentStrategy::default()
                }),
                template,
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        }),
    };
    Ok(vec![Child::ConfigMap(config_map), workload_object]
        .into_iter()
        .map(Child::stamp)
        .collect())
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}
