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
    /// The namespaces whose resources it reconciles; empty: every namespace. With a
    /// list, every watch is namespaced, so the operator needs no cluster-wide rights.
    pub watch_namespaces: Vec<String>,
}

/// Where one pair of controllers watches: one namespace, or all (`None`).
type Scope = Option<String>;

fn api<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match scope {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
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
    let scopes: Vec<Scope> = match settings.watch_namespaces.as_slice() {
        [] => vec![None],
        names => names.iter().cloned().map(Some).collect(),
    };
    let (forward, changes) = split_changes(topic_changes, &scopes);
    let controllers = async {
        let each = scopes.iter().zip(changes).map(|(scope, changes)| {
            let (client, ctx) = (&client, ctx.clone());
            async move {
                futures_util::join!(
                    pipelines(client, ctx.clone(), changes, scope),
                    sinks(client, ctx, scope)
                );
            }
        });
        // The forwarder never ends; the controllers end on SIGTERM.
        tokio::select! {
            _ = futures_util::future::join_all(each) => {}
            _ = forward => {}
        }
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

/// One receiver of topic changes per scope, fed by the returned future from the single
/// receiver the topic worker writes to: each key goes to the scope of its namespace. The
/// future never completes.
fn split_changes(
    changes: Changes,
    scopes: &[Scope],
) -> (impl std::future::Future<Output = ()>, Vec<Changes>) {
    let (senders, receivers): (Vec<_>, Vec<_>) = scopes
        .iter()
        .map(|_| {
            let (sender, receiver) = tokio::sync::mpsc::channel::<String>(64);
            (sender, Some(receiver))
        })
        .unzip();
    let scopes = scopes.to_vec();
    let forward = async move {
        let Some(mut changes) = changes else {
            return std::future::pending().await;
        };
        while let Some(key) = changes.recv().await {
            let namespace = key.split_once('/').map(|(namespace, _)| namespace);
            let target = scopes
                .iter()
                .position(|scope| scope.is_none() || scope.as_deref() == namespace);
            if let Some(index) = target
                && senders[index].send(key).await.is_err()
            {
                break;
            }
        }
        std::future::pending().await
    };
    (forward, receivers)
}

async fn pipelines(client: &Client, ctx: Arc<Context>, changes: Changes, scope: &Scope) {
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
        api::<IngestPipeline>(client, scope),
        watcher::Config::default(),
    )
    .owns(api::<ConfigMap>(client, scope), managed())
    .owns(api::<Deployment>(client, scope), managed())
    .owns(api::<Service>(client, scope), managed())
    .owns(api::<HorizontalPodAutoscaler>(client, scope), managed())
    .owns(api::<PodDisruptionBudget>(client, scope), managed())
    .reconcile_on(changed)
    .shutdown_on_signal()
    .run(reconcile_pipeline, error_policy, ctx)
    .for_each(log_skipped)
    .await;
}

async fn sinks(client: &Client, ctx: Arc<Context>, scope: &Scope) {
    let controller = Controller::new(
        api::<SinkBinding>(client, scope),
        watcher::Config::default(),
    );
    let bindings = controller.store();
    controller
        .owns(api::<ConfigMap>(client, scope), managed())
        .owns(api::<Deployment>(client, scope), managed())
        .owns(api::<Service>(client, scope), managed())
        .owns(api::<CronJob>(client, scope), managed())
        // A pipeline that appears, changes or goes re-reconciles the bindings naming it.
        .watches(
            api::<IngestPipeline>(client, scope),
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
