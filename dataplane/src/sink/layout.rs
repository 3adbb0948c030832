//! Where things go in the object store. Pure functions of their inputs.
//!
//! ```text
//! <prefix>[/tenant=<tenant>]/event_type=<type>/dt=YYYY-MM-DD/hour=HH/<topic>+<partition>+<start>.parquet
//! <prefix>/<dead letter prefix>/topic=<topic>/<topic>+<partition>+<start>.jsonl
//! <prefix>/_weir/progress/<topic>/<partition>/<start>.json
//! ```
//!
//! `<start>` is the first offset of the flushed range, zero-padded to 20 digits so that
//! names sort in offset order. A partition whose log was replaced (its offsets went back
//! below what was written, see `source.onOffsetRegression`) is written again as
//! generation `<g>` ≥ 1: its files are `<topic>+<partition>+g<g>+<start>.<ext>` and its
//! markers `_weir/progress/<topic>/<partition>/g<g>/<start>.json`, so no name of an
//! older generation is reused. Generation 0 has no `g` in its names. A flushed range writes one file per (event type, time
//! partition) it contains, all named from the same range start: the name says which
//! Kafka records the file holds, and writing the same range again writes the same names.
//! Engines skip the `_weir` directory (a leading underscore marks it hidden for Hive,
//! Spark and Trino).

use chrono::{DateTime, Datelike, Timelike, Utc};
use weir_crds::sink::{FileFormat, Granularity};

/// The directory of progress markers.
pub const PROGRESS_DIR: &str = "_weir/progress";

/// Joins a prefix and a relative path.
pub fn join(prefix: &str, rest: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}/{rest}")
    }
}

/// Hive-style escaping of a partition value: anything outside `[A-Za-z0-9._-]` becomes
/// `%XX`, so a value can never add a directory level or an `=`.
pub fn escape_partition_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("__HIVE_DEFAULT_PARTITION__");
    }
    out
}

/// The partition directory (relative to the prefix) of a record of `tenant` and
/// `event_type` at `event_time_us` (Unix microseconds). The tenant comes first, so one
/// tenant's data is one prefix that can be granted or deleted alone; records without a
/// tenant (senders without one) have no tenant level.
pub fn partition_dir(
    tenant: Option<&str>,
    event_type: &str,
    event_time_us: i64,
    granularity: Granularity,
) -> String {
    match tenant {
        Some(tenant) => format!(
            "tenant={}/{}",
            escape_partition_value(tenant),
            type_and_time_dir(event_type, event_time_us, granularity)
        ),
        None => type_and_time_dir(event_type, event_time_us, granularity),
    }
}

fn type_and_time_dir(event_type: &str, event_time_us: i64, granularity: Granularity) -> String {
    let time = DateTime::<Utc>::from_timestamp_micros(event_time_us).unwrap_or_default();
    let event_type = escape_partition_value(event_type);
    let (y, m, d) = (time.year(), time.month(), time.day());
    match granularity {
        Granularity::Hour => format!(
            "event_type={event_type}/dt={y:04}-{m:02}-{d:02}/hour={:02}",
            time.hour()
        ),
        Granularity::Day => format!("event_type={event_type}/dt={y:04}-{m:02}-{d:02}"),
    }
}

/// The span of one time partition, microseconds.
pub fn bucket_width_us(granularity: Granularity) -> i64 {
    match granularity {
        Granularity::Hour => 3_600_000_000,
        Granularity::Day => 86_400_000_000,
    }
}

/// Where a flushed range starts: the generation of its partition's log and the first
/// offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RangeStart {
    /// 0 for the first log of a partition, +1 each time it was replaced.
    pub generation: u32,
    /// First offset of the range.
    pub offset: i64,
}

impl From<i64> for RangeStart {
    /// A start in generation 0.
    fn from(offset: i64) -> Self {
        Self {
            generation: 0,
            offset,
        }
    }
}

/// The file name (no directory) of a flushed range starting at `start`.
pub fn file_name(topic: &str, partition: i32, start: RangeStart, extension: &str) -> String {
    let topic = escape_partition_value(topic);
    match start.generation {
        0 => format!("{topic}+{partition}+{:020}.{extension}", start.offset),
        g => format!("{topic}+{partition}+g{g}+{:020}.{extension}", start.offset),
    }
}

/// The file extension of a format and its compression.
pub fn extension(format: FileFormat, gzip: bool) -> &'static str {
    match (format, gzip) {
        (FileFormat::Parquet, _) => "parquet",
        (FileFormat::Jsonl, true) => "jsonl.gz",
        (FileFormat::Jsonl, false) => "jsonl",
    }
}

/// The dead-letter directory of a topic, relative to the prefix.
pub fn dead_letter_dir(dead_letter_prefix: &str, topic: &str) -> String {
    join(
        dead_letter_prefix,
        &format!("topic={}", escape_partition_value(topic)),
    )
}

/// The progress directory of one partition, relative to the prefix.
pub fn progress_dir(topic: &str, partition: i32) -> String {
    format!(
        "{PROGRESS_DIR}/{}/{partition}",
        escape_partition_value(topic)
    )
}

/// The progress marker of the range starting at `start`, relative to the prefix.
pub fn progress_marker(topic: &str, partition: i32, start: RangeStart) -> String {
    let dir = progress_dir(topic, partition);
    match start.generation {
        0 => format!("{dir}/{:020}.json", start.offset),
        g => format!("{dir}/g{g}/{:020}.json", start.offset),
    }
}

/// The range start a marker name encodes, if it is a marker name.
pub fn marker_start(name: &str) -> Option<RangeStart> {
    let mut segments = name.rsplit('/');
    let digits = segments.next()?.strip_suffix(".json")?;
    let offset = (digits.len() == 20)
        .then(|| digits.parse().ok())
        .flatten()?;
    let generation = match segments.next().and_then(|s| s.strip_prefix('g')) {
        Some(g) => g.parse().ok()?,
        None => 0,
    };
    Some(RangeStart { generation, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_dirs_are_hive_style_in_utc() {
        // 2026-11-22T04:05:06Z
        let t = 1_795_320_306_000_000;
        assert_eq!(
            partition_dir(None, "page_view", t, Granularity::Hour),
            "event_type=page_view/dt=2026-11-22/hour=04"
        );
        assert_eq!(
            partition_dir(None, "page_view", t, Granularity::Day),
            "event_type=page_view/dt=2026-11-22"
        );
        assert_eq!(
            partition_dir(Some("acme"), "page_view", t, Granularity::Day),
            format!(
                "tenant=acme/{}",
                partition_dir(None, "page_view", t, Granularity::Day)
            )
        );
    }

    #[test]
    fn partition_values_cannot_escape_their_directory() {
        assert_eq!(escape_partition_value("a/b=c d"), "a%2Fb%3Dc%20d");
        assert_eq!(escape_partition_value(""), "__HIVE_DEFAULT_PARTITION__");
        assert_eq!(escape_partition_value("ok.name-1_x"), "ok.name-1_x");
    }

    #[test]
    fn names_sort_in_offset_order_and_round_trip() {
        let at = |offset| RangeStart {
            generation: 0,
            offset,
        };
        let a = progress_marker("t", 3, at(99));
        let b = progress_marker("t", 3, at(100));
        assert!(a < b);
        assert_eq!(marker_start(&b), Some(at(100)));
        assert_eq!(marker_start("x/123.json"), None);
        assert_eq!(
            file_name("clickstream-a-log", 2, at(7), "parquet"),
            "clickstream-a-log+2+00000000000000000007.parquet"
        );
    }

    #[test]
    fn later_generations_never_reuse_a_name() {
        let first = RangeStart {
            generation: 0,
            offset: 0,
        };
        let second = RangeStart {
            generation: 2,
            offset: 0,
        };
        assert_eq!(
            progress_marker("t", 3, second),
            "_weir/progress/t/3/g2/00000000000000000000.json"
        );
        assert_eq!(marker_start(&progress_marker("t", 3, second)), Some(second));
        assert_eq!(marker_start(&progress_marker("t", 3, first)), Some(first));
        assert_eq!(
            marker_start("_weir/progress/t/3/gx/00000000000000000000.json"),
            None
        );
        assert_ne!(
            file_name("t", 3, first, "parquet"),
            file_name("t", 3, second, "parquet")
        );
        assert_eq!(
            file_name("t", 3, second, "jsonl"),
            "t+3+g2+00000000000000000000.jsonl"
        );
        assert_eq!(join("/p/q/", "x"), "p/q/x");
        assert_eq!(join("", "x"), "x");
        assert_eq!(dead_letter_dir("_dead_letter", "t"), "_dead_letter/topic=t");
    }
}
