//! One partition's state, as pure code: records in, flush jobs out, outcomes of flushes
//! back in. No Kafka, no store, no clock of its own (the caller passes `now`), so every
//! interleaving can be tested (see the property tests at the end of this file).
//!
//! The invariants it keeps (the module docs of [`crate::sink`] give the argument):
//! - ranges are taken in offset order, each starting where the previous one ended, and
//!   at most one is in flight: [`PartitionState::take`] gives nothing while a flush is
//!   running or waits for its retry;
//! - a failed flush is retried with exactly the same job (range, records, marker);
//! - a range whose marker exists but whose files are incomplete (`redo`) is written
//!   again as exactly `start..=end` before anything else;
//! - `next_start` moves past a range only when its flush finished, so the offset the
//!   caller commits (`next_start`) never passes what is in storage;
//! - a record below the next expected offset, or a resume point whose record is not
//!   the one written, is a regression: reported to the caller, never silently dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_crds::sink::FlushSpec;

use super::buffer::{FlushReason, PartitionBuffer, SinkRecord};
use super::flush::FlushJob;
use super::progress::{ProgressMarker, RecordFingerprint, SourcePosition};

/// First and longest wait before retrying a failed flush.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// Wait before reading a fenced partition's markers again after that failed.
const RECOVERY_RETRY: Duration = Duration::from_secs(1);

/// Where the consumer starts reading a newly assigned partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// Kafka's committed offset, or `auto.offset.reset` without one.
    Committed,
    /// This offset.
    At(i64),
    /// The log's first offset (a new generation).
    Beginning,
    /// The log's end (a stopped partition: nothing of it is read).
    End,
}

/// Where a source that seeks by its own positions (a Kinesis sequence number) rather
/// than by offset starts reading: the same record as [`Position::At`] names. A source
/// that seeks by offset (Kafka) ignores it; a source that seeks by position numbers the
/// records it reads densely from that offset on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// The record at this position comes first.
    At(SourcePosition),
    /// The record after this position comes first.
    After(SourcePosition),
}

/// A newly assigned partition: its state, where to read it from, and what was found.
#[derive(Debug)]
pub struct Started {
    /// The partition's state.
    pub state: PartitionState,
    /// Where to read from.
    pub position: Position,
    /// The same place in the log's own positions, when the markers know it.
    pub anchor: Option<Anchor>,
    /// What assignment found.
    pub found: Found,
}

/// What became of a partition whose log went back.
#[derive(Debug, PartialEq, Eq)]
pub enum Regression {
    /// Consume it again from the log's start, as a new generation.
    Restart,
    /// Nothing more of it is written.
    Stop,
}

/// What assignment found besides the position.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// The log continues what was written.
    Consistent,
    /// The log ends below what was written: handled as the policy says.
    Regressed(Regression),
    /// Records `from..log_start` were deleted by retention before they were written.
    Expired {
        /// First lost offset.
        from: i64,
        /// The log's first offset.
        log_start: i64,
    },
}

/// What one consumed record did.
#[derive(Debug)]
pub enum Consumed {
    /// Not for writing now: the partition is fenced or stopped, or the record is past
    /// a batch run's end.
    Ignored,
    /// The record at the resume point is the one written: the log is the same.
    Verified,
    /// The log went back; the reason names the partition's offsets.
    WentBack(String),
    /// Buffered (or skipped by `source.eventTypes`, still part of the range), with the
    /// range it completed when one became due (boxed: this runs per record, a job once
    /// per range).
    Buffered(Option<Box<FlushJob>>),
}

/// Counts of consumed records, published to metrics by the caller now and then.
#[derive(Debug, Default)]
pub struct ConsumedCounts {
    /// Records.
    pub records: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Records skipped by `source.eventTypes`.
    pub skipped: u64,
}

/// A failed flush waiting for its retry.
#[derive(Debug)]
pub struct FailedFlush {
    /// The job, retried unchanged.
    pub job: FlushJob,
    /// When it is retried.
    pub retry_at: Instant,
    /// Attempts so far.
    pub attempts: u32,
}

/// A topic and partition.
pub type Tp = (Arc<str>, i32);

/// One assigned partition.
#[derive(Debug)]
pub struct PartitionState {
    /// The topic and partition, named in its jobs and logs.
    tp: Tp,
    /// Tells this assignment from a later one: a flush started before a revoke must not
    /// touch the state of the next assignment.
    pub epoch: u64,
    /// The log generation ranges are written in.
    pub generation: u32,
    /// Start of the next range; unknown until the first record when nothing was ever
    /// committed or flushed. The offset to commit once nothing is in flight.
    pub next_start: Option<i64>,
    /// The next offset accepted; anything below is already in a range.
    expected: i64,
    /// The last offset consumed into the current buffer's range.
    last_seen: Option<i64>,
    /// The fingerprint of the record at `last_seen` when it was skipped by
    /// `source.eventTypes`; a kept one is the buffer's last record, fingerprinted only
    /// when its range is taken, so the hot path checksums nothing.
    last_fingerprint: Option<RecordFingerprint>,
    /// The log's own position of the record just before `next_start`, when known: the
    /// next range's marker keeps it, so a redo can be found again by a source that
    /// seeks by position.
    after_next: Option<SourcePosition>,
    /// The newest written record, consumed again first to check that the log still
    /// holds it.
    verify: Option<(i64, RecordFingerprint)>,
    /// The log went back and `source.onOffsetRegression` is `fail`: why. Nothing more
    /// of the partition is written until an operator decides.
    pub regressed: Option<String>,
    buffer: PartitionBuffer,
    /// A range whose marker exists but whose files are incomplete: it is written again
    /// (exactly `start..=end`) before anything else.
    redo: Option<ProgressMarker>,
    flushing: bool,
    in_flight_bytes: usize,
    /// A failed flush waiting for its retry.
    pub failed: Option<FailedFlush>,
    /// Another writer fixed this partition's next range first (a sink that lost the
    /// partition but was still flushing): nothing is consumed until the partition is
    /// recovered again from its markers, which replaces this state.
    fenced: bool,
    /// When a fenced partition's markers are read again; `None` while that runs (or
    /// when not fenced).
    recover_at: Option<Instant>,
    /// Batch mode: the end offset seen at assignment.
    stop_at: Option<i64>,
    /// Consumed since the metrics were last updated.
    pub counts: ConsumedCounts,
}

impl PartitionState {
    /// Whether the partition holds nothing of its log (no buffer, nothing in flight or
    /// failed): a regression can then be handled in place.
    pub fn is_idle(&self) -> bool {
        self.buffer.is_empty() && !self.flushing && self.failed.is_none()
    }

    /// Takes one consumed record. `fingerprint` checksums it (called only when needed);
    /// `record` builds it, `None` when `source.eventTypes` skips it.
    pub fn consume(
        &mut self,
        offset: i64,
        fingerprint: impl Fn() -> RecordFingerprint,
        record: impl FnOnce() -> Option<SinkRecord>,
        now: Instant,
        flush: &FlushSpec,
    ) -> Consumed {
        if self.fenced || self.regressed.is_some() || self.stop_at.is_some_and(|end| offset >= end)
        {
            return Consumed::Ignored;
        }
        let went_back = match self.verify.take() {
            Some((at, written)) if offset == at && fingerprint() == written => {
                // The newest written record is still there: the log is the one written.
                self.expected = at + 1;
                return Consumed::Verified;
            }
            Some((at, _)) if offset == at => Some(format!(
                "the record at offset {offset} of {}/{} is not the one written there",
                self.tp.0, self.tp.1
            )),
            // Offsets above: the written record was deleted (compaction, retention), so
            // there is nothing to compare; below: caught next.
            _ => (offset < self.expected).then(|| {
                format!(
                    "{}/{} gave offset {offset} after {}",
                    self.tp.0,
                    self.tp.1,
                    self.expected - 1
                )
            }),
        };
        if let Some(reason) = went_back {
            return Consumed::WentBack(reason);
        }
        self.expected = offset + 1;
        self.next_start.get_or_insert(offset);
        let record = record();
        if record.is_none() {
            self.counts.skipped += 1;
        }
        let mut job = None;
        if let Some(end) = self.redo.as_ref().map(|m| m.end)
            && offset > end
        {
            // The redone range's last record is gone (compaction or retention): write
            // the range with what it still has; this record starts the next one.
            job = self.take(FlushReason::Redo);
        }
        self.last_seen = Some(offset);
        self.last_fingerprint = record.is_none().then(fingerprint);
        if let Some(record) = record {
            self.buffer.push(record, now);
        }
        match self.redo.as_ref().map(|m| m.end) {
            Some(end) if offset == end => job = self.take(FlushReason::Redo),
            Some(_) => {}
            None if job.is_none() => job = self.due(now, flush).and_then(|r| self.take(r)),
            None => {}
        }
        Consumed::Buffered(job.map(Box::new))
    }

    /// Why the buffer should be flushed now, if it should: a limit of `flush`, or a
    /// batch run that consumed up to its end.
    pub fn due(&self, now: Instant, flush: &FlushSpec) -> Option<FlushReason> {
        let at_end = self.stop_at.is_some_and(|end| self.expected >= end);
        self.buffer
            .due(flush, now)
            .or((at_end && !self.buffer.is_empty()).then_some(FlushReason::Drain))
    }

    /// Takes the buffer as a flush job, unless a flush is already in flight or waits
    /// for its retry (the buffer then waits for it), the partition is fenced, or a redo
    /// still waits for its last record (`reason` is not `Redo`).
    pub fn take(&mut self, reason: FlushReason) -> Option<FlushJob> {
        if self.flushing || self.failed.is_some() || self.fenced {
            return None;
        }
        let (marker, start, end) = match self.redo.take() {
            Some(marker) if reason == FlushReason::Redo => {
                let (s, e) = (marker.start, marker.end);
                (Some(marker), s, e)
            }
            Some(marker) => {
                self.redo = Some(marker);
                return None;
            }
            None => {
                if self.buffer.is_empty() {
                    return None;
                }
                (None, self.next_start?, self.last_seen?)
            }
        };
        let bytes = self.buffer.bytes();
        let records = self.buffer.take();
        let last = match records.last() {
            _ if self.last_seen != Some(end) => None,
            Some(r) if r.offset == end => Some(r.fingerprint()),
            _ => self.last_fingerprint.clone(),
        };
        let after = match &marker {
            Some(marker) => marker.after.clone(),
            None => self.after_next.clone(),
        };
        self.after_next = last.as_ref().and_then(|f| f.position.clone());
        self.flushing = true;
        self.in_flight_bytes = bytes;
        if marker.is_some() {
            // Whatever follows the redone range belongs to the next one.
            self.last_seen = None;
        }
        Some(FlushJob {
            after,
            topic: self.tp.0.clone(),
            partition: self.tp.1,
            generation: self.generation,
            start,
            end,
            last,
            records,
            marker,
            reason,
            bytes,
        })
    }

    /// A flush of this partition finished: the next range starts after it. Returns the
    /// offset to commit.
    pub fn flushed(&mut self, job: &FlushJob) -> i64 {
        self.flushing = false;
        self.in_flight_bytes = 0;
        self.next_start = Some(job.end + 1);
        job.end + 1
    }

    /// A flush failed: the same job is retried after a backoff that grows with the
    /// attempts. Returns the wait.
    pub fn flush_failed(&mut self, job: FlushJob, attempts_before: u32, now: Instant) -> Duration {
        let backoff = RETRY_BACKOFF
            .0
            .saturating_mul(1 << attempts_before.min(8))
            .min(RETRY_BACKOFF.1);
        self.flushing = false;
        self.in_flight_bytes = job.bytes;
        self.failed = Some(FailedFlush {
            job,
            retry_at: now + backoff,
            attempts: attempts_before + 1,
        });
        backoff
    }

    /// Another writer fixed the range first: the partition drops what it holds and
    /// ignores its records until it is recovered again from the markers (due `now`).
    /// The writer was a sink that lost the partition while flushing, so this one still
    /// owns it and must go on from what that flush wrote, not wait for a rebalance.
    pub fn fenced(&mut self, now: Instant) {
        self.flushing = false;
        self.in_flight_bytes = 0;
        self.fenced = true;
        self.recover_at = Some(now);
        self.buffer.take();
    }

    /// A fenced partition whose markers are due to be read again: returns the start of
    /// the range it was fenced at (a hint that narrows the marker listing); the caller
    /// recovers it, then replaces this state, or reports [`Self::recovery_failed`].
    pub fn take_due_recovery(&mut self, now: Instant) -> Option<Option<i64>> {
        if !self.fenced || self.recover_at.is_none_or(|at| at > now) {
            return None;
        }
        self.recover_at = None;
        Some(self.next_start)
    }

    /// Reading a fenced partition's markers again failed: tried again later.
    pub fn recovery_failed(&mut self, now: Instant) {
        if self.fenced {
            self.recover_at = Some(now + RECOVERY_RETRY);
        }
    }

    /// A failed flush whose retry time has come, taken for its next attempt (the same
    /// job), counted in flight again, with the attempts so far.
    pub fn take_due_retry(&mut self, now: Instant) -> Option<(FlushJob, u32)> {
        if self.failed.as_ref()?.retry_at > now {
            return None;
        }
        let failed = self.failed.take()?;
        self.flushing = true;
        self.in_flight_bytes = failed.job.bytes;
        Some((failed.job, failed.attempts))
    }

    /// Whether another sink fixed one of this partition's ranges first.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Whether a flush of this partition is running.
    pub fn is_flushing(&self) -> bool {
        self.flushing
    }

    /// Buffered bytes plus those of a flush in flight or waiting for its retry.
    pub fn held_bytes(&self) -> usize {
        self.buffer.bytes() + self.in_flight_bytes
    }

    /// Buffered bytes that a memory flush could take now.
    pub fn takeable_bytes(&self) -> Option<usize> {
        (!self.flushing && self.redo.is_none()).then(|| self.buffer.bytes())
    }

    /// Bytes of a flush in flight or waiting for its retry.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// Whether the partition waits for a redo's records: its bytes do not pause
    /// consumption, since the redo can only be flushed once its last record is read.
    pub fn is_redoing(&self) -> bool {
        self.redo.is_some()
    }

    /// Whether a drain still has work here: a flush running or failed, or a buffer it
    /// can flush.
    pub fn is_busy(&self) -> bool {
        self.flushing
            || self.failed.is_some()
            || (!self.buffer.is_empty() && self.redo.is_none() && !self.fenced)
    }

    /// Batch mode: nothing more to write (stopped, or written up to the end offset seen
    /// at assignment). A fenced partition is not done: it goes on once recovered again.
    pub fn batch_done(&self) -> bool {
        !self.fenced
            && (self.regressed.is_some()
                || self.stop_at.is_some_and(|end| {
                    self.expected >= end
                        && self.buffer.is_empty()
                        && !self.flushing
                        && self.failed.is_none()
                        && self.redo.is_none()
                }))
    }
}

mod start;
#[cfg(test)]
mod tests;
