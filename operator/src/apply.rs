//! The thin shell that makes the cluster match the builders' output: server-side apply
//! under one field manager, skip what is already current, prune what is no longer
//! wanted.
//!
//! Invariants:
//! - A child is written only when its live state does not hold the desired object
//!   ([`crate::drift`]): a reconcile with nothing to change makes zero writes, and a hand
//!   edit of any field the operator owns (an image, the routing table) is undone at the
//!   next reconcile, which the watch on the children triggers at once.
//! - Pruning only deletes objects labelled as this resource's children
//!   ([`crate::build::OWNER_LABEL`]) and not in the desired set.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{APPLIED_HASH, Child, FIELD_MANAGER, Owner};
use crate::drift;
use crate::metrics::Metrics;

/// A namespaced Kubernetes object type the operator reads and writes.
pub trait NamespacedObject:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
}

impl<K> NamespacedObject for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
{
}

/// What an apply changed, for events and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// `Kind/name` of each object created or updated.
    pub applied: Vec<String>,
    /// Objects whose desired content was unchanged but whose live state had drifted
    /// (a hand edit), re-applied.
    pub corrected: Vec<Drift>,
    /// Objects deleted because the spec no longer needs them.
    pub pruned: Vec<ChildRef>,
}

/// A child as events name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

impl ChildRef {
    fn of<K: Resource<DynamicType = ()>>(name: &str) -> Self {
        Self {
            api_version: K::api_version(&()).into(),
            kind: K::kind(&()).into(),
            name: name.into(),
        }
    }

    /// `Kind/name`.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// A child found drifted and corrected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub child: ChildRef,
    /// The first field found changed (`spec.template.spec.containers[0].image`).
    pub field: String,
}

/// What applying one child did.
enum Applied {
    Current,
    Written,
    Corrected(Drift),
}

/// The kinds a resource's children can have, so pruning looks at each.
#[derive(Clone, Copy, Debug)]
pub enum ChildKinds {
    Gateway,
    Sink,
}

/// Applies children and prunes the rest.
pub struct Applier<'a> {
    pub client: &'a Client,
    pub metrics: &'a Metrics,
}

impl Applier<'_> {
    /// Makes `owner`'s children exactly `children`.
    pub async fn reconcile_children(
        &self,
        owner: &Owner,
        kinds: ChildKinds,
        children: &[Child],
    ) -> Result<ApplyReport, kube::Error> {
        let mut report = ApplyReport::default();
        for child in children {
            let applied = match child {
                Child::ConfigMap(_) => self.apply::<ConfigMap>(owner, child).await?,
                Child::Deployment(_) => self.apply::<Deployment>(owner, child).await?,
                Child::Service(_) => self.apply::<Service>(owner, child).await?,
                Child::HorizontalPodAutoscaler(_) => {
                    self.apply::<HorizontalPodAutoscaler>(owner, child).await?
                }
                Child::PodDisruptionBudget(_) => {
                    self.apply::<PodDisruptionBudget>(owner, child).await?
                }
                Child::CronJob(_) => self.apply::<CronJob>(owner, child).await?,
            };
            match applied {
                Applied::Current => {}
                Applied::Written => report.applied.push(child.describe()),
                Applied::Corrected(drift) => {
                    report.applied.push(child.describe());
                    report.corrected.push(drift);
                }
            }
        }
        let keep = |kind: &str| -> Vec<&str> {
            children
                .iter()
                .filter(|c| c.kind() == kind)
                .map(Child::name)
                .collect()
        };
        let mut pruned = Vec::new();
        pruned.extend(self.prune::<ConfigMap>(owner, &keep("ConfigMap")).await?);
        pruned.extend(self.prune::<Deployment>(owner, &keep("Deployment")).await?);
        pruned.extend(self.prune::<Service>(owner, &keep("Service")).await?);
        match kinds {
            ChildKinds::Gateway => {
                pruned.extend(
                    self.prune::<HorizontalPodAutoscaler>(owner, &keep("HorizontalPodAutoscaler"))
                        .await?,
                );
                pruned.extend(
                    self.prune::<PodDisruptionBudget>(owner, &keep("PodDisruptionBudget"))
                        .await?,
                );
            }
            ChildKinds::Sink => {
                pruned.extend(self.prune::<CronJob>(owner, &keep("CronJob")).await?);
            }
        }
        report.pruned = pruned;
        Ok(report)
    }

    async fn apply<K>(&self, owner: &Owner, child: &Child) -> Result<Applied, kube::Error>
    where
        K: NamespacedObject,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &owner.namespace);
        let name = child.name();
        let desired = child.to_json();
        let mut outcome = Applied::Written;
        if let Some(live) = api.get_opt(name).await? {
            let live = serde_json::to_value(&live).expect("Kubernetes objects serialize");
            // Compared whole, before drift (which ignores what others add): a selector
            // is the exact set of labels it matches.
            if selector_changed(child, &desired, &live) {
                self.replace_keeping_pods(&api, child).await?;
                return self
                    .write(&api, child, desired)
                    .await
                    .map(|()| Applied::Written);
            }
            let Some(field) = drift::first_difference(&desired, &live) else {
                return Ok(Applied::Current);
            };
            // The same desired content as last applied, yet the live object differs:
            // someone edited it. A changed spec is an ordinary update.
            if live
                .pointer(&format!(
                    "/metadata/annotations/{}",
                    APPLIED_HASH.replace('/', "~1")
                ))
                .and_then(serde_json::Value::as_str)
                == child.applied_hash()
            {
                tracing::info!(child = %child.describe(), %field, "correcting a hand edit");
                outcome = Applied::Corrected(Drift {
                    child: ChildRef::of::<K>(name),
                    field,
                });
            }
        }
        let applied = self.write(&api, child, desired).await;
        match (applied, &outcome) {
            (Ok(()), _) => {}
            // A hand edit the desired object cannot be merged with (two ports of one
            // name): say so, and let the rest of the reconcile and the status go on.
            (Err(kube::Error::Api(refusal)), Applied::Corrected(drift)) if refusal.code == 422 => {
                tracing::warn!(
                    child = %child.describe(),
                    field = %drift.field,
                    error = %refusal.message,
                    "cannot undo a hand edit; fix or delete the object"
                );
                return Ok(Applied::Current);
            }
            (Err(error), _) => return Err(error),
        }
        Ok(outcome)
    }

    /// Server-side applies `desired` and counts the write.
    async fn write<K>(
        &self,
        api: &Api<K>,
        child: &Child,
        desired: serde_json::Value,
    ) -> Result<(), kube::Error>
    where
        K: NamespacedObject,
    {
        api.patch(
            child.name(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await?;
        self.metrics.record_write(child.kind(), "apply");
        Ok(())
    }

    /// Deletes a Deployment whose selector must change, leaving its ReplicaSets and pods
    /// (orphaned), and waits until it is gone. The new Deployment adopts them, since its
    /// selector matches their labels, and rolls them: no downtime.
    async fn replace_keeping_pods<K>(&self, api: &Api<K>, child: &Child) -> Result<(), kube::Error>
    where
        K: NamespacedObject,
    {
        let name = child.name();
        tracing::info!(child = %child.describe(), "the selector changed, which Kubernetes does not allow in place: replacing the object, keeping its pods");
        api.delete(name, &DeleteParams::orphan()).await?;
        self.metrics.record_write(child.kind(), "delete");
        // The garbage collector removes the orphan finalizer within moments.
        for _ in 0..100 {
            if api.get_opt(name).await?.is_none() {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn prune<K>(&self, owner: &Owner, keep: &[&str]) -> Result<Vec<ChildRef>, kube::Error>
    where
        K: NamespacedObject,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &owner.namespace);
        let listed = api
            .list_metadata(&ListParams::default().labels(&owner.selector()))
            .await?;
        let mut pruned = Vec::new();
        for item in listed.items {
            let Some(name) = item.metadata.name else {
                continue;
            };
            if keep.contains(&name.as_str()) {
                continue;
            }
            api.delete(&name, &DeleteParams::background()).await?;
            self.metrics.record_write(&K::kind(&()), "delete");
            pruned.push(ChildRef::of::<K>(&name));
        }
        Ok(pruned)
    }
}

/// Whether a Deployment's desired selector differs from the live one: `spec.selector`
/// is immutable, so such a change (an older operator's labels) needs a new object.
fn selector_changed(child: &Child, desired: &serde_json::Value, live: &serde_json::Value) -> bool {
    matches!(child, Child::Deployment(_))
        && live.pointer("/spec/selector") != desired.pointer("/spec/selector")
}
