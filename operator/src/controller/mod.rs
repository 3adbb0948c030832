//! Reconcilers for IngestPipeline and SinkBinding. A reconcile is one straight line of
//! steps, each a function of its own:
//!
//! 1. dereference: read what the resource refers to: a pipeline's Kafka credentials
//!    Secret (only when it lists topics; `topics_kafka`), a binding's IngestPipeline
//!    (`referenced_pipeline`);
//! 2. validate and build: pure, [`crate::build`] returns the children or why the spec
//!    cannot run ([`crate::build::InvalidSpec`]);
//! 3. apply: [`crate::apply`] writes the children that differ and prunes the rest;
//! 4. observe: the workload's readiness (Deployment ready replicas, or a CronJob's last
//!    success) and, for a pipeline, its topics;
//! 5. status: conditions from the observations ([`crate::status`]), written when
//!    changed, one Event per transition, and when to look again (`conclude`).
//!
//! A step ends the line early in one of two ways (`Stop`): `Hold` (a missing pipeline,
//! an invalid spec) skips apply and observe and goes straight to the status step with
//! Ready=False and the reason; `Fail` (a Kubernetes API error) skips the status step
//! and retries with backoff.
//!
//! Invariants:
//! - The operator never writes a resource's spec, only its status subresource, and the
//!   status only when it differs from the live one.
//! - An invalid spec or a missing pipeline leaves the running children as they are (a
//!   typo must not take a gateway down, a pipeline being recreated must not stop a sink)
//!   and says why in `Ready`.
//! - An unreadable Kafka Secret does not stop the line: the gateway is applied (its pods
//!   wait for the Secret) and `TopicsReady` says why; Kafka is never waited on.
//! - Status fields are observed or kept: a step that did not run leaves the last
//!   observed replicas and topics in place.
//! - A settled resource (every condition good, none degraded) is looked at again every
//!   5 minutes, any other every 30 s; errors requeue with exponential backoff per
//!   resource, and success resets it.

mod pipeline;
mod sink;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

use crate::apply::{Applier, ApplyReport, ChildKinds, ChildRef, NamespacedObject};
use crate::build::{self, Defaults, Owner};
use crate::metrics::Metrics;
use crate::status::{self, Observed, READY, TOPICS_NOT_READY};
use crate::topics::{TopicAdmin, TopicEnsurer, TopicSettings};

pub use pipeline::reconcile_pipeline;
pub use sink::reconcile_sink;

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

/// Why a reconcile stops before its observe step.
enum Stop {
    /// The children stay as they are and Ready=False says why (an invalid spec, a
    /// missing pipeline); the status step still runs.
    Hold(Observed),
    /// An API call failed: no status is written and the reconcile retries with backoff.
    Fail(Error),
}

impl From<build::InvalidSpec> for Stop {
    fn from(invalid: build::InvalidSpec) -> Self {
        Stop::Hold(status::invalid_spec(&invalid))
    }
}

impl From<kube::Error> for Stop {
    fn from(error: kube::Error) -> Self {
        Stop::Fail(error.into())
    }
}

impl From<Error> for Stop {
    fn from(error: Error) -> Self {
        Stop::Fail(error)
    }
}

/// What the steps before the status step found.
struct Outcome {
    /// The conditions as observed now, Ready first.
    observed: Vec<Observed>,
    /// What the apply step changed, for Events.
    report: ApplyReport,
}

impl Outcome {
    /// The steps' outcome; when they held, Ready alone, with nothing applied.
    fn of(steps: Result<Outcome, Stop>) -> Result<Outcome, Error> {
        match steps {
            Ok(outcome) => Ok(outcome),
            Err(Stop::Hold(ready)) => Ok(Outcome {
                observed: vec![ready],
                report: ApplyReport::default(),
            }),
            Err(Stop::Fail(error)) => Err(error),
        }
    }
}

/// A status subresource with conditions.
trait WithConditions: Serialize + PartialEq {
    fn conditions(&self) -> &[Condition];
    fn set_conditions(&mut self, conditions: Vec<Condition>);
}

/// The status step: `status` with the observed conditions, written when it differs from
/// `live`, one Event per transition; a settled resource is looked at again at the
/// resync interval, any other soon.
async fn conclude<K, S>(
    ctx: &Context,
    resource: &K,
    live: Option<&S>,
    mut status: S,
    outcome: Outcome,
) -> Result<Action, Error>
where
    K: NamespacedObject,
    S: WithConditions,
{
    let before = live.map(S::conditions).unwrap_or_default();
    let generation = resource.meta().generation;
    let conditions = status::merge_conditions(before, &outcome.observed, generation, &now());
    status.set_conditions(conditions);
    write_status(ctx, resource, live, &status).await?;
    publish_transitions(ctx, resource, &outcome.report, before, status.conditions()).await;
    let settled = status::settled(&outcome.observed);
    Ok(Action::requeue(if settled { RESYNC } else { WAITING }))
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
