//! One flush: a range of one partition's records through encode → claim → upload.
//! The order of the steps is the exactly-once argument of the module docs of
//! [`crate::sink`]; the caller commits the Kafka offset afterwards.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::buffer::{FlushReason, SinkRecord};
use super::encode::{EncodedRange, Encoder};
use super::failpoint;
use super::layout::RangeStart;
use super::metrics::SinkMetrics;
use super::progress::{self, Claim, ProgressMarker, RecordFingerprint, SourcePosition};
use super::upload::Storage;
use crate::record;

/// Uploads of one flush running at once.
const UPLOAD_CONCURRENCY: usize = 8;

/// A range to write.
#[derive(Debug)]
pub struct FlushJob {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// The partition's log generation.
    pub generation: u32,
    /// First offset of the range.
    pub start: i64,
    /// Last offset of the range.
    pub end: i64,
    /// The record at `end`, when it was consumed (not compacted away).
    pub last: Option<RecordFingerprint>,
    /// The log's own position of the record before `start`, when the log has one.
    pub after: Option<SourcePosition>,
    /// The range's records, in offset order.
    pub records: Vec<SinkRecord>,
    /// Set when the range's marker already exists (a redo after a crash, or a retry
    /// after the marker was created): write its files without a new marker.
    pub marker: Option<ProgressMarker>,
    /// Why it was flushed.
    pub reason: FlushReason,
    /// Bytes it counts against the memory budget.
    pub bytes: usize,
}

/// Why a flush did not finish.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// Another writer owns this range: the partition was reassigned.
    #[error(
        "another sink fixed the range starting at offset {start} first; this sink takes the partition again from its progress markers"
    )]
    Fenced {
        /// The contested start.
        start: i64,
    },
    /// A step failed; the same range is retried.
    #[error("{stage}: {message}")]
    Failed {
        /// `encode`, `claim`, `upload` or `dead_letter`.
        stage: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl FlushError {
    fn at(stage: &'static str) -> impl Fn(String) -> Self {
        move |message| Self::Failed { stage, message }
    }

    /// The metric label of the failed step.
    pub fn stage(&self) -> &'static str {
        match self {
            Self::Fenced { .. } => "fenced",
            Self::Failed { stage, .. } => stage,
        }
    }
}

/// What a finished flush wrote.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Records in data files.
    pub records: usize,
    /// Dead-lettered records.
    pub dead_letters: usize,
}

/// What a flush needs besides its job.
#[derive(Clone)]
pub struct FlushContext {
    /// The store.
    pub storage: Storage,
    /// The encoder.
    pub encoder: Encoder,
    /// Publishes dead letters when `deadLetter.topic` is set.
    pub dead_letter_topic: Option<(FutureProducer, String, Duration)>,
    /// Metrics.
    pub metrics: Arc<SinkMetrics>,
}

impl FlushContext {
    /// Runs the job: encode, claim (or keep) the range's marker, upload, dead letters,
    /// marker update. On `Err(Failed)` the job's marker field says whether the marker
    /// was created, so a retry writes exactly the same range.
    pub async fn run(&self, job: &mut FlushJob) -> Result<Flushed, FlushError> {
        let encoded = self
            .encode(job)
            .instrument(
                tracing::info_span!(target: weir_runtime::telemetry::TRACE_TARGET, "encode"),
            )
            .await?;
        failpoint::hit("after_encode");
        let (marker, rewrite_marker) = self
            .claim(job, &encoded)
            .instrument(tracing::info_span!(target: weir_runtime::telemetry::TRACE_TARGET, "claim"))
            .await?;
        self.upload(&encoded)
            .instrument(
                tracing::info_span!(target: weir_runtime::telemetry::TRACE_TARGET, "upload"),
            )
            .await?;
        failpoint::hit("after_uploads");
        if let Some((producer, topic, timeout)) = &self.dead_letter_topic {
            publish_dead_letters(producer, topic, *timeout, job, &encoded).await?;
        }
        if rewrite_marker {
            progress::rewrite(&self.storage, &marker)
                .await
                .map_err(|e| FlushError::at("claim")(e.to_string()))?;
        }
        Ok(self.count(job, &encoded))
    }

    /// Encodes the job's records on the blocking pool (the records come back to the job).
    async fn encode(&self, job: &mut FlushJob) -> Result<EncodedRange, FlushError> {
        let encoder = self.encoder.clone();
        let records = std::mem::take(&mut job.records);
        let (topic, partition) = (job.topic.clone(), job.partition);
        let start = RangeStart {
            generation: job.generation,
            offset: job.start,
        };
        let (records, encoded) = tokio::task::spawn_blocking(move || {
            let encoded = encoder.encode(&topic, partition, start, &records);
            (records, encoded)
        })
        .await
        .map_err(|e| FlushError::at("encode")(e.to_string()))?;
        job.records = records;
        encoded.map_err(|e| FlushError::at("encode")(e.to_string()))
    }

    /// Fixes the range with a new marker (create-only: a marker already there and
    /// different means another sink owns the partition), or, for a redo or a retry,
    /// keeps the existing one after deleting files the range no longer produces.
    /// Returns the marker and whether it must be rewritten after the uploads.
    async fn claim(
        &self,
        job: &mut FlushJob,
        encoded: &EncodedRange,
    ) -> Result<(ProgressMarker, bool), FlushError> {
        let files: Vec<String> = encoded.files.iter().map(|f| f.path.clone()).collect();
        let marker = ProgressMarker {
            topic: job.topic.to_string(),
            partition: job.partition,
            generation: job.generation,
            start: job.start,
            end: job.end,
            records: job.records.len(),
            files: files.clone(),
            last: job.last.clone(),
            after: job.after.clone(),
        };
        let rewrite_marker = match &job.marker {
            None => {
                match progress::claim(&self.storage, &marker)
                    .await
                    .map_err(|e| FlushError::at("claim")(e.to_string()))?
                {
                    Claim::Ours => {
                        failpoint::hit("after_claim");
                        job.marker = Some(marker.clone());
                    }
                    Claim::Taken(_) => return Err(FlushError::Fenced { start: job.start }),
                }
                false
            }
            Some(existing) => {
                // A redo: files of the range that the current settings no longer
                // produce are removed before the marker is updated to the new list.
                let keep: HashSet<&String> = files.iter().collect();
                for stale in existing.files.iter().filter(|f| !keep.contains(f)) {
                    let path = self.storage.path(stale);
                    match self.storage.store.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => {
                            return Err(FlushError::at("upload")(format!("delete {path}: {e}")));
                        }
                    }
                }
                existing.files != files || existing.end != job.end || existing.last != job.last
            }
        };
        Ok((marker, rewrite_marker))
    }

    /// Uploads the range's files, a few at a time.
    async fn upload(&self, encoded: &EncodedRange) -> Result<(), FlushError> {
        let mut uploads = Vec::with_capacity(encoded.files.len());
        for file in &encoded.files {
            let (storage, path, bytes) =
                (self.storage.clone(), file.path.clone(), file.bytes.clone());
            uploads.push(async move {
                let uploaded = storage.upload(&path, bytes).await;
                failpoint::hit("after_file_upload");
                uploaded
            });
        }
        let results: Vec<Result<(), _>> = futures_util::stream::iter(uploads)
            .buffered(UPLOAD_CONCURRENCY)
            .collect()
            .await;
        for (file, result) in encoded.files.iter().zip(results) {
            result.map_err(|e| FlushError::at("upload")(e.to_string()))?;
            let kind = if file.dead_letter {
                "dead_letter"
            } else {
                "data"
            };
            self.metrics.files_written.with_label_values(&[kind]).inc();
            self.metrics
                .bytes_written
                .with_label_values(&[kind])
                .inc_by(file.bytes.len() as u64);
        }
        Ok(())
    }

    /// Counts what the range wrote and logs its dead letters.
    fn count(&self, job: &FlushJob, encoded: &EncodedRange) -> Flushed {
        let topic_label = self.metrics.topics.get(&job.topic).to_string();
        for dead in &encoded.dead_letters {
            let event_type = &job.records[dead.index].event_type;
            self.metrics
                .dead_letters
                .with_label_values(&[&topic_label, self.metrics.event_types.get(event_type)])
                .inc();
            tracing::warn!(
                topic = %job.topic,
                partition = job.partition,
                offset = job.records[dead.index].offset,
                reason = %dead.reason,
                "dead-lettered a record"
            );
        }
        let written = job.records.len() - encoded.dead_letters.len();
        self.metrics
            .records_written
            .with_label_values(&[&topic_label])
            .inc_by(written as u64);
        Flushed {
            records: written,
            dead_letters: encoded.dead_letters.len(),
        }
    }
}

async fn publish_dead_letters(
    producer: &FutureProducer,
    topic: &str,
    timeout: Duration,
    job: &FlushJob,
    encoded: &EncodedRange,
) -> Result<(), FlushError> {
    for dead in &encoded.dead_letters {
        let r = &job.records[dead.index];
        let source = format!("{}/{}/{}", job.topic, job.partition, r.offset);
        let headers = record::sink_dead_letter_headers(&r.event_type, &dead.reason, &source);
        let mut message = FutureRecord::to(topic)
            .payload(r.payload.as_slice())
            .headers(headers);
        if let Some(key) = &r.key {
            message = message.key(key.as_slice());
        }
        producer
            .send(message, timeout)
            .await
            .map_err(|(e, _)| FlushError::at("dead_letter")(format!("publish to {topic}: {e}")))?;
    }
    Ok(())
}
