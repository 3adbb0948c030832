//! A SinkBinding's sink: validate the spec, then collect its configuration ConfigMap
//! and either a Deployment (continuous) or a CronJob running `weir sink --batch` (when
//! `workload.schedule` is set), each built by its kind's file.

use k8s_openapi::api::core::v1::{SecretVolumeSource, Volume};
use weir_crds::SinkSpec;
use weir_crds::pipeline::KafkaSpec;
use weir_crds::resources::{IngestPipeline, ServiceSettings, SinkBinding, SinkWorkload};
use weir_crds::sink::{SinkMode, SourceSpec};

use super::configmap::{config_map, config_volume, to_yaml};
use super::deployment::{self, Rollout};
use super::pod::Pod;
use super::{
    Child, Defaults, InvalidSpec, MAX_CRONJOB_NAME, MAX_SERVICE_NAME, Owner, check_names, cronjob,
    hash_of, listen_port, service,
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
    let name = workload_name(&owner.name);
    let workload = &binding.spec.workload;
    let (spec, metrics) = validate(binding, pipeline, &owner, &name)?;
    super::pod::check_settings(&workload.pod)?;

    let config_map = config_map(
        &owner,
        &config_name(&name),
        COMPONENT,
        CONFIG_FILE,
        to_yaml(&spec),
    );
    let config_hash = hash_of(&(
        &config_map.data,
        pipeline.spec.workload.kafka_secret.as_ref(),
        &workload.storage_secret,
        &workload.descriptor_config_map,
    ));
    let template = pod(
        binding,
        pipeline,
        defaults,
        &name,
        &spec,
        metrics,
        config_hash,
    )
    .template(&owner);
    let mut children = vec![Child::ConfigMap(config_map)];
    match &workload.schedule {
        Some(schedule) => children.push(Child::CronJob(cronjob::cron_job(
            &owner, &name, COMPONENT, schedule, template,
        ))),
        // Old and new pods of one group would rebalance twice per rollout; replacing
        // them at once rebalances once. Exactly-once holds either way.
        None => {
            children.push(Child::Deployment(deployment::deployment(
                &owner,
                &name,
                COMPONENT,
                Some(workload.replicas.unwrap_or(1)),
                Rollout::Recreate,
                template,
            )));
            // For Prometheus to find the pods (a ServiceMonitor selects Services). A
            // batch job's pods live minutes: they get none.
            children.push(Child::Service(service::service(
                &owner,
                &name,
                COMPONENT,
                &ServiceSettings::default(),
                owner.selector_labels(COMPONENT),
                &[("metrics", metrics)],
            )));
        }
    }
    Ok(children.into_iter().map(Child::stamp).collect())
}

/// The binding's [`effective_spec`] and its metrics port, if a cluster can run it as the
/// sink `name`.
fn validate(
    binding: &SinkBinding,
    pipeline: &IngestPipeline,
    owner: &Owner,
    name: &str,
) -> Result<(SinkSpec, i32), InvalidSpec> {
    let workload = &binding.spec.workload;
    let spec = effective_spec(binding, pipeline);
    let settings = weir_crds::settings::SinkSettings::try_from(spec.clone())
        .map_err(InvalidSpec::from_config)?;
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
    if let Some(schedule) = &workload.schedule {
        cronjob::check_schedule(schedule)
            .map_err(|message| InvalidSpec::new("workload.schedule", message))?;
    }
    // A continuous sink has a metrics Service; a batch job has none.
    match workload.schedule {
        Some(_) => check_names(owner, name, MAX_CRONJOB_NAME, false)?,
        None => check_names(owner, name, MAX_SERVICE_NAME, true)?,
    }
    let metrics = listen_port("listen.metrics", settings.metrics_addr)?;
    Ok((spec, metrics))
}

/// The configuration, and the storage credentials and descriptor set the workload
/// names, each with where the pod mounts it.
fn volumes(name: &str, workload: &SinkWorkload) -> Vec<(Volume, &'static str)> {
    let mut volumes = vec![(config_volume("config", &config_name(name)), CONFIG_DIR)];
    if let Some(secret) = &workload.storage_secret {
        let credentials = Volume {
            name: "storage-credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        };
        volumes.push((credentials, STORAGE_SECRET_DIR));
    }
    if let Some(descriptors) = &workload.descriptor_config_map {
        volumes.push((config_volume("descriptors", descriptors), DESCRIPTOR_DIR));
    }
    volumes
}

/// The sink pod: the configuration, storage credentials and descriptor set mounted, the
/// pipeline's Kafka credentials in its environment; a batch run when scheduled.
fn pod<'a>(
    binding: &'a SinkBinding,
    pipeline: &'a IngestPipeline,
    defaults: &Defaults,
    name: &str,
    spec: &SinkSpec,
    metrics: i32,
    config_hash: String,
) -> Pod<'a> {
    let workload = &binding.spec.workload;
    let batch = workload.schedule.is_some();
    let mut args = vec![
        "sink".to_string(),
        "-f".into(),
        format!("{CONFIG_DIR}/{CONFIG_FILE}"),
    ];
    if batch {
        args.push("--batch".into());
    }
    Pod {
        component: COMPONENT,
        image: workload.image.clone().unwrap_or(defaults.image.clone()),
        args,
        ports: vec![("metrics", metrics)],
        kafka_secret: pipeline.spec.workload.kafka_secret.as_ref(),
        resources: workload.resources.clone(),
        readiness_period: (!batch).then_some(10),
        volumes: volumes(name, workload)
            .into_iter()
            .map(|(volume, dir)| (volume, dir.to_string()))
            .collect(),
        drain_timeout: spec.shutdown.drain_timeout,
        run_once: batch,
        config_hash,
        settings: &workload.pod,
    }
}

fn config_name(workload: &str) -> String {
    format!("{workload}-config")
}
