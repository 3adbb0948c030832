//! The SinkBinding reconcile: the referenced IngestPipeline (dereference), the sink's
//! children (build, apply), its Deployment or CronJob (observe), then the shared status
//! step.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::runtime::controller::Action;
use weir_crds::resources::{IngestPipeline, SinkBinding, SinkBindingStatus};

use super::{Context, Error, Outcome, Stop, WithConditions, conclude, deployment_ready, finish};
use crate::apply::ChildKinds;
use crate::build::{self, Owner};
use crate::status::{self, Observed};

/// Reconciles one SinkBinding.
pub async fn reconcile_sink(binding: Arc<SinkBinding>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_sink_inner(&binding, &ctx).await;
    finish(&ctx, &*binding, started, &result);
    result
}

async fn reconcile_sink_inner(binding: &SinkBinding, ctx: &Context) -> Result<Action, Error> {
    let mut status = sink_status(binding);
    let outcome = Outcome::of(sink_steps(ctx, binding, &mut status).await)?;
    conclude(ctx, binding, binding.status.as_ref(), status, outcome).await
}

/// The binding's status before observing: what follows from the spec, and the last
/// observation, kept until observed again.
fn sink_status(binding: &SinkBinding) -> SinkBindingStatus {
    SinkBindingStatus {
        observed_generation: binding.metadata.generation,
        consumer_group: Some(build::sink::consumer_group(binding)),
        ready_replicas: binding.status.as_ref().and_then(|s| s.ready_replicas),
        ..SinkBindingStatus::default()
    }
}

/// Dereference, validate and build, apply, observe.
async fn sink_steps(
    ctx: &Context,
    binding: &SinkBinding,
    status: &mut SinkBindingStatus,
) -> Result<Outcome, Stop> {
    let owner = Owner::of(binding);
    let pipeline = referenced_pipeline(ctx, binding, &owner).await?;
    let children = build::sink::build(binding, &pipeline, &ctx.defaults)?;
    let report = ctx
        .apply_children(&owner, ChildKinds::Sink, &children)
        .await?;
    let ready = observe_sink(ctx, binding, &owner, status).await?;
    Ok(Outcome {
        observed: vec![ready],
        report,
    })
}

/// Dereference step of a binding: the IngestPipeline `spec.pipelineRef` names. A missing
/// one holds the children as they are: a pipeline being recreated must not stop the
/// sink.
async fn referenced_pipeline(
    ctx: &Context,
    binding: &SinkBinding,
    owner: &Owner,
) -> Result<IngestPipeline, Stop> {
    let name = &binding.spec.pipeline_ref.name;
    let pipelines: Api<IngestPipeline> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    pipelines
        .get_opt(name)
        .await?
        .ok_or_else(|| Stop::Hold(status::pipeline_not_found(&owner.namespace, name)))
}

/// The sink's Ready condition: from its CronJob's last success when scheduled, else from
/// its Deployment's ready replicas.
async fn observe_sink(
    ctx: &Context,
    binding: &SinkBinding,
    owner: &Owner,
    status: &mut SinkBindingStatus,
) -> Result<Observed, Error> {
    let name = build::sink::workload_name(&owner.name);
    if binding.spec.workload.schedule.is_some() {
        status.ready_replicas = None;
        let jobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &owner.namespace);
        let last_success = jobs
            .get_opt(&name)
            .await?
            .and_then(|c| c.status)
            .and_then(|s| s.last_successful_time)
            .map(|t| t.0.to_string());
        return Ok(status::scheduled(last_success));
    }
    let ready = deployment_ready(ctx, &owner.namespace, &name).await?;
    status.ready_replicas = Some(ready);
    let desired = binding.spec.workload.replicas.unwrap_or(1);
    Ok(status::workload_ready("sink", desired, ready))
}

impl WithConditions for SinkBindingStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn set_conditions(&mut self, conditions: Vec<Condition>) {
        self.conditions = conditions;
    }
}
