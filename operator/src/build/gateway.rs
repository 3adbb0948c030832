//! An IngestPipeline's gateway: validate the spec, then collect two ConfigMaps
//! (configuration, routing table), a Deployment, a Service and, when asked, a
//! HorizontalPodAutoscaler and a PodDisruptionBudget, each built by its kind's file.

use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, SecretVolumeSource, Volume};
use weir_crds::PipelineSpec;
use weir_crds::pipeline::RoutingSpec;
use weir_crds::resources::{GatewaySecrets, IngestPipeline, SecretKeyRef};

use super::configmap::{config_map, config_volume, to_yaml};
use super::deployment::{self, Rollout};
use super::pod::Pod;
use super::{
    Child, Defaults, InvalidSpec, MAX_SERVICE_NAME, Owner, check_names, hash_of, hpa, listen_port,
    pdb, service,
};

const COMPONENT: &str = "gateway";
/// Replicas when the spec sets neither `replicas` nor `autoscaling`.
pub const DEFAULT_REPLICAS: i32 = 2;
const CONFIG_DIR: &str = "/etc/weir/config";
const CONFIG_FILE: &str = "pipeline.yaml";
const ROUTING_DIR: &str = "/etc/weir/routing";
const ROUTING_FILE: &str = "routing.yaml";
/// Where `workload.secrets` are mounted, one directory each.
const SECRETS_DIR: &str = "/var/run/weir";

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
    let name = workload_name(&owner.name);
    let workload = &pipeline.spec.workload;
    let spec = effective_spec(&pipeline.spec.pipeline, &workload.secrets)?;
    let ports = validate(&spec, &owner, &name)?;
    super::pod::check_settings(&pipeline.spec.workload.pod)?;

    let (config_map, routing_map) = config_maps(&owner, &name, &spec);
    let config_hash = hash_of(&(&config_map.data, &workload.kafka_secret, &workload.secrets));
    let template = pod(pipeline, defaults, &name, &ports, config_hash).template(&owner);
    // With an autoscaler the replica count is its to set.
    let replicas = match workload.autoscaling {
        Some(_) => None,
        None => Some(workload.replicas.unwrap_or(DEFAULT_REPLICAS)),
    };
    let deployment = deployment::deployment(
        &owner,
        &name,
        COMPONENT,
        replicas,
        Rollout::Rolling,
        template,
    );
    let (http_port, grpc_port) = service_ports(pipeline);
    let service = service::service(
        &owner,
        &name,
        COMPONENT,
        &workload.service.clone().unwrap_or_default(),
        owner.selector_labels(COMPONENT),
        &[
            ("http", http_port),
            ("grpc", grpc_port),
            ("metrics", ports.metrics),
        ],
    );

    let mut children = vec![
        Child::ConfigMap(config_map),
        Child::ConfigMap(routing_map),
        Child::Deployment(deployment),
        Child::Service(service),
    ];
    if let Some(autoscaling) = &workload.autoscaling {
        let autoscaler = hpa::cpu_autoscaler(&owner, &name, COMPONENT, autoscaling);
        children.push(Child::HorizontalPodAutoscaler(autoscaler));
    }
    // A disruption budget only means something with more than one pod; with one it
    // would let a node drain take the whole gateway down anyway.
    if desired_replicas(pipeline) > 1 {
        let selector = owner.selector_labels(COMPONENT);
        let budget = pdb::one_at_a_time(&owner, &name, COMPONENT, selector);
        children.push(Child::PodDisruptionBudget(budget));
    }
    Ok(children.into_iter().map(Child::stamp).collect())
}

/// One Secret of `workload.secrets`, as mounted.
struct SecretFiles {
    /// The volume's name, also its directory under [`SECRETS_DIR`].
    volume: &'static str,
    /// Its field under `workload.secrets`.
    field: &'static str,
    secret: String,
    /// Each key mounted, with the setting that points at its file.
    files: Vec<(String, Setting)>,
}

/// A file setting of the gateway: its name, and where it is in the spec.
type Setting = (&'static str, fn(&mut PipelineSpec) -> &mut Option<String>);

/// The Secrets `workload.secrets` names.
fn secret_files(secrets: &GatewaySecrets) -> Vec<SecretFiles> {
    let mut files = Vec::new();
    let mut key = |volume, field, setting: Setting, secret: &Option<SecretKeyRef>| {
        if let Some(secret) = secret {
            files.push(SecretFiles {
                volume,
                field,
                secret: secret.name.clone(),
                files: vec![(secret.key.clone(), setting)],
            });
        }
    };
    key(
        "api-keys",
        "apiKeys",
        ("auth.apiKeysFile", |s| &mut s.auth.api_keys_file),
        &secrets.api_keys,
    );
    key(
        "jwks",
        "jwks",
        ("auth.jwt.jwksFile", |s| &mut s.auth.jwt.jwks_file),
        &secrets.jwks,
    );
    key(
        "hmac-secret",
        "hmacSecret",
        ("auth.jwt.hmacSecretFile", |s| {
            &mut s.auth.jwt.hmac_secret_file
        }),
        &secrets.hmac_secret,
    );
    key(
        "tokens",
        "tokens",
        ("auth.tokensFile", |s| &mut s.auth.tokens_file),
        &secrets.tokens,
    );
    if let Some(tls) = &secrets.tls {
        files.push(SecretFiles {
            volume: "tls",
            field: "tls",
            secret: tls.clone(),
            files: vec![
                (
                    "tls.crt".into(),
                    ("listen.tls.certFile", |s| &mut s.listen.tls.cert_file),
                ),
                (
                    "tls.key".into(),
                    ("listen.tls.keyFile", |s| &mut s.listen.tls.key_file),
                ),
            ],
        });
    }
    files
}

/// The spec the gateway runs: each setting `workload.secrets` provides points at the
/// mounted file. A setting that names a file itself as well is refused: the pod would
/// not have that file.
fn effective_spec(
    spec: &PipelineSpec,
    secrets: &GatewaySecrets,
) -> Result<PipelineSpec, InvalidSpec> {
    let mut spec = spec.clone();
    for SecretFiles {
        volume,
        field,
        files,
        ..
    } in secret_files(secrets)
    {
        for (key, (setting, slot)) in files {
            let slot = slot(&mut spec);
            if slot.is_some() {
                return Err(InvalidSpec::new(
                    format!("workload.secrets.{field}"),
                    format!(
                        "{setting} is set too; the operator sets it to the mounted Secret, so remove one of them"
                    ),
                ));
            }
            *slot = Some(format!("{SECRETS_DIR}/{volume}/{key}"));
        }
    }
    Ok(spec)
}

/// The Secret volumes of `workload.secrets`, each with its mount directory.
fn secret_volumes(secrets: &GatewaySecrets) -> Vec<(Volume, String)> {
    secret_files(secrets)
        .into_iter()
        .map(
            |SecretFiles {
                 volume,
                 secret,
                 files,
                 ..
             }| {
                let items = files
                    .iter()
                    .map(|(key, _)| KeyToPath {
                        key: key.clone(),
                        path: key.clone(),
                        ..KeyToPath::default()
                    })
                    .collect();
                let volume_spec = Volume {
                    name: volume.into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(secret),
                        items: Some(items),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                };
                (volume_spec, format!("{SECRETS_DIR}/{volume}"))
            },
        )
        .collect()
}

/// The gateway's listen ports.
struct Ports {
    http: i32,
    grpc: i32,
    metrics: i32,
}

/// Whether a cluster can run `spec` as the gateway `name`; its listen ports if so.
fn validate(spec: &PipelineSpec, owner: &Owner, name: &str) -> Result<Ports, InvalidSpec> {
    let settings = weir_crds::settings::GatewaySettings::try_from(spec.clone())
        .map_err(InvalidSpec::from_config)?;
    if spec.routing.file.is_some() {
        return Err(InvalidSpec::new(
            "routing.file",
            "the operator mounts the routing table itself: list the rules under routing",
        ));
    }
    check_names(owner, name, MAX_SERVICE_NAME, true)?;
    Ok(Ports {
        http: listen_port("listen.http", settings.listen.http)?,
        grpc: listen_port("listen.grpc", settings.listen.grpc)?,
        metrics: listen_port("listen.metrics", settings.listen.metrics)?,
    })
}

/// The configuration and the routing table, each in its own ConfigMap: the gateway
/// reloads the mounted routing file when the kubelet refreshes it, so routing changes
/// never restart pods, while a configuration change rolls them.
fn config_maps(owner: &Owner, name: &str, spec: &PipelineSpec) -> (ConfigMap, ConfigMap) {
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
    (
        config_map(
            owner,
            &config_name(name),
            COMPONENT,
            CONFIG_FILE,
            to_yaml(&config),
        ),
        config_map(
            owner,
            &routing_name(name),
            COMPONENT,
            ROUTING_FILE,
            to_yaml(&routing),
        ),
    )
}

/// The gateway pod: the configuration and the routing table mounted, the Kafka
/// credentials in its environment.
fn pod<'a>(
    pipeline: &'a IngestPipeline,
    defaults: &Defaults,
    name: &str,
    ports: &Ports,
    config_hash: String,
) -> Pod<'a> {
    let workload = &pipeline.spec.workload;
    Pod {
        component: COMPONENT,
        image: workload.image.clone().unwrap_or(defaults.image.clone()),
        args: vec![
            "gateway".into(),
            "-f".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ],
        ports: vec![
            ("http", ports.http),
            ("grpc", ports.grpc),
            ("metrics", ports.metrics),
        ],
        kafka_secret: workload.kafka_secret.as_ref(),
        resources: workload.resources.clone(),
        readiness_period: Some(5),
        volumes: [
            (
                config_volume("config", &config_name(name)),
                CONFIG_DIR.into(),
            ),
            (
                config_volume("routing", &routing_name(name)),
                ROUTING_DIR.into(),
            ),
        ]
        .into_iter()
        .chain(secret_volumes(&workload.secrets))
        .collect(),
        drain_timeout: pipeline.spec.pipeline.shutdown.drain_timeout,
        run_once: false,
        config_hash,
        settings: &workload.pod,
    }
}

fn config_name(workload: &str) -> String {
    format!("{workload}-config")
}

fn routing_name(workload: &str) -> String {
    format!("{workload}-routing")
}
