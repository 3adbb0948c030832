//! The builders' output: snapshots of every object for the examples and the variants
//! (fixed replicas, scheduled sink), and the properties the snapshots cannot show.
//! Update snapshots with `INSTA_UPDATE=always cargo test -p weir-operator --test builders`
//! and review the diff.

use weir_crds::resources::{IngestPipeline, SinkBinding};
use weir_operator::build::{self, CONFIG_HASH, Child, Defaults};

fn example<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The examples as the API server returns them: namespaced, with a uid.
fn pipeline() -> IngestPipeline {
    let mut pipeline: IngestPipeline = example("pipeline.yaml");
    pipeline.metadata.namespace = Some("analytics".into());
    pipeline.metadata.uid = Some("0b5a2f7e-pipeline".into());
    pipeline
}

fn binding() -> SinkBinding {
    let mut binding: SinkBinding = example("sink.yaml");
    binding.metadata.namespace = Some("analytics".into());
    binding.metadata.uid = Some("7c1d9e04-binding".into());
    binding
}

fn defaults() -> Defaults {
    Defaults {
        image: "registry.example/weir:test".into(),
    }
}

fn json(children: &[Child]) -> Vec<serde_json::Value> {
    children.iter().map(Child::to_json).collect()
}

fn pod_annotation(children: &[Child], kind: &str) -> String {
    let object = children
        .iter()
        .find(|c| c.kind() == kind)
        .unwrap()
        .to_json();
    let template = if kind == "CronJob" {
        &object["spec"]["jobTemplate"]["spec"]["template"]
    } else {
        &object["spec"]["template"]
    };
    template["metadata"]["annotations"][CONFIG_HASH]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn gateway_with_autoscaling() {
    let children = build::gateway::build(&pipeline(), &defaults()).unwrap();
    let kinds: Vec<_> = children.iter().map(Child::describe).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap/clickstream-gateway-config",
            "ConfigMap/clickstream-gateway-routing",
            "Deployment/clickstream-gateway",
            "Service/clickstream-gateway",
            "HorizontalPodAutoscaler/clickstream-gateway",
            "PodDisruptionBudget/clickstream-gateway",
        ]
    );
    insta::assert_yaml_snapshot!("gateway_autoscaling", json(&children));
}

#[test]
fn gateway_with_one_fixed_replica_has_no_autoscaler_or_budget() {
    let mut pipeline = pipeline();
    pipeline.spec.workload.autoscaling = None;
    pipeline.spec.workload.replicas = Some(1);
    pipeline.spec.workload.kafka_secret = Some("kafka-credentials".into());
    let children = build::gateway::build(&pipeline, &defaults()).unwrap();
    assert!(
        !children
            .iter()
            .any(|c| matches!(c.kind(), "HorizontalPodAutoscaler" | "PodDisruptionBudget"))
    );
    insta::assert_yaml_snapshot!("gateway_fixed", json(&children));
}

#[test]
fn sink_as_a_deployment() {
    let children = build::sink::build(&binding(), &pipeline(), &defaults()).unwrap();
    insta::assert_yaml_snapshot!("sink_deployment", json(&children));
}

#[test]
fn sink_on_a_schedule_with_descriptors() {
    let mut binding = binding();
    binding.spec.workload.schedule = Some("15 * * * *".into());
    binding.spec.workload.descriptor_config_map = Some("click-descriptors".into());
    let mut pipeline = pipeline();
    pipeline.spec.workload.kafka_secret = Some("kafka-credentials".into());
    let children = build::sink::build(&binding, &pipeline, &defaults()).unwrap();
    assert_eq!(children[1].kind(), "CronJob");
    insta::assert_yaml_snapshot!("sink_cronjob", json(&children));
}

#[test]
fn routing_changes_reload_while_other_changes_roll_the_pods() {
    let base = build::gateway::build(&pipeline(), &defaults()).unwrap();
    let mut rerouted = pipeline();
    rerouted.spec.pipeline.routing.rules[0].topic = "ads-v2".into();
    let rerouted = build::gateway::build(&rerouted, &defaults()).unwrap();
    assert_eq!(
        pod_annotation(&base, "Deployment"),
        pod_annotation(&rerouted, "Deployment"),
        "a routing change must not restart the gateway"
    );
    assert_ne!(
        base[1], rerouted[1],
        "the routing ConfigMap carries the change"
    );

    let mut reconfigured = pipeline();
    reconfigured.spec.pipeline.limits.max_events_per_batch = 500;
    let reconfigured = build::gateway::build(&reconfigured, &defaults()).unwrap();
    assert_ne!(
        pod_annotation(&base, "Deployment"),
        pod_annotation(&reconfigured, "Deployment")
    );

    let mut secret = pipeline();
    secret.spec.workload.kafka_secret = Some("other".into());
    let secret = build::gateway::build(&secret, &defaults()).unwrap();
    assert_ne!(
        pod_annotation(&base, "Deployment"),
        pod_annotation(&secret, "Deployment")
    );
}

#[test]
fn sink_takes_kafka_from_its_pipeline_unless_it_names_its_own() {
    let spec = build::sink::effective_spec(&binding(), &pipeline());
    assert_eq!(spec.kafka.bootstrap_servers, "kafka:9092");
    assert_eq!(spec.source.group_id, "clickstream-parquet");
    assert_eq!(
        spec.storage.access_key_id_file.as_deref(),
        Some("/var/run/weir/storage/accessKeyId")
    );

    let mut own = binding();
    own.spec.sink.kafka.bootstrap_servers = "other-kafka:9092".into();
    own.spec.sink.source.group_id = weir_crds::sink::SourceSpec::default().group_id;
    let spec = build::sink::effective_spec(&own, &pipeline());
    assert_eq!(spec.kafka.bootstrap_servers, "other-kafka:9092");
    assert_eq!(
        spec.source.group_id, "weir-sink.analytics.clickstream-parquet",
        "two bindings keeping the default group must not share it"
    );
}

#[test]
fn every_child_is_owned_and_labelled_by_weir_not_by_the_resource() {
    let mut pipeline = pipeline();
    pipeline.metadata.labels = Some([("team".to_string(), "growth".to_string())].into());
    let children = build::gateway::build(&pipeline, &defaults()).unwrap();
    for child in &children {
        let meta = child.meta();
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners[0].uid, "0b5a2f7e-pipeline");
        assert_eq!(owners[0].controller, Some(true));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[build::OWNER_LABEL], "ingestpipeline.clickstream");
        assert!(!labels.contains_key("team"), "{}", child.describe());
        assert!(child.applied_hash().is_some());
    }
}

#[test]
fn specs_a_cluster_cannot_run_are_refused_naming_the_field() {
    let error = |p: &IngestPipeline| {
        build::gateway::build(p, &defaults())
            .unwrap_err()
            .to_string()
    };

    let mut any_port = pipeline();
    any_port.spec.pipeline.listen.http = "0.0.0.0:0".into();
    assert!(
        error(&any_port).starts_with("spec.listen.http: port 0"),
        "{}",
        error(&any_port)
    );

    let mut routing_file = pipeline();
    routing_file.spec.pipeline.routing.file = Some("/tmp/routes.yaml".into());
    assert!(error(&routing_file).starts_with("spec.routing.file:"));

    let mut long = pipeline();
    long.metadata.name = Some("x".repeat(60));
    assert!(error(&long).contains("longer than 63"), "{}", error(&long));

    let mut bad_dead_letter = pipeline();
    bad_dead_letter.spec.pipeline.routing.dead_letter_topic = None;
    assert!(
        error(&bad_dead_letter).contains("deadLetterTopic"),
        "{}",
        error(&bad_dead_letter)
    );

    let mut local = binding();
    local.spec.sink.storage.url = "./weir-data".into();
    let message = build::sink::build(&local, &pipeline(), &defaults())
        .unwrap_err()
        .to_string();
    assert!(message.starts_with("spec.storage.url:"), "{message}");
    assert!(message.contains("s3://"), "{message}");

    // Names Kubernetes would refuse for the children, said before anything is applied.
    let sink_error = |b: &SinkBinding| {
        build::sink::build(b, &pipeline(), &defaults())
            .unwrap_err()
            .to_string()
    };
    let mut dotted = binding();
    dotted.metadata.name = Some("orders.v2".into());
    assert!(
        sink_error(&dotted).contains("Service name"),
        "{}",
        sink_error(&dotted)
    );
    let mut long_label = binding();
    long_label.metadata.name = Some("s".repeat(55));
    assert!(
        sink_error(&long_label).contains("at most 51 characters"),
        "{}",
        sink_error(&long_label)
    );
    let mut twice = pipeline();
    twice.spec.workload.pod.env = serde_json::from_value(serde_json::json!([
        {"name": "A", "value": "1"}, {"name": "A", "value": "2"}
    ]))
    .unwrap();
    assert!(
        error(&twice).starts_with("spec.workload.pod.env[1].name:"),
        "{}",
        error(&twice)
    );
}

/// The user's `WEIR_LOG_FORMAT` replaces Weir's rather than repeating the name, which
/// server-side apply would refuse.
#[test]
fn a_users_env_replaces_weirs_own_variable_of_the_same_name() {
    let mut pipeline = pipeline();
    pipeline.spec.workload.pod.env = serde_json::from_value(serde_json::json!([
        {"name": "WEIR_LOG_FORMAT", "value": "text"}
    ]))
    .unwrap();
    let children = json(&build::gateway::build(&pipeline, &defaults()).unwrap());
    let deployment = children.iter().find(|c| c["kind"] == "Deployment").unwrap();
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env.as_array().unwrap().len(), 1, "{env}");
    assert_eq!(env[0]["value"], "text");
}

/// `workload.pod` reaches the pod template: identity, scheduling, pull secrets, extra
/// env after Weir's own, pod metadata under Weir's labels, and a spread constraint that
/// counts this workload's pods when it names no selector.
#[test]
fn pod_settings_reach_the_pod_template() {
    let mut pipeline = pipeline();
    pipeline.spec.workload.pod = serde_json::from_value(serde_json::json!({
        "serviceAccountName": "weir-irsa",
        "nodeSelector": {"pool": "ingest"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ingest", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}],
        "imagePullSecrets": [{"name": "regcred"}],
        "env": [{"name": "WEIR_LOG", "value": "debug"}],
        "annotations": {"team": "data"},
        "labels": {"team": "data", "app.kubernetes.io/component": "hijacked"},
        "logFormat": "text"
    }))
    .unwrap();
    let children = json(&build::gateway::build(&pipeline, &defaults()).unwrap());
    let deployment = children.iter().find(|c| c["kind"] == "Deployment").unwrap();
    let template = &deployment["spec"]["template"];
    let spec = &template["spec"];
    assert_eq!(spec["serviceAccountName"], "weir-irsa");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["nodeSelector"]["pool"], "ingest");
    assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    assert!(spec["affinity"]["podAntiAffinity"].is_object());
    assert_eq!(spec["imagePullSecrets"][0]["name"], "regcred");
    let spread = &spec["topologySpreadConstraints"][0];
    assert_eq!(
        spread["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let env = &spec["containers"][0]["env"];
    assert_eq!(env[0]["name"], "WEIR_LOG_FORMAT");
    assert_eq!(env[0]["value"], "text");
    assert_eq!(env[1]["name"], "WEIR_LOG");
    assert_eq!(template["metadata"]["annotations"]["team"], "data");
    assert!(template["metadata"]["annotations"][CONFIG_HASH].is_string());
    let labels = &template["metadata"]["labels"];
    assert_eq!(labels["team"], "data");
    assert_eq!(
        labels["app.kubernetes.io/component"], "gateway",
        "Weir's labels win"
    );
    assert!(
        labels.get("app.kubernetes.io/instance").is_none(),
        "Argo CD's tracking label is left to Argo CD"
    );
}

#[test]
fn gateway_secrets_are_mounted_and_the_settings_point_at_them() {
    use weir_crds::resources::{GatewaySecrets, SecretKeyRef};
    let mut pipeline = pipeline();
    let key = |name: &str, key: &str| {
        Some(SecretKeyRef {
            name: name.into(),
            key: key.into(),
        })
    };
    pipeline.spec.workload.secrets = GatewaySecrets {
        api_keys: key("weir-keys", "keys.yaml"),
        jwks: key("idp", "jwks.json"),
        hmac_secret: None,
        tokens: None,
        tls: Some("gateway-tls".into()),
    };
    let children = build::gateway::build(&pipeline, &defaults()).unwrap();
    let config = children
        .iter()
        .find(|c| c.kind() == "ConfigMap" && c.name().ends_with("-config"))
        .unwrap()
        .to_json();
    let spec: weir_crds::PipelineSpec =
        serde_yaml::from_str(config["data"]["pipeline.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        spec.auth.api_keys_file.as_deref(),
        Some("/var/run/weir/api-keys/keys.yaml")
    );
    assert_eq!(
        spec.auth.jwt.jwks_file.as_deref(),
        Some("/var/run/weir/jwks/jwks.json")
    );
    assert_eq!(
        spec.listen.tls.cert_file.as_deref(),
        Some("/var/run/weir/tls/tls.crt")
    );
    assert_eq!(
        spec.listen.tls.key_file.as_deref(),
        Some("/var/run/weir/tls/tls.key")
    );
    let deployment = children
        .iter()
        .find(|c| c.kind() == "Deployment")
        .unwrap()
        .to_json();
    let pod = &deployment["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().unwrap();
    let secret = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .map(|v| v["secret"].clone())
            .unwrap_or_else(|| panic!("no volume {name}: {volumes:?}"))
    };
    assert_eq!(secret("api-keys")["secretName"], "weir-keys");
    assert_eq!(secret("api-keys")["items"][0]["key"], "keys.yaml");
    assert_eq!(secret("tls")["secretName"], "gateway-tls");
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == "jwks" && m["mountPath"] == "/var/run/weir/jwks"),
        "{mounts:?}"
    );

    // A setting that names its own file as well as the Secret is refused.
    pipeline.spec.pipeline.auth.api_keys_file = Some("/etc/keys.yaml".into());
    let error = build::gateway::build(&pipeline, &defaults())
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("spec.workload.secrets.apiKeys: auth.apiKeysFile is set too"),
        "{error}"
    );
}
