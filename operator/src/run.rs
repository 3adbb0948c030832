//! The running operator: leader election, the two controllers and their watches, and
//! the metrics and health endpoints.
//!
//! Only the replica holding the Lease reconciles; a replica that loses it exits, so
//! Kubernetes restarts it as a follower and two replicas never write at once. A leader
//! that stops (SIGTERM, Ctrl-C) releases the Lease, so another replica takes over at its
//! next try instead of waiting for the Lease to expire.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use tokio_util::sync::CancellationToken;
use weir_crds::resources::{IngestPipeline, SinkBinding};

use crate::controller::{Context, error_policy, reconcile_pipeline, reconcile_sink};

/// Settings of `weir-operator run`.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics: SocketAddr,
    /// Namespace of the leader Lease (the operator's own).
    pub lease_namespace: String,
    /// Name of the leader Lease.
    pub lease_name: String,
    /// This replica's identity in the Lease.
    pub holder: String,
    /// How long a Lease stays valid without renewal.
    pub lease_ttl: Duration,
}

/// Runs until SIGTERM or until leadership is lost.
pub async fn run(client: Client, ctx: Arc<Context>, settings: RunSettings) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let registry = ctx.metrics.registry.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { weir_runtime::telemetry::render(&registry) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(settings.metrics).await?;
    let server = weir_runtime::telemetry::serve_http(listener, app, stop.clone(), "metrics");

    let lease = LeaseLock::new(
        client.clone(),
        &settings.lease_namespace,
        LeaseLockParams {
            lease_name: settings.lease_name.clone(),
            holder_id: settings.holder.clone(),
            lease_ttl: settings.lease_ttl,
        },
    );
    tracing::info!(holder = %settings.holder, lease = %settings.lease_name, "waiting for leadership");
    loop {
        match lease.try_acquire_or_renew().await {
            Ok(LeaseLockResult::Acquired(_)) => break,
            Ok(LeaseLockResult::NotAcquired(_)) => {}
            Err(error) => tracing::warn!(%error, "cannot read the leader Lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.lease_ttl / 3) => {}
            _ = tokio::signal::ctrl_c() => { stop.cancel(); server.await?; return Ok(()); }
        }
    }
    ctx.metrics.leader.set(1);
    tracing::info!("leader: reconciling");

    let renew = async {
        loop {
            tokio::time::sleep(settings.lease_ttl / 3).await;
            match lease.try_acquire_or_renew().await {
                Ok(LeaseLockResult::Acquired(_)) => {}
                Ok(LeaseLockResult::NotAcquired(_)) => {
                    return anyhow::anyhow!("leadership lost to another replica");
                }
                Err(error) => return anyhow::anyhow!("cannot renew the leader Lease: {error}"),
            }
        }
    };

    let topic_changes = ctx.topics.take_changes();
    let controllers = async {
        futures_util::join!(
            pipelines(&client, ctx.clone(), topic_changes),
            sinks(&client, ctx.clone())
        );
    };
    let outcome = tokio::select! {
        error = renew => Err(error),
        _ = controllers => Ok(()),
    };
    ctx.metrics.leader.set(0);
    if outcome.is_ok() {
        match lease.step_down().await {
            Ok(()) => tracing::info!("released the leader Lease"),
            Err(error) => {
                tracing::warn!(%error, "cannot release the leader Lease; it expires by itself")
            }
        }
    }
    stop.cancel();
    server.await?;
    outcome
}

/// The controller's own errors (a reconcile's are handled by `error_policy`).
async fn log_skipped<T, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(error) = result {
        tracing::debug!(%error, "reconcile not run");
    }
}

fn managed() -> watcher::Config {
    watcher::Config::default().labels("app.kubernetes.io/managed-by=weir-operator")
}

/// `namespace/name` keys of pipelines to reconcile now (their topics changed state).
type Changes = Option<tokio::sync::mpsc::Receiver<String>>;

async fn pipelines(client: &Client, ctx: Arc<Context>, changes: Changes) {
    let changed = futures_util::stream::unfold(changes, |changes| async move {
        let mut receiver = changes?;
        let key = receiver.recv().await?;
        Some((key, Some(receiver)))
    })
    .filter_map(|key| async move {
        let (namespace, name) = key.split_once('/')?;
        Some(ObjectRef::<IngestPipeline>::new(name).within(namespace))
    });
    Controller::new(
        Api::<IngestPipeline>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<ConfigMap>::all(client.clone()), managed())
    .owns(Api::<Deployment>::all(client.clone()), managed())
    .owns(Api::<Service>::all(client.clone()), managed())
    .owns(
        Api::<HorizontalPodAutoscaler>::all(client.clone()),
        managed(),
    )
    .owns(Api::<PodDisruptionBudget>::all(client.clone()), managed())
    .reconcile_on(changed)
    .shutdown_on_signal()
    .run(reconcile_pipeline, error_policy, ctx)
    .for_each(log_skipped)
    .await;
}

async fn sinks(client: &Client, ctx: Arc<Context>) {
    let controller = Controller::new(
        Api::<SinkBinding>::all(client.clone()),
        watcher::Config::default(),
    );
    let bindings = controller.store();
    controller
        .owns(Api::<ConfigMap>::all(client.clone()), managed())
        .owns(Api::<Deployment>::all(client.clone()), managed())
        .owns(Api::<CronJob>::all(client.clone()), managed())
        // A pipeline that appears, changes or goes re-reconciles the bindings naming it.
        .watches(
            Api::<IngestPipeline>::all(client.clone()),
            watcher::Config::default(),
            move |pipeline| {
                let namespace = pipeline.namespace();
                let name = pipeline.name_any();
                bindings
                    .state()
                    .into_iter()
                    .filter(|b| b.namespace() == namespace && b.spec.pipeline_ref.name == name)
                    .map(|b| ObjectRef::from_obj(&*b))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile_sink, error_policy, ctx)
        .for_each(log_skipped)
        .await;
}
