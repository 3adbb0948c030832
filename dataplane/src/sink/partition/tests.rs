//! Unit tests of the partition core, and property tests that run it against a model of
//! the log and the store through random records, flush outcomes, crashes and
//! rebalances.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use weir_crds::sink::{FlushSpec, OffsetRegressionPolicy};

use super::*;
use crate::sink::partitions::Partitions;
use crate::sink::progress::Recovery;

const TOPIC: &str = "t";

fn tp() -> Tp {
    (TOPIC.into(), 0)
}

fn flush_spec(max_records: usize) -> FlushSpec {
    FlushSpec {
        max_records,
        max_age: Duration::from_secs(60),
        ..FlushSpec::default()
    }
}

fn payload(offset: i64) -> Vec<u8> {
    format!("record {offset}").into_bytes()
}

/// The record's position in its log's own terms, as a Kinesis sequence number would
/// be: sparse, long and decimal. The core passes positions through; Kafka has none.
fn seq(offset: i64) -> SourcePosition {
    format!("4959{:052}", offset * 7 + 3)
}

fn fingerprint(offset: i64) -> RecordFingerprint {
    RecordFingerprint::of(Some(offset), Some(b"k"), Some(&payload(offset))).at(Some(seq(offset)))
}

fn record(offset: i64) -> SinkRecord {
    let payload = payload(offset);
    let mut record =
        SinkRecord::from_parts(TOPIC, offset, Some(offset), Some(b"k"), Some(&payload), []);
    record.source_position = Some(seq(offset));
    record
}

/// The parts of a start the tests look at.
fn parts(started: Started) -> (PartitionState, Position, Found) {
    (started.state, started.position, started.found)
}

/// Consumes `offset` (kept unless `skip`).
fn consume(
    ps: &mut PartitionState,
    offset: i64,
    skip: bool,
    now: Instant,
    flush: &FlushSpec,
) -> Consumed {
    ps.consume(
        offset,
        || fingerprint(offset),
        || (!skip).then(|| record(offset)),
        now,
        flush,
    )
}

fn fresh(recovery: Recovery) -> (PartitionState, Position, Found) {
    parts(PartitionState::start(
        tp(),
        recovery,
        Some((0, 1000)),
        false,
        OffsetRegressionPolicy::Fail,
        1,
    ))
}

fn marker(start: i64, end: i64) -> ProgressMarker {
    ProgressMarker {
        topic: TOPIC.into(),
        partition: 0,
        generation: 0,
        start,
        end,
        records: (end - start + 1) as usize,
        files: vec![format!("f{start}")],
        last: Some(fingerprint(end)),
        after: (start > 0).then(|| seq(start - 1)),
    }
}

fn job_of(consumed: Consumed) -> FlushJob {
    match consumed {
        Consumed::Buffered(Some(job)) => *job,
        other => panic!("expected a flush job, got {other:?}"),
    }
}

#[test]
fn ranges_follow_each_other_and_one_is_in_flight() {
    let now = Instant::now();
    let flush = flush_spec(2);
    let (mut ps, position, _) = fresh(Recovery::default());
    assert_eq!(position, Position::Committed);
    assert!(matches!(
        consume(&mut ps, 0, false, now, &flush),
        Consumed::Buffered(None)
    ));
    let first = job_of(consume(&mut ps, 1, false, now, &flush));
    assert_eq!(
        (
            first.topic.as_ref(),
            first.start,
            first.end,
            first.records.len()
        ),
        (TOPIC, 0, 1, 2)
    );
    assert_eq!(first.last, Some(fingerprint(1)));
    // While the first is in flight the buffer grows and waits.
    assert!(matches!(
        consume(&mut ps, 2, false, now, &flush),
        Consumed::Buffered(None)
    ));
    assert!(matches!(
        consume(&mut ps, 3, true, now, &flush),
        Consumed::Buffered(None)
    ));
    assert_eq!(
        ps.next_start,
        Some(0),
        "nothing is committed before the flush finishes"
    );
    assert_eq!(ps.flushed(&first), 2);
    let second = ps.take(FlushReason::Drain).unwrap();
    assert_eq!((second.start, second.end, second.records.len()), (2, 3, 1));
    assert_eq!(
        second.last,
        Some(fingerprint(3)),
        "a skipped last record is fingerprinted"
    );
}

#[test]
fn a_failed_flush_is_retried_with_the_same_job_after_a_growing_backoff() {
    let now = Instant::now();
    let flush = flush_spec(1);
    let (mut ps, _, _) = fresh(Recovery::default());
    let job = job_of(consume(&mut ps, 0, false, now, &flush));
    let wait = ps.flush_failed(job, 0, now);
    assert_eq!(wait, Duration::from_millis(500));
    assert!(matches!(
        consume(&mut ps, 1, false, now, &flush),
        Consumed::Buffered(None)
    ));
    assert!(
        ps.take(FlushReason::Drain).is_none(),
        "the retry goes first"
    );
    assert!(ps.take_due_retry(now).is_none());
    let (again, attempts) = ps.take_due_retry(now + wait).unwrap();
    assert_eq!((again.start, again.end, attempts), (0, 0, 1));
    assert_eq!(
        ps.flush_failed(again, attempts, now),
        Duration::from_secs(1)
    );
}

#[test]
fn a_redo_writes_exactly_its_range_even_when_its_last_record_is_gone() {
    let now = Instant::now();
    let flush = flush_spec(100);
    let recovery = Recovery::from_newest(Some((marker(5, 7), false)), None);
    let started =
        PartitionState::start(tp(), recovery, None, false, OffsetRegressionPolicy::Fail, 1);
    assert_eq!(
        started.anchor,
        Some(Anchor::After(seq(4))),
        "found again by position"
    );
    let (mut ps, position, _) = parts(started);
    assert_eq!(position, Position::At(5));
    assert!(matches!(
        consume(&mut ps, 5, false, now, &flush),
        Consumed::Buffered(None)
    ));
    assert!(
        ps.take(FlushReason::Memory).is_none(),
        "a redo waits for its last record"
    );
    // Offset 7 was compacted away: 8 closes the range and starts the next.
    let redo = job_of(consume(&mut ps, 8, false, now, &flush));
    assert_eq!((redo.start, redo.end, redo.records.len()), (5, 7, 1));
    assert!(redo.marker.is_some());
    assert_eq!(redo.last, None, "the range's last record was not consumed");
    ps.flushed(&redo);
    let next = ps.take(FlushReason::Drain).unwrap();
    assert_eq!((next.start, next.end), (8, 8));
}

#[test]
fn the_resume_point_is_read_again_and_must_be_the_record_written() {
    let now = Instant::now();
    let flush = flush_spec(100);
    let recovery = Recovery::from_newest(Some((marker(0, 9), true)), Some(10));
    let (mut ps, position, _) = fresh(recovery.clone());
    assert_eq!(position, Position::At(9));
    assert_eq!(
        PartitionState::start(
            tp(),
            recovery.clone(),
            None,
            false,
            OffsetRegressionPolicy::Fail,
            1
        )
        .anchor,
        Some(Anchor::At(seq(9))),
    );
    assert!(matches!(
        consume(&mut ps, 9, false, now, &flush),
        Consumed::Verified
    ));
    assert!(matches!(
        consume(&mut ps, 10, false, now, &flush),
        Consumed::Buffered(None)
    ));
    assert!(matches!(
        consume(&mut ps, 3, false, now, &flush),
        Consumed::WentBack(_)
    ));

    let (mut ps, _, _) = fresh(recovery);
    let other = ps.consume(9, || fingerprint(1234), || Some(record(9)), now, &flush);
    let Consumed::WentBack(reason) = other else {
        panic!("{other:?}")
    };
    assert!(
        reason.contains("offset 9 of t/0 is not the one written"),
        "{reason}"
    );
}

#[test]
fn a_log_that_ends_below_what_was_written_stops_or_starts_a_new_generation() {
    let written = || Recovery::from_newest(Some((marker(0, 99), true)), None);
    let (ps, position, found) = parts(PartitionState::start(
        tp(),
        written(),
        Some((0, 10)),
        false,
        OffsetRegressionPolicy::Fail,
        1,
    ));
    assert_eq!(
        (position, found),
        (Position::End, Found::Regressed(Regression::Stop))
    );
    assert!(ps.regressed.as_deref().unwrap().contains("newGeneration"));
    let (mut ps, position, found) = parts(PartitionState::start(
        tp(),
        written(),
        Some((0, 10)),
        false,
        OffsetRegressionPolicy::NewGeneration,
        1,
    ));
    assert_eq!(
        (position, found),
        (Position::Beginning, Found::Regressed(Regression::Restart))
    );
    let job = job_of(consume(&mut ps, 0, false, Instant::now(), &flush_spec(1)));
    assert_eq!((job.generation, job.start), (1, 0));
}

#[test]
fn records_deleted_before_they_were_written_are_reported_and_skipped() {
    let recovery = Recovery::from_newest(None, Some(5));
    let (ps, position, found) = parts(PartitionState::start(
        tp(),
        recovery,
        Some((20, 30)),
        false,
        OffsetRegressionPolicy::Fail,
        1,
    ));
    assert_eq!(position, Position::At(20));
    assert_eq!(
        found,
        Found::Expired {
            from: 5,
            log_start: 20
        }
    );
    assert_eq!(ps.next_start, Some(20));
}

#[test]
fn a_fenced_partition_drops_its_buffer_and_asks_to_be_recovered_again() {
    let now = Instant::now();
    let flush = flush_spec(1);
    let (mut ps, _, _) = fresh(Recovery::default());
    let _job = job_of(consume(&mut ps, 0, false, now, &flush));
    ps.fenced(now);
    assert!(matches!(
        consume(&mut ps, 1, false, now, &flush),
        Consumed::Ignored
    ));
    assert!(ps.take(FlushReason::Drain).is_none());
    assert_eq!(ps.held_bytes(), 0);
    // Recovered again from the range it was fenced at, one recovery at a time; a failed
    // one is tried again a little later.
    assert_eq!(ps.take_due_recovery(now), Some(Some(0)));
    assert_eq!(ps.take_due_recovery(now), None);
    ps.recovery_failed(now);
    assert_eq!(ps.take_due_recovery(now), None);
    assert_eq!(
        ps.take_due_recovery(now + Duration::from_secs(2)),
        Some(Some(0))
    );
    assert!(!ps.batch_done(), "a fenced partition still has work");
}

#[test]
fn the_memory_budget_takes_the_biggest_buffers() {
    let now = Instant::now();
    let flush = flush_spec(1000);
    let mut partitions = Partitions::default();
    for (partition, records) in [(0, 1), (1, 5), (2, 3)] {
        let (mut ps, _, _) = parts(PartitionState::start(
            (TOPIC.into(), partition),
            Recovery::default(),
            None,
            false,
            OffsetRegressionPolicy::Fail,
            partitions.next_epoch(),
        ));
        for offset in 0..records {
            consume(&mut ps, offset, false, now, &flush);
        }
        partitions.map.insert((TOPIC.into(), partition), ps);
    }
    let total = partitions.buffered_bytes();
    let jobs = partitions.over_budget_jobs(total / 2);
    assert_eq!(
        jobs.iter().map(|j| j.partition).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(partitions.buffered_bytes(), total, "in flight still counts");
    assert!(partitions.over_budget_jobs(total).is_empty());
}

// ---------------------------------------------------------------------------------
// Property tests: the core against a model of one partition's log and the store.

/// What the store holds for one range (the marker and whether its files are all
/// uploaded), keyed by `(generation, start)`.
#[derive(Clone, Debug)]
struct Stored {
    marker: ProgressMarker,
    offsets: Vec<i64>,
    complete: bool,
}

/// How a flush attempt ends.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// Marker (when new) and every file written.
    Done,
    /// Failed before its marker was created.
    FailEarly,
    /// Failed after creating its marker, before all files were uploaded.
    FailAfterMarker,
}

#[derive(Clone, Debug)]
enum Op {
    /// Deliver the next record of the log.
    Deliver,
    /// Time passes and the tick runs: due flushes and retries start.
    Tick,
    /// The flush in flight ends.
    Finish(Outcome),
    /// The process dies; a flush in flight may have written part of its range.
    Crash(Outcome),
    /// The partition is revoked and assigned again; a flush in flight outlives the
    /// revoke and finishes later, as another writer.
    Rebalance,
    /// A flush that outlived its assignment finishes.
    FinishOrphan(Outcome),
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        3 => Just(Outcome::Done),
        1 => Just(Outcome::FailEarly),
        1 => Just(Outcome::FailAfterMarker),
    ];
    prop_oneof![
        10 => Just(Op::Deliver),
        3 => Just(Op::Tick),
        4 => outcome.clone().prop_map(Op::Finish),
        1 => outcome.clone().prop_map(Op::Crash),
        1 => Just(Op::Rebalance),
        2 => outcome.prop_map(Op::FinishOrphan),
    ]
}

struct World {
    /// Offsets `0..log_len`; `skipped[o]`: `source.eventTypes` skips record `o`.
    skipped: Vec<bool>,
    store: BTreeMap<(u32, i64), Stored>,
    committed: Option<i64>,
    flush: FlushSpec,
    now: Instant,
    epoch: u64,
    state: PartitionState,
    /// The next offset the consumer delivers.
    cursor: i64,
    in_flight: Option<(FlushJob, u32)>,
    orphans: Vec<FlushJob>,
}

impl World {
    fn new(skipped: Vec<bool>, max_records: usize) -> Self {
        let now = Instant::now();
        let (state, position, _) = fresh(Recovery::default());
        let mut world = Self {
            skipped,
            store: BTreeMap::new(),
            committed: None,
            flush: flush_spec(max_records),
            now,
            epoch: 1,
            state,
            cursor: 0,
            in_flight: None,
            orphans: Vec::new(),
        };
        world.position(position);
        world
    }

    fn log_len(&self) -> i64 {
        self.skipped.len() as i64
    }

    fn position(&mut self, position: Position) {
        self.cursor = match position {
            Position::Committed => self.committed.unwrap_or(0),
            Position::At(offset) => offset,
            Position::Beginning => 0,
            Position::End => self.log_len(),
        };
    }

    /// A new assignment, recovered from the store as `progress::recover` does.
    fn assign(&mut self) {
        let newest = self
            .store
            .values()
            .last()
            .map(|s| (s.marker.clone(), s.complete));
        let recovery = Recovery::from_newest(newest, self.committed);
        self.epoch += 1;
        let started = PartitionState::start(
            tp(),
            recovery,
            Some((0, self.log_len())),
            false,
            OffsetRegressionPolicy::Fail,
            self.epoch,
        );
        assert_eq!(
            started.found,
            Found::Consistent,
            "the log never changes here"
        );
        self.state = started.state;
        self.position(started.position);
        // A source that seeks by its own positions finds the same record.
        if let Some(anchor) = started.anchor {
            let index = |p: &SourcePosition| (0..self.log_len()).find(|o| seq(*o) == *p);
            let by_anchor = match &anchor {
                Anchor::At(p) => index(p),
                Anchor::After(p) => index(p).map(|o| o + 1),
            };
            assert_eq!(
                by_anchor,
                Some(self.cursor),
                "{anchor:?} is not offset {}",
                self.cursor
            );
        } else if let Position::At(offset) = started.position {
            // Only the very start of a log may lack a position to find it by.
            assert!(
                offset == 0 || self.store.values().all(|s| !s.complete),
                "no anchor for offset {offset}"
            );
        }
        self.in_flight = None;
    }

    fn start(&mut self, job: FlushJob, attempts: u32) {
        assert!(
            self.in_flight.is_none(),
            "two flushes of one partition in flight"
        );
        self.in_flight = Some((job, attempts));
    }

    fn deliver(&mut self) {
        if self.cursor >= self.log_len() {
            return;
        }
        let offset = self.cursor;
        self.cursor += 1;
        let skip = self.skipped[offset as usize];
        match consume(&mut self.state, offset, skip, self.now, &self.flush) {
            Consumed::WentBack(reason) => panic!("the same log was taken for another: {reason}"),
            Consumed::Buffered(Some(job)) => self.start(*job, 0),
            Consumed::Buffered(None) | Consumed::Ignored | Consumed::Verified => {}
        }
    }

    fn tick(&mut self) {
        self.now += Duration::from_secs(61);
        if self.in_flight.is_some() {
            return;
        }
        if self.state.take_due_recovery(self.now).is_some() {
            // The fenced sink reads the markers again and goes on from them, as
            // `assignment::recover_fenced` and `Core::retake_fenced` do.
            self.assign();
        } else if let Some((job, attempts)) = self.state.take_due_retry(self.now) {
            self.start(job, attempts);
        } else if let Some(job) = self
            .state
            .due(self.now, &self.flush)
            .and_then(|r| self.state.take(r))
        {
            self.start(job, 0);
        }
    }

    /// What the store makes of one attempt of `job`, as `FlushContext::run` does it;
    /// `Err(true)` when another writer fixed the range (fenced).
    fn write(&mut self, job: &mut FlushJob, outcome: Outcome) -> Result<(), bool> {
        if let Outcome::FailEarly = outcome {
            return Err(false);
        }
        let offsets: Vec<i64> = job.records.iter().map(|r| r.offset).collect();
        let marker = ProgressMarker {
            topic: TOPIC.into(),
            partition: 0,
            generation: job.generation,
            start: job.start,
            end: job.end,
            records: offsets.len(),
            files: offsets.iter().map(|o| format!("f{o}")).collect(),
            last: job.last.clone(),
            after: job.after.clone(),
        };
        let key = (job.generation, job.start);
        if job.marker.is_none() {
            match self.store.get(&key) {
                Some(existing) if existing.marker != marker => return Err(true),
                Some(_) => {}
                None => {
                    self.store.insert(
                        key,
                        Stored {
                            marker: marker.clone(),
                            offsets: offsets.clone(),
                            complete: false,
                        },
                    );
                }
            }
            job.marker = Some(marker.clone());
        }
        if let Outcome::FailAfterMarker = outcome {
            return Err(false);
        }
        let stored = self.store.get_mut(&key).expect("the marker exists");
        stored.marker = marker;
        stored.offsets = offsets;
        stored.complete = true;
        Ok(())
    }

    fn finish(&mut self, outcome: Outcome) {
        let Some((mut job, attempts)) = self.in_flight.take() else {
            return;
        };
        match self.write(&mut job, outcome) {
            Ok(()) => {
                let next = self.state.flushed(&job);
                self.check_commit(next);
                self.committed = Some(next);
            }
            Err(true) => self.state.fenced(self.now),
            Err(false) => {
                self.state.flush_failed(job, attempts, self.now);
            }
        }
    }

    fn crash(&mut self, outcome: Outcome) {
        if let Some((mut job, _)) = self.in_flight.take() {
            let _ = self.write(&mut job, outcome);
        }
        self.assign();
    }

    fn rebalance(&mut self) {
        if let Some((job, _)) = self.in_flight.take() {
            self.orphans.push(job);
        }
        self.assign();
    }

    fn finish_orphan(&mut self, outcome: Outcome) {
        if let Some(mut job) = self.orphans.pop() {
            let _ = self.write(&mut job, outcome);
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Deliver => self.deliver(),
            Op::Tick => self.tick(),
            Op::Finish(outcome) => self.finish(*outcome),
            Op::Crash(outcome) => self.crash(*outcome),
            Op::Rebalance => self.rebalance(),
            Op::FinishOrphan(outcome) => self.finish_orphan(*outcome),
        }
        self.check_store();
    }

    /// A commit never passes what is in complete ranges, with none missing below it.
    fn check_commit(&self, next: i64) {
        let mut covered = 0;
        for stored in self.store.values().filter(|s| s.complete) {
            if stored.marker.start == covered {
                covered = stored.marker.end + 1;
            }
        }
        assert!(
            next <= covered,
            "commit {next} passes the complete ranges (up to {covered})"
        );
    }

    /// Ranges never overlap; only the newest may lack files.
    fn check_store(&self) {
        let mut previous_end = -1;
        let count = self.store.len();
        for (i, stored) in self.store.values().enumerate() {
            assert!(
                stored.marker.start > previous_end,
                "range {}..={} overlaps the one before (ending {previous_end})",
                stored.marker.start,
                stored.marker.end
            );
            previous_end = stored.marker.end;
            assert!(
                stored.complete || i + 1 == count,
                "an older range lacks files: {stored:?}"
            );
        }
    }

    /// Runs to the end without faults: every record consumed, every flush done.
    fn settle(&mut self) {
        self.orphans.clear();
        for _ in 0..(4 * self.log_len() + 20) {
            self.finish(Outcome::Done);
            self.deliver();
            self.tick();
            self.check_store();
        }
        self.finish(Outcome::Done);
        if let Some(job) = self.state.take(FlushReason::Drain) {
            self.start(job, 0);
            self.finish(Outcome::Done);
        }
    }

    /// Every offset up to the last kept record in exactly one complete range; every
    /// kept record in one file.
    fn check_exactly_once(&self) {
        let mut next = 0;
        let mut written: Vec<i64> = Vec::new();
        for stored in self.store.values() {
            assert!(stored.complete, "{stored:?}");
            assert_eq!(
                stored.marker.start, next,
                "a gap or overlap before {stored:?}"
            );
            next = stored.marker.end + 1;
            written.extend(&stored.offsets);
        }
        // Skipped records after the last kept one wait for a kept record to close
        // their range; they are consumed again, and skipped again, after a restart.
        assert!(
            (next..self.log_len()).all(|o| self.skipped[o as usize]),
            "the log is written up to {next} of {}",
            self.log_len()
        );
        let kept: Vec<i64> = (0..self.log_len())
            .filter(|o| !self.skipped[*o as usize])
            .collect();
        assert_eq!(written, kept, "records missing or written twice");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn no_duplicate_no_gap_no_commit_past_storage(
        skipped in prop::collection::vec(prop::bool::weighted(0.2), 1..40),
        max_records in 1usize..6,
        ops in prop::collection::vec(op(), 0..120),
    ) {
        let mut world = World::new(skipped, max_records);
        for op in &ops {
            world.apply(op);
        }
        world.settle();
        world.check_exactly_once();
    }
}
