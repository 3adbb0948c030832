//! The Kafka source: the consumer's configuration, its context (librdkafka's logs and
//! statistics, the rebalance hook) and its [`RecordSource`] implementation.
//!
//! Invariant: an assigned partition is taken by the core (recovered from its markers,
//! its log checked against them) inside the rebalance callback, before librdkafka
//! fetches any of its records: the hook sets the start offset in the assignment it
//! applies. A revoked partition is released (its flush in flight awaited) before the
//! callback returns.
//!
//! The callback runs on a runtime thread that librdkafka's poll borrowed; it blocks that
//! thread (`block_in_place`) while it reads the store.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use weir_crds::settings::SinkSettings;

use super::consume::Core;
use super::partition::{Anchor, Position, Tp};
use super::progress;
use super::source::RecordSource;

/// Longest wait for Kafka calls made from the loop and the rebalance hook.
const KAFKA_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The consumer, with the rebalance hook as its context.
pub(super) type SinkConsumer = StreamConsumer<SinkContext>;

/// The consumer's settings: manual commits (after the files), earliest reset.
fn consumer_config(settings: &SinkSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
        .set("group.id", &settings.source.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "statistics.interval.ms",
            weir_runtime::kafka::STATISTICS_INTERVAL,
        )
        // New topics matching source.topicPattern are found this often.
        .set("topic.metadata.refresh.interval.ms", "30000");
    for (key, value) in &settings.kafka.properties {
        config.set(key, value);
    }
    config
}

/// The consumer of `core`'s settings, subscribed to its source topics (and pattern).
pub(super) fn subscribe(core: Arc<Core>) -> anyhow::Result<SinkConsumer> {
    use anyhow::Context as _;
    let consumer: SinkConsumer = consumer_config(&core.settings)
        .create_with_context(SinkContext {
            core: core.clone(),
            logs: Default::default(),
        })
        .context("cannot create the Kafka consumer (check kafka.properties)")?;
    let source = &core.settings.source;
    let mut topics: Vec<&str> = source.topics.iter().map(String::as_str).collect();
    if let Some(pattern) = source.topic_pattern.as_deref().filter(|p| !p.is_empty()) {
        topics.push(pattern);
    }
    consumer
        .subscribe(&topics)
        .context("cannot subscribe to the source topics")?;
    Ok(consumer)
}

impl RecordSource for SinkConsumer {
    type Record<'a> = BorrowedMessage<'a>;
    type Error = KafkaError;

    fn recv(
        &self,
    ) -> impl std::future::Future<Output = Result<BorrowedMessage<'_>, KafkaError>> + Send {
        StreamConsumer::recv(self)
    }

    fn commit(&self, positions: &[(Tp, i64)], wait: bool) -> Result<(), KafkaError> {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in positions {
            list.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        let mode = if wait {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        Consumer::commit(self, &list, mode)
    }

    fn seek(
        &self,
        tp: &Tp,
        position: Position,
        _anchor: Option<&Anchor>,
    ) -> Result<(), KafkaError> {
        // librdkafka drops what it fetched before the seek (its fetch queue is
        // versioned), so the next record of the partition is the one at `position`.
        Consumer::seek(
            self,
            &tp.0,
            tp.1,
            kafka_offset(position),
            KAFKA_CALL_TIMEOUT,
        )
    }

    fn watermarks(&self, tp: &Tp) -> Result<(i64, i64), KafkaError> {
        self.fetch_watermarks(&tp.0, tp.1, KAFKA_CALL_TIMEOUT)
    }
}

/// librdkafka's hooks into the sink.
pub(super) struct SinkContext {
    pub core: Arc<Core>,
    pub logs: weir_runtime::kafka::KafkaLogs,
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.logs.log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // A pattern subscription matching no topic yet is how every new cluster starts
        // (topics appear with their first event): not an error. A topic named in
        // `source.topics` that does not exist is one.
        let unknown_topic = error.rdkafka_error_code()
            == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition);
        if unknown_topic && self.core.settings.source.topics.is_empty() {
            tracing::info!(%reason, "no topic matches source.topicPattern yet; waiting for one");
            return;
        }
        self.logs.error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.core.metrics.kafka.observe(&statistics);
        let state = self.core.lock();
        for (topic, stats) in &statistics.topics {
            let name: Arc<str> = Arc::from(topic.as_str());
            // Only this sink's partitions: librdkafka keeps figures of revoked ones, which
            // another replica now reports.
            let lag: i64 = stats
                .partitions
                .iter()
                .filter_map(|(partition, figures)| {
                    let ps = state.map.get(&(name.clone(), *partition))?;
                    unwritten_records(figures, ps.next_start)
                })
                .sum();
            let label = self.core.metrics.topics.get(topic).to_string();
            self.core
                .metrics
                .consumer_lag
                .with_label_values(&[&label])
                .set(lag);
        }
    }
}

/// Records of a partition not yet in files: past the start of the sink's next range
/// (`written_up_to`, from its markers or flushes), else past the committed offset, else,
/// while nothing was ever committed or written, past the log's start. librdkafka's own
/// `consumer_lag` reads -1 until the group commits, and its committed offset stays
/// unknown for partitions the sink starts at its markers' position, either of which
/// would show an unwritten backlog wrongly. `None` before the log's end is known.
fn unwritten_records(
    partition: &rdkafka::statistics::Partition,
    written_up_to: Option<i64>,
) -> Option<i64> {
    if partition.hi_offset < 0 {
        return None;
    }
    let written_up_to = match written_up_to {
        Some(offset) => offset,
        None if partition.committed_offset >= 0 => partition.committed_offset,
        None if partition.lo_offset >= 0 => partition.lo_offset,
        None => return None,
    };
    Some((partition.hi_offset - written_up_to).max(0))
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
            RebalanceProtocol::Cooperative
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

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl SinkContext {
    /// Recovers newly assigned partitions from their markers and sets their start
    /// offsets in `tpl`, before any of their records is fetched.
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let parts = partitions_of(tpl);
        let committed = committed_offsets(consumer, tpl);
        let storage = &self.core.flush.storage;
        let recoveries = tokio::task::block_in_place(|| {
            self.core
                .runtime
                .block_on(join_all(parts.iter().map(|(topic, partition)| {
                    let hint = committed.get(&(topic.clone(), *partition)).copied();
                    progress::recover(storage, topic, *partition, hint)
                })))
        });
        for ((topic, partition), recovery) in parts.into_iter().zip(recoveries) {
            let recovery = match recovery {
                Ok(recovery) => recovery,
                Err(error) => {
                    self.core.fail_assignment(format!(
                        "cannot recover {topic}/{partition} from the object store: {error}"
                    ));
                    continue;
                }
            };
            let watermarks = match consumer.fetch_watermarks(&topic, partition, KAFKA_CALL_TIMEOUT)
            {
                Ok(watermarks) => Some(watermarks),
                Err(error) if self.core.batch => {
                    self.core.fail_assignment(format!(
                        "cannot read the end offset of {topic}/{partition}: {error}"
                    ));
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%topic, partition, %error, "cannot read the partition's start and end offsets; a replaced log is found at its first record instead");
                    None
                }
            };
            // Kafka seeks by offset: the anchor is for logs that cannot.
            let (position, _anchor) =
                self.core
                    .take_partition((topic.as_str().into(), partition), recovery, watermarks);
            if position == Position::Committed {
                continue;
            }
            if let Err(error) = tpl.set_partition_offset(&topic, partition, kafka_offset(position))
            {
                self.core
                    .fail_assignment(format!("cannot position {topic}/{partition}: {error}"));
            }
        }
        self.core.assignment_done();
    }

    /// Releases the revoked partitions (awaiting their flushes in flight).
    fn revoke(&self, tpl: &TopicPartitionList) {
        let revoked: Vec<Tp> = partitions_of(tpl)
            .into_iter()
            .map(|(t, p)| (Arc::from(t.as_str()), p))
            .collect();
        tokio::task::block_in_place(|| self.core.release_partitions(&revoked));
    }
}

/// Kafka's offset for a position.
fn kafka_offset(position: Position) -> Offset {
    match position {
        Position::Committed => Offset::Stored,
        Position::At(offset) => Offset::Offset(offset),
        Position::Beginning => Offset::Beginning,
        Position::End => Offset::End,
    }
}

/// The group's committed offsets of the assigned partitions: a hint that narrows the
/// marker listing. Without them every marker is read.
fn committed_offsets(
    consumer: &BaseConsumer<SinkContext>,
    tpl: &TopicPartitionList,
) -> HashMap<(String, i32), i64> {
    match consumer.committed_offsets(tpl.clone(), KAFKA_CALL_TIMEOUT) {
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
    }
}
