//! Starting a partition (from its recovery, checking its log, choosing where to read
//! and the anchor for logs that seek by position) and handling a log that went back.

use weir_crds::sink::OffsetRegressionPolicy;

use super::{
    Anchor, ConsumedCounts, Found, PartitionBuffer, PartitionState, Position, Regression, Started,
    Tp,
};
use crate::sink::progress::{LogCheck, Recovery};

impl PartitionState {
    /// The state of a newly assigned partition and where to read it from, given its
    /// recovery from the markers and, when they could be read, its log's start and end
    /// offsets. `batch`: stop at the end offset seen now.
    pub fn start(
        tp: Tp,
        recovery: Recovery,
        watermarks: Option<(i64, i64)>,
        batch: bool,
        policy: OffsetRegressionPolicy,
        epoch: u64,
    ) -> Started {
        let check = watermarks.map_or(LogCheck::Consistent, |(low, high)| {
            recovery.check_log(low, high)
        });
        let mut ps = Self {
            tp,
            epoch,
            generation: recovery.generation,
            next_start: recovery.resume,
            expected: recovery.resume.unwrap_or(0),
            last_seen: None,
            last_fingerprint: None,
            after_next: None,
            verify: None,
            regressed: None,
            buffer: PartitionBuffer::default(),
            redo: recovery.redo,
            flushing: false,
            in_flight_bytes: 0,
            failed: None,
            fenced: false,
            recover_at: None,
            stop_at: watermarks.filter(|_| batch).map(|(_, high)| high),
            counts: ConsumedCounts::default(),
        };
        let mut position = recovery.resume.map_or(Position::Committed, Position::At);
        let found = match check {
            LogCheck::Regressed {
                written_end,
                log_end,
            } => {
                let reason = format!(
                    "the log of {}/{} ends at offset {log_end} but offsets up to {written_end} (generation {}) are already in files",
                    ps.tp.0, ps.tp.1, ps.generation
                );
                let regression = ps.regress(reason, policy);
                position = match regression {
                    Regression::Restart => Position::Beginning,
                    Regression::Stop => Position::End,
                };
                Found::Regressed(regression)
            }
            LogCheck::Expired { from, log_start } => {
                ps.next_start = Some(log_start);
                ps.expected = log_start;
                position = Position::At(log_start);
                Found::Expired { from, log_start }
            }
            LogCheck::Consistent => {
                let written = recovery.written.clone();
                ps.after_next = written
                    .as_ref()
                    .and_then(|(_, last)| last.as_ref()?.position.clone());
                if let (None, Some((end, Some(fingerprint)))) = (&ps.redo, written)
                    && watermarks.is_none_or(|(low, _)| low <= end)
                {
                    // Read the newest written record again to see that it is still there.
                    ps.verify = Some((end, fingerprint));
                    ps.expected = end;
                    position = Position::At(end);
                }
                if let (true, Some((low, _))) = (batch, watermarks) {
                    let start = recovery.resume.unwrap_or(low).max(low);
                    ps.next_start = Some(start);
                    if ps.verify.is_none() {
                        ps.expected = start;
                        position = Position::At(start);
                    }
                }
                Found::Consistent
            }
        };
        let anchor = ps.anchor(position);
        Started {
            state: ps,
            position,
            anchor,
            found,
        }
    }

    /// The log's own position of the place `position` names, when the markers know it:
    /// the record written last (read again to verify it), the record before a range to
    /// redo, or the record after which the next range starts.
    fn anchor(&self, position: Position) -> Option<Anchor> {
        let Position::At(offset) = position else {
            return None;
        };
        match (&self.verify, &self.redo) {
            (Some((end, fingerprint)), _) if *end == offset => {
                fingerprint.position.clone().map(Anchor::At)
            }
            (_, Some(redo)) if redo.start == offset => redo.after.clone().map(Anchor::After),
            _ if self.next_start == Some(offset) => self.after_next.clone().map(Anchor::After),
            _ => None,
        }
    }

    /// Handles a log that went back, as `source.onOffsetRegression` says. The caller
    /// counts it and positions the partition: at the log's start for a new generation,
    /// anywhere for a stopped one. A range still to be redone is lost with the old log.
    pub fn regress(&mut self, reason: String, policy: OffsetRegressionPolicy) -> Regression {
        let reason = format!(
            "{reason}: the topic was re-created, the sink points at another cluster, or Kafka lost acknowledged records"
        );
        let (topic, partition) = (&self.tp.0, self.tp.1);
        if let Some(lost) = self.redo.take() {
            tracing::error!(
                %topic, partition, start = lost.start, end = lost.end, generation = lost.generation,
                "a range whose files were never all uploaded can no longer be written: its records are not in the new log"
            );
        }
        match policy {
            OffsetRegressionPolicy::Fail => {
                let reason = format!(
                    "{reason}; nothing more of it is written (set source.onOffsetRegression: newGeneration to write the new log beside the old files)"
                );
                tracing::error!(%topic, partition, "{reason}");
                self.regressed = Some(reason);
                Regression::Stop
            }
            OffsetRegressionPolicy::NewGeneration => {
                self.generation += 1;
                tracing::warn!(
                    %topic, partition, generation = self.generation,
                    "{reason}; writing the new log from its start as generation {}",
                    self.generation
                );
                self.next_start = None;
                self.expected = 0;
                self.last_seen = None;
                self.last_fingerprint = None;
                self.after_next = None;
                self.verify = None;
                Regression::Restart
            }
        }
    }
}
