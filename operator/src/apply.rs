//! The thin shell that makes the cluster match the builders' output: server-side apply
//! under one field manager, skip what is already current, prune what is no longer
//! wanted.
//!
//! Invariants:
//! - A child whose live [`APPLIED_HASH`] equals the desired one is not written, so a
//!   reconcile with nothing to change makes zero writes. (A hand edit that keeps the
//!   annotation is corrected at the next spec change; one that removes it, at once.)
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
    /// `Kind/name` of each object deleted because the spec no longer needs it.
    pub pruned: Vec<String>,
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
            if applied {
                report.applied.push(child.describe());
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
        match kinds {
            ChildKinds::Gateway => {
                pruned.extend(self.prune::<Service>(owner, &keep("Service")).await?);
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

    async fn apply<K>(&self, owner: &Owner, child: &Child) -> Result<bool, kube::Error>
    where
        K: NamespacedObject,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &owner.namespace);
        let name = child.name();
        if let Some(live) = api.get_opt(name).await? {
            let live_hash = live
                .meta()
                .annotations
                .as_ref()
                .and_then(|a| a.get(APPLIED_HASH));
            if live_hash.map(String::as_str) == child.applied_hash() {
                return Ok(false);
            }
        }
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(child.to_json()),
        )
        .await?;
        self.metrics.record_write(child.kind(), "apply");
        Ok(true)
    }

    async fn prune<K>(&self, owner: &Owner, keep: &[&str]) -> Result<Vec<String>, kube::Error>
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
            let kind = K::kind(&());
            self.metrics.record_write(&kind, "delete");
            pruned.push(format!("{kind}/{name}"));
        }
        Ok(pruned)
    }
}
