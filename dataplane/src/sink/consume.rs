//! The consumer shell: the loop that feeds a source's records ([`super::source`]) to
//! the partition core ([`super::partition`]), starts the flushes it hands back, reports
//! their outcomes, commits, and drains on stop. Nothing here knows which log it reads.
//!
//! Invariants (see [`crate::sink`] for why they give exactly-once files):
//! - a partition is consumed only after its source took it ([`super::assignment`]):
//!   recovered from its progress markers, read from the position that gave;
//! - the position `end + 1` is committed only after a range's files are all uploaded
//!   (the core says so by returning it from `flushed`);
//! - a flush's outcome reaches the state only when the partition is still the same
//!   assignment (epoch), so a revoked partition's late flush changes nothing;
//! - a partition fenced by another writer's marker is taken again from the markers on
//!   a tick ([`super::assignment`]), without waiting for a rebalance;
//! - consumption pauses while the held bytes exceed `flush.memoryBudget`;
//! - a log that went back is counted in `weir_sink_offset_regressions_total`, logged,
//!   and handled by `source.onOffsetRegression`.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::Instrument;

use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use weir_crds::settings::SinkSettings;

use super::buffer::FlushReason;
use super::flush::{FlushContext, FlushError, FlushJob};
use super::metrics::SinkMetrics;
use super::partition::{Consumed, PartitionState, Position, Regression, Tp};
use super::partitions::{Partitions, SinkReport};
use super::source::{LogRecord, RecordSource};

/// Flushes (across partitions) running at once.
pub(super) const FLUSH_CONCURRENCY: usize = 4;
/// How often ages, retries and batch completion are checked.
const TICK: Duration = Duration::from_millis(200);
/// How long a batch run waits for the group to assign it partitions.
const BATCH_ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the loop, the rebalance hook, the flushes and the ops endpoints share.
pub(super) struct Core {
    pub settings: SinkSettings,
    pub flush: FlushContext,
    pub metrics: Arc<SinkMetrics>,
    pub partitions: Mutex<Partitions>,
    /// Notified when a flush ends or partitions are assigned: the revoke hook waits on it.
    pub changed: Condvar,
    pub runtime: Handle,
    pub slots: Arc<Semaphore>,
    pub batch: bool,
}

impl Core {
    pub fn lock(&self) -> MutexGuard<'_, Partitions> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a regression of `topic` in `weir_sink_offset_regressions_total`.
    pub fn count_regression(&self, topic: &str) {
        self.metrics
            .offset_regressions
            .with_label_values(&[self.metrics.topics.get(topic)])
            .inc();
    }
}

/// Consumes until stopped, a batch run is complete, or something fatal happens; then
/// drains.
pub(super) async fn run<S: RecordSource>(
    core: Arc<Core>,
    consumer: Arc<S>,
    stop: CancellationToken,
) -> anyhow::Result<SinkReport> {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    loop {
        let full = core.lock().pausing_bytes() >= core.settings.flush.memory_budget;
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = ticker.tick() => on_tick(&core, &consumer),
            message = consumer.recv(), if !full => match message {
                Ok(message) => on_message(&core, &consumer, &message),
                // The source logs its errors itself (Kafka: the client's error
                // callback, rate-limited); a second line per error would be noise.
                Err(error) => tracing::debug!(%error, "Kafka consumer error"),
            },
        }
        let state = core.lock();
        if let Some(fatal) = &state.fatal {
            anyhow::bail!("{fatal}");
        }
        if core.batch && state.assigned_once && state.map.values().all(PartitionState::batch_done) {
            tracing::info!("batch run complete: every partition is written up to its end offset");
            break;
        }
        if core.batch && !state.assigned_once && started.elapsed() > BATCH_ASSIGNMENT_TIMEOUT {
            anyhow::bail!(
                "no partitions assigned within {BATCH_ASSIGNMENT_TIMEOUT:?}: do the source topics exist, and is Kafka reachable?"
            );
        }
    }
    drain(&core, &consumer).await;
    let state = core.lock();
    if let Some(fatal) = &state.fatal {
        anyhow::bail!("{fatal}");
    }
    Ok(state.report.clone())
}

fn on_message<S: RecordSource>(core: &Arc<Core>, consumer: &Arc<S>, message: &impl LogRecord) {
    let tp: Tp = (Arc::from(message.topic()), message.partition());
    let mut state = core.lock();
    let Some(ps) = state.map.get_mut(&tp) else {
        return;
    };
    // Counted here, published to Prometheus on the next tick: label lookups per
    // record showed up in profiles.
    ps.counts.records += 1;
    ps.counts.bytes += message.payload().map_or(0, <[u8]>::len) as u64;
    let fingerprint = || message.fingerprint();
    let record = || {
        let record = message.to_sink_record();
        core.settings.keeps(&record.event_type).then_some(record)
    };
    let now = Instant::now();
    let mut jobs = match ps.consume(
        message.offset(),
        fingerprint,
        record,
        now,
        &core.settings.flush,
    ) {
        Consumed::Ignored | Consumed::Verified => return,
        Consumed::WentBack(reason) => {
            on_regression(core, consumer.as_ref(), &mut state, &tp, reason);
            return;
        }
        Consumed::Buffered(job) => Vec::from_iter(job.map(|job| *job)),
    };
    jobs.extend(state.over_budget_jobs(core.settings.flush.memory_budget));
    update_buffered(core, &state);
    drop(state);
    for job in jobs {
        spawn_flush(core.clone(), consumer.clone(), job, 0);
    }
}

/// A record below what was already consumed or written: handled in place when the
/// partition holds nothing (the usual case: it is the first record after an
/// assignment), else the sink stops with an error and its restart handles it from the
/// markers, since records already buffered belong to the old log.
fn on_regression(
    core: &Core,
    consumer: &impl RecordSource,
    state: &mut Partitions,
    tp: &Tp,
    reason: String,
) {
    let Some(ps) = state.map.get_mut(tp) else {
        return;
    };
    core.count_regression(&tp.0);
    if !ps.is_idle() {
        state.fatal = Some(format!(
            "{reason} while records of the old log were still being written; the sink stops so that a restart handles it from the progress markers"
        ));
        return;
    }
    match ps.regress(reason, core.settings.source.on_offset_regression) {
        Regression::Stop => {
            if core.batch {
                state.fatal = ps.regressed.clone();
            }
        }
        Regression::Restart => {
            if let Err(error) = consumer.seek(tp, Position::Beginning, None) {
                state.fatal = Some(format!(
                    "cannot go back to the start of {}/{}: {error}",
                    tp.0, tp.1
                ));
            }
        }
    }
}

fn update_buffered(core: &Core, state: &Partitions) {
    core.metrics
        .buffered_bytes
        .set(state.buffered_bytes() as i64);
}

/// Publishes the counts, takes fenced partitions again, starts due retries and flushes
/// buffers whose time came.
fn on_tick<S: RecordSource>(core: &Arc<Core>, consumer: &Arc<S>) {
    let now = Instant::now();
    let mut state = core.lock();
    core.retake_fenced(&mut state, consumer.as_ref());
    let mut started = Vec::new();
    let mut recoveries = Vec::new();
    for (tp, ps) in state.map.iter_mut() {
        publish_counts(core, &tp.0, ps);
        if let Some(fenced_at) = ps.take_due_recovery(now) {
            recoveries.push((tp.clone(), ps.epoch, fenced_at));
        } else if ps.failed.is_some() {
            started.extend(ps.take_due_retry(now));
        } else if let Some(job) = ps
            .due(now, &core.settings.flush)
            .and_then(|reason| ps.take(reason))
        {
            started.push((job, 0));
        }
    }
    update_buffered(core, &state);
    drop(state);
    for (job, attempts) in started {
        spawn_flush(core.clone(), consumer.clone(), job, attempts);
    }
    for (tp, epoch, fenced_at) in recoveries {
        let recover = core
            .clone()
            .recover_fenced(consumer.clone(), tp, epoch, fenced_at);
        tokio::spawn(recover);
    }
}

fn publish_counts(core: &Core, topic: &str, ps: &mut PartitionState) {
    let counts = std::mem::take(&mut ps.counts);
    if counts.records == 0 {
        return;
    }
    let label = [core.metrics.topics.get(topic)];
    core.metrics
        .records_consumed
        .with_label_values(&label)
        .inc_by(counts.records);
    core.metrics
        .bytes_consumed
        .with_label_values(&label)
        .inc_by(counts.bytes);
    if counts.skipped > 0 {
        core.metrics
            .records_skipped
            .with_label_values(&label)
            .inc_by(counts.skipped);
    }
}

/// Runs one attempt of a job (`attempts` before it failed) and hands the outcome to the
/// partition's state.
fn spawn_flush<S: RecordSource>(
    core: Arc<Core>,
    consumer: Arc<S>,
    mut job: FlushJob,
    attempts: u32,
) {
    let tp: Tp = (job.topic.clone(), job.partition);
    let epoch = core.lock().map.get(&tp).map(|s| s.epoch);
    // One span per flush attempt (exported when OTLP traces are on): encode, claim and
    // upload are its children, then the commit.
    let span = tracing::info_span!(
            target: weir_runtime::telemetry::TRACE_TARGET,
        "flush",
        topic = %tp.0,
        partition = tp.1,
        start = job.start,
        end = job.end,
        records = job.records.len(),
        reason = job.reason.label(),
        attempt = attempts + 1,
    );
    let flush = async move {
        let Ok(_permit) = core.slots.clone().acquire_owned().await else {
            return;
        };
        let started = Instant::now();
        let result = core.flush.run(&mut job).await;
        let mut state = core.lock();
        let Some(ps) = epoch.and_then(|epoch| state.current(&tp, epoch)) else {
            // Revoked meanwhile: the next owner continues from the markers.
            core.changed.notify_all();
            return;
        };
        match result {
            Ok(flushed) => {
                let next = ps.flushed(&job);
                let commit = tracing::info_span!(target: weir_runtime::telemetry::TRACE_TARGET, "commit", offset = next).entered();
                if let Err(error) = consumer.commit(&[(tp.clone(), next)], false) {
                    tracing::warn!(%error, topic = %tp.0, partition = tp.1, "offset commit failed; the progress markers still hold the position");
                }
                drop(commit);
                super::failpoint::hit("after_commit");
                core.metrics
                    .flush_seconds
                    .with_label_values(&[job.reason.label()])
                    .observe(started.elapsed().as_secs_f64());
                tracing::debug!(
                    topic = %tp.0, partition = tp.1, start = job.start, end = job.end,
                    records = flushed.records, reason = job.reason.label(), "flushed"
                );
                state.count_flushed(flushed.records, flushed.dead_letters);
            }
            Err(FlushError::Fenced { start }) => {
                tracing::warn!(topic = %tp.0, partition = tp.1, start, "another writer fixed this range first; dropping the buffer and taking the partition again from its progress markers");
                ps.fenced(Instant::now());
                core.metrics
                    .flush_failures
                    .with_label_values(&["fenced"])
                    .inc();
            }
            Err(error) => {
                core.metrics
                    .flush_failures
                    .with_label_values(&[error.stage()])
                    .inc();
                let (start, end) = (job.start, job.end);
                let backoff = ps.flush_failed(job, attempts, Instant::now());
                tracing::error!(
                    topic = %tp.0, partition = tp.1, start, end, %error, retry_in = ?backoff,
                    "flush failed; offsets stay uncommitted and the same range is retried"
                );
            }
        }
        update_buffered(&core, &state);
        core.changed.notify_all();
    };
    tokio::spawn(flush.instrument(span));
}

/// On stop: flushes every buffer, retries failed flushes and waits for all of them,
/// within `shutdown.drainTimeout`. A redo still missing records is left for the next
/// start.
async fn drain<S: RecordSource>(core: &Arc<Core>, consumer: &Arc<S>) {
    let deadline = Instant::now() + core.settings.shutdown.drain_timeout;
    loop {
        let mut started = Vec::new();
        let busy = {
            let now = Instant::now();
            let mut state = core.lock();
            for ps in state.map.values_mut() {
                if ps.failed.is_some() {
                    started.extend(ps.take_due_retry(now));
                } else if let Some(job) = ps.take(FlushReason::Drain) {
                    started.push((job, 0));
                }
            }
            state.map.values().any(PartitionState::is_busy)
        };
        for (job, attempts) in started {
            spawn_flush(core.clone(), consumer.clone(), job, attempts);
        }
        if !busy {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "drain timeout: unflushed records will be consumed again at the next start"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Commit synchronously what the asynchronous commits may not have sent yet.
    let positions: Vec<(Tp, i64)> = core
        .lock()
        .map
        .iter()
        .filter_map(|(tp, ps)| Some((tp.clone(), ps.next_start?)))
        .collect();
    if !positions.is_empty() {
        let consumer = consumer.clone();
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit(&positions, true)).await;
        if let Ok(Err(error)) = committed {
            tracing::warn!(%error, "final offset commit failed; the progress markers still hold the position");
        }
    }
}
