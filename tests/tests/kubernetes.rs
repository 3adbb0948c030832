//! Offline Kubernetes checks (no API server can run here): the Helm chart lints and
//! renders objects that validate against the Kubernetes 1.33 OpenAPI schemas, its
//! values schema refuses bad values, every object the operator renders validates the
//! same way, and the examples validate against the generated CRD schemas.
//!
//! Tools (installed by `.ci/test`): helm, kubernetes-validate, check-jsonschema.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use weir_crds::resources::{IngestPipeline, SinkBinding};
use weir_operator::build::Defaults;
use weir_operator::render::{Manifests, to_yaml_stream};
use weir_tests::find_tool;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(tool: &str, args: &[&str]) -> Output {
    let path = find_tool(tool).unwrap();
    Command::new(path)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{tool} does not start: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Validates a multi-document YAML file strictly against Kubernetes 1.33.
fn assert_valid_kubernetes(file: &Path) {
    let output = run(
        "kubernetes-validate",
        &["--strict", "-k", "1.33.0", file.to_str().unwrap()],
    );
    let report = text(&output);
    assert!(output.status.success(), "{report}");
    assert!(!report.contains("ERROR"), "{report}");
    assert!(!report.contains("WARN"), "{report}");
}

fn helm_template(extra: &[&str]) -> Output {
    let mut args = vec![
        "template",
        "weir",
        "charts/weir-operator",
        "--namespace",
        "weir-system",
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    run("helm", &args)
}

#[test]
fn chart_lints() {
    let output = run("helm", &["lint", "--strict", "charts/weir-operator"]);
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn chart_renders_valid_objects_with_each_set_of_options() {
    let dir = tempfile::tempdir().unwrap();
    for (index, options) in [
        vec![],
        vec![
            "--set",
            "rbac.readKafkaSecrets=false,metrics.service.enabled=false,serviceAccount.create=false,serviceAccount.name=ops",
        ],
        vec!["--set", "replicaCount=1,dataPlaneImage=registry.example/weir:1,logFormat=text"],
    ]
    .iter()
    .enumerate()
    {
        let output = helm_template(options);
        assert!(output.status.success(), "{}", text(&output));
        let rendered = String::from_utf8(output.stdout).unwrap();
        let file = dir.path().join(format!("chart-{index}.yaml"));
        std::fs::write(&file, &rendered).unwrap();
        assert_valid_kubernetes(&file);
        assert!(rendered.contains("kind: CustomResourceDefinition"));
    }
}

#[test]
fn chart_runs_the_operator_locked_down_with_least_privilege() {
    let output = helm_template(&[]);
    assert!(output.status.success(), "{}", text(&output));
    let documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_slice(&output.stdout)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect();
    let of_kind = |kind: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let container = &of_kind("Deployment")["spec"]["template"]["spec"]["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");

    // No wildcard anywhere, and Secrets are only ever read one by one.
    for role in documents
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in role["rules"].as_sequence().unwrap() {
            for field in ["apiGroups", "resources", "verbs"] {
                let values = rule[field].as_sequence().unwrap();
                assert!(
                    !values.iter().any(|v| v == "*"),
                    "wildcard in {field}: {rule:?}"
                );
            }
            if rule["resources"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|r| r == "secrets")
            {
                assert_eq!(rule["verbs"].as_sequence().unwrap().len(), 1);
                assert_eq!(rule["verbs"][0], "get");
            }
        }
    }
    // Each rule says why it exists: the line before a rule that opens a new reason is a
    // comment, and every rule follows some comment within its role.
    let rbac =
        std::fs::read_to_string(root().join("charts/weir-operator/templates/rbac.yaml")).unwrap();
    let lines: Vec<&str> = rbac.lines().collect();
    for (index, line) in lines.iter().enumerate() {
        if !line.trim_start().starts_with("- apiGroups") {
            continue;
        }
        let explained = lines[..index]
            .iter()
            .rev()
            .map(|l| l.trim_start())
            .take_while(|l| !l.starts_with("rules:"))
            .any(|l| l.starts_with('#'));
        assert!(
            explained,
            "rbac.yaml line {}: a rule without a reason",
            index + 1
        );
    }
}

#[test]
fn chart_values_schema_refuses_bad_values() {
    for (set, complaint) in [
        ("replicaCount=0", "replicaCount"),
        ("logFormat=xml", "logFormat"),
        ("metrics.port=70000", "port"),
        ("unknownSetting=1", "unknownSetting"),
    ] {
        let output = helm_template(&["--set", set]);
        assert!(!output.status.success(), "{set} was accepted");
        assert!(
            text(&output).contains(complaint),
            "{set}: {}",
            text(&output)
        );
    }
}

fn example(file: &str) -> PathBuf {
    root().join("examples").join(file)
}

#[test]
fn every_object_the_operator_renders_is_valid_kubernetes() {
    let dir = tempfile::tempdir().unwrap();
    // The examples as they are, then variants that exercise the other builders' paths.
    let mut pipeline: IngestPipeline =
        serde_yaml::from_str(&std::fs::read_to_string(example("pipeline.yaml")).unwrap()).unwrap();
    let mut binding: SinkBinding =
        serde_yaml::from_str(&std::fs::read_to_string(example("sink.yaml")).unwrap()).unwrap();
    let base = Manifests::read(
        &[example("pipeline.yaml"), example("sink.yaml")],
        "analytics",
    )
    .unwrap()
    .children(&Defaults::default())
    .unwrap();
    assert_eq!(base.len(), 8);

    pipeline.metadata.namespace = Some("analytics".into());
    pipeline.metadata.uid = Some("d2c1e0f4-0000-4000-8000-000000000001".into());
    pipeline.spec.workload.autoscaling = None;
    pipeline.spec.workload.replicas = Some(3);
    pipeline.spec.workload.kafka_secret = Some("kafka-credentials".into());
    binding.metadata.namespace = Some("analytics".into());
    binding.metadata.uid = Some("d2c1e0f4-0000-4000-8000-000000000002".into());
    binding.spec.workload.schedule = Some("*/15 * * * *".into());
    binding.spec.workload.descriptor_config_map = Some("click-descriptors".into());
    let variants = Manifests {
        pipelines: vec![pipeline],
        bindings: vec![binding],
    }
    .children(&Defaults::default())
    .unwrap();
    assert!(variants.iter().any(|c| c.kind() == "CronJob"));

    for (name, children) in [("examples", base), ("variants", variants)] {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, to_yaml_stream(&children)).unwrap();
        assert_valid_kubernetes(&file);
    }
}

/// Checks `instance` against the openAPIV3Schema of a generated CRD.
fn check_against_crd(crd: &str, instance: &Path) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let crd: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("crds/generated").join(crd)).unwrap(),
    )
    .unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(
        &schema,
        serde_json::to_vec(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]).unwrap(),
    )
    .unwrap();
    run(
        "check-jsonschema",
        &[
            "--schemafile",
            schema.to_str().unwrap(),
            instance.to_str().unwrap(),
        ],
    )
}

#[test]
fn examples_validate_against_the_generated_crd_schemas() {
    for (crd, file) in [
        ("ingestpipelines.weir.dev.yaml", "pipeline.yaml"),
        ("sinkbindings.weir.dev.yaml", "sink.yaml"),
    ] {
        let output = check_against_crd(crd, &example(file));
        assert!(output.status.success(), "{file}: {}", text(&output));
    }

    // And the schema is not a rubber stamp.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let text_of = std::fs::read_to_string(example("pipeline.yaml")).unwrap();
    std::fs::write(
        &broken,
        text_of.replace("minReplicas: 2", "minReplicas: two"),
    )
    .unwrap();
    let output = check_against_crd("ingestpipelines.weir.dev.yaml", &broken);
    assert!(!output.status.success());
    assert!(text(&output).contains("minReplicas"), "{}", text(&output));
}

/// The configuration the operator mounts is what the data plane loads: the gateway's
/// file and routing table, and the sink's file, parsed and validated by `weir` itself.
#[test]
fn the_data_plane_loads_the_configuration_the_operator_mounts() {
    let children = Manifests::read(&[example("pipeline.yaml"), example("sink.yaml")], "default")
        .unwrap()
        .children(&Defaults::default())
        .unwrap();
    let data = |name: &str, key: &str| -> String {
        let child = children.iter().find(|c| c.name() == name).unwrap();
        child.to_json()["data"][key].as_str().unwrap().to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let routing = dir.path().join("routing.yaml");
    std::fs::write(
        &routing,
        data("clickstream-gateway-routing", "routing.yaml"),
    )
    .unwrap();
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        data("clickstream-gateway-config", "pipeline.yaml")
            .replace("/etc/weir/routing/routing.yaml", routing.to_str().unwrap()),
    )
    .unwrap();
    let spec = weir_crds::config::read_pipeline(Some(&config), std::iter::empty()).unwrap();
    weir_crds::settings::GatewaySettings::try_from(spec.clone()).expect("the gateway accepts it");
    assert_eq!(spec.kafka.bootstrap_servers, "kafka:9092");
    assert!(spec.topics.is_empty(), "the operator creates the topics");
    weir::gateway::route::load_routing_file(std::path::Path::new(
        spec.routing.file.as_deref().unwrap(),
    ))
    .expect("the routing table compiles");

    let sink = dir.path().join("sink.yaml");
    std::fs::write(&sink, data("clickstream-parquet-sink-config", "sink.yaml")).unwrap();
    let spec = weir_crds::config::read_sink(Some(&sink), std::iter::empty()).unwrap();
    weir_crds::settings::SinkSettings::try_from(spec.clone()).expect("the sink accepts it");
    assert_eq!(spec.storage.url, "s3://analytics/events");
    assert_eq!(spec.kafka.bootstrap_servers, "kafka:9092");
}
