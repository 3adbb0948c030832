//! Status, computed purely from what a reconcile observed.
//!
//! Invariants: a condition's `lastTransitionTime` moves only when its status or reason
//! changes, so a reconcile that observes the same facts produces an identical status
//! and the shell writes nothing (no reconcile storms, no GitOps churn).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

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
    fn readiness_reasons() {
        assert_eq!(workload_ready("sink", 0, 0).reason, "ScaledToZero");
        assert_eq!(workload_ready("sink", 2, 1).reason, "Degraded");
        assert!(workload_ready("sink", 2, 1).ok);
        assert!(!workload_ready("sink", 2, 0).ok);
    }
}
