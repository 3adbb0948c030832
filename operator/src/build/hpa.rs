//! HorizontalPodAutoscaler: a workload scaled on CPU utilisation.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use weir_crds::resources::Autoscaling;

use super::Owner;

/// Scales the Deployment `name` between the spec's bounds on average CPU utilisation.
pub(super) fn cpu_autoscaler(
    owner: &Owner,
    name: &str,
    component: &str,
    autoscaling: &Autoscaling,
) -> HorizontalPodAutoscaler {
    HorizontalPodAutoscaler {
        metadata: owner.meta(name, component),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: name.into(),
            },
            min_replicas: Some(autoscaling.min_replicas),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(autoscaling.target_cpu_utilization),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    }
}
