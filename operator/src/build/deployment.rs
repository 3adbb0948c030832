//! Deployment: a workload's pods kept running, replaced as [`Rollout`] says.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::Owner;

/// How a Deployment replaces its pods on a change.
pub(super) enum Rollout {
    /// Kubernetes' default (a rolling update: new pods before old ones go).
    Rolling,
    /// Every old pod goes before the new ones start.
    Recreate,
}

/// The Deployment `name` running `template`. `replicas` is `None` when an autoscaler
/// sets the count: leaving the field out of the apply keeps the two from fighting.
pub(super) fn deployment(
    owner: &Owner,
    name: &str,
    component: &str,
    replicas: Option<i32>,
    rollout: Rollout,
    template: PodTemplateSpec,
) -> Deployment {
    Deployment {
        metadata: owner.meta(name, component),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(owner.selector_labels(component)),
                ..LabelSelector::default()
            },
            strategy: match rollout {
                Rollout::Rolling => None,
                Rollout::Recreate => Some(DeploymentStrategy {
                    type_: Some("Recreate".into()),
                    ..DeploymentStrategy::default()
                }),
            },
            template,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}
