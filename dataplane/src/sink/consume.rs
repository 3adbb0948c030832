//! The sink service: the Kafka consumer, its rebalance hook, the per-partition state,
//! and the loop that turns records into flushes.
//!
//! Invariants (see [`crate::sink`] for why they give exactly-once files):
//! - a partition is consumed only after the rebalance hook recovered it from its
//!   progress markers; the hook sets the assignment's start offset itself, so no record
//!   before the resume point is fetched;
//! - a partition has at most one flush in flight; the next range starts where the
//!   previous one ended, and a failed flush is retried with exactly the same range;
//! - the Kafka offset `end + 1` is committed only after a range's files are all uploaded;
//! - buffered bytes (waiting and in flight) stay under `flush.memoryBudget`: the
//!   biggest buffers are flushed first, and consumption pauses while flushes catch up;
//! - a record is never dropped for being below what was already written without a
//!   word: a log that went back (its end below the newest marker's end, the record at
//!   the resume point not the one written, or an offset below the next expected one) is
//!   a *regression*, counted in `weir_sink_offset_regressions_total`, logged, and
//!   handled by `source.onOffsetRegression`: the partition stops and `/readyz` names
//!   it, or the new log is written from its start as the next generation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::future::join_all;
use object_store::ObjectStoreExt as _;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weir_crds::settings::SinkSettings;
use weir_crds::sink::{OffsetRegressionPolicy, SinkMode};

use super::buffer::{FlushReason, PartitionBuffer, SinkRecord, over_budget};
use super::encode::Encoder;
use super::flush::{FlushContext, FlushError, FlushJob};
use super::metrics::SinkMetrics;
use super::progress::{self, LogCheck, ProgressMarker, RecordFingerprint, Recovery};
use super::upload::Storage;

/// Flushes (across partitions) running at once.
const FLUSH_CONCURRENCY: usize = 4;
/// How often ages, retries and batch completion are checked.
const TICK: Duration = Duration::from_millis(200);
/// Longest wait for Kafka metadata calls made in the rebalance hook.
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a batch run waits for the group to assign it partitions.
const BATCH_ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// First and longest wait before retrying a failed flush.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

type Tp = (Arc<str>, i32);

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

#[derive(Debug)]
struct PartitionState {
    epoch: u64,
    /// The log generation ranges are written in.
    generation: u32,
    /// Start of the next range; unknown until the first record when nothing was ever
    /// committed or flushed.
    next_start: Option<i64>,
    /// The next offset accepted; anything below is already in a range.
    expected: i64,
    /// The last offset consumed into the current buffer's range.
    last_seen: Option<i64>,
    /// The fingerprint of the record at `last_seen` when it was skipped by
    /// `source.eventTypes`; a kept one is the buffer's last record, fingerprinted only
    /// when its range is taken, so the hot path checksums nothing.
    last_fingerprint: Option<RecordFingerprint>,
    /// The newest written record, consumed again first to check that the log still
    /// holds it.
    verify: Option<(i64, RecordFingerprint)>,
    /// The log went back and `source.onOffsetRegression` is `fail`: why. Nothing more
    /// of the partition is written until an operator decides.
    regressed: Option<String>,
    buffer: PartitionBuffer,
    /// A range whose marker exists but whose files are incomplete: it is written again
    /// (exactly `start..=end`) before anything else.
    redo: Option<ProgressMarker>,
    flushing: bool,
    in_flight_bytes: usize,
    failed: Option<(FlushJob, Instant, u32)>,
    /// Another sink owns the partition; ignore it until the next assignment.
    fenced: bool,
    /// Batch mode: the end offset seen at assignment.
    stop_at: Option<i64>,
    /// Consumed since the metrics were last updated.
    counts: ConsumedCounts,
}

#[derive(Debug, Default)]
struct ConsumedCounts {
    records: u64,
    bytes: u64,
    skipped: u64,
}

impl PartitionState {
    /// A failed flush whose retry time has come, taken for its next attempt (with the
    /// same range), counted in flight again.
    fn take_due_retry(&mut self, now: Instant) -> Option<(FlushJob, u32)> {
        let (_, retry_at, _) = self.failed.as_ref()?;
        if *retry_at > now {
            return None;
        }
        let (job, _, attempt) = self.failed.take()?;
        self.flushing = true;
        self.in_flight_bytes = job.bytes;
        Some((job, attempt))
    }

    fn batch_done(&self) -> bool {
        self.fenced
            || self.regressed.is_some()
            || self.stop_at.is_some_and(|end| {
                self.expected >= end
                    && self.buffer.is_empty()
                    && !self.flushing
                    && self.failed.is_none()
                    && self.redo.is_none()
            })
    }
}

#[derive(Default)]
struct Partitions {
    map: HashMap<Tp, PartitionState>,
    assigned_once: bool,
    next_epoch: u64,
    report: SinkReport,
    fatal: Option<String>,
}

impl Partitions {
    fn buffered_bytes(&self) -> usize {
        self.map
            .values()
            .map(|p| p.buffer.bytes() + p.in_flight_bytes)
            .sum()
    }

    /// The bytes that pause consumption when over budget. A range being redone is left
    /// out: it can only be flushed once its last record is consumed, and its size is
    /// bounded by the flush that first wrote it.
    fn pausing_bytes(&self) -> usize {
        self.map
            .values()
            .filter(|p| p.redo.is_none())
            .map(|p| p.buffer.bytes() + p.in_flight_bytes)
            .sum()
    }
}

struct Core {
    settings: SinkSettings,
    flush: FlushContext,
    metrics: Arc<SinkMetrics>,
    partitions: Mutex<Partitions>,
    changed: Condvar,
    runtime: Handle,
    slots: Arc<Semaphore>,
    batch: bool,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, Partitions> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct SinkContext {
    core: Arc<Core>,
    logs: weir_runtime::kafka::KafkaLogs,
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.logs.log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.logs.error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in statistics.topics {
            let lag: i64 = stats
                .partitions
                .iter()
                .filter(|(p, s)| **p >= 0 && s.consumer_lag >= 0)
                .map(|(_, s)| s.consumer_lag)
                .sum();
            let label = self.core.metrics.topics.get(&topic).to_string();
            self.core
                .metrics
                .consumer_lag
                .with_label_values(&[&label])
                .set(lag);
        }
    }
}

impl ConsumerContext for SinkContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(tpl);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed");
                Ok(())
            }
        };
        if let Err(error) = result {
            tracing::error!(%error, "cannot apply the rebalance");
        }
    }
}

impl SinkContext {
    /// Recovers newly assigned partitions from their markers and sets their start
    /// offsets in `tpl`, before any of their records is fetched.
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let committed: HashMap<(String, i32), i64> = match consumer
            .committed_offsets(tpl.clone(), KAFKA_CALL_TIMEOUT)
        {
            Ok(list) => list
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                    _ => None,
                })
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read committed offsets; reading every progress marker instead");
                HashMap::new()
            }
        };
        let storage = &self.core.flush.storage;
        let recoveries = tokio::task::block_in_place(|| {
            self.core
                .runtime
                .block_on(join_all(parts.iter().map(|(topic, partition)| {
                    let hint = committed.get(&(topic.clone(), *partition)).copied();
                    progress::recover(storage, topic, *partition, hint)
                })))
        });
        let mut state = self.core.lock();
        state.assigned_once = true;
        for ((topic, partition), recovery) in parts.into_iter().zip(recoveries) {
            let recovery = match recovery {
                Ok(r) => r,
                Err(error) => {
                    state.fatal = Some(format!(
                        "cannot recover {topic}/{partition} from the object store: {error}"
                    ));
                    continue;
                }
            };
            let watermarks = match consumer.fetch_watermarks(&topic, partition, KAFKA_CALL_TIMEOUT)
            {
                Ok(watermarks) => Some(watermarks),
                Err(error) if self.core.batch => {
                    state.fatal = Some(format!(
                        "cannot read the end offset of {topic}/{partition}: {error}"
                    ));
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%topic, partition, %error, "cannot read the partition's start and end offsets; a replaced log is found at its first record instead");
                    None
                }
            };
            state.next_epoch += 1;
            let tp: Tp = (topic.as_str().into(), partition);
            let (ps, position) =
                self.core
                    .start_partition(&tp, recovery, watermarks, state.next_epoch);
            if self.core.batch
                && let Some(reason) = &ps.regressed
            {
                state.fatal = Some(reason.clone());
            }
            if let Some(offset) = position
                && let Err(error) = tpl.set_partition_offset(&topic, partition, offset)
            {
                state.fatal = Some(format!("cannot position {topic}/{partition}: {error}"));
                continue;
            }
            tracing::info!(
                %topic, partition, resume = ?position, generation = ps.generation,
                redo = ps.redo.is_some(), "partition assigned"
            );
            state.map.insert(tp, ps);
        }
        self.core
            .metrics
            .assigned_partitions
            .set(state.map.len() as i64);
        self.core.changed.notify_all();
    }

    /// Waits for the revoked partitions' flushes in flight, then forgets them (their
    /// buffers are consumed again by the next owner).
    fn revoke(&self, tpl: &TopicPartitionList) {
        let revoked: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let deadline = Instant::now() + self.core.settings.shutdown.drain_timeout;
        tokio::task::block_in_place(|| {
            let mut state = self.core.lock();
            loop {
                let busy = revoked.iter().any(|(t, p)| {
                    state
                        .map
                        .get(&(Arc::from(t.as_str()), *p))
                        .is_some_and(|s| s.flushing)
                });
                let now = Instant::now();
                if !busy || now >= deadline {
                    break;
                }
                state = self
                    .core
                    .changed
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            for (topic, partition) in &revoked {
                state.map.remove(&(Arc::from(topic.as_str()), *partition));
                tracing::info!(%topic, partition, "partition revoked");
            }
            self.core
                .metrics
                .assigned_partitions
                .set(state.map.len() as i64);
            self.core
                .metrics
                .buffered_bytes
                .set(state.buffered_bytes() as i64);
        });
    }
}

impl Core {
    /// The state of a newly assigned partition and where to position it (`None`:
    /// Kafka's committed offset or `auto.offset.reset` decides), from its recovery
    /// and, when they could be read, its log's start and end offsets.
    fn start_partition(
        &self,
        tp: &Tp,
        recovery: Recovery,
        watermarks: Option<(i64, i64)>,
        epoch: u64,
    ) -> (PartitionState, Option<Offset>) {
        let (topic, partition) = (&tp.0, tp.1);
        let check = watermarks.map_or(LogCheck::Consistent, |(low, high)| {
            recovery.check_log(low, high)
        });
        let mut ps = PartitionState {
            epoch,
            generation: recovery.generation,
            next_start: recovery.resume,
            expected: recovery.resume.unwrap_or(0),
            last_seen: None,
            last_fingerprint: None,
            verify: None,
            regressed: None,
            buffer: PartitionBuffer::default(),
            redo: recovery.redo,
            flushing: false,
            in_flight_bytes: 0,
            failed: None,
            fenced: false,
            stop_at: watermarks.filter(|_| self.batch).map(|(_, high)| high),
            counts: ConsumedCounts::default(),
        };
        let mut position = recovery.resume.map(Offset::Offset);
        match check {
            LogCheck::Regressed {
                written_end,
                log_end,
            } => {
                let reason = format!(
                    "the log of {topic}/{partition} ends at offset {log_end} but offsets up to {written_end} (generation {}) are already in files",
                    ps.generation
                );
                position = match self.regress(tp, &mut ps, reason) {
                    Regression::Restart => Some(Offset::Beginning),
                    Regression::Stop => Some(Offset::End),
                };
            }
            LogCheck::Expired { from, log_start } => {
                tracing::error!(
                    %topic, partition, from, to = log_start - 1,
                    "records were deleted by Kafka's retention before the sink wrote them; they are lost"
                );
                self.metrics
                    .records_expired
                    .with_label_values(&[self.metrics.topics.get(topic)])
                    .inc_by((log_start - from) as u64);
                ps.next_start = Some(log_start);
                ps.expected = log_start;
                position = Some(Offset::Offset(log_start));
            }
            LogCheck::Consistent => {
                if let (None, Some((end, Some(fingerprint)))) = (&ps.redo, recovery.written)
                    && watermarks.is_none_or(|(low, _)| low <= end)
                {
                    // Read the newest written record again to see that it is still there.
                    ps.verify = Some((end, fingerprint));
                    ps.expected = end;
                    position = Some(Offset::Offset(end));
                }
                if let (true, Some((low, _))) = (self.batch, watermarks) {
                    let start = recovery.resume.unwrap_or(low).max(low);
                    ps.next_start = Some(start);
                    if ps.verify.is_none() {
                        ps.expected = start;
                        position = Some(Offset::Offset(start));
                    }
                }
            }
        }
        (ps, position)
    }

    /// Handles a partition whose log went back, as `source.onOffsetRegression` says,
    /// loudly. The caller positions the partition: at the log's start for a new
    /// generation, anywhere for a stopped one.
    fn regress(&self, tp: &Tp, ps: &mut PartitionState, reason: String) -> Regression {
        let (topic, partition) = (&tp.0, tp.1);
        self.metrics
            .offset_regressions
            .with_label_values(&[self.metrics.topics.get(topic)])
            .inc();
        let reason = format!(
            "{reason}: the topic was re-created, the sink points at another cluster, or Kafka lost acknowledged records"
        );
        if let Some(lost) = ps.redo.take() {
            tracing::error!(
                %topic, partition, start = lost.start, end = lost.end, generation = lost.generation,
                "a range whose files were never all uploaded can no longer be written: its records are not in the new log"
            );
        }
        match self.settings.source.on_offset_regression {
            OffsetRegressionPolicy::Fail => {
                let reason = format!(
                    "{reason}; nothing more of it is written (set source.onOffsetRegression: newGeneration to write the new log beside the old files)"
                );
                tracing::error!(%topic, partition, "{reason}");
                ps.regressed = Some(reason);
                Regression::Stop
            }
            OffsetRegressionPolicy::NewGeneration => {
                ps.generation += 1;
                tracing::warn!(
                    %topic, partition, generation = ps.generation,
                    "{reason}; writing the new log from its start as generation {}", ps.generation
                );
                ps.next_start = None;
                ps.expected = 0;
                ps.last_seen = None;
                ps.last_fingerprint = None;
                ps.verify = None;
                Regression::Restart
            }
        }
    }
}

/// What became of a partition whose log went back.
enum Regression {
    /// Consume it again from the log's start, as a new generation.
    Restart,
    /// Nothing more of it is written.
    Stop,
}

type SinkConsumer = StreamConsumer<SinkContext>;

/// A running sink.
pub struct Sink {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<SinkReport>>>,
}

impl Sink {
    /// Opens the store (failing with the store's own error when it cannot be reached,
    /// e.g. wrong credentials), joins the consumer group and starts consuming. Needs a
    /// multi-threaded Tokio runtime (the rebalance hook blocks its thread while it reads
    /// the store).
    pub async fn start(settings: SinkSettings) -> anyhow::Result<Self> {
        if Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread {
            anyhow::bail!("the sink needs a multi-threaded Tokio runtime");
        }
        let encoder = Encoder::new(&settings)?;
        let storage = Storage::open(&settings.storage)?;
        if let Err(error) = probe(&storage).await {
            anyhow::bail!(
                "cannot use storage {}{}: {error}",
                settings.storage.url,
                storage_hint(&error)
            );
        }
        let metrics = Arc::new(SinkMetrics::new());
        let dead_letter_topic = match &settings.dead_letter.topic {
            Some(topic) => Some((
                weir_runtime::kafka::producer_config(&settings.kafka)
                    .create()
                    .context("cannot create the dead-letter producer (check kafka.properties)")?,
                topic.clone(),
                settings.kafka.delivery_timeout,
            )),
            None => None,
        };
        let core = Arc::new(Core {
            flush: FlushContext {
                storage,
                encoder,
                dead_letter_topic,
                metrics: metrics.clone(),
            },
            metrics,
            partitions: Mutex::new(Partitions::default()),
            changed: Condvar::new(),
            runtime: Handle::current(),
            slots: Arc::new(Semaphore::new(FLUSH_CONCURRENCY)),
            batch: settings.mode == SinkMode::Batch,
            settings,
        });
        let consumer: SinkConsumer = consumer_config(&core.settings)
            .create_with_context(SinkContext {
                core: core.clone(),
                logs: Default::default(),
            })
            .context("cannot create the Kafka consumer (check kafka.properties)")?;
        let mut topics: Vec<&str> = core
            .settings
            .source
            .topics
            .iter()
            .map(String::as_str)
            .collect();
        if let Some(pattern) = core
            .settings
            .source
            .topic_pattern
            .as_deref()
            .filter(|p| !p.is_empty())
        {
            topics.push(pattern);
        }
        consumer
            .subscribe(&topics)
            .context("cannot subscribe to the source topics")?;
        let consumer = Arc::new(consumer);

        let listener = tokio::net::TcpListener::bind(core.settings.metrics_addr)
            .await
            .with_context(|| format!("cannot listen on {}", core.settings.metrics_addr))?;
        let metrics_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let ops = axum::Router::new()
            .route("/metrics", get(render_metrics))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(core.clone());
        let server_stop = CancellationToken::new();
        let server =
            weir_runtime::telemetry::serve_http(listener, ops, server_stop.clone(), "sink metrics");
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let result = run(core, consumer, stop).await;
                server_stop.cancel();
                let _ = server.await;
                result
            }
        });
        Ok(Self {
            metrics_addr,
            stop,
            task: Some(task),
        })
    }

    /// Asks the sink to flush what it holds, commit and stop.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until the sink stops: after [`Self::stop`], at the end of a batch run, or
    /// on a fatal error. Cancel-safe.
    pub async fn wait(&mut self) -> anyhow::Result<SinkReport> {
        let Some(task) = self.task.as_mut() else {
            anyhow::bail!("the sink has already stopped");
        };
        let result = task.await;
        self.task = None;
        result.context("the sink task failed")?
    }

    /// Stops the sink and waits for it.
    pub async fn shutdown(mut self) -> anyhow::Result<SinkReport> {
        self.stop();
        self.wait().await
    }
}

/// What to check, from the kind of a storage error.
fn storage_hint(error: &object_store::Error) -> &'static str {
    use object_store::Error as E;
    let io_kind = std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .find_map(|e| e.downcast_ref::<std::io::Error>())
    .map(std::io::Error::kind);
    match error {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            " (check the credentials: storage.accessKeyIdFile/secretAccessKeyFile or the AWS_* variables)"
        }
        E::NotFound { .. } => " (the bucket does not exist)",
        _ if io_kind == Some(std::io::ErrorKind::PermissionDenied) => {
            " (the sink may not write there: check the directory's owner and mode)"
        }
        _ => "",
    }
}

/// Writes a probe object, lists the prefix and deletes the probe, so wrong credentials,
/// a missing bucket or a directory the sink may not write fail at start rather than at
/// the first flush. The write comes first: object_store reports its failures by kind
/// (permission, not found), which picks the hint; a failed listing is reported as is.
async fn probe(storage: &Storage) -> Result<(), object_store::Error> {
    let probe = storage.path(&format!("{}/.write-probe", super::layout::PROGRESS_DIR));
    storage
        .store
        .put(&probe, bytes::Bytes::from_static(b"weir").into())
        .await?;
    let prefix = storage.path("");
    storage.store.list_with_delimiter(Some(&prefix)).await?;
    match storage.store.delete(&probe).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

fn consumer_config(settings: &SinkSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
        .set("group.id", &settings.source.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        // New topics matching source.topicPattern are found this often.
        .set("topic.metadata.refresh.interval.ms", "30000");
    for (key, value) in &settings.kafka.properties {
        config.set(key, value);
    }
    config
}

async fn render_metrics(State(core): State<Arc<Core>>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        weir_runtime::telemetry::render(&core.metrics.registry),
    )
}

async fn readyz(State(core): State<Arc<Core>>) -> impl IntoResponse {
    let state = core.lock();
    let failing = state
        .map
        .iter()
        .find_map(|((t, p), s)| s.failed.as_ref().map(|_| format!("{t}/{p}")));
    let regressed = state.map.values().find_map(|s| s.regressed.clone());
    match (&state.fatal, state.assigned_once, failing) {
        (Some(fatal), _, _) => (StatusCode::SERVICE_UNAVAILABLE, fatal.clone()),
        (None, true, _) if regressed.is_some() => (
            StatusCode::SERVICE_UNAVAILABLE,
            regressed.unwrap_or_default(),
        ),
        (None, false, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not yet assigned partitions by the consumer group".into(),
        ),
        (None, true, Some(partition)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("flushes of {partition} are failing and being retried (see the logs)"),
        ),
        (None, true, None) => (StatusCode::OK, "ready".into()),
    }
}

async fn run(
    core: Arc<Core>,
    consumer: Arc<SinkConsumer>,
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
                Err(error) => tracing::warn!(%error, "Kafka consumer error"),
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

fn on_message(
    core: &Arc<Core>,
    consumer: &Arc<SinkConsumer>,
    message: &rdkafka::message::BorrowedMessage<'_>,
) {
    let topic = message.topic();
    let partition = message.partition();
    let offset = message.offset();
    let tp: Tp = (Arc::from(topic), partition);
    let mut state = core.lock();
    let Some(ps) = state.map.get_mut(&tp) else {
        return;
    };
    // Counted here, published to Prometheus on the next tick: label lookups per
    // record showed up in profiles.
    ps.counts.records += 1;
    ps.counts.bytes += message.payload_len() as u64;
    if ps.fenced || ps.regressed.is_some() || ps.stop_at.is_some_and(|end| offset >= end) {
        return;
    }
    let fingerprint = || {
        RecordFingerprint::of(
            message.timestamp().to_millis(),
            message.key(),
            message.payload(),
        )
    };
    let went_back = match ps.verify.take() {
        Some((at, written)) if offset == at && fingerprint() == written => {
            // The newest written record is still there: the log is the one written.
            ps.expected = at + 1;
            return;
        }
        Some((at, _)) if offset == at => Some(format!(
            "the record at offset {offset} of {topic}/{partition} is not the one written there"
        )),
        // Offsets above: the written record was deleted (compaction, retention), so
        // there is nothing to compare; below: caught next.
        _ => (offset < ps.expected).then(|| {
            format!(
                "{topic}/{partition} gave offset {offset} after {}",
                ps.expected - 1
            )
        }),
    };
    if let Some(reason) = went_back {
        on_regression(core, consumer, &mut state, &tp, reason);
        return;
    }
    ps.expected = offset + 1;
    ps.next_start.get_or_insert(offset);
    let headers = message
        .headers()
        .map(|h| h.iter().map(|h| (h.key, h.value)).collect::<Vec<_>>());
    let record = SinkRecord::from_parts(
        topic,
        offset,
        message.timestamp().to_millis(),
        message.key(),
        message.payload(),
        headers.unwrap_or_default(),
    );
    let keep = core.settings.keeps(&record.event_type);
    if !keep {
        ps.counts.skipped += 1;
    }
    let now = Instant::now();
    let mut jobs = Vec::new();
    let redo_end = ps.redo.as_ref().map(|m| m.end);
    match redo_end {
        Some(end) if offset <= end => {
            ps.last_seen = Some(offset);
            ps.last_fingerprint = (!keep).then(fingerprint);
            if keep {
                ps.buffer.push(record, now);
            }
            if offset == end {
                jobs.extend(take_job(&tp, ps, FlushReason::Redo));
            }
        }
        Some(_) => {
            // The range's last record is gone (compaction or retention): write the
            // range with what it still has.
            jobs.extend(take_job(&tp, ps, FlushReason::Redo));
            ps.last_seen = Some(offset);
            ps.last_fingerprint = (!keep).then(fingerprint);
            if keep {
                ps.buffer.push(record, now);
            }
        }
        None => {
            ps.last_seen = Some(offset);
            ps.last_fingerprint = (!keep).then(fingerprint);
            if keep {
                ps.buffer.push(record, now);
            }
            let at_end = ps.stop_at.is_some_and(|end| ps.expected >= end);
            let reason = ps
                .buffer
                .due(&core.settings.flush, now)
                .or(at_end.then_some(FlushReason::Drain));
            if let Some(reason) = reason {
                jobs.extend(take_job(&tp, ps, reason));
            }
        }
    }
    let mut started: Vec<(Tp, FlushJob)> = jobs.into_iter().map(|j| (tp.clone(), j)).collect();
    started.extend(enforce_budget(core, &mut state));
    update_buffered(core, &state);
    drop(state);
    for (tp, job) in started {
        spawn_flush(core.clone(), consumer.clone(), tp, job);
    }
}

/// A record below what was already consumed or written: handled in place when the
/// partition holds nothing (the usual case: it is the first record after an
/// assignment), else the sink stops with an error and its restart handles it from the
/// markers, since records already buffered belong to the old log.
fn on_regression(
    core: &Arc<Core>,
    consumer: &Arc<SinkConsumer>,
    state: &mut Partitions,
    tp: &Tp,
    reason: String,
) {
    let Some(ps) = state.map.get_mut(tp) else {
        return;
    };
    let idle = ps.buffer.is_empty() && !ps.flushing && ps.failed.is_none();
    if !idle {
        core.metrics
            .offset_regressions
            .with_label_values(&[core.metrics.topics.get(&tp.0)])
            .inc();
        state.fatal = Some(format!(
            "{reason} while records of the old log were still being written; the sink stops so that a restart handles it from the progress markers"
        ));
        return;
    }
    match core.regress(tp, ps, reason) {
        Regression::Stop => {
            if core.batch {
                state.fatal = ps.regressed.clone();
            }
        }
        Regression::Restart => {
            // librdkafka drops what it fetched before the seek, so the next record of
            // the partition is the new log's first.
            if let Err(error) = consumer.seek(&tp.0, tp.1, Offset::Beginning, KAFKA_CALL_TIMEOUT) {
                state.fatal = Some(format!(
                    "cannot go back to the start of {}/{}: {error}",
                    tp.0, tp.1
                ));
            }
        }
    }
}

/// Takes the partition's buffer as a flush job, unless a flush is already in flight
/// (the buffer then waits for it) or a redo still waits for its last record.
fn take_job(tp: &Tp, ps: &mut PartitionState, reason: FlushReason) -> Option<FlushJob> {
    if ps.flushing || ps.failed.is_some() || ps.fenced {
        return None;
    }
    let (marker, start, end) = match ps.redo.take() {
        Some(marker) if reason == FlushReason::Redo => {
            let (s, e) = (marker.start, marker.end);
            (Some(marker), s, e)
        }
        Some(marker) => {
            ps.redo = Some(marker);
            return None;
        }
        None => {
            if ps.buffer.is_empty() {
                return None;
            }
            let start = ps.next_start?;
            (None, start, ps.last_seen?)
        }
    };
    let bytes = ps.buffer.bytes();
    let records = ps.buffer.take();
    let last = match records.last() {
        _ if ps.last_seen != Some(end) => None,
        Some(r) if r.offset == end => Some(RecordFingerprint::of(
            r.timestamp_ms,
            r.key.as_deref(),
            Some(&r.payload),
        )),
        _ => ps.last_fingerprint,
    };
    ps.flushing = true;
    ps.in_flight_bytes = bytes;
    if marker.is_some() {
        // Whatever follows the redone range belongs to the next one.
        ps.last_seen = None;
    }
    Some(FlushJob {
        topic: tp.0.clone(),
        partition: tp.1,
        generation: ps.generation,
        start,
        end,
        last,
        records,
        marker,
        reason,
        bytes,
    })
}

/// Flushes the biggest buffers while the budget is exceeded.
fn enforce_budget(core: &Core, state: &mut Partitions) -> Vec<(Tp, FlushJob)> {
    let total = state.buffered_bytes();
    if total <= core.settings.flush.memory_budget {
        return Vec::new();
    }
    let sizes: Vec<(Tp, usize)> = state
        .map
        .iter()
        .filter(|(_, s)| !s.flushing && s.redo.is_none())
        .map(|(tp, s)| (tp.clone(), s.buffer.bytes()))
        .collect();
    let in_flight: usize = state.map.values().map(|s| s.in_flight_bytes).sum();
    let chosen = over_budget(
        &sizes,
        total - in_flight.min(total),
        core.settings.flush.memory_budget.saturating_sub(in_flight),
    );
    chosen
        .into_iter()
        .filter_map(|tp| {
            let ps = state.map.get_mut(&tp)?;
            take_job(&tp, ps, FlushReason::Memory).map(|job| (tp, job))
        })
        .collect()
}

fn update_buffered(core: &Core, state: &Partitions) {
    core.metrics
        .buffered_bytes
        .set(state.buffered_bytes() as i64);
}

fn on_tick(core: &Arc<Core>, consumer: &Arc<SinkConsumer>) {
    let now = Instant::now();
    let mut state = core.lock();
    let mut started = Vec::new();
    for (tp, ps) in state.map.iter_mut() {
        let counts = std::mem::take(&mut ps.counts);
        if counts.records > 0 {
            let label = [core.metrics.topics.get(&tp.0)];
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
        if ps.failed.is_some() {
            if let Some((job, attempt)) = ps.take_due_retry(now) {
                started.push((tp.clone(), job, attempt));
            }
            continue;
        }
        let at_end = ps.stop_at.is_some_and(|end| ps.expected >= end);
        let reason = ps
            .buffer
            .due(&core.settings.flush, now)
            .or((at_end && !ps.buffer.is_empty()).then_some(FlushReason::Drain));
        if let Some(job) = reason.and_then(|reason| take_job(tp, ps, reason)) {
            started.push((tp.clone(), job, 0));
        }
    }
    update_buffered(core, &state);
    drop(state);
    for (tp, job, attempt) in started {
        spawn_flush_attempt(core.clone(), consumer.clone(), tp, job, attempt);
    }
}

fn spawn_flush(core: Arc<Core>, consumer: Arc<SinkConsumer>, tp: Tp, job: FlushJob) {
    spawn_flush_attempt(core, consumer, tp, job, 0);
}

fn spawn_flush_attempt(
    core: Arc<Core>,
    consumer: Arc<SinkConsumer>,
    tp: Tp,
    mut job: FlushJob,
    attempt: u32,
) {
    let epoch = core.lock().map.get(&tp).map(|s| s.epoch);
    tokio::spawn(async move {
        let Ok(_permit) = core.slots.clone().acquire_owned().await else {
            return;
        };
        let started = Instant::now();
        let result = core.flush.run(&mut job).await;
        let mut state = core.lock();
        let Some(ps) = state.map.get_mut(&tp).filter(|s| Some(s.epoch) == epoch) else {
            // Revoked meanwhile: the next owner continues from the markers.
            core.changed.notify_all();
            return;
        };
        ps.flushing = false;
        ps.in_flight_bytes = 0;
        match result {
            Ok(flushed) => {
                ps.next_start = Some(job.end + 1);
                let mut commit = TopicPartitionList::new();
                let _ = commit.add_partition_offset(&tp.0, tp.1, Offset::Offset(job.end + 1));
                if let Err(error) = consumer.commit(&commit, CommitMode::Async) {
                    tracing::warn!(%error, topic = %tp.0, partition = tp.1, "offset commit failed; the progress markers still hold the position");
                }
                super::failpoint::hit("after_commit");
                core.metrics
                    .flush_seconds
                    .with_label_values(&[job.reason.label()])
                    .observe(started.elapsed().as_secs_f64());
                tracing::debug!(
                    topic = %tp.0, partition = tp.1, start = job.start, end = job.end,
                    records = flushed.records, reason = job.reason.label(), "flushed"
                );
                state.report.flushes += 1;
                state.report.records_written += flushed.records as u64;
                state.report.dead_letters += flushed.dead_letters as u64;
            }
            Err(FlushError::Fenced { start }) => {
                tracing::warn!(topic = %tp.0, partition = tp.1, start, "another sink owns this partition now; dropping its buffer");
                ps.fenced = true;
                ps.buffer.take();
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
                let backoff = RETRY_BACKOFF
                    .0
                    .saturating_mul(1 << attempt.min(8))
                    .min(RETRY_BACKOFF.1);
                tracing::error!(
                    topic = %tp.0, partition = tp.1, start = job.start, end = job.end,
                    %error, retry_in = ?backoff,
                    "flush failed; offsets stay uncommitted and the same range is retried"
                );
                ps.in_flight_bytes = job.bytes;
                ps.failed = Some((job, Instant::now() + backoff, attempt + 1));
            }
        }
        update_buffered(&core, &state);
        core.changed.notify_all();
    });
}

/// On stop: flushes every buffer, retries failed flushes and waits for all of them,
/// within `shutdown.drainTimeout`. A redo still missing records is left for the next
/// start.
async fn drain(core: &Arc<Core>, consumer: &Arc<SinkConsumer>) {
    let deadline = Instant::now() + core.settings.shutdown.drain_timeout;
    loop {
        let mut started = Vec::new();
        let busy;
        {
            let now = Instant::now();
            let mut state = core.lock();
            for (tp, ps) in state.map.iter_mut() {
                if ps.failed.is_some() {
                    if let Some((job, attempt)) = ps.take_due_retry(now) {
                        started.push((tp.clone(), job, attempt));
                    }
                } else if let Some(job) = take_job(tp, ps, FlushReason::Drain) {
                    started.push((tp.clone(), job, 0));
                }
            }
            busy = state.map.values().any(|s| {
                s.flushing
                    || s.failed.is_some()
                    || (!s.buffer.is_empty() && s.redo.is_none() && !s.fenced)
            });
        }
        for (tp, job, attempt) in started {
            spawn_flush_attempt(core.clone(), consumer.clone(), tp, job, attempt);
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
    let mut commit = TopicPartitionList::new();
    for ((topic, partition), ps) in core.lock().map.iter() {
        if let Some(next) = ps.next_start {
            let _ = commit.add_partition_offset(topic, *partition, Offset::Offset(next));
        }
    }
    if commit.count() > 0 {
        let consumer = consumer.clone();
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit(&commit, CommitMode::Sync)).await;
        if let Ok(Err(error)) = committed {
            tracing::warn!(%error, "final offset commit failed; the progress markers still hold the position");
        }
    }
}
