//! Partitions given to and taken from this sink, whatever the log: a Kafka rebalance
//! or a Kinesis lease calls these before any record of the partition is read and after
//! the last.
//!
//! Invariants:
//! - a partition taken is recovered from its progress markers and its log checked
//!   against them; the position returned is where its source must start reading;
//! - a partition released is forgotten only after its flush in flight finished (or
//!   `shutdown.drainTimeout` passed), so its next owner finds complete markers whenever
//!   it can; a flush that ends later changes nothing here (epochs);
//! - a partition fenced by such a late flush (it fixed the range this sink was about to
//!   write) is taken again from its markers without a rebalance: the markers and the
//!   log's offsets are read off the loop ([`Core::recover_fenced`]), then the loop, between two
//!   records, positions the source and replaces the fenced state
//!   ([`Core::retake_fenced`]), so no record fetched before the seek reaches the new
//!   state.

use std::sync::Arc;
use std::time::Instant;

use super::consume::Core;
use super::partition::{Anchor, Found, PartitionState, Position, Started, Tp};
use super::partitions::{Partitions, Recovered};
use super::progress::{self, Recovery};
use super::source::RecordSource;

impl Core {
    /// Starts a partition from its recovery and, when they could be read, its log's
    /// first and end offsets. Returns where to read it from: the offset, and the same
    /// place in the log's own positions when the markers know it (for a source that
    /// seeks by position; Kafka seeks by offset).
    pub fn take_partition(
        &self,
        tp: Tp,
        recovery: Recovery,
        watermarks: Option<(i64, i64)>,
    ) -> (Position, Option<Anchor>) {
        let mut state = self.lock();
        let (ps, position, anchor) = self.start_partition(&mut state, &tp, recovery, watermarks);
        tracing::info!(
            topic = %tp.0, partition = tp.1, resume = ?position, generation = ps.generation,
            redo = ps.is_redoing(), "partition assigned"
        );
        self.install(&mut state, tp, ps);
        (position, anchor)
    }

    /// The state a recovery gives, with where to read and what was found reported.
    fn start_partition(
        &self,
        state: &mut Partitions,
        tp: &Tp,
        recovery: Recovery,
        watermarks: Option<(i64, i64)>,
    ) -> (PartitionState, Position, Option<Anchor>) {
        let (topic, partition) = (tp.0.clone(), tp.1);
        let Started {
            state: ps,
            position,
            anchor,
            found,
        } = PartitionState::start(
            tp.clone(),
            recovery,
            watermarks,
            self.batch,
            self.settings.source.on_offset_regression,
            state.next_epoch(),
        );
        match found {
            Found::Consistent => {}
            Found::Regressed(_) => self.count_regression(&topic),
            Found::Expired { from, log_start } => {
                tracing::error!(
                    %topic, partition, from, to = log_start - 1,
                    "records were deleted by Kafka's retention before the sink wrote them; they are lost"
                );
                self.metrics
                    .records_expired
                    .with_label_values(&[self.metrics.topics.get(&topic)])
                    .inc_by((log_start - from) as u64);
            }
        }
        if self.batch
            && let Some(reason) = &ps.regressed
        {
            state.fatal = Some(reason.clone());
        }
        (ps, position, anchor)
    }

    fn install(&self, state: &mut Partitions, tp: Tp, ps: PartitionState) {
        state.map.insert(tp, ps);
        self.metrics.assigned_partitions.set(state.map.len() as i64);
    }

    /// Replaces fenced partitions' states with those their markers, read again, give,
    /// and positions the source for each. Runs on the consumer loop, between records.
    pub fn retake_fenced(&self, state: &mut Partitions, source: &impl RecordSource) {
        for recovered in std::mem::take(&mut state.recovered) {
            let Recovered {
                tp,
                epoch,
                recovery,
                watermarks,
                fenced_at,
            } = recovered;
            if !state.current(&tp, epoch).is_some_and(|ps| ps.is_fenced()) {
                continue;
            }
            let (ps, position, anchor) = self.start_partition(state, &tp, recovery, watermarks);
            let position = match (position, fenced_at) {
                (Position::Committed, Some(offset)) => Position::At(offset),
                (position, _) => position,
            };
            match source.seek(&tp, position, anchor.as_ref()) {
                Ok(()) => {
                    tracing::info!(
                        topic = %tp.0, partition = tp.1, resume = ?position,
                        generation = ps.generation, redo = ps.is_redoing(),
                        "partition taken again from its markers after another writer fixed its range"
                    );
                    self.install(state, tp, ps);
                }
                Err(error) => {
                    tracing::warn!(topic = %tp.0, partition = tp.1, %error, "cannot position the fenced partition; trying again");
                    if let Some(fenced) = state.current(&tp, epoch) {
                        fenced.recovery_failed(Instant::now());
                    }
                }
            }
        }
    }

    /// Reads a fenced partition's markers (from `fenced_at`, the range it was fenced at) and
    /// its log's offsets again, and hands them to the loop ([`Self::retake_fenced`]); on an
    /// error the partition tries again later.
    pub async fn recover_fenced<S: RecordSource>(
        self: Arc<Self>,
        source: Arc<S>,
        tp: Tp,
        epoch: u64,
        fenced_at: Option<i64>,
    ) {
        let recovery = progress::recover(&self.flush.storage, &tp.0, tp.1, fenced_at).await;
        let watermarks = {
            let (source, tp) = (source.clone(), tp.clone());
            tokio::task::spawn_blocking(move || source.watermarks(&tp)).await
        };
        let mut state = self.lock();
        match recovery {
            Ok(recovery) => {
                let watermarks = match watermarks {
                    Ok(Ok(watermarks)) => Some(watermarks),
                    Ok(Err(error)) => {
                        tracing::warn!(topic = %tp.0, partition = tp.1, %error, "cannot read the partition's start and end offsets; a replaced log is found at its first record instead");
                        None
                    }
                    Err(_) => None,
                };
                state.recovered.push(Recovered {
                    tp,
                    epoch,
                    recovery,
                    watermarks,
                    fenced_at,
                });
            }
            Err(error) => {
                tracing::warn!(topic = %tp.0, partition = tp.1, %error, "cannot read the fenced partition's progress markers; trying again");
                if let Some(ps) = state.current(&tp, epoch) {
                    ps.recovery_failed(Instant::now());
                }
            }
        }
    }

    /// A partition that could not be started: the sink stops with `why`.
    pub fn fail_assignment(&self, why: String) {
        self.lock().fatal = Some(why);
    }

    /// An assignment was handled, even an empty one: the sink is ready, and a batch run
    /// may find every partition done.
    pub fn assignment_done(&self) {
        self.lock().assigned_once = true;
        self.changed.notify_all();
    }

    /// Waits for the partitions' flushes in flight (up to `shutdown.drainTimeout`), then
    /// forgets them: their buffers are consumed again by the next owner. Blocks.
    pub fn release_partitions(&self, released: &[Tp]) {
        let deadline = Instant::now() + self.settings.shutdown.drain_timeout;
        let mut state = self.lock();
        loop {
            let busy = released
                .iter()
                .any(|tp| state.map.get(tp).is_some_and(PartitionState::is_flushing));
            let now = Instant::now();
            if !busy || now >= deadline {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        for tp in released {
            state.map.remove(tp);
            tracing::info!(topic = %tp.0, partition = tp.1, "partition revoked");
        }
        self.metrics.assigned_partitions.set(state.map.len() as i64);
        self.metrics
            .buffered_bytes
            .set(state.buffered_bytes() as i64);
    }
}
