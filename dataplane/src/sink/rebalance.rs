//! The consumer's context: librdkafka's logs and statistics, and the rebalance hook.
//!
//! Invariants:
//! - an assigned partition is recovered from its progress markers (and its log checked
//!   against them) before librdkafka fetches any of its records: the hook runs inside
//!   the rebalance callback and sets the start offset in the assignment it applies;
//! - a revoked partition's flushes in flight are awaited (up to
//!   `shutdown.drainTimeout`) before it is forgotten, so the next owner finds complete
//!   markers whenever it can.
//!
//! The callback runs on a runtime thread that librdkafka's poll borrowed; it blocks that
//! thread (`block_in_place`) while it reads the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::consume::{Core, KAFKA_CALL_TIMEOUT};
use super::partition::{Found, PartitionState, Position, Tp};
use super::progress::{self, Recovery};

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
        self.core.lock().assigned_once = true;
        for ((topic, partition), recovery) in parts.into_iter().zip(recoveries) {
            let started = recovery
                .map_err(|error| {
                    format!("cannot recover {topic}/{partition} from the object store: {error}")
                })
                .and_then(|recovery| self.start_partition(consumer, &topic, partition, recovery));
            let mut state = self.core.lock();
            let (ps, position) = match started {
                Ok(started) => started,
                Err(fatal) => {
                    state.fatal = Some(fatal);
                    continue;
                }
            };
            let offset = match position {
                Position::Committed => None,
                Position::At(offset) => Some(Offset::Offset(offset)),
                Position::Beginning => Some(Offset::Beginning),
                Position::End => Some(Offset::End),
            };
            if let Some(offset) = offset
                && let Err(error) = tpl.set_partition_offset(&topic, partition, offset)
            {
                state.fatal = Some(format!("cannot position {topic}/{partition}: {error}"));
                continue;
            }
            if self.core.batch
                && let Some(reason) = &ps.regressed
            {
                state.fatal = Some(reason.clone());
            }
            tracing::info!(
                %topic, partition, resume = ?position, generation = ps.generation,
                redo = ps.is_redoing(), "partition assigned"
            );
            let tp: Tp = (topic.as_str().into(), partition);
            state.map.insert(tp, ps);
            self.core
                .metrics
                .assigned_partitions
                .set(state.map.len() as i64);
        }
        self.core.changed.notify_all();
    }

    /// The state of a newly assigned partition and where to read it from; an error
    /// that stops the sink when the log's offsets are needed (batch) and unreadable.
    fn start_partition(
        &self,
        consumer: &BaseConsumer<Self>,
        topic: &str,
        partition: i32,
        recovery: Recovery,
    ) -> Result<(PartitionState, Position), String> {
        let watermarks = match consumer.fetch_watermarks(topic, partition, KAFKA_CALL_TIMEOUT) {
            Ok(watermarks) => Some(watermarks),
            Err(error) if self.core.batch => {
                return Err(format!(
                    "cannot read the end offset of {topic}/{partition}: {error}"
                ));
            }
            Err(error) => {
                tracing::warn!(%topic, partition, %error, "cannot read the partition's start and end offsets; a replaced log is found at its first record instead");
                None
            }
        };
        let epoch = self.core.lock().next_epoch();
        let (ps, position, found) = PartitionState::start(
            (topic.into(), partition),
            recovery,
            watermarks,
            self.core.batch,
            self.core.settings.source.on_offset_regression,
            epoch,
        );
        match found {
            Found::Consistent => {}
            Found::Regressed(_) => self.core.count_regression(topic),
            Found::Expired { from, log_start } => {
                tracing::error!(
                    %topic, partition, from, to = log_start - 1,
                    "records were deleted by Kafka's retention before the sink wrote them; they are lost"
                );
                self.core
                    .metrics
                    .records_expired
                    .with_label_values(&[self.core.metrics.topics.get(topic)])
                    .inc_by((log_start - from) as u64);
            }
        }
        Ok((ps, position))
    }

    /// Waits for the revoked partitions' flushes in flight, then forgets them (their
    /// buffers are consumed again by the next owner).
    fn revoke(&self, tpl: &TopicPartitionList) {
        let revoked: Vec<Tp> = partitions_of(tpl)
            .into_iter()
            .map(|(t, p)| (Arc::from(t.as_str()), p))
            .collect();
        let deadline = Instant::now() + self.core.settings.shutdown.drain_timeout;
        tokio::task::block_in_place(|| {
            let mut state = self.core.lock();
            loop {
                let busy = revoked
                    .iter()
                    .any(|tp| state.map.get(tp).is_some_and(PartitionState::is_flushing));
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
            for tp in &revoked {
                state.map.remove(tp);
                tracing::info!(topic = %tp.0, partition = tp.1, "partition revoked");
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
