//! The IngestPipeline reconcile: the Kafka credentials Secret (dereference), the
//! gateway's children (build, apply), its Deployment and topics (observe), then the
//! shared status step.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use weir_crds::pipeline::KafkaSpec;
use weir_crds::resources::{IngestPipeline, IngestPipelineStatus};

use super::{Context, Error, Outcome, Stop, WithConditions, conclude, deployment_ready, finish};
use crate::apply::ChildKinds;
use crate::build::{self, Owner};
use crate::status::{self, Observed};
use crate::topics::TopicState;

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
    let mut status = pipeline_status(pipeline);
    let outcome = Outcome::of(pipeline_steps(ctx, pipeline, &mut status).await)?;
    conclude(ctx, pipeline, pipeline.status.as_ref(), status, outcome).await
}

/// The pipeline's status before observing: what follows from the spec, and the last
/// observations, kept until observed again.
fn pipeline_status(pipeline: &IngestPipeline) -> IngestPipelineStatus {
    let previous = pipeline.status.clone().unwrap_or_default();
    IngestPipelineStatus {
        observed_generation: pipeline.metadata.generation,
        replicas: Some(build::gateway::desired_replicas(pipeline)),
        selector: Some(build::gateway::selector(pipeline)),
        endpoint: Some(build::gateway::endpoint(pipeline)),
        ready_replicas: previous.ready_replicas,
        topics_ensured: previous.topics_ensured,
        ..IngestPipelineStatus::default()
    }
}

/// Dereference, validate and build, apply, observe.
async fn pipeline_steps(
    ctx: &Context,
    pipeline: &IngestPipeline,
    status: &mut IngestPipelineStatus,
) -> Result<Outcome, Stop> {
    let owner = Owner::of(pipeline);
    let kafka = topics_kafka(ctx, pipeline).await;
    let children = build::gateway::build(pipeline, &ctx.defaults)?;
    let report = ctx
        .apply_children(&owner, ChildKinds::Gateway, &children)
        .await?;
    let topics = observe_topics(ctx, pipeline, kafka, status).await;
    let gateway = observe_gateway(ctx, &owner, status).await?;
    Ok(Outcome {
        observed: status::pipeline_conditions(gateway, topics),
        report,
    })
}

/// The Secret named by `spec.workload.kafkaSecret` cannot be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read Secret {secret} (spec.workload.kafkaSecret) for the Kafka credentials: \
     {source}"
)]
struct KafkaSecretUnreadable {
    secret: String,
    source: kube::Error,
}

/// What the topic step connects to.
enum TopicsKafka {
    /// The pipeline lists no topics: nothing was read.
    NoTopics,
    /// The pipeline's Kafka connection with the Secret's credentials added.
    Connection(KafkaSpec),
    Unreadable(KafkaSecretUnreadable),
}

/// Dereference step of a pipeline: the Kafka connection the topic step uses, read only
/// when the pipeline lists topics.
async fn topics_kafka(ctx: &Context, pipeline: &IngestPipeline) -> TopicsKafka {
    if pipeline.spec.pipeline.topics.is_empty() {
        return TopicsKafka::NoTopics;
    }
    match kafka_with_credentials(ctx, pipeline).await {
        Ok(kafka) => TopicsKafka::Connection(kafka),
        Err(unreadable) => TopicsKafka::Unreadable(unreadable),
    }
}

/// The pipeline's Kafka connection with the keys of `workload.kafkaSecret` added as
/// properties, as the gateway pods see them (see `build::kafka_secret_env`).
async fn kafka_with_credentials(
    ctx: &Context,
    pipeline: &IngestPipeline,
) -> Result<KafkaSpec, KafkaSecretUnreadable> {
    let mut kafka = pipeline.spec.pipeline.kafka.clone();
    // The operator runs in its own namespace; the gateway in the pipeline's.
    kafka.bootstrap_servers = crate::topics::bootstrap_in_namespace(
        &kafka.bootstrap_servers,
        pipeline.namespace().as_deref().unwrap_or("default"),
    );
    let Some(secret) = &pipeline.spec.workload.kafka_secret else {
        return Ok(kafka);
    };
    let api: Api<Secret> = Api::namespaced(
        ctx.client.clone(),
        pipeline.namespace().as_deref().unwrap_or_default(),
    );
    let found = api
        .get(secret)
        .await
        .map_err(|source| KafkaSecretUnreadable {
            secret: secret.clone(),
            source,
        })?;
    for (key, value) in found.data.unwrap_or_default() {
        kafka
            .properties
            .insert(key, String::from_utf8_lossy(&value.0).into_owned());
    }
    Ok(kafka)
}

/// The TopicsReady condition, from the topic worker's last outcome; `None` when the
/// pipeline lists no topics. Never waits on Kafka (see [`crate::topics`]).
async fn observe_topics(
    ctx: &Context,
    pipeline: &IngestPipeline,
    kafka: TopicsKafka,
    status: &mut IngestPipelineStatus,
) -> Option<Observed> {
    let topics = &pipeline.spec.pipeline.topics;
    let kafka = match kafka {
        TopicsKafka::NoTopics => {
            status.topics_ensured = Vec::new();
            return None;
        }
        TopicsKafka::Unreadable(error) => return Some(status::kafka_secret_unreadable(&error)),
        TopicsKafka::Connection(kafka) => kafka,
    };
    let key = format!(
        "{}/{}",
        pipeline.namespace().unwrap_or_default(),
        pipeline.name_any()
    );
    let state = ctx.topics.state(&key, &kafka, topics).await;
    if state == TopicState::Ready {
        status.topics_ensured = topics.iter().map(|t| t.name.clone()).collect();
    }
    Some(status::topics_ready(
        &state,
        topics.len(),
        &kafka.bootstrap_servers,
    ))
}

/// The gateway's Ready condition, from its Deployment's ready replicas.
async fn observe_gateway(
    ctx: &Context,
    owner: &Owner,
    status: &mut IngestPipelineStatus,
) -> Result<Observed, Error> {
    let name = build::gateway::workload_name(&owner.name);
    let ready = deployment_ready(ctx, &owner.namespace, &name).await?;
    status.ready_replicas = Some(ready);
    Ok(status::workload_ready(
        "gateway",
        status.replicas.unwrap_or(0),
        ready,
    ))
}

impl WithConditions for IngestPipelineStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn set_conditions(&mut self, conditions: Vec<Condition>) {
        self.conditions = conditions;
    }
}
