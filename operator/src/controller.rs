//! Reconcilers for IngestPipeline and SinkBinding: dereference → validate → build →
//! apply → observe → status.
//!
//! Invariants:
//! - The operator never writes a resource's spec, only its status subresource, and the
//!   status only when it differs from the live one.
//! - An invalid spec leaves the running children as they are (a typo must not take a
//!   gateway down) and says why in `Ready`.
//! - Errors requeue with exponential backoff per resource; success resets it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use weir_crds::pipeline::KafkaSpec;
use weir_crds::resources::{IngestPipeline, IngestPipelineStatus, SinkBinding, SinkBindingStatus};

use crate::apply::{Applier, ApplyReport, ChildKinds, ChildRef, NamespacedObject};
use crate::build::{self, Defaults, Owner};
use crate::metrics::Metrics;
use crate::status::{self, Observed, READY, TOPICS_NOT_READY, TOPICS_READY};
use crate::topics::{TopicAdmin, TopicEnsurer, TopicSettings, TopicState};

/// How often a healthy resource is looked at again without any change.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a resource waiting for something (pods, its pipeline) is looked at again.
const WAITING: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Why a reconcile failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub metrics: Metrics,
    /// The topic workers; the run loop takes their change notices.
    pub topics: TopicEnsurer,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// `instance` names this replica in the Events it records (its pod name).
    pub fn new(
        client: Client,
        defaults: Defaults,
        topic_admin: Arc<dyn TopicAdmin>,
        topic_settings: TopicSettings,
        metrics: Metrics,
        instance: &str,
    ) -> Self {
        let reporter = Reporter {
            controller: build::FIELD_MANAGER.into(),
            instance: Some(instance.into()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            defaults,
            metrics,
            topics: TopicEnsurer::new(topic_admin, topic_settings),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records an Event on `resource`; `related` names the child it concerns.
    async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        resource: &K,
        type_: EventType,
        reason: &str,
        note: String,
        related: Option<&ChildRef>,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            // Also what tells apart two Events of one reason (two children pruned at
            // once), which the recorder would otherwise merge into one series.
            secondary: related.map(|child| ObjectReference {
                api_version: Some(child.api_version.clone()),
                kind: Some(child.kind.clone()),
                name: Some(child.name.clone()),
                namespace: resource.meta().namespace.clone(),
                ..ObjectReference::default()
            }),
        };
        // An event that cannot be recorded must not fail the reconcile.
        if let Err(error) = self
            .recorder
            .publish(&event, &resource.object_ref(&()))
            .await
        {
            tracing::warn!(%error, reason, "cannot record event");
        }
    }

    async fn apply_children(
        &self,
        owner: &Owner,
        kinds: ChildKinds,
        children: &[build::Child],
    ) -> Result<ApplyReport, kube::Error> {
        Applier {
            client: &self.client,
            metrics: &self.metrics,
        }
        .reconcile_children(owner, kinds, children)
        .await
    }

    fn key<K: Resource<DynamicType = ()>>(resource: &K) -> String {
        format!(
            "{}/{}/{}",
            K::kind(&()),
            resource.meta().namespace.as_deref().unwrap_or_default(),
            resource.meta().name.as_deref().unwrap_or_default()
        )
    }

    fn succeeded<K: Resource<DynamicType = ()>>(&self, resource: &K) {
        self.failures
            .lock()
            .expect("lock")
            .remove(&Self::key(resource));
    }

    /// The delay before retrying a failed reconcile: 5 s doubling to 5 min.
    pub fn backoff<K: Resource<DynamicType = ()>>(&self, resource: &K) -> Duration {
        let mut failures = self.failures.lock().expect("lock");
        let count = failures.entry(Self::key(resource)).or_insert(0);
        *count = count.saturating_add(1);
        BACKOFF_MIN
            .saturating_mul(1 << (*count - 1).min(10))
            .min(BACKOFF_MAX)
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Writes `status` when it differs from `live` (a JSON merge patch that also clears
/// fields the new status no longer has).
async fn write_status<K, S>(
    ctx: &Context,
    resource: &K,
    live: Option<&S>,
    status: &S,
) -> Result<(), kube::Error>
where
    K: NamespacedObject,
    S: Serialize + PartialEq,
{
    if live == Some(status) {
        return Ok(());
    }
    let mut patch = serde_json::to_value(status).expect("status serializes");
    if let (Some(old), serde_json::Value::Object(new)) = (live, &mut patch)
        && let serde_json::Value::Object(old) = serde_json::to_value(old).expect("serializes")
    {
        for key in old.keys() {
            new.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    let api: Api<K> = Api::namespaced(
        ctx.client.clone(),
        resource.meta().namespace.as_deref().unwrap_or_default(),
    );
    api.patch_status(
        &resource.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": patch })),
    )
    .await?;
    ctx.metrics.record_write(&K::kind(&()), "status");
    Ok(())
}

/// Records one Event per transition: each child pruned, each hand edit undone, each
/// condition whose status or reason changed.
async fn publish_transitions<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    resource: &K,
    report: &ApplyReport,
    before: &[Condition],
    after: &[Condition],
) {
    for child in &report.pruned {
        let note = format!("deleted {}: the spec no longer needs it", child.describe());
        ctx.publish(resource, EventType::Normal, "Pruned", note, Some(child))
            .await;
    }
    for drift in &report.corrected {
        let note = format!(
            "{}: {} was changed outside the operator; re-applied the desired state",
            drift.child.describe(),
            drift.field
        );
        ctx.publish(
            resource,
            EventType::Warning,
            "DriftCorrected",
            note,
            Some(&drift.child),
        )
        .await;
    }
    for condition in after {
        let old = before.iter().find(|c| c.type_ == condition.type_);
        if old.is_some_and(|o| o.status == condition.status && o.reason == condition.reason) {
            continue;
        }
        // Ready lost to the topics: the TopicsReady transition's Event says why.
        if condition.type_ == READY && condition.reason == TOPICS_NOT_READY {
            continue;
        }
        let type_ = if condition.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.publish(
            resource,
            type_,
            &condition.reason,
            condition.message.clone(),
            None,
        )
        .await;
    }
}

/// The pipeline's Kafka connection with the credentials of `workload.kafkaSecret`
/// added, as the gateway pods see them; `Err` says why the Secret cannot be read.
async fn kafka_with_credentials(
    ctx: &Context,
    pipeline: &IngestPipeline,
) -> Result<KafkaSpec, String> {
    let mut kafka = pipeline.spec.pipeline.kafka.clone();
    let Some(secret) = &pipeline.spec.workload.kafka_secret else {
        return Ok(kafka);
    };
    let api: Api<Secret> = Api::namespaced(
        ctx.client.clone(),
        pipeline.namespace().as_deref().unwrap_or_default(),
    );
    let found = api.get(secret).await.map_err(|error| {
        format!(
            "cannot read Secret {secret} (spec.workload.kafkaSecret) for the Kafka \
             credentials: {error}"
        )
    })?;
    for (key, value) in found.data.unwrap_or_default() {
        kafka
            .properties
            .insert(key, String::from_utf8_lossy(&value.0).into_owned());
    }
    Ok(kafka)
}

/// Ready replicas of the Deployment named `name`, if it exists.
async fn deployment_ready(ctx: &Context, namespace: &str, name: &str) -> Result<i32, Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(api
        .get_opt(name)
        .await?
        .and_then(|d| d.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0))
}

/// Reconciles one IngestPipeline.
pub async fn reconcile_pipeline(
    pipeline: Arc<IngestPipeline>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_pipeline_inner(&pipeline, &ctx).await;
    finish(&ctx, &*pipeline, started, &result);
    result
}

async fn reconcile_pipeline_inner(
    pipeline: &IngestPipeline,
    ctx: &Context,
) -> Result<Action, Error> {
    let owner = Owner::of(pipeline);
    let live = pipeline.status.clone();
    let previous = live.clone().unwrap_or_default();
    let generation = pipeline.metadata.generation;
    let mut status = IngestPipelineStatus {
        observed_generation: generation,
        replicas: Some(build::gateway::desired_replicas(pipeline)),
        selector: Some(build::gateway::selector(pipeline)),
        endpoint: Some(build::gateway::endpoint(pipeline)),
        ready_replicas: previous.ready_replicas,
        topics_ensured: previous.topics_ensured.clone(),
        ..IngestPipelineStatus::default()
    };
    let mut report = ApplyReport::default();
    let mut observed = Vec::new();
    match build::gateway::build(pipeline, &ctx.defaults) {
        Err(invalid) => observed.push(status::invalid_spec(&invalid)),
        Ok(children) => {
            report = ctx
                .apply_children(&owner, ChildKinds::Gateway, &children)
                .await?;
            let topics = observe_topics(ctx, pipeline, &mut status).await;
            let ready = deployment_ready(
                ctx,
                &owner.namespace,
                &build::gateway::workload_name(&owner.name),
            )
            .await?;
            status.ready_replicas = Some(ready);
            let workload = status::workload_ready("gateway", status.replicas.unwrap_or(0), ready);
            observed.push(match &topics {
                Some(topics) if !topics.ok => Observed::new(
                    READY,
                    false,
                    TOPICS_NOT_READY,
                    format!("the pipeline's topics are not ready: {}", topics.message),
                ),
                _ => workload,
            });
            observed.extend(topics);
        }
    }
    let settled = observed.iter().all(|o| o.ok && o.reason != "Degraded");
    status.conditions =
        status::merge_conditions(&previous.conditions, &observed, generation, &now());
    write_status(ctx, pipeline, live.as_ref(), &status).await?;
    publish_transitions(
        ctx,
        pipeline,
        &report,
        &previous.conditions,
        &status.conditions,
    )
    .await;
    Ok(Action::requeue(if settled { RESYNC } else { WAITING }))
}

/// The TopicsReady condition, from the topic worker's last outcome; `None` when the
/// pipeline lists no topics. Never waits on Kafka (see [`crate::topics`]).
async fn observe_topics(
    ctx: &Context,
    pipeline: &IngestPipeline,
    status: &mut IngestPipelineStatus,
) -> Option<Observed> {
    let topics = &pipeline.spec.pipeline.topics;
    if topics.is_empty() {
        status.topics_ensured = Vec::new();
        return None;
    }
    let kafka = match kafka_with_credentials(ctx, pipeline).await {
        Ok(kafka) => kafka,
        Err(error) => {
            return Some(Observed::new(
                TOPICS_READY,
                false,
                "KafkaSecretUnreadable",
                error,
            ));
        }
    };
    let key = format!(
        "{}/{}",
        pipeline.namespace().unwrap_or_default(),
        pipeline.name_any()
    );
    let at = &kafka.bootstrap_servers;
    Some(match ctx.topics.state(&key, &kafka, topics).await {
        TopicState::Ready => {
            status.topics_ensured = topics.iter().map(|t| t.name.clone()).collect();
            Observed::new(
                TOPICS_READY,
                true,
                "TopicsEnsured",
                format!("{} topics exist with their partitions", topics.len()),
            )
        }
        TopicState::Creating => Observed::new(
            TOPICS_READY,
            false,
            "Creating",
            format!("creating or growing {} topics at {at}", topics.len()),
        ),
        TopicState::Failed(error) => Observed::new(
            TOPICS_READY,
            false,
            "TopicsFailed",
            format!("creating or growing topics at {at} failed: {error}; retrying with backoff"),
        ),
    })
}

/// Reconciles one SinkBinding.
pub async fn reconcile_sink(binding: Arc<SinkBinding>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_sink_inner(&binding, &ctx).await;
    finish(&ctx, &*binding, started, &result);
    result
}

async fn reconcile_sink_inner(binding: &SinkBinding, ctx: &Context) -> Result<Action, Error> {
    let owner = Owner::of(binding);
    let live = binding.status.clone();
    let previous = live.clone().unwrap_or_default();
    let generation = binding.metadata.generation;
    let mut status = SinkBindingStatus {
        observed_generation: generation,
        consumer_group: Some(build::sink::consumer_group(binding)),
        ready_replicas: previous.ready_replicas,
        ..SinkBindingStatus::default()
    };
    let mut report = ApplyReport::default();
    let mut requeue = RESYNC;
    let pipeline_name = &binding.spec.pipeline_ref.name;
    let pipelines: Api<IngestPipeline> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let ready = match pipelines.get_opt(pipeline_name).await? {
        // Children stay as they are: a pipeline being recreated must not stop the sink.
        None => {
            requeue = WAITING;
            Observed::new(
                READY,
                false,
                "PipelineNotFound",
                format!(
                    "spec.pipelineRef names IngestPipeline {}/{pipeline_name}, which does not \
                     exist; create it or correct pipelineRef",
                    owner.namespace
                ),
            )
        }
        Some(pipeline) => match build::sink::build(binding, &pipeline, &ctx.defaults) {
            Err(invalid) => {
                requeue = WAITING;
                status::invalid_spec(&invalid)
            }
            Ok(children) => {
                report = ctx
                    .apply_children(&owner, ChildKinds::Sink, &children)
                    .await?;
                let name = build::sink::workload_name(&owner.name);
                if binding.spec.workload.schedule.is_some() {
                    status.ready_replicas = None;
                    let jobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &owner.namespace);
                    let last = jobs
                        .get_opt(&name)
                        .await?
                        .and_then(|c| c.status)
                        .and_then(|s| s.last_successful_time)
                        .map(|t| t.0.to_string());
                    Observed::new(
                        READY,
                        true,
                        "Scheduled",
                        match last {
                            Some(at) => format!("batch runs are scheduled; last success {at}"),
                            None => "batch runs are scheduled; none has succeeded yet".into(),
                        },
                    )
                } else {
                    let ready = deployment_ready(ctx, &owner.namespace, &name).await?;
                    status.ready_replicas = Some(ready);
                    let desired = binding.spec.workload.replicas.unwrap_or(1);
                    let observed = status::workload_ready("sink", desired, ready);
                    if !observed.ok || observed.reason == "Degraded" {
                        requeue = WAITING;
                    }
                    observed
                }
            }
        },
    };
    status.conditions =
        status::merge_conditions(&previous.conditions, &[ready], generation, &now());
    write_status(ctx, binding, live.as_ref(), &status).await?;
    publish_transitions(
        ctx,
        binding,
        &report,
        &previous.conditions,
        &status.conditions,
    )
    .await;
    Ok(Action::requeue(requeue))
}

fn finish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    resource: &K,
    started: Instant,
    result: &Result<Action, Error>,
) {
    let kind = K::kind(&());
    ctx.metrics
        .reconcile_seconds
        .with_label_values(&[&kind])
        .observe(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .with_label_values(&[&kind, outcome])
        .inc();
    if result.is_ok() {
        ctx.succeeded(resource);
    }
}

/// Retries a failed reconcile with backoff.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    resource: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let delay = ctx.backoff(&*resource);
    tracing::warn!(
        %error,
        name = resource.meta().name.as_deref().unwrap_or_default(),
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}
