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

/// Refuses a schedule the API server would refuse: Kubernetes reads five fields
/// (minute, hour, day of month, month, day of week) with numbers, `*`, `?`, ranges,
/// lists, steps and month and weekday names, or a nickname such as `@hourly`. Time zone
/// prefixes belong in `timeZone`; seconds, years and extensions such as `L`, `W` or `#`
/// are not read.
pub(super) fn check_schedule(schedule: &str) -> Result<(), String> {
    let trimmed = schedule.trim();
    if trimmed.starts_with("TZ=") || trimmed.starts_with("CRON_TZ=") {
        return Err(
            "a time zone prefix is not accepted in a schedule; schedules run in the \
                    cluster's time zone"
                .into(),
        );
    }
    const NICKNAMES: [&str; 7] = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    if trimmed.starts_with('@') {
        return match NICKNAMES.iter().any(|n| n.eq_ignore_ascii_case(trimmed)) {
            true => Ok(()),
            false => Err(format!(
                "{trimmed:?} is not a cron nickname: use one of {NICKNAMES:?}"
            )),
        };
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "{schedule:?} has {} fields; a schedule has 5: minute hour day-of-month month \
             day-of-week (e.g. \"0 * * * *\")",
            fields.len()
        ));
    }
    const NAMES: [&str; 19] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC", "SUN",
        "MON", "TUE", "WED", "THU", "FRI", "SAT",
    ];
    for field in &fields {
        let mut rest = field.to_ascii_uppercase();
        for name in NAMES {
            rest = rest.replace(name, "0");
        }
        if let Some(bad) = rest.chars().find(|c| !"0123456789*?,-/".contains(*c)) {
            return Err(format!(
                "{field:?} in {schedule:?}: {bad:?} is not cron syntax"
            ));
        }
    }
    // Ranges, steps and bounds, by a full parser (minutes 0-59, hours 0-23, ...).
    let parser = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build();
    parser
        .parse(trimmed)
        .map(|_| ())
        .map_err(|e| format!("{schedule:?} is not a valid schedule: {e}"))
}

#[cfg(test)]
mod tests {
    use super::check_schedule;

    #[test]
    fn kubernetes_schedules_pass_and_others_are_refused() {
        for good in [
            "0 * * * *",
            "*/15 2-4 * JAN-MAR mon,fri",
            "@hourly",
            "0 0 ? * *",
        ] {
            assert_eq!(check_schedule(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("0 * * *", "has 4 fields"),
            ("0 0 * * * *", "has 6 fields"),
            ("61 * * * *", "not a valid schedule"),
            ("0 0 L * *", "not cron syntax"),
            ("0 0 * * 5#2", "not cron syntax"),
            ("@every 5m", "not a cron nickname"),
            ("TZ=UTC 0 * * * *", "time zone"),
            ("every hour", "fields"),
        ] {
            let error = check_schedule(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
