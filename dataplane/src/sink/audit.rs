//! `weir sink-audit`: reads every file under a sink's prefix back and checks the
//! exactly-once promise — each (topic, partition, offset) of a log generation in exactly
//! one file, no file outside a progress marker, no marker missing files.
//!
//! Offsets missing inside a partition's range are reported but are not errors: records
//! skipped by `source.eventTypes`, compacted away or transaction markers leave them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use futures_util::TryStreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::layout;
use super::progress::ProgressMarker;
use super::upload::{Storage, StoreError};

/// A record's place: topic, partition, log generation, offset.
pub type RecordPlace = (String, i32, u32, i64);

/// What an audit found.
#[derive(Debug, Default)]
pub struct AuditReport {
    /// Files read.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
    /// Records per (topic, partition), dead letters included.
    pub records: BTreeMap<(String, i32), u64>,
    /// (topic, partition, generation, offset) found in more than one place, with the
    /// files.
    pub duplicates: Vec<(RecordPlace, Vec<String>)>,
    /// Offset ranges missing inside a partition generation's span (`from..=to`).
    pub gaps: Vec<((String, i32, u32), i64, i64)>,
    /// Files that no progress marker lists.
    pub orphans: Vec<String>,
    /// Files a marker lists that do not exist.
    pub missing: Vec<String>,
    /// Files that could not be read, with why.
    pub unreadable: Vec<(String, String)>,
}

impl AuditReport {
    /// True when the exactly-once promise holds.
    pub fn exactly_once(&self) -> bool {
        self.duplicates.is_empty()
            && self.orphans.is_empty()
            && self.missing.is_empty()
            && self.unreadable.is_empty()
    }

    /// Every (topic, partition, offset), for tests that compare against what was sent.
    pub fn total(&self) -> u64 {
        self.records.values().sum()
    }
}

/// Reads everything under the storage prefix. One pass over the listing that checks
/// every marker against its files and every offset against its neighbours; kept whole
/// so the checks read in the order the report prints them.
pub async fn audit(storage: &Storage) -> Result<AuditReport, StoreError> {
    let root = storage.path("");
    let objects: Vec<_> = storage
        .store
        .list(Some(&root))
        .try_collect()
        .await
        .map_err(|e| StoreError::request("list", &root, e))?;
    let relative = |location: &str| {
        location
            .strip_prefix(&storage.prefix)
            .unwrap_or(location)
            .trim_start_matches('/')
            .to_string()
    };
    let mut report = AuditReport::default();
    // Each listed file and its marker's generation.
    let mut listed = HashMap::new();
    let mut data_files = Vec::new();
    for meta in &objects {
        let name = relative(meta.location.as_ref());
        if name.starts_with(layout::PROGRESS_DIR) {
            if layout::marker_start(&name).is_none() {
                // Not a marker: the start-up write probe.
                continue;
            }
            let bytes = get(storage, &meta.location).await?;
            match serde_json::from_slice::<ProgressMarker>(&bytes) {
                Ok(marker) => {
                    listed.extend(marker.files.into_iter().map(|f| (f, marker.generation)))
                }
                Err(e) => report.unreadable.push((name, e.to_string())),
            }
        } else {
            data_files.push((name, meta.location.clone()));
        }
    }
    let existing: HashSet<&String> = data_files.iter().map(|(n, _)| n).collect();
    report.missing = listed
        .keys()
        .filter(|f| !existing.contains(f))
        .cloned()
        .collect();
    report.missing.sort();
    let mut seen: HashMap<RecordPlace, Vec<String>> = HashMap::new();
    for (name, location) in &data_files {
        let generation = listed.get(name).copied().unwrap_or_else(|| {
            report.orphans.push(name.clone());
            0
        });
        let bytes = get(storage, location).await?;
        report.bytes += bytes.len() as u64;
        match read_offsets(name, bytes) {
            Ok(offsets) => {
                report.files += 1;
                for (topic, partition, offset) in offsets {
                    seen.entry((topic, partition, generation, offset))
                        .or_default()
                        .push(name.clone());
                }
            }
            Err(e) => report.unreadable.push((name.clone(), e)),
        }
    }
    let mut by_generation: BTreeMap<(String, i32, u32), Vec<i64>> = BTreeMap::new();
    for ((topic, partition, generation, offset), files) in seen {
        if files.len() > 1 {
            report
                .duplicates
                .push(((topic.clone(), partition, generation, offset), files));
        }
        by_generation
            .entry((topic, partition, generation))
            .or_default()
            .push(offset);
    }
    report.duplicates.sort();
    for ((topic, partition, generation), mut offsets) in by_generation {
        offsets.sort_unstable();
        for pair in offsets.windows(2) {
            if pair[1] > pair[0] + 1 {
                report.gaps.push((
                    (topic.clone(), partition, generation),
                    pair[0] + 1,
                    pair[1] - 1,
                ));
            }
        }
        *report.records.entry((topic, partition)).or_default() += offsets.len() as u64;
    }
    Ok(report)
}

async fn get(
    storage: &Storage,
    location: &object_store::path::Path,
) -> Result<bytes::Bytes, StoreError> {
    let result = storage
        .store
        .get(location)
        .await
        .map_err(|e| StoreError::request("read", location, e))?;
    result
        .bytes()
        .await
        .map_err(|e| StoreError::request("read", location, e))
}

/// The (topic, partition, offset) of every record in a file.
fn read_offsets(name: &str, bytes: bytes::Bytes) -> Result<Vec<(String, i32, i64)>, String> {
    if name.ends_with(".parquet") {
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
        let mask = ProjectionMask::columns(
            builder.parquet_schema(),
            ["_topic", "_partition", "_offset"],
        );
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| e.to_string())?;
            let column = |n: &str| {
                batch
                    .column_by_name(n)
                    .cloned()
                    .ok_or(format!("no {n} column"))
            };
            let (topics, partitions, offsets) =
                (column("_topic")?, column("_partition")?, column("_offset")?);
            let topics = topics.as_string::<i32>();
            let partitions = partitions.as_primitive::<Int32Type>();
            let offsets = offsets.as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                out.push((
                    topics.value(i).to_string(),
                    partitions.value(i),
                    offsets.value(i),
                ));
            }
        }
        return Ok(out);
    }
    let text = if name.ends_with(".gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes.as_ref())
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        text
    } else if name.ends_with(".jsonl") {
        String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())?
    } else {
        return Err("not a file the sink writes".into());
    };
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            Ok((
                value["_topic"].as_str().ok_or("no _topic")?.to_string(),
                value["_partition"].as_i64().ok_or("no _partition")? as i32,
                value["_offset"].as_i64().ok_or("no _offset")?,
            ))
        })
        .collect()
}
