//! Partitions given to and taken from this sink, whatever the log: a Kafka rebalance
//! or a Kinesis lease calls these before any record of the partition is read and after
//! the last.
//!
//! Invariants:
//! - a partition taken is recovered from its progress markers and its log checked
//!   against them; the position returned is where its source must start reading;
//! - a partition released is forgotten only after its flush in flight finished (or
//!   `shutdown.drainTimeout` passed), so its next owner finds complete markers whenever
//!   it can; a flush that ends later changes nothing here (epochs).

use std::time::Instant;

use super::consume::Core;
use super::partition::{Anchor, Found, PartitionState, Position, Started, Tp};
use super::progress::Recovery;

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
        let (topic, partition) = (tp.0.clone(), tp.1);
        let epoch = self.lock().next_epoch();
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
            epoch,
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
        tracing::info!(
            %topic, partition, resume = ?position, generation = ps.generation,
            redo = ps.is_redoing(), "partition assigned"
        );
        let mut state = self.lock();
        if self.batch
            && let Some(reason) = &ps.regressed
        {
            state.fatal = Some(reason.clone());
        }
        state.map.insert(tp, ps);
        self.metrics.assigned_partitions.set(state.map.len() as i64);
        (position, anchor)
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
