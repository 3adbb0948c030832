//! Kafka clients: the producer's configuration, topic creation, and the in-process
//! mock cluster `weir dev` and the tests run on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use weir_crds::pipeline::{KafkaSpec, TopicSpec};

/// Errors talking to Kafka outside the publish path.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// A client could not be created (usually a bad librdkafka property).
    #[error("cannot create a Kafka client: {0}")]
    Client(rdkafka::error::KafkaError),
    /// Topic creation or growth failed.
    #[error("cannot ensure topic {topic}: {message}")]
    Topic {
        /// The topic.
        topic: String,
        /// Why.
        message: String,
    },
}

/// How long a kind of librdkafka error or log line stays quiet after it was logged.
const LOG_WINDOW: Duration = Duration::from_secs(30);

/// librdkafka's error callbacks and log lines, logged at most once per kind (the error
/// code, or the log facility) every 30 s, with a count of the ones held back: a broker
/// outage otherwise logs the same line several times a second.
#[derive(Default)]
pub struct KafkaLogs {
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

impl KafkaLogs {
    /// How many lines of `kind` were held back since the last one, or `None` when this
    /// one is to be held back too.
    fn admit(&self, kind: String) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match last.get_mut(&kind) {
            Some((at, held)) if now.duration_since(*at) < LOG_WINDOW => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                *at = now;
                Some(std::mem::take(held))
            }
            None => {
                last.insert(kind, (now, 0));
                Some(0)
            }
        }
    }

    /// For `ClientContext::error`.
    pub fn error(&self, error: &KafkaError, reason: &str) {
        let kind = format!("error {:?}", error.rdkafka_error_code());
        if let Some(held) = self.admit(kind) {
            tracing::error!(target: "librdkafka", held_back = held, "{error}: {reason}");
        }
    }

    /// A delivery that failed: one WARN per topic and error code per window, with the
    /// count held back. Every failure is still counted in the metrics and answered to
    /// its client; during an outage each event would otherwise log a line.
    pub fn delivery_failed(&self, topic: &str, error: &KafkaError) {
        // Keyed by the error code only: topics come from clients' event types, and a key
        // per topic would grow without bound. The line names the topic it saw first.
        let kind = format!("delivery {:?}", error.rdkafka_error_code());
        if let Some(held) = self.admit(kind) {
            tracing::warn!(%topic, %error, held_back = held, "Kafka delivery failed");
        }
    }

    /// For `ClientContext::log`.
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility, "{message}");
                return;
            }
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Notice => {
                tracing::info!(target: "librdkafka", facility, "{message}");
                return;
            }
            _ => {}
        }
        let Some(held) = self.admit(format!("log {facility}")) else {
            return;
        };
        if matches!(level, RDKafkaLogLevel::Warning) {
            tracing::warn!(target: "librdkafka", facility, held_back = held, "{message}");
        } else {
            tracing::error!(target: "librdkafka", facility, held_back = held, "{message}");
        }
    }
}

/// The producer configuration: Weir's defaults, then the user's properties on top.
pub fn producer_config(spec: &KafkaSpec) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &spec.bootstrap_servers)
        // An ack must mean the event survives a broker loss, and retries must not
        // duplicate or reorder.
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "message.timeout.ms",
            millis(librdkafka_timeout(spec.delivery_timeout)),
        )
        // A request in flight to a broker that stopped answering is failed only after
        // this, whatever message.timeout.ms says.
        .set(
            "request.timeout.ms",
            millis(librdkafka_timeout(spec.delivery_timeout).min(Duration::from_secs(30))),
        )
        // Small batches of many connections add up: a short linger fills requests
        // without adding visible latency.
        .set("linger.ms", "5")
        // With sync acks admission bounds the queue; with async acks this does, and a
        // full queue answers RATE_LIMITED rather than growing.
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("batch.num.messages", "10000");
    for (key, value) in &spec.properties {
        config.set(key, value);
    }
    config
}

/// librdkafka's own timeouts for a delivery timeout: a little shorter, because it
/// checks for expired messages about once a second, so that its report (naming the
/// Kafka error) rather than the gateway's own deadline answers a batch, and both come
/// within `kafka.deliveryTimeout`.
pub fn librdkafka_timeout(delivery_timeout: Duration) -> Duration {
    let margin = (delivery_timeout / 5).min(Duration::from_secs(1));
    (delivery_timeout - margin).max(Duration::from_millis(1))
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

fn admin_config(spec: &KafkaSpec) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &spec.bootstrap_servers);
    // Security settings apply to the admin client too; producer-only ones do not.
    for (key, value) in &spec.properties {
        if key.starts_with("security.") || key.starts_with("ssl.") || key.starts_with("sasl.") {
            config.set(key, value);
        }
    }
    config
}

/// Creates missing topics and grows ones with fewer partitions. Never deletes or shrinks.
/// One function: describe, create, grow and confirm share the admin client and the
/// per-topic errors they collect.
pub async fn ensure_topics(spec: &KafkaSpec, topics: &[TopicSpec]) -> Result<(), KafkaSetupError> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = admin_config(spec)
        .create()
        .map_err(KafkaSetupError::Client)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let replication = TopicReplication::Fixed(t.replication_factor.unwrap_or(-1));
            t.configs.iter().fold(
                NewTopic::new(&t.name, t.partitions, replication),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|e| KafkaSetupError::Topic {
            topic: topics
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            message: e.to_string(),
        })?;
    let mut existing = Vec::new();
    for result in results {
        match result {
            Ok(_) => {}
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(name),
            Err((topic, code)) => {
                return Err(KafkaSetupError::Topic {
                    topic,
                    message: code.to_string(),
                });
            }
        }
    }
    if existing.is_empty() {
        return Ok(());
    }
    // Grow existing topics that have fewer partitions than asked.
    let metadata = {
        let admin_client = admin.inner();
        admin_client
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(KafkaSetupError::Client)?
    };
    let mut grow = Vec::new();
    for topic in topics.iter().filter(|t| existing.contains(&t.name)) {
        let current = metadata
            .topics()
            .iter()
            .find(|m| m.name() == topic.name)
            .map(|m| m.partitions().len() as i32)
            .unwrap_or(0);
        if current < topic.partitions {
            grow.push(NewPartitions::new(&topic.name, topic.partitions as usize));
        }
    }
    if !grow.is_empty() {
        let names = || {
            grow.iter()
                .map(|g| g.topic_name)
                .collect::<Vec<_>>()
                .join(",")
        };
        for result in admin
            .create_partitions(&grow, &options)
            .await
            .map_err(|e| KafkaSetupError::Topic {
                topic: names(),
                message: format!("cannot add partitions: {e}"),
            })?
        {
            if let Err((topic, code)) = result {
                return Err(KafkaSetupError::Topic {
                    topic,
                    message: format!("cannot add partitions: {code}"),
                });
            }
        }
    }
    Ok(())
}

/// librdkafka's in-process mock cluster: real Kafka protocol on loopback ports, no
/// broker to install. Not `Send`: keep it on the task that created it.
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedKafka {
    /// Starts a mock cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Result<Self, KafkaSetupError> {
        let cluster = MockCluster::new(brokers).map_err(KafkaSetupError::Client)?;
        Ok(Self { cluster })
    }

    /// The bootstrap address any Kafka client can use.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates the spec's topics through the mock's own API (the mock brokers do not
    /// serve the admin API). Topics not listed are created on first use.
    pub fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), KafkaSetupError> {
        for topic in topics {
            self.cluster
                .create_topic(&topic.name, topic.partitions, 1)
                .map_err(|e| KafkaSetupError::Topic {
                    topic: topic.name.clone(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// The cluster, for fault injection in tests.
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn repeated_kinds_are_held_back_and_counted() {
        let logs = KafkaLogs::default();
        assert_eq!(logs.admit("a".into()), Some(0));
        assert_eq!(logs.admit("a".into()), None);
        assert_eq!(logs.admit("a".into()), None);
        assert_eq!(
            logs.admit("b".into()),
            Some(0),
            "other kinds are not held back"
        );
        logs.last.lock().unwrap().get_mut("a").unwrap().0 -= LOG_WINDOW;
        assert_eq!(
            logs.admit("a".into()),
            Some(2),
            "the next one says how many were held"
        );
    }

    /// An outage fails every event: one line per error code per window, whatever the
    /// topics (they come from clients, so they must not grow the limiter).
    #[test]
    fn delivery_failures_log_once_per_error_code() {
        let logs = KafkaLogs::default();
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        for _ in 0..1000 {
            logs.delivery_failed("clicks", &timed_out);
        }
        logs.delivery_failed("views", &timed_out);
        logs.delivery_failed("clicks", &too_large);
        for topic in 0..1000 {
            logs.delivery_failed(&format!("random-{topic}"), &timed_out);
        }
        let kinds = logs.last.lock().unwrap();
        assert_eq!(kinds.len(), 2, "one key per error code");
        let held: u64 = kinds.values().map(|(_, held)| held).sum();
        assert_eq!(
            held, 2000,
            "all but the first of each code held back, and counted"
        );
    }
}

/// How often librdkafka reports its statistics (`statistics.interval.ms`) to the client
/// contexts that export them. Set only on clients whose context exports them: rdkafka's
/// default context logs every report.
pub const STATISTICS_INTERVAL: &str = "5000";

/// librdkafka's statistics as Prometheus gauges, one set per client: its queue, and per
/// broker its connection state, round-trip time, throttling and requests waiting. Brokers
/// are labelled by `host:port/id`; bootstrap entries (no id yet) are left out, so the
/// series are bounded by the cluster's size.
#[derive(Clone)]
pub struct KafkaClientMetrics {
    queue_messages: prometheus::IntGauge,
    queue_bytes: prometheus::IntGauge,
    broker_up: prometheus::IntGaugeVec,
    broker_rtt: prometheus::GaugeVec,
    broker_throttle: prometheus::GaugeVec,
    broker_outbuf: prometheus::IntGaugeVec,
    broker_waiting: prometheus::IntGaugeVec,
}

impl KafkaClientMetrics {
    /// Creates and registers the gauges.
    pub fn new(registry: &prometheus::Registry) -> Self {
        use prometheus::{GaugeVec, IntGauge, IntGaugeVec, Opts};
        fn register<C: prometheus::core::Collector + Clone + 'static>(
            registry: &prometheus::Registry,
            collector: C,
        ) -> C {
            registry
                .register(Box::new(collector.clone()))
                .expect("unique metric");
            collector
        }
        let int = |name: &str, help: &str| {
            register(registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let per_broker = |name: &str, help: &str| {
            register(
                registry,
                IntGaugeVec::new(Opts::new(name, help), &["broker"]).expect("valid metric"),
            )
        };
        let seconds = |name: &str, help: &str| {
            register(
                registry,
                GaugeVec::new(Opts::new(name, help), &["broker"]).expect("valid metric"),
            )
        };
        Self {
            queue_messages: int(
                "weir_kafka_client_queue_messages",
                "Messages in the Kafka client's queues (librdkafka msg_cnt).",
            ),
            queue_bytes: int(
                "weir_kafka_client_queue_bytes",
                "Bytes of messages in the Kafka client's queues (librdkafka msg_size).",
            ),
            broker_up: per_broker(
                "weir_kafka_broker_up",
                "1 while the connection to the broker is up, else 0.",
            ),
            broker_rtt: seconds(
                "weir_kafka_broker_rtt_seconds",
                "Average request round-trip time to the broker over the last interval.",
            ),
            broker_throttle: seconds(
                "weir_kafka_broker_throttle_seconds",
                "Average time the broker throttled requests over the last interval.",
            ),
            broker_outbuf: per_broker(
                "weir_kafka_broker_outbuf_requests",
                "Requests waiting to be sent to the broker.",
            ),
            broker_waiting: per_broker(
                "weir_kafka_broker_waiting_responses",
                "Requests sent to the broker and awaiting its answer.",
            ),
        }
    }

    /// Sets the gauges from one statistics report (`ClientContext::stats`).
    pub fn observe(&self, statistics: &rdkafka::Statistics) {
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.queue_messages.set(as_i64(statistics.msg_cnt));
        self.queue_bytes.set(as_i64(statistics.msg_size));
        for broker in statistics.brokers.values().filter(|b| b.nodeid >= 0) {
            let label = [broker.name.as_str()];
            self.broker_up
                .with_label_values(&label)
                .set(i64::from(broker.state == "UP"));
            let micros = |window: &Option<rdkafka::statistics::Window>| {
                window.as_ref().map_or(0.0, |w| w.avg as f64 / 1e6)
            };
            self.broker_rtt
                .with_label_values(&label)
                .set(micros(&broker.rtt));
            self.broker_throttle
                .with_label_values(&label)
                .set(micros(&broker.throttle));
            self.broker_outbuf
                .with_label_values(&label)
                .set(broker.outbuf_cnt);
            self.broker_waiting
                .with_label_values(&label)
                .set(broker.waitresp_cnt);
        }
    }
}
