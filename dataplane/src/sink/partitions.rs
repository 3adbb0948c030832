//! The partitions one sink holds: their states, the memory budget across them, and
//! what the run has written. Pure, like [`super::partition`]; the consumer shell holds
//! it behind one lock.
//!
//! Invariant: held bytes (buffered, in flight, waiting for a retry) stay near
//! `flush.memoryBudget`: past it the biggest buffers are taken as jobs, and the shell
//! stops consuming while [`Partitions::pausing_bytes`] is over budget.

use std::collections::HashMap;

use super::buffer::{FlushReason, over_budget};
use super::flush::FlushJob;
use super::partition::{PartitionState, Tp};
use super::progress::Recovery;

/// What a finished run wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// Records written to data files.
    pub records_written: u64,
    /// Records dead-lettered.
    pub dead_letters: u64,
    /// Ranges flushed.
    pub flushes: u64,
}

/// The partitions this sink holds, and what the run has done so far.
#[derive(Debug, Default)]
pub struct Partitions {
    /// The assigned partitions.
    pub map: HashMap<Tp, PartitionState>,
    /// Whether the group ever assigned this sink partitions.
    pub assigned_once: bool,
    next_epoch: u64,
    /// What was written.
    pub report: SinkReport,
    /// Why the sink must stop, when it must.
    pub fatal: Option<String>,
    /// Fenced partitions recovered again, for the consumer loop to install: at most
    /// one per partition, since a fenced partition starts one recovery at a time.
    pub recovered: Vec<Recovered>,
}

/// A fenced partition's markers and log offsets, read again.
#[derive(Debug)]
pub struct Recovered {
    /// The partition.
    pub tp: Tp,
    /// The fenced assignment; the recovery is dropped when the partition was revoked
    /// or assigned anew since.
    pub epoch: u64,
    /// What the markers say now.
    pub recovery: Recovery,
    /// The log's first and end offsets, when they could be read.
    pub watermarks: Option<(i64, i64)>,
    /// The start of the range that was fenced: where to read from when the recovery
    /// names no offset (it always does: a fence means a marker exists).
    pub fenced_at: Option<i64>,
}

impl Partitions {
    /// A new epoch for an assignment.
    pub fn next_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    /// The partition's state, when it is still the assignment of `epoch`.
    pub fn current(&mut self, tp: &Tp, epoch: u64) -> Option<&mut PartitionState> {
        self.map.get_mut(tp).filter(|s| s.epoch == epoch)
    }

    /// Bytes held: buffered, in flight and waiting for a retry.
    pub fn buffered_bytes(&self) -> usize {
        self.map.values().map(PartitionState::held_bytes).sum()
    }

    /// The bytes that pause consumption when over budget. A range being redone is left
    /// out: it can only be flushed once its last record is consumed, and its size is
    /// bounded by the flush that first wrote it.
    pub fn pausing_bytes(&self) -> usize {
        self.map
            .values()
            .filter(|p| !p.is_redoing())
            .map(PartitionState::held_bytes)
            .sum()
    }

    /// Takes the biggest buffers as flush jobs while `budget` is exceeded.
    pub fn over_budget_jobs(&mut self, budget: usize) -> Vec<FlushJob> {
        let total = self.buffered_bytes();
        if total <= budget {
            return Vec::new();
        }
        let sizes: Vec<(Tp, usize)> = self
            .map
            .iter()
            .filter_map(|(tp, s)| Some((tp.clone(), s.takeable_bytes()?)))
            .collect();
        let in_flight: usize = self.map.values().map(PartitionState::in_flight_bytes).sum();
        over_budget(
            &sizes,
            total - in_flight.min(total),
            budget.saturating_sub(in_flight),
        )
        .into_iter()
        .filter_map(|tp| self.map.get_mut(&tp)?.take(FlushReason::Memory))
        .collect()
    }

    /// Tallies a finished flush.
    pub fn count_flushed(&mut self, records: usize, dead_letters: usize) {
        self.report.flushes += 1;
        self.report.records_written += records as u64;
        self.report.dead_letters += dead_letters as u64;
    }
}
