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
    // Kubernetes' parser reads nicknames case-sensitively, and `@every <duration>`.
    if let Some(every) = trimmed.strip_prefix("@every ") {
        return humantime::parse_duration(every.trim())
            .map(|_| ())
            .map_err(|e| format!("{trimmed:?}: {every:?} is not a duration such as 1h30m: {e}"));
    }
    if trimmed.starts_with('@') {
        return match NICKNAMES.contains(&trimmed) {
            true => Ok(()),
            false => Err(format!(
                "{trimmed:?} is not a cron nickname: use one of {NICKNAMES:?} or @every <duration>"
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
    for (position, field) in fields.iter().enumerate() {
        let mut rest = field.to_ascii_uppercase();
        for name in NAMES {
            rest = rest.replace(name, "0");
        }
        if let Some(bad) = rest.chars().find(|c| !"0123456789*?,-/".contains(*c)) {
            return Err(format!(
                "{field:?} in {schedule:?}: {bad:?} is not cron syntax"
            ));
        }
        // Days of the week are 0-6 (Sunday 0) for Kubernetes; 7 is not Sunday there.
        const DAY_OF_WEEK: usize = 4;
        let mut days = rest.split(',').flat_map(|part| {
            let range = part.split('/').next().unwrap_or("");
            range.split('-').filter_map(|n| n.parse::<u32>().ok())
        });
        if position == DAY_OF_WEEK && days.any(|day| day > 6) {
            return Err(format!(
                "{field:?} in {schedule:?}: days of the week are 0-6 (Sunday is 0) or SUN-SAT"
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
            "@midnight",
            "@every 1h30m",
            "0 0 ? * *",
            "0 0 * * 0-6",
        ] {
            assert_eq!(check_schedule(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("0 * * *", "has 4 fields"),
            ("0 0 * * * *", "has 6 fields"),
            ("61 * * * *", "not a valid schedule"),
            ("0 0 L * *", "not cron syntax"),
            ("0 0 * * 5#2", "not cron syntax"),
            ("@every soon", "not a duration"),
            ("@Daily", "not a cron nickname"),
            ("0 0 * * 7", "days of the week are 0-6"),
            ("0 0 * * 1-7", "days of the week are 0-6"),
            ("TZ=UTC 0 * * * *", "time zone"),
            ("every hour", "fields"),
        ] {
            let error = check_schedule(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
