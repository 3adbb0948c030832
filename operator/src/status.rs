//! Status, computed purely from what a reconcile observed.
//!
//! Invariants: a condition's `lastTransitionTime` moves only when its status or reason
//! changes, so a reconcile that observes the same facts produces an identical status
//! and the shell writes nothing (no reconcile storms, no GitOps churn).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::topics::TopicState;

/// The condition `kubectl wait --for=condition=Ready` and Argo CD health checks read.
pub const READY: &str = "Ready";
/// Whether the pipeline's topics exist with at least their partitions.
pub const TOPICS_READY: &str = "TopicsReady";
/// Ready's reason while the topics are not ready (TopicsReady says why).
pub const TOPICS_NOT_READY: &str = "TopicsNotReady";

/// One condition as observed now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub ok: bool,
    /// PascalCase, what a person can search for (e.g. `PipelineNotFound`).
    pub reason: &'static str,
    /// What happened and what to do.
    pub message: String,
}

impl Observed {
    pub fn new(type_: &'static str, ok: bool, reason: &'static str, message: String) -> Self {
        Self {
            type_,
            ok,
            reason,
            message,
        }
    }
}

/// The conditions after observing `observed` at `generation`, keeping the transition
/// time of every condition whose status and reason stay the same.
pub fn merge_conditions(
    previous: &[Condition],
    observed: &[Observed],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    observed
        .iter()
        .map(|o| {
            let status = if o.ok { "True" } else { "False" };
            let old = previous.iter().find(|c| c.type_ == o.type_);
            let transition = match old {
                Some(c) if c.status == status && c.reason == o.reason => {
                    c.last_transition_time.clone()
                }
                _ => now.clone(),
            };
            Condition {
                type_: o.type_.into(),
                status: status.into(),
                reason: o.reason.into(),
                message: o.message.clone(),
                observed_generation: generation,
                last_transition_time: transition,
            }
        })
        .collect()
}

/// The Ready condition of a workload that should have `desired` ready pods.
pub fn workload_ready(what: &str, desired: i32, ready: i32) -> Observed {
    if desired == 0 {
        Observed::new(
            READY,
            true,
            "ScaledToZero",
            format!("{what} is scaled to zero replicas"),
        )
    } else if ready >= desired {
        Observed::new(
            READY,
            true,
            "Available",
            format!("{ready} of {desired} {what} replicas are ready"),
        )
    } else if ready > 0 {
        Observed::new(
            READY,
            true,
            "Degraded",
            format!(
                "{ready} of {desired} {what} replicas are ready; the rest are starting or \
                 failing (see the pods' events)"
            ),
        )
    } else {
        Observed::new(
            READY,
            false,
            "Progressing",
            format!(
                "no {what} replica is ready yet (0 of {desired}); if this lasts, check the \
                 pods' events and logs"
            ),
        )
    }
}

/// Ready=False because the spec cannot be turned into a workload.
pub fn invalid_spec(error: &crate::build::InvalidSpec) -> Observed {
    Observed::new(READY, false, "InvalidSpec", error.to_string())
}

/// Ready=False because `spec.pipelineRef` names no IngestPipeline.
pub fn pipeline_not_found(namespace: &str, name: &str) -> Observed {
    Observed::new(
        READY,
        false,
        "PipelineNotFound",
        format!(
            "spec.pipelineRef names IngestPipeline {namespace}/{name}, which does not \
             exist; create it or correct pipelineRef"
        ),
    )
}

/// The Ready condition of a sink run as a CronJob; `last_success` is when a run last
/// succeeded.
pub fn scheduled(last_success: Option<String>) -> Observed {
    Observed::new(
        READY,
        true,
        "Scheduled",
        match last_success {
            Some(at) => format!("batch runs are scheduled; last success {at}"),
            None => "batch runs are scheduled; none has succeeded yet".into(),
        },
    )
}

/// TopicsReady=False because the Kafka credentials cannot be read.
pub fn kafka_secret_unreadable(error: &impl std::fmt::Display) -> Observed {
    Observed::new(
        TOPICS_READY,
        false,
        "KafkaSecretUnreadable",
        error.to_string(),
    )
}

/// TopicsReady from the topic worker's last outcome for `count` topics at `at`.
pub fn topics_ready(state: &TopicState, count: usize, at: &str) -> Observed {
    match state {
        TopicState::Ready => Observed::new(
            TOPICS_READY,
            true,
            "TopicsEnsured",
            format!("{count} topics exist with their partitions"),
        ),
        TopicState::Creating => Observed::new(
            TOPICS_READY,
            false,
            "Creating",
            format!("creating or growing {count} topics at {at}"),
        ),
        TopicState::Failed(error) => Observed::new(
            TOPICS_READY,
            false,
            "TopicsFailed",
            format!("creating or growing topics at {at} failed: {error}; retrying with backoff"),
        ),
    }
}

/// A pipeline's conditions: Ready is its gateway's, unless the topics are not ready
/// (TopicsReady, present when the pipeline lists topics, says why).
pub fn pipeline_conditions(gateway: Observed, topics: Option<Observed>) -> Vec<Observed> {
    let ready = match &topics {
        Some(topics) if !topics.ok => Observed::new(
            READY,
            false,
            TOPICS_NOT_READY,
            format!("the pipeline's topics are not ready: {}", topics.message),
        ),
        _ => gateway,
    };
    std::iter::once(ready).chain(topics).collect()
}

/// Whether nothing observed is waiting or degraded: the resource is looked at again only
/// at the resync interval.
pub fn settled(observed: &[Observed]) -> bool {
    observed.iter().all(|o| o.ok && o.reason != "Degraded")
}

/// Whether the Ready condition in `conditions` is True.
pub fn is_ready(conditions: &[Condition]) -> Option<bool> {
    conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_or_reason_changes() {
        let first = merge_conditions(&[], &[workload_ready("gateway", 2, 0)], Some(1), &at(10));
        assert_eq!(first[0].status, "False");
        assert_eq!(first[0].last_transition_time, at(10));

        // Same status and reason, new message: the time stays.
        let mut progressing = workload_ready("gateway", 3, 0);
        progressing.message.push('!');
        let second = merge_conditions(&first, &[progressing], Some(2), &at(20));
        assert_eq!(second[0].last_transition_time, at(10));
        assert_eq!(second[0].observed_generation, Some(2));

        let third = merge_conditions(
            &second,
            &[workload_ready("gateway", 3, 3)],
            Some(2),
            &at(30),
        );
        assert_eq!(third[0].status, "True");
        assert_eq!(third[0].reason, "Available");
        assert_eq!(third[0].last_transition_time, at(30));
        assert_eq!(is_ready(&third), Some(true));
    }

    #[test]
    fn topics_not_ready_take_ready_with_them() {
        let gateway = workload_ready("gateway", 2, 2);
        let failed = topics_ready(&TopicState::Failed("no broker".into()), 1, "kafka:9092");
        let conditions = pipeline_conditions(gateway.clone(), Some(failed.clone()));
        assert_eq!(conditions[0].type_, READY);
        assert_eq!(conditions[0].reason, TOPICS_NOT_READY);
        assert_eq!(
            conditions[0].message,
            format!("the pipeline's topics are not ready: {}", failed.message)
        );
        assert_eq!(conditions[1], failed);

        let ensured = topics_ready(&TopicState::Ready, 1, "kafka:9092");
        assert_eq!(
            pipeline_conditions(gateway.clone(), Some(ensured.clone())),
            [gateway.clone(), ensured]
        );
        assert_eq!(pipeline_conditions(gateway.clone(), None), [gateway]);
    }

    #[test]
    fn only_settled_resources_wait_for_the_resync() {
        assert!(settled(&[workload_ready("sink", 2, 2), scheduled(None)]));
        assert!(!settled(&[workload_ready("sink", 2, 1)]), "degraded");
        assert!(!settled(&[pipeline_not_found("analytics", "clickstream")]));
    }

    #[test]
    fn readiness_reasons() {
        assert_eq!(workload_ready("sink", 0, 0).reason, "ScaledToZero");
        assert_eq!(workload_ready("sink", 2, 1).reason, "Degraded");
        assert!(workload_ready("sink", 2, 1).ok);
        assert!(!workload_ready("sink", 2, 0).ok);
    }
}
