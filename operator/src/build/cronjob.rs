//! CronJob: a workload run to completion on a schedule (the sink's batch mode).

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::Owner;

/// The CronJob `name` running `template` on `schedule`, one run at a time.
pub(super) fn cron_job(
    owner: &Owner,
    name: &str,
    component: &str,
    schedule: &str,
    template: PodTemplateSpec,
) -> CronJob {
    CronJob {
        metadata: owner.meta(name, component),
        spec: Some(CronJobSpec {
            schedule: schedule.into(),
            // Two batch runs of one consumer group would only split the partitions
            // between them; the next run picks up whatever a slow one left.
            concurrency_policy: Some("Forbid".into()),
            job_template: JobTemplateSpec {
                metadata: None,
                spec: Some(JobSpec {
                    backoff_limit: Some(3),
                    template,
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    }
}
