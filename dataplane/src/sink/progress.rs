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

use super::layout;
use super::upload::{Storage, StoreError};

/// A flushed range and its files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressMarker {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset of the range.
    pub start: i64,
    /// Last offset of the range (inclusive).
    pub end: i64,
    /// Records in the range.
    pub records: usize,
    /// The range's files, relative to the storage prefix.
    pub files: Vec<String>,
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
#[derive(Debug, PartialEq)]
pub struct Recovery {
    /// The next offset to consume; `None` when no range was ever flushed (Kafka's
    /// committed offset or `auto.offset.reset` decides).
    pub resume: Option<i64>,
    /// The last range, when its files are not all there: it must be written again
    /// before anything else (consume from its start, flush exactly `start..=end`).
    pub redo: Option<ProgressMarker>,
}

/// Creates the marker, unless one exists at its start.
pub async fn claim(storage: &Storage, marker: &ProgressMarker) -> Result<Claim, StoreError> {
    let path = storage.path(&layout::progress_marker(
        &marker.topic,
        marker.partition,
        marker.start,
    ));
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
            let after = storage.path(&layout::progress_marker(topic, partition, c - 1));
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
        return Ok(Recovery {
            resume: committed,
            redo: None,
        });
    };
    let marker = read(storage, location).await?;
    for file in &marker.files {
        let path = storage.path(file);
        match storage.store.head(&path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {
                return Ok(Recovery {
                    resume: Some(marker.start),
                    redo: Some(marker),
                });
            }
            Err(e) => return Err(StoreError::request("check", &path, e)),
        }
    }
    Ok(Recovery {
        resume: Some(marker.end + 1),
        redo: None,
    })
}
