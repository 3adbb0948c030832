//! Offline Kubernetes checks (no API server can run here): the Helm chart lints and
//! renders objects that validate against the Kubernetes 1.33 OpenAPI schemas, its
//! values schema refuses bad values, every object the operator renders validates the
//! same way, and the examples validate against the generated CRD schemas.
//!
//! The chart's monitoring (ServiceMonitors, alert rules, Grafana dashboards) reads only
//! metrics Weir exports.
//!
//! Tools (installed by `.ci/test`): helm, kubernetes-validate, check-jsonschema, and
//! promtool where Debian's `prometheus` package can be installed (without it the alert
//! rules are checked against tests/data/prometheus-rules.schema.json only).

use std::collections::BTreeSet;
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
    let report = validate_kubernetes(file);
    assert!(!report.contains("WARN"), "{report}");
}

/// Like [`assert_valid_kubernetes`], for files that also hold custom resources
/// (ServiceMonitor, PrometheusRule): the validator has no schema for them and warns.
fn assert_valid_kubernetes_and_custom(file: &Path) {
    let report = validate_kubernetes(file);
    for line in report.lines().filter(|l| l.contains("WARN")) {
        assert!(
            line.contains("Couldn't find schema for kind")
                && line.contains("api version monitoring.coreos.com/v1"),
            "{report}"
        );
    }
}

/// kubernetes-validate's report on `file`, which it found free of errors.
fn validate_kubernetes(file: &Path) -> String {
    let output = run(
        "kubernetes-validate",
        &["--strict", "-k", "1.33.0", file.to_str().unwrap()],
    );
    let report = text(&output);
    assert!(output.status.success(), "{report}");
    assert!(!report.contains("ERROR"), "{report}");
    report
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

/// The objects `helm template` renders with `extra` arguments, CRDs included.
fn rendered(extra: &[&str]) -> Vec<serde_yaml::Value> {
    let output = helm_template(extra);
    assert!(output.status.success(), "{}", text(&output));
    serde_yaml::Deserializer::from_slice(&output.stdout)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

/// The rendered object of `kind`, in `namespace` when one is given.
fn find<'a>(
    documents: &'a [serde_yaml::Value],
    kind: &str,
    namespace: Option<&str>,
) -> &'a serde_yaml::Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && namespace.is_none_or(|n| d["metadata"]["namespace"] == n))
        .unwrap_or_else(|| panic!("no {kind} in {namespace:?}"))
}

/// Every monitoring option at once, with namespaced mode and both name overrides.
const EVERY_OPTION: &str = "watchNamespaces={team-a,team-b},metrics.serviceMonitor.enabled=true,\
    metrics.prometheusRule.enabled=true,dashboards.enabled=true,fullnameOverride=weir-ops,\
    nameOverride=ingest";

#[test]
fn chart_lints() {
    for options in [vec![], vec!["--set", EVERY_OPTION]] {
        let mut args = vec!["lint", "--strict", "charts/weir-operator"];
        args.extend_from_slice(&options);
        let output = run("helm", &args);
        assert!(output.status.success(), "{}", text(&output));
        // crds/ holds copies of crds/generated, not a symlink helm warns about.
        assert!(
            !text(&output).contains("symbolic link"),
            "{}",
            text(&output)
        );
    }
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
        vec!["--set", "watchNamespaces={team-a,team-b}"],
        vec!["--set", "watchNamespaces={team-a},rbac.readKafkaSecrets=false"],
        vec!["--set", "metrics.serviceMonitor.enabled=true"],
        vec!["--set", "metrics.prometheusRule.enabled=true"],
        vec!["--set", "dashboards.enabled=true"],
        vec!["--set", "fullnameOverride=weir-ops"],
        vec!["--set", "nameOverride=ingest"],
        vec!["--set", EVERY_OPTION],
    ]
    .iter()
    .enumerate()
    {
        let output = helm_template(options);
        assert!(output.status.success(), "{options:?}: {}", text(&output));
        let rendered = String::from_utf8(output.stdout).unwrap();
        let file = dir.path().join(format!("chart-{index}.yaml"));
        std::fs::write(&file, &rendered).unwrap();
        assert_valid_kubernetes_and_custom(&file);
        assert!(rendered.contains("kind: CustomResourceDefinition"));
    }
    // Monitoring is off by default, so a cluster without the Prometheus Operator's CRDs
    // installs the chart; and then nothing needs the custom-resource leniency.
    let file = dir.path().join("chart-0.yaml");
    assert_valid_kubernetes(&file);
    let defaults = std::fs::read_to_string(&file).unwrap();
    assert!(!defaults.contains("monitoring.coreos.com"));
    assert!(!defaults.contains("grafana_dashboard"));
}

#[test]
fn chart_runs_the_operator_locked_down_with_least_privilege() {
    let documents = rendered(&[]);
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
    // Gateway: two ConfigMaps, Deployment, Service, autoscaler, disruption budget;
    // sink: ConfigMap, Deployment, metrics Service.
    assert_eq!(base.len(), 9);

    pipeline.metadata.namespace = Some("analytics".into());
    pipeline.metadata.uid = Some("d2c1e0f4-0000-4000-8000-000000000001".into());
    pipeline.spec.workload.autoscaling = None;
    pipeline.spec.workload.replicas = Some(3);
    pipeline.spec.workload.kafka_secret = Some("kafka-credentials".into());
    binding.metadata.namespace = Some("analytics".into());
    binding.metadata.uid = Some("d2c1e0f4-0000-4000-8000-000000000002".into());
    binding.spec.workload.schedule = Some("*/15 * * * *".into());
    binding.spec.workload.descriptor_config_map = Some("click-descriptors".into());
    // Every pod setting, so Kubernetes' own schema checks what they become.
    let pod = serde_json::json!({
        "serviceAccountName": "weir-irsa",
        "nodeSelector": {"pool": "ingest"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ingest", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ingest"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}],
        "imagePullSecrets": [{"name": "regcred"}],
        "env": [{"name": "WEIR_LOG", "value": "debug"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        "annotations": {"team": "data"},
        "labels": {"team": "data"},
        "logFormat": "text"
    });
    pipeline.spec.workload.pod = serde_json::from_value(pod.clone()).unwrap();
    binding.spec.workload.pod = serde_json::from_value(pod).unwrap();
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
    check_jsonschema(&schema, instance)
}

/// `instance` (YAML or JSON) checked against the JSON schema in `schema`.
fn check_jsonschema(schema: &Path, instance: &Path) -> Output {
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

#[test]
fn chart_names_follow_the_overrides() {
    let name_of = |documents: &[serde_yaml::Value], kind: &str| {
        find(documents, kind, None)["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let default = rendered(&[]);
    assert_eq!(name_of(&default, "Deployment"), "weir-weir-operator");

    let full = rendered(&["--set", "fullnameOverride=ingest-operator"]);
    for kind in [
        "Deployment",
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
    ] {
        assert_eq!(name_of(&full, kind), "ingest-operator", "{kind}");
    }
    assert_eq!(name_of(&full, "Service"), "ingest-operator-metrics");

    let short = rendered(&["--set", "nameOverride=ingest"]);
    assert_eq!(name_of(&short, "Deployment"), "weir-ingest");
    let selector = &find(&short, "Deployment", None)["spec"]["selector"]["matchLabels"];
    assert_eq!(selector["app.kubernetes.io/name"], "ingest");
}

#[test]
fn chart_namespaced_mode_grants_the_same_rules_in_each_watched_namespace() {
    let cluster = rendered(&[]);
    let cluster_rules = &find(&cluster, "ClusterRole", None)["rules"];
    assert!(watch_namespaces_env(&cluster).is_none());

    let namespaced = rendered(&["--set", "watchNamespaces={team-a,team-b}"]);
    assert!(
        !namespaced
            .iter()
            .any(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding"),
        "namespaced mode grants nothing cluster-wide"
    );
    for namespace in ["team-a", "team-b"] {
        assert_eq!(
            &find(&namespaced, "Role", Some(namespace))["rules"],
            cluster_rules
        );
        let binding = find(&namespaced, "RoleBinding", Some(namespace));
        assert_eq!(binding["roleRef"]["kind"], "Role");
        assert_eq!(binding["subjects"][0]["namespace"], "weir-system");
    }
    // Leader election stays in the release namespace.
    let leader = find(&namespaced, "Role", Some("weir-system"));
    assert_eq!(leader["rules"][0]["resources"][0], "leases");
    let watch = watch_namespaces_env(&namespaced).expect("WEIR_WATCH_NAMESPACES");
    assert_eq!(watch["value"], "team-a,team-b");

    // Secrets only when rbac.readKafkaSecrets, and then only in the watched namespaces.
    let without = rendered(&[
        "--set",
        "watchNamespaces={team-a},rbac.readKafkaSecrets=false",
    ]);
    let rules = serde_yaml::to_string(&find(&without, "Role", Some("team-a"))["rules"]).unwrap();
    assert!(!rules.contains("secrets"), "{rules}");
}

/// The operator container's WEIR_WATCH_NAMESPACES entry, if it has one.
fn watch_namespaces_env(documents: &[serde_yaml::Value]) -> Option<&serde_yaml::Value> {
    let container =
        &find(documents, "Deployment", None)["spec"]["template"]["spec"]["containers"][0];
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "WEIR_WATCH_NAMESPACES")
}

#[test]
fn chart_service_monitors_scrape_the_operator_and_the_data_plane() {
    let documents = rendered(&[
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prometheus",
    ]);
    let monitors: Vec<&serde_yaml::Value> = documents
        .iter()
        .filter(|d| d["kind"] == "ServiceMonitor")
        .collect();
    assert_eq!(monitors.len(), 2);
    let is_data_plane = |m: &serde_yaml::Value| {
        m["metadata"]["name"]
            .as_str()
            .unwrap()
            .ends_with("-data-plane")
    };
    let operator = monitors.iter().find(|m| !is_data_plane(m)).unwrap();
    let data_plane = monitors.iter().find(|m| is_data_plane(m)).unwrap();
    for monitor in [operator, data_plane] {
        assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
        assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    }

    // The operator's: its metrics Service, in the release namespace.
    let service = find(&documents, "Service", None);
    let selector = operator["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap();
    for (key, value) in selector {
        assert_eq!(&service["metadata"]["labels"][key.as_str().unwrap()], value);
    }
    assert_eq!(service["spec"]["ports"][0]["name"], "metrics");
    assert_eq!(
        operator["spec"]["namespaceSelector"]["matchNames"][0],
        "weir-system"
    );

    // The data plane's: every Service the operator creates, in every namespace.
    assert_eq!(data_plane["spec"]["namespaceSelector"]["any"], true);
    let services = operator_services();
    assert!(
        services
            .iter()
            .any(|s| s["metadata"]["name"] == "clickstream-gateway")
    );
    for service in &services {
        assert_selects(&data_plane["spec"]["selector"], service);
    }

    // Namespaced mode: only the watched namespaces.
    let namespaced = rendered(&[
        "--set",
        "metrics.serviceMonitor.enabled=true,watchNamespaces={team-a,team-b}",
    ]);
    let data_plane = namespaced
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor" && is_data_plane(d))
        .unwrap();
    let names = &data_plane["spec"]["namespaceSelector"]["matchNames"];
    assert_eq!(names.as_sequence().unwrap().len(), 2);
    assert_eq!(names[0], "team-a");
    assert_eq!(names[1], "team-b");
}

/// The Services the operator creates for the examples, as JSON.
fn operator_services() -> Vec<serde_json::Value> {
    Manifests::read(
        &[example("pipeline.yaml"), example("sink.yaml")],
        "analytics",
    )
    .unwrap()
    .children(&Defaults::default())
    .unwrap()
    .iter()
    .filter(|c| c.kind() == "Service")
    .map(|c| c.to_json())
    .collect()
}

/// Asserts that a ServiceMonitor `selector` (matchLabels, and matchExpressions with
/// operator In) selects `service`, and that the Service has a port named `metrics`.
fn assert_selects(selector: &serde_yaml::Value, service: &serde_json::Value) {
    let name = &service["metadata"]["name"];
    let labels = &service["metadata"]["labels"];
    for (key, value) in selector["matchLabels"].as_mapping().unwrap() {
        let key = key.as_str().unwrap();
        assert_eq!(labels[key].as_str(), value.as_str(), "{name}: label {key}");
    }
    for expression in selector["matchExpressions"].as_sequence().unwrap() {
        assert_eq!(expression["operator"], "In");
        let key = expression["key"].as_str().unwrap();
        let value = labels[key]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no {key}"));
        let values = expression["values"].as_sequence().unwrap();
        assert!(
            values.iter().any(|v| v.as_str() == Some(value)),
            "{name}: {key}={value}"
        );
    }
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert!(
        ports.iter().any(|p| p["name"] == "metrics"),
        "{name}: no port metrics"
    );
}

/// Metrics of the prometheus crate's process collector (the gateway registers it).
const PROCESS_METRICS: [&str; 8] = [
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// Every metric name Weir exports: the `"weir_…"` string literals of the crates that
/// register metrics, and the process collector's.
fn exported_metrics() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = PROCESS_METRICS.iter().map(|m| m.to_string()).collect();
    for dir in ["dataplane/src", "runtime/src", "operator/src"] {
        for file in rust_files(&root().join(dir)) {
            names.extend(weir_literals(&std::fs::read_to_string(&file).unwrap()));
        }
    }
    assert!(names.contains("weir_gateway_batches_total"), "{names:?}");
    names
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The string literals of `source` that are a whole identifier starting with `weir_`.
fn weir_literals(source: &str) -> Vec<String> {
    source
        .match_indices("\"weir_")
        .filter_map(|(at, _)| {
            let rest = &source[at + 1..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest[name.len()..].starts_with('"').then_some(name)
        })
        .collect()
}

/// Whether `name` is an exported metric or one of a histogram's series.
fn is_exported(name: &str, exported: &BTreeSet<String>) -> bool {
    exported.contains(name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .any(|base| exported.contains(base))
}

/// PromQL words that are never metric names (aggregations, operators, modifiers).
const PROMQL_KEYWORDS: [&str; 26] = [
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "stddev",
    "stdvar",
    "group",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
    "Inf",
    "NaN",
    "start",
    "end",
];

/// Modifiers followed by a parenthesised list of label names.
const PROMQL_LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index just past the string literal opened at `open`.
fn past_string(chars: &[char], open: usize) -> usize {
    let mut i = open + 1;
    while i < chars.len() && chars[i] != chars[open] {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// The index just past the `close` ending the group opened at `open`, strings skipped.
fn past_group(chars: &[char], open: usize, close: char) -> usize {
    let mut i = open + 1;
    while i < chars.len() && chars[i] != close {
        i = match chars[i] {
            '"' | '\'' | '`' => past_string(chars, i),
            _ => i + 1,
        };
    }
    i + 1
}

/// The metric names a PromQL expression reads: identifiers outside label matchers
/// (`{…}`), ranges (`[…]`), strings and label lists (`by (…)`), that are neither
/// functions (followed by `(`) nor keywords. Grafana variables (`$x`), numbers and
/// durations are skipped.
fn promql_metrics(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut label_list = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' || c == '[' {
            i = past_group(&chars, i, if c == '{' { '}' } else { ']' });
        } else if matches!(c, '"' | '\'' | '`') {
            i = past_string(&chars, i);
        } else if c == '(' && label_list {
            i = past_group(&chars, i, ')');
            label_list = false;
        } else if c == '$' || c == '.' || c.is_ascii_digit() {
            i += 1;
            while i < chars.len() && (is_word(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_word(c) {
            let start = i;
            while i < chars.len() && is_word(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if PROMQL_LABEL_LISTS.contains(&word.as_str()) {
                label_list = next == Some(&'(');
            } else if next != Some(&'(') && !PROMQL_KEYWORDS.contains(&word.as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_metric_names_are_extracted() {
    assert_eq!(
        promql_metrics(
            r#"histogram_quantile(0.99, sum by (le, service) (rate(weir_a_bucket{code=~"x|y}", service=~"$service"}[$__rate_interval])))"#
        ),
        ["weir_a_bucket"]
    );
    assert_eq!(
        promql_metrics(
            "sum(rate(a_total[5m] offset 1h)) / sum without (pod) (b) > 1e+06 or on() vector(0)"
        ),
        ["a_total", "b"]
    );
    assert_eq!(
        promql_metrics("max by (pod) (c) unless ignoring (x) group_left d * e"),
        ["c", "d", "e"]
    );
    assert!(promql_metrics("vector(1) > bool 0.5").is_empty());
}

/// Asserts that `expr` reads at least one metric and only metrics Weir exports.
fn assert_exported(expr: &str, exported: &BTreeSet<String>, source: &str) {
    let metrics = promql_metrics(expr);
    assert!(!metrics.is_empty(), "{source}: no metric in {expr}");
    for metric in metrics {
        assert!(
            is_exported(&metric, exported),
            "{source}: {metric} is not a metric Weir exports (in {expr})"
        );
    }
}

/// Every string under an `expr` key, at any depth.
fn collect_exprs(node: &serde_json::Value, into: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value.as_str() {
                    Some(expr) if key == "expr" => into.push(expr.to_string()),
                    _ => collect_exprs(value, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, into)),
        _ => {}
    }
}

/// The PromQL of a dashboard: its panels' targets, and the metric (with its matchers)
/// of each `label_values(metric, label)` variable.
fn dashboard_queries(board: &serde_json::Value) -> Vec<String> {
    let mut queries = Vec::new();
    collect_exprs(&board["panels"], &mut queries);
    for variable in board["templating"]["list"].as_array().into_iter().flatten() {
        let query = variable["query"].as_str().unwrap_or_default();
        if let Some(arguments) = query.strip_prefix("label_values(") {
            let metric = arguments
                .rsplit_once(',')
                .map_or(arguments.trim_end_matches(')'), |(metric, _)| metric);
            queries.push(metric.to_string());
        }
    }
    queries
}

/// The chart's dashboards/*.json, by file name.
fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = root().join("charts/weir-operator/dashboards");
    let mut boards: Vec<(String, serde_json::Value)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let board: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
            (name, board)
        })
        .collect();
    boards.sort_by(|a, b| a.0.cmp(&b.0));
    boards
}

/// Asserts what Grafana needs of a dashboard: a title and uid, a Prometheus data source
/// variable, and panels placed on the grid, each but rows with PromQL targets.
fn assert_grafana_shape(name: &str, board: &serde_json::Value) {
    for field in ["title", "uid"] {
        let value = board[field].as_str().unwrap_or_default();
        assert!(!value.is_empty() && value.len() <= 40, "{name}: {field}");
    }
    assert!(
        board["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{name}"
    );
    let variables = board["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "{name}: no Prometheus data source variable"
    );
    let panels = board["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = &panel["title"];
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{name}: id of {title}"
        );
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].is_u64(), "{name}: {title} gridPos");
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array();
        assert!(
            targets.is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["expr"].is_string())),
            "{name}: {title} has no PromQL targets"
        );
    }
}

#[test]
fn chart_dashboards_are_grafana_dashboards_of_exported_metrics() {
    let exported = exported_metrics();
    let boards = dashboards();
    let names: Vec<&str> = boards.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        ["weir-gateway.json", "weir-operator.json", "weir-sink.json"]
    );
    let mut all = String::new();
    for (name, board) in &boards {
        assert_grafana_shape(name, board);
        for expr in dashboard_queries(board) {
            assert_exported(&expr, &exported, name);
            all.push_str(&expr);
        }
    }
    for wanted in [
        "histogram_quantile",
        "weir_gateway_batches_total",
        "weir_gateway_kafka_delivery_seconds_bucket",
        "weir_gateway_connections",
        "weir_gateway_inflight_bytes",
        "weir_sink_consumer_lag_records",
        "weir_sink_flush_seconds",
        "weir_sink_flush_failures_total",
        "weir_operator_reconciles_total",
        "weir_operator_leader",
    ] {
        assert!(all.contains(wanted), "no dashboard shows {wanted}");
    }

    // The ConfigMap carries each file as it is, with the sidecar's label.
    let documents = rendered(&[
        "--set",
        "dashboards.enabled=true,dashboards.namespace=grafana",
    ]);
    let config_map = find(&documents, "ConfigMap", Some("grafana"));
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    for (name, board) in &boards {
        let carried = config_map["data"][name.as_str()].as_str().unwrap();
        let carried: serde_json::Value = serde_json::from_str(carried).unwrap();
        assert_eq!(&carried, board, "{name}");
    }
}

#[test]
fn chart_alert_rules_are_valid_and_use_exported_metrics() {
    let documents = rendered(&["--set", "metrics.prometheusRule.enabled=true"]);
    let rule = find(&documents, "PrometheusRule", None);
    let spec = serde_json::to_value(&rule["spec"]).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&spec, &mut exprs);
    assert_eq!(exprs.len(), 7, "{exprs:?}");
    let exported = exported_metrics();
    for expr in &exprs {
        assert_exported(expr, &exported, "PrometheusRule");
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, serde_yaml::to_string(&spec).unwrap()).unwrap();
    let output = check_rules_schema(&rules);
    assert!(output.status.success(), "{}", text(&output));
    if find_tool("promtool").is_ok() {
        let output = run("promtool", &["check", "rules", rules.to_str().unwrap()]);
        assert!(output.status.success(), "{}", text(&output));
    }

    // The schema is not a rubber stamp: a rule without expr, or with a bad `for`.
    let mut broken = spec.clone();
    broken["groups"][0]["rules"][0]["for"] = "ten minutes".into();
    std::fs::write(&rules, serde_yaml::to_string(&broken).unwrap()).unwrap();
    assert!(!check_rules_schema(&rules).status.success());
    let mut broken = spec;
    broken["groups"][0]["rules"][0]
        .as_object_mut()
        .unwrap()
        .remove("expr");
    std::fs::write(&rules, serde_yaml::to_string(&broken).unwrap()).unwrap();
    assert!(!check_rules_schema(&rules).status.success());
}

/// Checks a Prometheus rule file against tests/data/prometheus-rules.schema.json.
fn check_rules_schema(rules: &Path) -> Output {
    check_jsonschema(
        &root().join("tests/data/prometheus-rules.schema.json"),
        rules,
    )
}

/// The README's argocd-cm snippet carries the chart's health script as it is, for both
/// kinds.
#[test]
fn readme_carries_the_argo_cd_health_check() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let script =
        std::fs::read_to_string(root().join("charts/weir-operator/argocd/health.lua")).unwrap();
    let indented: String = script
        .lines()
        .map(|l| match l {
            "" => "\n".to_string(),
            _ => format!("    {l}\n"),
        })
        .collect();
    for kind in ["IngestPipeline", "SinkBinding"] {
        let key = format!("  resource.customizations.health.weir.dev_{kind}: |\n");
        assert!(
            readme.contains(&format!("{key}{indented}")),
            "README.md: the {kind} health check is not charts/weir-operator/argocd/health.lua"
        );
    }
}
