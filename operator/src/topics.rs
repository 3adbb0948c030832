//! Topics a pipeline lists are created, or grown to their partition count, through the
//! Kafka admin API. They are never deleted or shrunk: losing a topic loses data, so
//! that stays a deliberate act outside the operator.
//!
//! Kafka is slow to fail (an unreachable broker answers nothing), so the reconciles never
//! wait on it:
//! - Each pipeline has one background worker for its current Kafka settings and topic
//!   list; a changed list replaces the worker.
//! - A reconcile reads the worker's last outcome. Only for a list it has not seen before
//!   does it wait, at most [`TopicSettings::first_wait`], so a healthy cluster is
//!   reported ready on the first reconcile.
//! - An attempt is bounded by [`TopicSettings::attempt_timeout`]. A failure is logged
//!   and retried with backoff; success is checked again after
//!   [`TopicSettings::recheck_after`] (a topic deleted by hand comes back).
//! - Each change of outcome is sent on [`TopicEnsurer::take_changes`], so the
//!   controller reconciles the pipeline at once instead of at its next resync.
//! - A worker whose pipeline has not been reconciled for
//!   [`TopicSettings::forget_after`] stops: the pipeline is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use weir_crds::pipeline::{KafkaSpec, TopicSpec};

use crate::build::hash_of;

/// `bootstrap.servers` as the pipeline's pods resolve it, for a client running in the
/// operator's own namespace: a bare Service name (`kafka:9092`) means the Service in the
/// pipeline's namespace, so it becomes `kafka.<namespace>.svc:9092`. Names with a dot,
/// IP addresses and `localhost` resolve the same from anywhere and are kept.
pub fn bootstrap_in_namespace(servers: &str, namespace: &str) -> String {
    servers
        .split(',')
        .map(|entry| {
            let entry = entry.trim();
            // An optional listener name, as in `SASL_SSL://kafka:9092`.
            let (scheme, address) = match entry.split_once("://") {
                Some((scheme, address)) => (format!("{scheme}://"), address),
                None => (String::new(), entry),
            };
            let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
            let bare = !host.is_empty()
                && !host.contains(['.', '[', ']', ':', '/'])
                && host != "localhost";
            match (bare, port) {
                (false, _) => entry.to_string(),
                (true, "") => format!("{scheme}{host}.{namespace}.svc"),
                (true, port) => format!("{scheme}{host}.{namespace}.svc:{port}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Creates and grows topics. The real one talks to Kafka; tests use a fake.
pub trait TopicAdmin: Send + Sync {
    /// Makes every topic exist with at least its partitions.
    fn ensure<'a>(
        &'a self,
        kafka: &'a KafkaSpec,
        topics: &'a [TopicSpec],
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The admin client of the data plane (`weir_runtime::kafka::ensure_topics`).
pub struct KafkaTopicAdmin;

impl TopicAdmin for KafkaTopicAdmin {
    fn ensure<'a>(
        &'a self,
        kafka: &'a KafkaSpec,
        topics: &'a [TopicSpec],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            weir_runtime::kafka::ensure_topics(kafka, topics)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Where a pipeline's topics stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicState {
    /// The first attempt has not finished.
    Creating,
    /// Every topic exists with at least its partitions.
    Ready,
    /// The last attempt failed; another follows after a backoff.
    Failed(String),
}

/// Timing of the topic workers.
#[derive(Clone, Debug)]
pub struct TopicSettings {
    /// Longest one attempt may take before it counts as failed.
    pub attempt_timeout: Duration,
    /// Longest a reconcile waits for the first outcome of a list it has not seen.
    pub first_wait: Duration,
    /// First retry delay after a failure; it doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long a success is trusted before Kafka is asked again.
    pub recheck_after: Duration,
    /// How long a worker runs on without its pipeline being reconciled.
    pub forget_after: Duration,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(10),
            first_wait: Duration::from_secs(1),
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            recheck_after: Duration::from_secs(600),
            forget_after: Duration::from_secs(1800),
        }
    }
}

/// One pipeline's worker.
struct Worker {
    /// Hash of the Kafka settings and topics it ensures.
    key: String,
    state: watch::Receiver<TopicState>,
    /// When its pipeline was last reconciled.
    seen: Arc<Mutex<Instant>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Workers = Arc<Mutex<HashMap<String, Worker>>>;

/// The topic workers of every pipeline.
pub struct TopicEnsurer {
    admin: Arc<dyn TopicAdmin>,
    settings: TopicSettings,
    workers: Workers,
    changed: mpsc::Sender<String>,
    changes: Mutex<Option<mpsc::Receiver<String>>>,
}

impl TopicEnsurer {
    pub fn new(admin: Arc<dyn TopicAdmin>, settings: TopicSettings) -> Self {
        // A full channel drops the notice: the pipeline's periodic requeue catches up.
        let (changed, changes) = mpsc::channel(1024);
        Self {
            admin,
            settings,
            workers: Arc::default(),
            changed,
            changes: Mutex::new(Some(changes)),
        }
    }

    /// The keys (`namespace/name`) of pipelines whose topic state changed; once.
    pub fn take_changes(&self) -> Option<mpsc::Receiver<String>> {
        self.changes.lock().expect("lock").take()
    }

    /// The state of `pipeline`'s topics, starting a worker for a new list.
    pub async fn state(
        &self,
        pipeline: &str,
        kafka: &KafkaSpec,
        topics: &[TopicSpec],
    ) -> TopicState {
        let key = hash_of(&(kafka, topics));
        let mut state = {
            let mut workers = self.workers.lock().expect("lock");
            match workers.get(pipeline) {
                Some(worker) if worker.key == key && !worker.task.is_finished() => {
                    *worker.seen.lock().expect("lock") = Instant::now();
                    worker.state.clone()
                }
                _ => {
                    let worker = self.spawn(pipeline, key, kafka.clone(), topics.to_vec());
                    let state = worker.state.clone();
                    // Replacing a worker drops, and so stops, the old one.
                    workers.insert(pipeline.into(), worker);
                    state
                }
            }
        };
        if *state.borrow() == TopicState::Creating {
            let first = state.wait_for(|s| *s != TopicState::Creating);
            let _ = tokio::time::timeout(self.settings.first_wait, first).await;
        }
        state.borrow().clone()
    }

    fn spawn(
        &self,
        pipeline: &str,
        key: String,
        kafka: KafkaSpec,
        topics: Vec<TopicSpec>,
    ) -> Worker {
        let (state, receiver) = watch::channel(TopicState::Creating);
        let seen = Arc::new(Mutex::new(Instant::now()));
        let job = Job {
            admin: self.admin.clone(),
            settings: self.settings.clone(),
            pipeline: pipeline.into(),
            kafka,
            topics,
            state,
            changed: self.changed.clone(),
            seen: seen.clone(),
            workers: Arc::downgrade(&self.workers),
            key: key.clone(),
        };
        let task = tokio::spawn(job.run()).abort_handle();
        Worker {
            key,
            state: receiver,
            seen,
            task,
        }
    }
}

/// What a worker task owns.
struct Job {
    admin: Arc<dyn TopicAdmin>,
    settings: TopicSettings,
    pipeline: String,
    kafka: KafkaSpec,
    topics: Vec<TopicSpec>,
    state: watch::Sender<TopicState>,
    changed: mpsc::Sender<String>,
    seen: Arc<Mutex<Instant>>,
    workers: std::sync::Weak<Mutex<HashMap<String, Worker>>>,
    key: String,
}

impl Job {
    async fn run(self) {
        let mut failures: u32 = 0;
        loop {
            // On a thread of its own: librdkafka's admin client blocks (metadata fetches,
            // its drop), and must not hold a runtime thread the reconciles and the Lease
            // renewal need. A timed-out attempt finishes there on its own.
            let (admin, kafka, topics) =
                (self.admin.clone(), self.kafka.clone(), self.topics.clone());
            // (A plain thread, not `spawn_blocking`, so that a stuck attempt never holds
            // up the runtime's shutdown.)
            let runtime = tokio::runtime::Handle::current();
            let (done, attempt) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = done.send(runtime.block_on(admin.ensure(&kafka, &topics)));
            });
            let outcome = match tokio::time::timeout(self.settings.attempt_timeout, attempt).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err("the topic admin stopped without an answer".to_string()),
                Err(_) => Err(format!(
                    "no answer from Kafka within {}",
                    humantime::format_duration(self.settings.attempt_timeout)
                )),
            };
            let (next, wait) = match outcome {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(pipeline = %self.pipeline, failures, "topics ready after failed attempts");
                    }
                    failures = 0;
                    (TopicState::Ready, self.settings.recheck_after)
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = self
                        .settings
                        .backoff_min
                        .saturating_mul(1 << (failures - 1).min(16))
                        .min(self.settings.backoff_max);
                    tracing::warn!(
                        pipeline = %self.pipeline,
                        bootstrap = %self.kafka.bootstrap_servers,
                        %error,
                        retry_in = %humantime::format_duration(delay),
                        "creating or growing topics failed"
                    );
                    (TopicState::Failed(error), delay)
                }
            };
            let changed = self.state.send_if_modified(|state| {
                let changed = *state != next;
                *state = next;
                changed
            });
            if changed {
                let _ = self.changed.try_send(self.pipeline.clone());
            }
            tokio::time::sleep(wait).await;
            if self.seen.lock().expect("lock").elapsed() > self.settings.forget_after {
                tracing::debug!(pipeline = %self.pipeline, "pipeline gone: topic worker stops");
                if let Some(workers) = self.workers.upgrade() {
                    let mut workers = workers.lock().expect("lock");
                    if workers
                        .get(&self.pipeline)
                        .is_some_and(|w| w.key == self.key)
                    {
                        // Dropping our own entry aborts this task, after the lock is freed.
                        let ours = workers.remove(&self.pipeline);
                        drop(workers);
                        drop(ours);
                    }
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_service_names_resolve_in_the_pipelines_namespace() {
        assert_eq!(
            bootstrap_in_namespace(
                "kafka:9092, kafka-1.kafka.svc:9092,10.0.0.1:9092",
                "analytics"
            ),
            "kafka.analytics.svc:9092,kafka-1.kafka.svc:9092,10.0.0.1:9092"
        );
        assert_eq!(
            bootstrap_in_namespace("localhost:9092", "a"),
            "localhost:9092"
        );
        assert_eq!(bootstrap_in_namespace("[::1]:9092", "a"), "[::1]:9092");
        assert_eq!(bootstrap_in_namespace("broker", "a"), "broker.a.svc");
        assert_eq!(
            bootstrap_in_namespace("SASL_SSL://kafka:9093", "a"),
            "SASL_SSL://kafka.a.svc:9093"
        );
    }
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails its first `failures` calls; with `hang`, never answers.
    struct Admin {
        calls: AtomicUsize,
        failures: usize,
        hang: bool,
    }

    impl TopicAdmin for Admin {
        fn ensure<'a>(
            &'a self,
            _: &'a KafkaSpec,
            _: &'a [TopicSpec],
        ) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async move {
                let call = self.calls.fetch_add(1, Ordering::SeqCst);
                if self.hang {
                    futures_util::future::pending::<()>().await;
                }
                if call < self.failures {
                    Err("broker transport failure".into())
                } else {
                    Ok(())
                }
            })
        }
    }

    fn settings() -> TopicSettings {
        TopicSettings {
            attempt_timeout: Duration::from_millis(200),
            first_wait: Duration::from_millis(500),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(40),
            recheck_after: Duration::from_secs(600),
            forget_after: Duration::from_secs(600),
        }
    }

    fn topics(names: &[&str]) -> Vec<TopicSpec> {
        names
            .iter()
            .map(|n| serde_json::from_value(serde_json::json!({"name": n})).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_hanging_kafka_never_holds_a_reconcile_past_the_first_wait() {
        let admin = Arc::new(Admin {
            calls: AtomicUsize::new(0),
            failures: 0,
            hang: true,
        });
        let ensurer = TopicEnsurer::new(
            admin,
            TopicSettings {
                first_wait: Duration::from_millis(50),
                ..settings()
            },
        );
        let started = Instant::now();
        let state = ensurer
            .state("ns/p", &KafkaSpec::default(), &topics(&["a"]))
            .await;
        assert_eq!(state, TopicState::Creating);
        assert!(started.elapsed() < Duration::from_millis(150));
        // The attempt times out into a failure with the reason, announced on the channel.
        let mut changes = ensurer.take_changes().unwrap();
        assert_eq!(changes.recv().await.as_deref(), Some("ns/p"));
        let state = ensurer
            .state("ns/p", &KafkaSpec::default(), &topics(&["a"]))
            .await;
        assert!(
            matches!(&state, TopicState::Failed(e) if e.contains("no answer from Kafka within 200ms")),
            "{state:?}"
        );
    }

    #[tokio::test]
    async fn failures_retry_in_the_background_and_success_is_announced() {
        let admin = Arc::new(Admin {
            calls: AtomicUsize::new(0),
            failures: 2,
            hang: false,
        });
        let ensurer = TopicEnsurer::new(admin.clone(), settings());
        let mut changes = ensurer.take_changes().unwrap();
        let state = ensurer
            .state("ns/p", &KafkaSpec::default(), &topics(&["a"]))
            .await;
        assert_eq!(state, TopicState::Failed("broker transport failure".into()));
        assert_eq!(changes.recv().await.as_deref(), Some("ns/p"));
        // The second failure is the same state: no notice. The third attempt succeeds.
        assert_eq!(changes.recv().await.as_deref(), Some("ns/p"));
        let state = ensurer
            .state("ns/p", &KafkaSpec::default(), &topics(&["a"]))
            .await;
        assert_eq!(state, TopicState::Ready);
        assert_eq!(admin.calls.load(Ordering::SeqCst), 3);
        // The same list again asks Kafka nothing.
        ensurer
            .state("ns/p", &KafkaSpec::default(), &topics(&["a"]))
            .await;
        assert_eq!(admin.calls.load(Ordering::SeqCst), 3);
        // A new list starts over.
        let state = ensurer
            .state("ns/p", &KafkaSpec::default(), &topics(&["a", "b"]))
            .await;
        assert_eq!(state, TopicState::Ready);
        assert_eq!(admin.calls.load(Ordering::SeqCst), 4);
    }
}
