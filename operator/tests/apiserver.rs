//! The operator against a real Kubernetes API server: `kube-apiserver` and `etcd`
//! processes on 127.0.0.1, started and stopped by the test. Skipped, with a message
//! saying what is missing, when either is not on `PATH` (no API server is packaged in
//! the registries CI reaches; Debian's `etcd-server` gives etcd). Garbage collection
//! needs `kube-controller-manager` as well and is skipped without it.
//!
//! What a real server checks and the fake client cannot: the CRDs' CEL cost budget and
//! schema warnings, the CEL rules and OpenAPI bounds as the server applies them,
//! server-side apply with defaulting, watches, RBAC (the operator runs as the chart's
//! ServiceAccount, with the chart's rules), and the leader Lease.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use weir_crds::resources::{IngestPipeline, SinkBinding};

const NS: &str = "analytics";
const OPERATOR_NS: &str = "weir-system";
const ADMIN_TOKEN: &str = "weir-test-admin";
const OPERATOR_TOKEN: &str = "weir-test-operator";
/// How long a change may take to show; far above what a reconcile needs, far below the
/// 40–55 s a reconcile took when it waited on Kafka.
const SOON: Duration = Duration::from_secs(10);

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped; its output goes to a file in the test's dir.
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(name: &str, dir: &Path, command: &mut Command) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            name: name.into(),
            child,
            log,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// SIGTERM, then waits for the exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let output = self.output();
            let lines: Vec<&str> = output.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            eprintln!("--- last lines of {}:\n{tail}", self.name);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd, kube-apiserver and (when on PATH) kube-controller-manager.
struct Cluster {
    dir: tempfile::TempDir,
    url: String,
    controller_manager: bool,
    // Dropped in reverse order of start.
    _processes: Vec<Process>,
}

impl Cluster {
    /// `None` (after saying why) when the binaries are missing.
    async fn start() -> Option<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let missing: Vec<_> = ["kube-apiserver", "etcd"]
            .into_iter()
            .filter(|p| !on_path(p))
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "SKIPPED: the real-API-server tests need {} on PATH (Debian's etcd-server \
                 package gives etcd; kube-apiserver is built from Kubernetes' source)",
                missing.join(" and ")
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut processes = Vec::new();

        let (client_port, peer_port) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        processes.push(Process::start(
            "etcd",
            dir.path(),
            Command::new("etcd")
                .arg("--name=weir-test")
                .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
                .arg(format!("--listen-client-urls={etcd_url}"))
                .arg(format!("--advertise-client-urls={etcd_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=weir-test={peer_url}"))
                .arg("--log-level=error"),
        ));

        let key = openssl::rsa::Rsa::generate(2048).unwrap();
        let (private, public) = (dir.path().join("sa.key"), dir.path().join("sa.pub"));
        std::fs::write(&private, key.private_key_to_pem().unwrap()).unwrap();
        std::fs::write(&public, key.public_key_to_pem().unwrap()).unwrap();
        let tokens = dir.path().join("tokens.csv");
        std::fs::write(
            &tokens,
            format!(
                "{ADMIN_TOKEN},weir-test-admin,1,\"system:masters\"\n\
                 {OPERATOR_TOKEN},system:serviceaccount:{OPERATOR_NS}:weir-operator,2,\
                 \"system:serviceaccounts,system:serviceaccounts:{OPERATOR_NS},system:authenticated\"\n"
            ),
        )
        .unwrap();
        let port = free_port();
        processes.push(Process::start(
            "kube-apiserver",
            dir.path(),
            Command::new("kube-apiserver")
                .arg(format!("--etcd-servers={etcd_url}"))
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg(format!("--secure-port={port}"))
                .arg(format!("--cert-dir={}", dir.path().join("certs").display()))
                .arg(format!("--token-auth-file={}", tokens.display()))
                .arg("--authorization-mode=RBAC")
                .arg("--service-account-issuer=https://kubernetes.default.svc")
                .arg(format!("--service-account-key-file={}", public.display()))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    private.display()
                ))
                .arg("--service-cluster-ip-range=10.96.0.0/16")
                .arg("--allow-privileged=true"),
        ));
        let url = format!("https://127.0.0.1:{port}");
        let mut cluster = Self {
            dir,
            url,
            controller_manager: false,
            _processes: processes,
        };
        cluster.wait_ready().await;

        if on_path("kube-controller-manager") {
            let kubeconfig = cluster.kubeconfig(ADMIN_TOKEN);
            let process = Process::start(
                "kube-controller-manager",
                cluster.dir.path(),
                Command::new("kube-controller-manager")
                    .arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .arg(format!("--authentication-kubeconfig={}", kubeconfig.display()))
                    .arg(format!("--authorization-kubeconfig={}", kubeconfig.display()))
                    .arg("--bind-address=127.0.0.1")
                    .arg(format!("--secure-port={}", free_port()))
                    .arg("--controllers=garbagecollector,deployment-controller,replicaset-controller")
                    .arg("--leader-elect=false")
                    .arg(format!(
                        "--service-account-private-key-file={}",
                        private.display()
                    )),
            );
            cluster._processes.push(process);
            cluster.controller_manager = true;
        } else {
            eprintln!(
                "note: kube-controller-manager is not on PATH, so garbage collection on \
                 delete is not checked"
            );
        }
        Some(cluster)
    }

    async fn wait_ready(&mut self) {
        let client = self.client(ADMIN_TOKEN).await;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
            if let Ok(text) = client.request_text(request).await
                && text.trim() == "ok"
            {
                return;
            }
            for process in &mut self._processes {
                if let Some(status) = process.exited() {
                    panic!("{} exited ({status}):\n{}", process.name, process.output());
                }
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready in 90 s:\n{}",
                self._processes[1].output()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A kubeconfig file for `token`.
    fn kubeconfig(&self, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{token}.kubeconfig"));
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "insecure-skip-tls-verify": true}}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
            "current-context": "test",
        });
        std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
        path
    }

    async fn client(&self, token: &str) -> Client {
        let text = std::fs::read_to_string(self.kubeconfig(token)).unwrap();
        let kubeconfig = Kubeconfig::from_yaml(&text).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        Client::try_from(config).unwrap()
    }

    /// Starts `weir-operator run` as the chart's ServiceAccount.
    fn operator(&self, holder: &str) -> (Process, u16) {
        let metrics = free_port();
        let process = Process::start(
            &format!("operator-{holder}"),
            self.dir.path(),
            Command::new(env!("CARGO_BIN_EXE_weir-operator"))
                .args(["run", "--lease-namespace", OPERATOR_NS])
                .args(["--holder", holder, "--lease-ttl", "15s"])
                .args(["--metrics", &format!("127.0.0.1:{metrics}")])
                .arg("--image=registry.example/weir:test")
                .env("KUBECONFIG", self.kubeconfig(OPERATOR_TOKEN))
                .env("WEIR_LOG", "info,weir_operator=debug")
                .env_remove("POD_NAME"),
        );
        (process, metrics)
    }
}

/// Polls `check` until it returns `Some`, or fails with `what` after `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Prometheus text of an operator's metrics endpoint.
async fn metrics(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    match reqwest::get(&url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the first sample whose line starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// All writes an operator made, across kinds and operations.
fn writes(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("weir_operator_writes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Lets reconciles in flight settle, then checks that 5 s pass without a write.
async fn assert_no_writes(metrics_port: u16, when: &str) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = writes(&metrics(metrics_port).await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        writes(&metrics(metrics_port).await),
        before,
        "writes {when}"
    );
}

fn example(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The example pipeline pointed at a Kafka port nothing listens on.
fn pipeline() -> Value {
    let mut pipeline = example("pipeline.yaml");
    pipeline["metadata"]["namespace"] = json!(NS);
    pipeline["spec"]["kafka"]["bootstrapServers"] = json!(format!("127.0.0.1:{}", free_port()));
    pipeline
}

/// Creates the CRDs by hand-made requests, so the API server's warnings can be read.
async fn install_crds(client: &Client) {
    for (file, _) in weir_crds::crd_manifests() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crds/generated")
            .join(file);
        let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let request =
            http::Request::post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&crd).unwrap())
                .unwrap();
        let response = client.send(request.map(Into::into)).await.unwrap();
        let warnings: Vec<String> = response
            .headers()
            .get_all("warning")
            .iter()
            .map(|w| w.to_str().unwrap_or_default().to_string())
            .collect();
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(
            status.as_u16(),
            201,
            "the API server refused {file}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(warnings.is_empty(), "{file} drew warnings: {warnings:?}");
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["ingestpipelines.weir.dev", "sinkbindings.weir.dev"] {
        eventually(
            &format!("{name} established"),
            Duration::from_secs(30),
            || {
                let crds = crds.clone();
                async move {
                    let crd = crds.get(name).await.ok()?;
                    let established = crd
                        .status?
                        .conditions?
                        .into_iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    established.then_some(())
                }
            },
        )
        .await;
    }
}

/// The chart's ServiceAccount RBAC, as `helm template` renders it.
async fn install_rbac(client: &Client) {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/weir-operator");
    let output = Command::new("helm")
        .args(["template", "weir-operator", chart.to_str().unwrap()])
        .args(["--namespace", OPERATOR_NS])
        .output()
        .expect("helm on PATH (.ci/test installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let apply = PatchParams::apply("weir-test").force();
    let mut kinds = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let object: Value = serde::Deserialize::deserialize(document).unwrap();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let patch = Patch::Apply(&object);
        match object["kind"].as_str().unwrap_or_default() {
            "ClusterRole" => {
                Api::<ClusterRole>::all(client.clone())
                    .patch(&name, &apply, &patch)
                    .await
                    .unwrap();
            }
            "ClusterRoleBinding" => {
                Api::<ClusterRoleBinding>::all(client.clone())
                    .patch(&name, &apply, &patch)
                    .await
                    .unwrap();
            }
            "Role" => {
                Api::<Role>::namespaced(client.clone(), OPERATOR_NS)
                    .patch(&name, &apply, &patch)
                    .await
                    .unwrap();
            }
            "RoleBinding" => {
                Api::<RoleBinding>::namespaced(client.clone(), OPERATOR_NS)
                    .patch(&name, &apply, &patch)
                    .await
                    .unwrap();
            }
            _ => continue,
        }
        kinds.push(object["kind"].as_str().unwrap().to_string());
    }
    kinds.sort();
    assert_eq!(
        kinds,
        ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
    );
}

async fn create_namespaces(client: &Client) {
    for name in [NS, OPERATOR_NS] {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
    }
}

/// The API server's refusal of `object`, or `None` if it was accepted.
async fn refusal(client: &Client, object: &Value) -> Option<String> {
    let api: Api<IngestPipeline> = Api::namespaced(client.clone(), NS);
    let pipeline: IngestPipeline = serde_json::from_value(object.clone()).unwrap();
    match api
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &pipeline,
        )
        .await
    {
        Ok(_) => None,
        Err(error) => Some(error.to_string()),
    }
}

fn ready_condition(status: &Value, type_: &str) -> Option<(String, String, String)> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_on_a_real_api_server() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let admin = cluster.client(ADMIN_TOKEN).await;
    create_namespaces(&admin).await;

    // The CRDs: accepted, within the CEL cost budget, without warnings.
    install_crds(&admin).await;
    install_rbac(&admin).await;

    // The examples pass; each invalid spec is refused with its own message.
    assert_eq!(refusal(&admin, &pipeline()).await, None);
    let broken = |pointer: &str, value: Value| {
        let mut object = pipeline();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        match object
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("{parent}"))
        {
            Value::Object(map) => {
                map.insert(key.into(), value);
            }
            Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
            _ => panic!("{parent} holds no fields"),
        }
        object
    };
    for (object, message) in [
        (
            broken("/spec/topics/0/name", json!("bad name!")),
            "a topic name is 1 to 249",
        ),
        (
            broken("/spec/topics/0/partitions", json!(0)),
            "partitions must be at least 1",
        ),
        (
            broken("/spec/topics/0/name", json!("x".repeat(250))),
            "Too long",
        ),
        (
            broken(
                "/spec/workload/autoscaling",
                json!({"minReplicas": 5, "maxReplicas": 2}),
            ),
            "minReplicas must not exceed maxReplicas",
        ),
        (
            broken("/spec/workload/replicas", json!(-3)),
            "replicas cannot be negative",
        ),
        (
            broken("/spec/workload/service", json!({"type": "Foo"})),
            "type must be ClusterIP, NodePort or LoadBalancer",
        ),
        (
            broken(
                "/spec/topics",
                Value::Array(
                    (0..1001)
                        .map(|i| json!({"name": format!("t{i}")}))
                        .collect(),
                ),
            ),
            "must have at most 1000 items",
        ),
    ] {
        let refused = refusal(&admin, &object).await;
        assert!(
            refused.as_deref().is_some_and(|r| r.contains(message)),
            "expected a refusal with {message:?}, got {refused:?}"
        );
    }

    // The operator starts as the chart's ServiceAccount; Kafka is unreachable.
    let (mut leader, leader_metrics) = cluster.operator("replica-a");
    eventually("replica-a leads", SOON * 3, || async {
        (sample(&metrics(leader_metrics).await, "weir_operator_leader") == Some(1.0)).then_some(())
    })
    .await;
    let pipelines: Api<IngestPipeline> = Api::namespaced(admin.clone(), NS);
    let created = Instant::now();
    pipelines
        .create(
            &PostParams::default(),
            &serde_json::from_value(pipeline()).unwrap(),
        )
        .await
        .unwrap();

    // Children within moments, with controller owner references, and a status that
    // says at once that the topics are not there, without waiting on Kafka.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let deployment = eventually("the gateway Deployment", SOON, || async {
        deployments.get_opt("clickstream-gateway").await.unwrap()
    })
    .await;
    let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("IngestPipeline", Some(true))
    );
    let (status, reason, _) = eventually("TopicsReady reported", SOON, || async {
        let live = pipelines.get("clickstream").await.ok()?;
        ready_condition(&serde_json::to_value(live.status?).ok()?, "TopicsReady")
    })
    .await;
    assert_eq!(status, "False");
    assert!(
        ["Creating", "TopicsFailed"].contains(&reason.as_str()),
        "{reason}"
    );
    eprintln!(
        "status with TopicsReady=False after {:?}",
        created.elapsed()
    );
    for kind in [
        "ConfigMap",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ] {
        let count = match kind {
            "ConfigMap" => Api::<ConfigMap>::namespaced(admin.clone(), NS)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
            "Service" => Api::<Service>::namespaced(admin.clone(), NS)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
            "HorizontalPodAutoscaler" => {
                Api::<HorizontalPodAutoscaler>::namespaced(admin.clone(), NS)
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items
                    .len()
            }
            _ => Api::<PodDisruptionBudget>::namespaced(admin.clone(), NS)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
        };
        assert!(count > 0, "no {kind} created");
    }
    // The attempt times out into a failure with the reason, logged at warn.
    let (_, reason, message) = eventually("TopicsFailed", Duration::from_secs(30), || async {
        let live = pipelines.get("clickstream").await.ok()?;
        let condition = ready_condition(&serde_json::to_value(live.status?).ok()?, "TopicsReady")?;
        (condition.1 == "TopicsFailed").then_some(condition)
    })
    .await;
    assert_eq!(reason, "TopicsFailed");
    assert!(message.contains("127.0.0.1:"), "{message}");
    assert!(
        leader
            .output()
            .contains("creating or growing topics failed"),
        "{}",
        leader.output()
    );

    // Edits take effect at once though Kafka is still down; a routing-only edit
    // rewrites the routing map and leaves the pods alone.
    let generation = deployments
        .get("clickstream-gateway")
        .await
        .unwrap()
        .metadata
        .generation;
    let mut live = pipelines.get("clickstream").await.unwrap();
    live.spec.pipeline.routing.rules[0].topic = "ads-v2".into();
    pipelines
        .replace("clickstream", &PostParams::default(), &live)
        .await
        .unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    let routes_to_ads_v2 = || async {
        let routing = configmaps.get("clickstream-gateway-routing").await.ok()?;
        routing
            .data?
            .get("routing.yaml")?
            .contains("ads-v2")
            .then_some(())
    };
    eventually("the routing edit applied", SOON, routes_to_ads_v2).await;
    assert_eq!(
        deployments
            .get("clickstream-gateway")
            .await
            .unwrap()
            .metadata
            .generation,
        generation,
        "a routing-only edit must not touch the Deployment"
    );

    // Hand edits are undone: an image, the routing table, a deleted Service.
    deployments
        .patch(
            "clickstream-gateway",
            &PatchParams::apply("someone").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "spec": {"template": {"spec": {"containers": [{"name": "gateway", "image": "attacker/weir:latest"}]}}}
            })),
        )
        .await
        .unwrap();
    configmaps
        .patch(
            "clickstream-gateway-routing",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"routing.yaml": "rules: []\n"}})),
        )
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    services
        .delete("clickstream-gateway", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the image restored", SOON, || async {
        let d = deployments.get("clickstream-gateway").await.ok()?;
        let image = d.spec?.template.spec?.containers.first()?.image.clone()?;
        (image == "registry.example/weir:test").then_some(())
    })
    .await;
    eventually("the routing table restored", SOON, routes_to_ads_v2).await;
    eventually("the Service recreated", SOON, || async {
        services.get_opt("clickstream-gateway").await.unwrap()
    })
    .await;

    // Steady state: no writes at all.
    assert_no_writes(leader_metrics, "in steady state").await;

    // Pruning HPA and PDB: one Event each, naming it, from this replica.
    pipelines
        .patch(
            "clickstream",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"workload": {"autoscaling": null, "replicas": 1}}})),
        )
        .await
        .unwrap();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), NS);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(admin.clone(), NS);
    eventually("HPA and PDB pruned", SOON, || async {
        let left = hpas.list(&ListParams::default()).await.ok()?.items.len()
            + pdbs.list(&ListParams::default()).await.ok()?.items.len();
        (left == 0).then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(admin.clone(), NS);
    let pruned = eventually("two Pruned events", SOON, || async {
        let items = events.list(&ListParams::default()).await.ok()?.items;
        let pruned: Vec<Event> = items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Pruned"))
            .collect();
        (pruned.len() == 2).then_some(pruned)
    })
    .await;
    let mut related: Vec<_> = pruned
        .iter()
        .map(|e| {
            e.related
                .as_ref()
                .and_then(|r| r.kind.clone())
                .unwrap_or_default()
        })
        .collect();
    related.sort();
    assert_eq!(related, ["HorizontalPodAutoscaler", "PodDisruptionBudget"]);
    assert!(
        pruned
            .iter()
            .all(|e| e.reporting_instance.as_deref() == Some("replica-a"))
    );
    let all = events.list(&ListParams::default()).await.unwrap().items;
    let topics_failed = all
        .iter()
        .filter(|e| e.reason.as_deref() == Some("TopicsFailed"))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum::<i32>();
    assert_eq!(
        topics_failed, 1,
        "TopicsFailed recorded once per transition"
    );

    // A sink switches between Deployment and CronJob.
    let mut binding = example("sink.yaml");
    binding["metadata"]["namespace"] = json!(NS);
    let bindings: Api<SinkBinding> = Api::namespaced(admin.clone(), NS);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(binding).unwrap(),
        )
        .await
        .unwrap();
    eventually("the sink Deployment", SOON, || async {
        deployments
            .get_opt("clickstream-parquet-sink")
            .await
            .unwrap()
    })
    .await;
    let schedule = |schedule: Value| {
        let bindings = bindings.clone();
        async move {
            bindings
                .patch(
                    "clickstream-parquet",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"workload": {"schedule": schedule}}})),
                )
                .await
                .unwrap();
        }
    };
    schedule(json!("0 * * * *")).await;
    let cronjobs: Api<CronJob> = Api::namespaced(admin.clone(), NS);
    eventually("Deployment → CronJob", SOON, || async {
        let cron = cronjobs.get_opt("clickstream-parquet-sink").await.unwrap();
        let deployment = deployments
            .get_opt("clickstream-parquet-sink")
            .await
            .unwrap();
        (cron.is_some() && deployment.is_none()).then_some(())
    })
    .await;
    schedule(Value::Null).await;
    eventually("CronJob → Deployment", SOON, || async {
        let cron = cronjobs.get_opt("clickstream-parquet-sink").await.unwrap();
        let deployment = deployments
            .get_opt("clickstream-parquet-sink")
            .await
            .unwrap();
        (cron.is_none() && deployment.is_some()).then_some(())
    })
    .await;

    // A second replica waits; the leader releases the Lease on SIGTERM, so the second
    // takes over at its next try instead of after the Lease expires.
    let (mut follower, follower_metrics) = cluster.operator("replica-b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sample(&metrics(follower_metrics).await, "weir_operator_leader"),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics(leader_metrics).await, "weir_operator_leader"),
        Some(1.0)
    );
    let log = leader.output();
    assert!(leader.terminate().success(), "{log}");
    let leases: Api<Lease> = Api::namespaced(admin.clone(), OPERATOR_NS);
    let lease = leases.get("weir-operator-leader").await.unwrap();
    assert_ne!(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some("replica-a"),
        "the stopped leader released the Lease:\n{}",
        leader.output()
    );
    eventually("replica-b leads", Duration::from_secs(12), || async {
        (sample(&metrics(follower_metrics).await, "weir_operator_leader") == Some(1.0))
            .then_some(())
    })
    .await;

    // After the takeover (a restart, for the Deployment-watch's view): zero writes in
    // steady state; and with the chart's RBAC, nothing was forbidden.
    assert_no_writes(follower_metrics, "in steady state after a restart").await;
    for log in [leader.output(), follower.output()] {
        assert!(!log.contains("Forbidden") && !log.contains(" 403"), "{log}");
    }

    // Deleting the pipeline deletes its children (Kubernetes' garbage collector).
    if cluster.controller_manager {
        bindings
            .delete("clickstream-parquet", &DeleteParams::foreground())
            .await
            .unwrap();
        pipelines
            .delete("clickstream", &DeleteParams::foreground())
            .await
            .unwrap();
        eventually("children collected", Duration::from_secs(60), || async {
            let left = deployments
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .len()
                + configmaps
                    .list(
                        &ListParams::default().labels("app.kubernetes.io/managed-by=weir-operator"),
                    )
                    .await
                    .ok()?
                    .items
                    .len();
            (left == 0).then_some(())
        })
        .await;
    }
    follower.terminate();
    eprintln!("real API server checks passed");
}
