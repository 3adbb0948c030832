//! The reconcilers against a stateful fake API server (kube-fake-client): create,
//! update with pruning, no-op with zero writes, hand edits undone, status conditions,
//! Kafka failures and a Kafka that never answers, invalid specs, a binding whose
//! pipeline is missing and then appears, one Event per transition, and deletion cleanup
//! through owner references.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_fake_client::{ClientBuilder, interceptor};
use serde_json::json;
use weir_crds::pipeline::{KafkaSpec, TopicSpec};
use weir_crds::resources::{IngestPipeline, SinkBinding};
use weir_operator::apply::NamespacedObject;
use weir_operator::build::Defaults;
use weir_operator::controller::{Context, reconcile_pipeline, reconcile_sink};
use weir_operator::metrics::Metrics;
use weir_operator::topics::{TopicAdmin, TopicSettings};

const NS: &str = "analytics";

/// Records the topic lists it is asked for and the Kafka properties it is asked with;
/// fails while `fail` is set, never answers while `hang` is set.
#[derive(Default)]
struct FakeAdmin {
    calls: Mutex<Vec<Vec<String>>>,
    properties: Mutex<Vec<std::collections::BTreeMap<String, String>>>,
    fail: Mutex<Option<String>>,
    hang: std::sync::atomic::AtomicBool,
}

impl TopicAdmin for FakeAdmin {
    fn ensure<'a>(
        &'a self,
        kafka: &'a KafkaSpec,
        topics: &'a [TopicSpec],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.properties
                .lock()
                .unwrap()
                .push(kafka.properties.clone().into_iter().collect());
            self.calls
                .lock()
                .unwrap()
                .push(topics.iter().map(|t| t.name.clone()).collect());
            if self.hang.load(Ordering::SeqCst) {
                futures_util::future::pending::<()>().await;
            }
            match self.fail.lock().unwrap().clone() {
                Some(error) => Err(error),
                None => Ok(()),
            }
        })
    }
}

struct Harness {
    client: Client,
    ctx: Arc<Context>,
    admin: Arc<FakeAdmin>,
    /// Every create, patch, update and delete the API received.
    writes: Arc<AtomicUsize>,
    /// While set, every patch fails as an overloaded API server would answer.
    fail_patches: Arc<std::sync::atomic::AtomicBool>,
}

fn example<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn example_pipeline() -> IngestPipeline {
    let mut pipeline: IngestPipeline = example("pipeline.yaml");
    pipeline.metadata.namespace = Some(NS.into());
    pipeline
}

fn example_binding() -> SinkBinding {
    let mut binding: SinkBinding = example("sink.yaml");
    binding.metadata.namespace = Some(NS.into());
    binding
}

async fn harness() -> Harness {
    let writes = Arc::new(AtomicUsize::new(0));
    let count = |w: &Arc<AtomicUsize>| {
        let w = w.clone();
        move || {
            w.fetch_add(1, Ordering::SeqCst);
        }
    };
    let (c, p, u, r, d, ps) = (
        count(&writes),
        count(&writes),
        count(&writes),
        count(&writes),
        count(&writes),
        count(&writes),
    );
    let fail_patches = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failing = fail_patches.clone();
    let client = ClientBuilder::new()
        .with_resource::<IngestPipeline>()
        .with_resource::<SinkBinding>()
        .with_status_subresource::<IngestPipeline>()
        .with_status_subresource::<SinkBinding>()
        .with_status_subresource::<Deployment>()
        .with_interceptor_funcs(
            interceptor::Funcs::new()
                .create(move |_| {
                    c();
                    Ok(None)
                })
                .patch(move |_| {
                    p();
                    if failing.load(Ordering::SeqCst) {
                        return Err(kube_fake_client::Error::Internal(
                            "etcd is overloaded".into(),
                        ));
                    }
                    Ok(None)
                })
                .update(move |_| {
                    u();
                    Ok(None)
                })
                .replace(move |_| {
                    r();
                    Ok(None)
                })
                .delete(move |_| {
                    d();
                    Ok(None)
                })
                .patch_status(move |_| {
                    ps();
                    Ok(None)
                }),
        )
        .build()
        .await
        .unwrap();
    let admin = Arc::new(FakeAdmin::default());
    let ctx = Arc::new(Context::new(
        client.clone(),
        Defaults {
            image: "registry.example/weir:test".into(),
        },
        admin.clone(),
        TopicSettings {
            attempt_timeout: Duration::from_millis(300),
            first_wait: Duration::from_millis(100),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..TopicSettings::default()
        },
        Metrics::new(),
        "operator-0",
    ));
    Harness {
        client,
        ctx,
        admin,
        writes,
        fail_patches,
    }
}

impl Harness {
    fn api<K>(&self) -> Api<K>
    where
        K: NamespacedObject,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn create<K>(&self, object: &K) -> K
    where
        K: NamespacedObject,
    {
        self.api::<K>()
            .create(&PostParams::default(), object)
            .await
            .unwrap()
    }

    /// Reconciles the pipeline as the controller would: the live object, then the call.
    async fn reconcile_pipeline(&self, name: &str) -> IngestPipeline {
        let live = self.api::<IngestPipeline>().get(name).await.unwrap();
        reconcile_pipeline(Arc::new(live), self.ctx.clone())
            .await
            .unwrap();
        self.api::<IngestPipeline>().get(name).await.unwrap()
    }

    async fn reconcile_sink(&self, name: &str) -> SinkBinding {
        let live = self.api::<SinkBinding>().get(name).await.unwrap();
        reconcile_sink(Arc::new(live), self.ctx.clone())
            .await
            .unwrap();
        self.api::<SinkBinding>().get(name).await.unwrap()
    }

    async fn names<K>(&self) -> Vec<String>
    where
        K: NamespacedObject,
    {
        let mut names: Vec<String> = self
            .api::<K>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|o| o.meta().name.clone())
            .collect();
        names.sort();
        names
    }

    fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    async fn events(&self) -> Vec<k8s_openapi::api::events::v1::Event> {
        self.api::<k8s_openapi::api::events::v1::Event>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// The reasons of the Events recorded so far, oldest first.
    async fn event_reasons(&self) -> Vec<String> {
        self.events()
            .await
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }

    /// The notes of the Events with this reason.
    async fn event_notes(&self, reason: &str) -> Vec<String> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note)
            .collect()
    }

    /// Marks the Deployment's pods ready, as the Deployment controller would.
    async fn set_ready(&self, deployment: &str, ready: i32) {
        self.api::<Deployment>()
            .patch_status(
                deployment,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"readyReplicas": ready, "replicas": ready}})),
            )
            .await
            .unwrap();
    }
}

fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:?}"))
}

#[tokio::test]
async fn pipeline_create_then_noop_then_ready() {
    let h = harness().await;
    h.create(&example_pipeline()).await;

    let pipeline = h.reconcile_pipeline("clickstream").await;
    assert_eq!(
        h.names::<ConfigMap>().await,
        ["clickstream-gateway-config", "clickstream-gateway-routing"]
    );
    assert_eq!(h.names::<Deployment>().await, ["clickstream-gateway"]);
    assert_eq!(h.names::<Service>().await, ["clickstream-gateway"]);
    assert_eq!(
        h.names::<HorizontalPodAutoscaler>().await,
        ["clickstream-gateway"]
    );
    assert_eq!(
        h.names::<PodDisruptionBudget>().await,
        ["clickstream-gateway"]
    );
    assert_eq!(
        h.admin.calls.lock().unwrap().as_slice(),
        [vec!["clickstream-page_view-log", "ads", "weir-dead-letter"]]
    );

    let status = pipeline.status.clone().unwrap();
    assert_eq!(status.observed_generation, pipeline.metadata.generation);
    assert_eq!(status.replicas, Some(2));
    assert_eq!(status.ready_replicas, Some(0));
    assert_eq!(
        status.endpoint.as_deref(),
        Some("clickstream-gateway.analytics.svc:80")
    );
    assert_eq!(status.topics_ensured.len(), 3);
    assert!(
        status
            .selector
            .unwrap()
            .contains("weir.dev/owner=ingestpipeline.clickstream")
    );
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Progressing")
    );
    assert_eq!(ready.observed_generation, pipeline.metadata.generation);
    assert_eq!(condition(&status.conditions, "TopicsReady").status, "True");

    // Nothing changed: the reconcile reads but writes nothing, and Kafka is not asked again.
    let before = h.writes();
    let again = h.reconcile_pipeline("clickstream").await;
    assert_eq!(h.writes(), before, "a no-op reconcile must not write");
    assert_eq!(again.status, pipeline.status);
    assert_eq!(h.admin.calls.lock().unwrap().len(), 1);

    // The pods become ready: only the status changes.
    h.set_ready("clickstream-gateway", 2).await;
    let before = h.writes();
    let ready = h.reconcile_pipeline("clickstream").await;
    assert_eq!(
        h.writes(),
        before + 2,
        "one status write and one Event for Ready turning True"
    );
    let events = h
        .api::<k8s_openapi::api::events::v1::Event>()
        .list(&ListParams::default())
        .await
        .unwrap();
    let reasons: Vec<_> = events
        .items
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(reasons.contains(&"Available".to_string()), "{reasons:?}");
    assert!(reasons.contains(&"Progressing".to_string()), "{reasons:?}");
    let status = ready.status.unwrap();
    let condition = condition(&status.conditions, "Ready");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "Available")
    );
    assert_eq!(status.ready_replicas, Some(2));
}

#[tokio::test]
async fn pipeline_update_prunes_what_the_spec_no_longer_needs() {
    let h = harness().await;
    h.create(&example_pipeline()).await;
    h.reconcile_pipeline("clickstream").await;

    let mut live = h.api::<IngestPipeline>().get("clickstream").await.unwrap();
    live.spec.workload.autoscaling = None;
    live.spec.workload.replicas = Some(1);
    h.api::<IngestPipeline>()
        .replace("clickstream", &PostParams::default(), &live)
        .await
        .unwrap();
    let pipeline = h.reconcile_pipeline("clickstream").await;

    assert!(h.names::<HorizontalPodAutoscaler>().await.is_empty());
    assert!(h.names::<PodDisruptionBudget>().await.is_empty());
    let deployment = h
        .api::<Deployment>()
        .get("clickstream-gateway")
        .await
        .unwrap();
    assert_eq!(deployment.spec.unwrap().replicas, Some(1));
    let status = pipeline.status.unwrap();
    assert_eq!(status.replicas, Some(1));
    assert_eq!(status.observed_generation, pipeline.metadata.generation);

    // One Event per pruned object, naming it.
    let mut notes = h.event_notes("Pruned").await;
    notes.sort();
    assert_eq!(
        notes,
        [
            "deleted HorizontalPodAutoscaler/clickstream-gateway: the spec no longer needs it",
            "deleted PodDisruptionBudget/clickstream-gateway: the spec no longer needs it",
        ]
    );
    let events = h
        .api::<k8s_openapi::api::events::v1::Event>()
        .list(&ListParams::default())
        .await
        .unwrap();
    for event in events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Pruned"))
    {
        let related = event.related.as_ref().expect("names the pruned object");
        assert_eq!(related.name.as_deref(), Some("clickstream-gateway"));
        assert_eq!(event.reporting_instance.as_deref(), Some("operator-0"));
    }
}

#[tokio::test]
async fn routing_change_updates_the_routing_map_but_not_the_pods() {
    let h = harness().await;
    h.create(&example_pipeline()).await;
    h.reconcile_pipeline("clickstream").await;
    let template = |d: Deployment| serde_json::to_value(d.spec.unwrap().template).unwrap();
    let before = template(
        h.api::<Deployment>()
            .get("clickstream-gateway")
            .await
            .unwrap(),
    );

    let mut live = h.api::<IngestPipeline>().get("clickstream").await.unwrap();
    live.spec.pipeline.routing.rules[0].topic = "ads-v2".into();
    h.api::<IngestPipeline>()
        .replace("clickstream", &PostParams::default(), &live)
        .await
        .unwrap();
    h.reconcile_pipeline("clickstream").await;

    let after = template(
        h.api::<Deployment>()
            .get("clickstream-gateway")
            .await
            .unwrap(),
    );
    assert_eq!(before, after, "the pod template must not change");
    let routing = h
        .api::<ConfigMap>()
        .get("clickstream-gateway-routing")
        .await
        .unwrap();
    assert!(routing.data.unwrap()["routing.yaml"].contains("ads-v2"));
}

#[tokio::test]
async fn kafka_failure_sets_conditions_and_retries_in_the_background() {
    let h = harness().await;
    *h.admin.fail.lock().unwrap() = Some("broker transport failure".into());
    h.create(&example_pipeline()).await;
    let pipeline = h.reconcile_pipeline("clickstream").await;
    // The children are written regardless.
    assert_eq!(h.names::<Deployment>().await, ["clickstream-gateway"]);
    let status = pipeline.status.unwrap();
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "TopicsNotReady")
    );
    let topics = condition(&status.conditions, "TopicsReady");
    assert_eq!(
        (topics.status.as_str(), topics.reason.as_str()),
        ("False", "TopicsFailed")
    );
    // The bare Service name, as the operator resolves it: in the pipeline's namespace.
    assert!(
        topics.message.contains("kafka.analytics.svc:9092"),
        "{}",
        topics.message
    );
    assert!(
        topics.message.contains("broker transport failure"),
        "{}",
        topics.message
    );
    assert!(status.topics_ensured.is_empty());
    // One Event for the failure, not one per condition.
    assert_eq!(h.event_reasons().await, ["TopicsFailed"]);

    // Kafka recovers: the worker's next try succeeds without any reconcile asking.
    *h.admin.fail.lock().unwrap() = None;
    let calls = h.admin.calls.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.admin.calls.lock().unwrap().len() == calls {
        assert!(Instant::now() < deadline, "the worker retries by itself");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pipeline = h.reconcile_pipeline("clickstream").await;
    let status = pipeline.status.unwrap();
    assert_eq!(condition(&status.conditions, "TopicsReady").status, "True");
    assert_eq!(condition(&status.conditions, "Ready").reason, "Progressing");
}

#[tokio::test]
async fn a_kafka_that_never_answers_does_not_hold_the_reconcile() {
    let h = harness().await;
    h.admin.hang.store(true, Ordering::SeqCst);
    h.create(&example_pipeline()).await;
    let started = Instant::now();
    let pipeline = h.reconcile_pipeline("clickstream").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the reconcile waited {:?} on Kafka",
        started.elapsed()
    );
    assert_eq!(h.names::<Deployment>().await, ["clickstream-gateway"]);
    let status = pipeline.status.unwrap();
    let topics = condition(&status.conditions, "TopicsReady");
    assert_eq!(
        (topics.status.as_str(), topics.reason.as_str()),
        ("False", "Creating")
    );
    assert_eq!(status.replicas, Some(2));
    assert_eq!(
        status.endpoint.as_deref(),
        Some("clickstream-gateway.analytics.svc:80")
    );

    // The attempt's own timeout turns into a failure with the reason.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = h.reconcile_pipeline("clickstream").await.status.unwrap();
    let topics = condition(&status.conditions, "TopicsReady");
    assert_eq!(topics.reason, "TopicsFailed");
    assert!(
        topics.message.contains("no answer from Kafka"),
        "{}",
        topics.message
    );
}

#[tokio::test]
async fn the_kafka_secret_is_read_for_topics_and_an_unreadable_one_is_reported() {
    let h = harness().await;
    let mut pipeline = example_pipeline();
    pipeline.spec.workload.kafka_secret = Some("kafka-credentials".into());
    h.create(&pipeline).await;

    // No such Secret: the gateway is still applied (its pods wait for the Secret), the
    // topic step reports why it cannot start, and Kafka is not asked.
    let status = h.reconcile_pipeline("clickstream").await.status.unwrap();
    assert_eq!(h.names::<Deployment>().await, ["clickstream-gateway"]);
    let topics = condition(&status.conditions, "TopicsReady");
    assert_eq!(
        (topics.status.as_str(), topics.reason.as_str()),
        ("False", "KafkaSecretUnreadable")
    );
    assert!(
        topics.message.starts_with(
            "cannot read Secret kafka-credentials (spec.workload.kafkaSecret) for the Kafka \
             credentials: "
        ),
        "{}",
        topics.message
    );
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "TopicsNotReady")
    );
    assert!(h.admin.calls.lock().unwrap().is_empty());

    // The Secret appears: its keys reach Kafka as properties, beside the spec's own.
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "kafka-credentials", "namespace": NS},
        "data": {"sasl.username": "d2Vpcg=="},
    }))
    .unwrap();
    h.create(&secret).await;
    h.reconcile_pipeline("clickstream").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.admin.properties.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the topic worker asks Kafka");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let properties = h.admin.properties.lock().unwrap()[0].clone();
    assert_eq!(properties["sasl.username"], "weir");
    assert_eq!(properties["compression.type"], "zstd");
}

#[tokio::test]
async fn hand_edits_of_children_are_undone_without_writes_in_steady_state() {
    let h = harness().await;
    h.create(&example_pipeline()).await;
    h.reconcile_pipeline("clickstream").await;

    // A hand-set image and a hand-edited routing table.
    h.api::<Deployment>()
        .patch(
            "clickstream-gateway",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "gateway", "image": "attacker/weir:latest"}
            ]}}}})),
        )
        .await
        .unwrap();
    h.api::<ConfigMap>()
        .patch(
            "clickstream-gateway-routing",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"routing.yaml": "rules: []\n"}})),
        )
        .await
        .unwrap();
    h.reconcile_pipeline("clickstream").await;
    let deployment = h
        .api::<Deployment>()
        .get("clickstream-gateway")
        .await
        .unwrap();
    let image = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("registry.example/weir:test"));
    let routing = h
        .api::<ConfigMap>()
        .get("clickstream-gateway-routing")
        .await
        .unwrap();
    assert_ne!(routing.data.unwrap()["routing.yaml"], "rules: []\n");
    let notes = h.event_notes("DriftCorrected").await;
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes.iter().any(|n| n.starts_with(
            "Deployment/clickstream-gateway: spec.template.spec.containers[name=gateway]."
        )),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("ConfigMap/clickstream-gateway-routing: data.routing.yaml")),
        "{notes:?}"
    );

    // Corrected: the next reconcile writes nothing.
    let before = h.writes();
    h.reconcile_pipeline("clickstream").await;
    assert_eq!(h.writes(), before);
}

#[tokio::test]
async fn invalid_spec_is_reported_and_leaves_children_alone() {
    let h = harness().await;
    h.create(&example_pipeline()).await;
    h.reconcile_pipeline("clickstream").await;
    let before = h.names::<ConfigMap>().await;

    let mut live = h.api::<IngestPipeline>().get("clickstream").await.unwrap();
    live.spec.pipeline.listen.grpc = "0.0.0.0:0".into();
    h.api::<IngestPipeline>()
        .replace("clickstream", &PostParams::default(), &live)
        .await
        .unwrap();
    let pipeline = h.reconcile_pipeline("clickstream").await;
    let status = pipeline.status.unwrap();
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        ready.message.starts_with("spec.listen.grpc:"),
        "{}",
        ready.message
    );
    assert_eq!(h.names::<ConfigMap>().await, before);
    assert_eq!(h.names::<Deployment>().await, ["clickstream-gateway"]);
}

#[tokio::test]
async fn binding_waits_for_its_pipeline_and_recovers_when_it_appears() {
    let h = harness().await;
    h.create(&example_binding()).await;
    let binding = h.reconcile_sink("clickstream-parquet").await;
    let status = binding.status.unwrap();
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "PipelineNotFound")
    );
    assert!(
        ready.message.contains("analytics/clickstream"),
        "{}",
        ready.message
    );
    assert!(h.names::<Deployment>().await.is_empty());

    // Still missing: nothing to write.
    let before = h.writes();
    h.reconcile_sink("clickstream-parquet").await;
    assert_eq!(h.writes(), before);

    h.create(&example_pipeline()).await;
    let binding = h.reconcile_sink("clickstream-parquet").await;
    assert_eq!(h.names::<Deployment>().await, ["clickstream-parquet-sink"]);
    assert_eq!(
        h.names::<ConfigMap>().await,
        ["clickstream-parquet-sink-config"]
    );
    let config = h
        .api::<ConfigMap>()
        .get("clickstream-parquet-sink-config")
        .await
        .unwrap();
    assert!(
        config.data.unwrap()["sink.yaml"].contains("bootstrapServers: kafka:9092"),
        "the sink reads the pipeline's Kafka cluster"
    );
    let status = binding.status.unwrap();
    assert_eq!(
        status.consumer_group.as_deref(),
        Some("clickstream-parquet")
    );
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(ready.reason, "Progressing");

    h.set_ready("clickstream-parquet-sink", 2).await;
    let status = h
        .reconcile_sink("clickstream-parquet")
        .await
        .status
        .unwrap();
    assert_eq!(condition(&status.conditions, "Ready").status, "True");
    assert_eq!(status.ready_replicas, Some(2));
}

#[tokio::test]
async fn a_schedule_turns_the_sink_into_a_cronjob() {
    let h = harness().await;
    h.create(&example_pipeline()).await;
    h.create(&example_binding()).await;
    h.reconcile_sink("clickstream-parquet").await;
    assert_eq!(h.names::<Deployment>().await, ["clickstream-parquet-sink"]);

    let mut live = h
        .api::<SinkBinding>()
        .get("clickstream-parquet")
        .await
        .unwrap();
    live.spec.workload.schedule = Some("0 * * * *".into());
    h.api::<SinkBinding>()
        .replace("clickstream-parquet", &PostParams::default(), &live)
        .await
        .unwrap();
    let binding = h.reconcile_sink("clickstream-parquet").await;
    assert!(
        h.names::<Deployment>().await.is_empty(),
        "the Deployment is pruned"
    );
    let cronjob = h
        .api::<CronJob>()
        .get("clickstream-parquet-sink")
        .await
        .unwrap();
    let job = cronjob.spec.unwrap();
    assert_eq!(job.schedule, "0 * * * *");
    let args = job
        .job_template
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert!(args.contains(&"--batch".to_string()));
    let status = binding.status.unwrap();
    assert_eq!(condition(&status.conditions, "Ready").reason, "Scheduled");
    assert_eq!(status.ready_replicas, None);
}

#[tokio::test]
async fn deleting_a_pipeline_deletes_its_children() {
    let h = harness().await;
    h.create(&example_pipeline()).await;
    h.reconcile_pipeline("clickstream").await;
    assert!(!h.names::<Deployment>().await.is_empty());

    h.api::<IngestPipeline>()
        .delete("clickstream", &DeleteParams::background())
        .await
        .unwrap();
    // Kubernetes' garbage collector follows the owner references (as the fake does).
    assert!(h.names::<ConfigMap>().await.is_empty());
    assert!(h.names::<Deployment>().await.is_empty());
    assert!(h.names::<Service>().await.is_empty());
    assert!(h.names::<HorizontalPodAutoscaler>().await.is_empty());
    assert!(h.names::<PodDisruptionBudget>().await.is_empty());
}

#[tokio::test]
async fn reconciles_and_writes_are_counted() {
    let h = harness().await;
    h.create(&example_pipeline()).await;
    h.reconcile_pipeline("clickstream").await;
    let metrics = weir_runtime::telemetry::render(&h.ctx.metrics.registry);
    assert!(
        metrics.contains(r#"weir_operator_reconciles_total{kind="IngestPipeline",result="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"weir_operator_writes_total{kind="Deployment",operation="apply"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn failures_back_off_and_success_resets_the_backoff() {
    use weir_operator::controller::error_policy;
    let h = harness().await;
    h.create(&example_pipeline()).await;
    h.fail_patches.store(true, Ordering::SeqCst);
    let live = Arc::new(h.api::<IngestPipeline>().get("clickstream").await.unwrap());
    let mut delays = Vec::new();
    for _ in 0..3 {
        let error = reconcile_pipeline(live.clone(), h.ctx.clone())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("etcd is overloaded"), "{error}");
        delays.push(error_policy(live.clone(), &error, h.ctx.clone()));
    }
    assert_eq!(
        delays,
        [5, 10, 20].map(|s| kube::runtime::controller::Action::requeue(Duration::from_secs(s)))
    );
    let metrics = weir_runtime::telemetry::render(&h.ctx.metrics.registry);
    assert!(
        metrics
            .contains(r#"weir_operator_reconciles_total{kind="IngestPipeline",result="error"} 3"#),
        "{metrics}"
    );

    h.fail_patches.store(false, Ordering::SeqCst);
    reconcile_pipeline(live.clone(), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        h.ctx.backoff(&*live),
        Duration::from_secs(5),
        "success resets the backoff"
    );
}

/// A Deployment made by an older operator, whose selector differs (it named
/// `app.kubernetes.io/instance`), is replaced, since Kubernetes refuses a selector
/// change in place; its pods are orphaned for the new one to adopt.
#[tokio::test]
async fn a_deployment_with_an_older_selector_is_replaced() {
    let h = harness().await;
    h.create(&example_pipeline()).await;
    h.reconcile_pipeline("clickstream").await;
    let old_selector = json!({"matchLabels": {
        "app.kubernetes.io/name": "weir-gateway",
        "app.kubernetes.io/instance": "clickstream",
        "app.kubernetes.io/component": "gateway"
    }});
    h.api::<Deployment>()
        .patch(
            "clickstream-gateway",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"selector": old_selector}})),
        )
        .await
        .unwrap();
    let before = h
        .api::<Deployment>()
        .get("clickstream-gateway")
        .await
        .unwrap();
    h.reconcile_pipeline("clickstream").await;
    let after = h
        .api::<Deployment>()
        .get("clickstream-gateway")
        .await
        .unwrap();
    let labels = after.spec.unwrap().selector.match_labels.unwrap();
    assert!(
        !labels.contains_key("app.kubernetes.io/instance"),
        "{labels:?}"
    );
    assert_eq!(labels["weir.dev/owner"], "ingestpipeline.clickstream");
    assert_ne!(
        before.metadata.uid, after.metadata.uid,
        "a new object, not a patch of the old one"
    );
}
