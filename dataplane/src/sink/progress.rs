//! Progress markers: the sink's record of which offsets are in files, kept in the
//! object store next to the files.
//!
//! A marker `_weir/progress/<topic>/<partition>/<start>.json` says "offsets
//! `start..=end` of this partition are in exactly these files". It is created with a
//! conditional write (`If-None-Match: *`, create-only on a local directory) *before*
//! the files are uploaded, so a marker fixes a range before anything of it is visible.
//! See the sink's module docs for the whole argument.

use futures_util::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};

use super::layout::{self, RangeStart};
use super::upload::{Storage, StoreError};

/// A flushed range and its files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressMarker {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The partition's log generation (see [`layout`]); 0 is left out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
    /// First offset of the range.
    pub start: i64,
    /// Last offset of the range (inclusive).
    pub end: i64,
    /// Records in the range.
    pub records: usize,
    /// The range's files, relative to the storage prefix.
    pub files: Vec<String>,
    /// The record at `end`, so that a resumed sink can tell whether the log still holds
    /// it or was replaced by another with the same offsets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<RecordFingerprint>,
    /// The log's own position of the record just before `start` (the previous range's
    /// last), for logs that cannot seek by offset (see [`SourcePosition`]); absent for
    /// Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<SourcePosition>,
}

/// A record's position in its log's own terms, for logs whose positions are not the
/// sink's dense `i64` offsets: a Kinesis sequence number (a decimal string of up to 129
/// digits). Such a source numbers a shard's records densely itself and finds them
/// again by these positions, which markers keep; Kafka has none.
pub type SourcePosition = String;

fn is_zero(generation: &u32) -> bool {
    *generation == 0
}

impl ProgressMarker {
    /// Where the range starts.
    pub fn range_start(&self) -> RangeStart {
        RangeStart {
            generation: self.generation,
            offset: self.start,
        }
    }
}

/// What tells one Kafka record from another at the same offset: its timestamp and a
/// checksum of its key and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordFingerprint {
    /// Kafka timestamp, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
    /// CRC-32 of the key's length, the key and the value.
    pub crc32: u32,
    /// The record's position in its log's own terms, when the log has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<SourcePosition>,
}

impl RecordFingerprint {
    /// The fingerprint of a record's parts.
    pub fn of(timestamp_ms: Option<i64>, key: Option<&[u8]>, value: Option<&[u8]>) -> Self {
        let mut hasher = crc32fast::Hasher::new();
        let key = key.unwrap_or_default();
        hasher.update(&(key.len() as u64).to_le_bytes());
        hasher.update(key);
        hasher.update(value.unwrap_or_default());
        Self {
            timestamp_ms,
            crc32: hasher.finalize(),
            position: None,
        }
    }

    /// The same fingerprint, with the record's position in its log's own terms.
    pub fn at(self, position: Option<SourcePosition>) -> Self {
        Self { position, ..self }
    }
}

/// How a partition's log compares with what the markers say was written of it.
#[derive(Debug, PartialEq, Eq)]
pub enum LogCheck {
    /// The log holds everything after what was written.
    Consistent,
    /// The log ends before the newest written offset: it is not the log the markers
    /// describe (deleted and re-created, another cluster, an in-memory Kafka restarted).
    Regressed {
        /// The newest offset in a file.
        written_end: i64,
        /// The log's end offset (the next offset it would give).
        log_end: i64,
    },
    /// Records between the resume point and the log's start were deleted (retention)
    /// before they were written.
    Expired {
        /// First offset lost.
        from: i64,
        /// The log's start offset: the first offset still there.
        log_start: i64,
    },
}

/// The outcome of creating a marker.
#[derive(Debug, PartialEq)]
pub enum Claim {
    /// The marker is new, or is the same one written earlier (a retried request).
    Ours,
    /// Another writer fixed a different range at this start first.
    Taken(ProgressMarker),
}

/// Where a partition resumes.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Recovery {
    /// The next offset to consume; `None` when no range was ever flushed (Kafka's
    /// committed offset or `auto.offset.reset` decides).
    pub resume: Option<i64>,
    /// The last range, when its files are not all there: it must be written again
    /// before anything else (consume from its start, flush exactly `start..=end`).
    pub redo: Option<ProgressMarker>,
    /// The newest marker's generation; 0 without markers.
    pub generation: u32,
    /// The newest marker's last offset and, when it recorded one, that record's
    /// fingerprint.
    pub written: Option<(i64, Option<RecordFingerprint>)>,
}

impl Recovery {
    /// The recovery the newest marker gives, with whether all its files exist; without
    /// a marker, Kafka's committed offset decides. A complete marker resumes after its
    /// range; an incomplete one is redone (`start..=end` again).
    pub fn from_newest(newest: Option<(ProgressMarker, bool)>, committed: Option<i64>) -> Self {
        let Some((marker, complete)) = newest else {
            return Self {
                resume: committed,
                ..Self::default()
            };
        };
        let mut recovery = Self {
            resume: Some(marker.end + 1),
            redo: None,
            generation: marker.generation,
            written: Some((marker.end, marker.last.clone())),
        };
        if !complete {
            recovery.resume = Some(marker.start);
            recovery.redo = Some(marker);
        }
        recovery
    }

    /// Compares the partition's log (its start and end offsets) with what was written.
    pub fn check_log(&self, log_start: i64, log_end: i64) -> LogCheck {
        if let Some((written_end, _)) = self.written
            && log_end <= written_end
        {
            return LogCheck::Regressed {
                written_end,
                log_end,
            };
        }
        match self.resume {
            Some(from) if from < log_start => LogCheck::Expired { from, log_start },
            _ => LogCheck::Consistent,
        }
    }
}

/// Creates the marker, unless one exists at its start.
pub async fn claim(storage: &Storage, marker: &ProgressMarker) -> Result<Claim, StoreError> {
    let path = marker_path(storage, marker);
    let body = serde_json::to_vec_pretty(marker).expect("a marker serializes");
    let options = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match storage.store.put_opts(&path, body.into(), options).await {
        Ok(_) => Ok(Claim::Ours),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => {
            let existing = read(storage, &path).await?;
            if existing == *marker {
                Ok(Claim::Ours)
            } else {
                Ok(Claim::Taken(existing))
            }
        }
        Err(e) => Err(StoreError::request("create progress marker", &path, e)),
    }
}

fn marker_path(storage: &Storage, marker: &ProgressMarker) -> object_store::path::Path {
    storage.path(&layout::progress_marker(
        &marker.topic,
        marker.partition,
        marker.range_start(),
    ))
}

/// Replaces a marker whose range is being redone with the files the redo wrote (the
/// range's files may differ when the settings changed since it was first written).
pub async fn rewrite(storage: &Storage, marker: &ProgressMarker) -> Result<(), StoreError> {
    let path = marker_path(storage, marker);
    let body = serde_json::to_vec_pretty(marker).expect("a marker serializes");
    storage
        .store
        .put(&path, body.into())
        .await
        .map(|_| ())
        .map_err(|e| StoreError::request("update progress marker", &path, e))
}

async fn read(
    storage: &Storage,
    path: &object_store::path::Path,
) -> Result<ProgressMarker, StoreError> {
    let bytes = storage
        .store
        .get(path)
        .await
        .map_err(|e| StoreError::request("read progress marker", path, e))?
        .bytes()
        .await
        .map_err(|e| StoreError::request("read progress marker", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        StoreError::Config(format!(
            "progress marker {path} is corrupt ({e}); it was not written by this version of Weir"
        ))
    })
}

/// Finds where a partition resumes. `committed` is the group's committed offset, a
/// hint that skips listing markers older than it (an offset is committed only after
/// its range is complete).
pub async fn recover(
    storage: &Storage,
    topic: &str,
    partition: i32,
    committed: Option<i64>,
) -> Result<Recovery, StoreError> {
    let dir = storage.path(&layout::progress_dir(topic, partition));
    let listing = match committed.filter(|c| *c > 0) {
        Some(c) => {
            // Later generations sort after every generation-0 marker, so they are
            // always listed.
            let start = RangeStart {
                generation: 0,
                offset: c - 1,
            };
            let after = storage.path(&layout::progress_marker(topic, partition, start));
            storage.store.list_with_offset(Some(&dir), &after)
        }
        None => storage.store.list(Some(&dir)),
    };
    let metas: Vec<_> = listing
        .try_collect()
        .await
        .map_err(|e| StoreError::request("list progress markers in", &dir, e))?;
    let latest = metas
        .iter()
        .filter_map(|m| Some((layout::marker_start(m.location.as_ref())?, &m.location)))
        .max_by_key(|(start, _)| *start);
    let Some((_, location)) = latest else {
        return Ok(Recovery::from_newest(None, committed));
    };
    let marker = read(storage, location).await?;
    let mut complete = true;
    for file in &marker.files {
        let path = storage.path(file);
        match storage.store.head(&path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {
                complete = false;
                break;
            }
            Err(e) => return Err(StoreError::request("check", &path, e)),
        }
    }
    Ok(Recovery::from_newest(Some((marker, complete)), committed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(end: i64) -> Recovery {
        Recovery {
            resume: Some(end + 1),
            written: Some((end, None)),
            ..Recovery::default()
        }
    }

    #[test]
    fn a_log_that_ends_before_what_was_written_has_regressed() {
        assert_eq!(
            written(999).check_log(0, 10),
            LogCheck::Regressed {
                written_end: 999,
                log_end: 10
            }
        );
        // An empty log after a restart of an in-memory Kafka.
        assert_eq!(
            written(0).check_log(0, 0),
            LogCheck::Regressed {
                written_end: 0,
                log_end: 0
            }
        );
        assert_eq!(written(999).check_log(0, 1000), LogCheck::Consistent);
        assert_eq!(written(999).check_log(500, 5000), LogCheck::Consistent);
    }

    #[test]
    fn records_deleted_before_they_were_written_are_reported() {
        assert_eq!(
            written(999).check_log(1500, 2000),
            LogCheck::Expired {
                from: 1000,
                log_start: 1500
            }
        );
        let fresh = Recovery::default();
        assert_eq!(fresh.check_log(1500, 2000), LogCheck::Consistent);
    }

    #[test]
    fn fingerprints_tell_records_apart() {
        let a = RecordFingerprint::of(Some(1), Some(b"k"), Some(b"v"));
        assert_eq!(a, RecordFingerprint::of(Some(1), Some(b"k"), Some(b"v")));
        assert_ne!(a, RecordFingerprint::of(Some(2), Some(b"k"), Some(b"v")));
        assert_ne!(a, RecordFingerprint::of(Some(1), Some(b"kv"), None));
        assert_ne!(a, RecordFingerprint::of(Some(1), None, Some(b"kv")));
    }

    #[test]
    fn markers_of_generation_zero_read_as_before() {
        let old = r#"{"topic":"t","partition":1,"start":0,"end":9,"records":10,"files":[]}"#;
        let marker: ProgressMarker = serde_json::from_str(old).expect("parses");
        assert_eq!(marker.generation, 0);
        assert_eq!(marker.last, None);
        let text = serde_json::to_string(&marker).expect("serializes");
        assert!(
            !text.contains("generation") && !text.contains("last"),
            "{text}"
        );
    }
}
