//! Records as the sink keeps them between consuming and flushing, and the per-partition
//! buffer that decides when a flush is due.
//!
//! A buffer holds a contiguous run of one partition's offsets, in offset order (Kafka
//! delivers a partition in order; the consumer drops anything below the next expected
//! offset). A flush takes the whole buffer, so flushed ranges never overlap.

use std::time::{Duration, Instant};

use weir_crds::sink::{EventTime, FlushSpec};

use super::progress::{RecordFingerprint, SourcePosition};
use crate::record;

/// Fixed per-record cost counted against the memory budget besides its bytes.
const RECORD_OVERHEAD: usize = 160;

/// One Kafka record, with the gateway's headers parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SinkRecord {
    /// Kafka offset.
    pub offset: i64,
    /// Kafka timestamp, Unix milliseconds.
    pub timestamp_ms: Option<i64>,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value: the event's payload.
    pub payload: Vec<u8>,
    /// `weir-event-type`; the topic name for records that lack it.
    pub event_type: String,
    /// `weir-req-guid`.
    pub req_guid: Option<String>,
    /// `weir-conn-group`.
    pub conn_group: Option<String>,
    /// `weir-tenant`.
    pub tenant: Option<String>,
    /// `weir-sent-time`, Unix microseconds.
    pub sent_time_us: Option<i64>,
    /// `weir-receive-time`, Unix microseconds.
    pub receive_time_us: Option<i64>,
    /// The record's position in its log's own terms, when the log has one (not Kafka).
    pub source_position: Option<SourcePosition>,
}

impl SinkRecord {
    /// Builds a record from a Kafka record's parts. Headers the gateway did not write
    /// are ignored; a record from another producer (no event-type header) takes the
    /// topic name as its event type.
    pub fn from_parts<'a>(
        topic: &str,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Self {
        let mut out = SinkRecord {
            offset,
            timestamp_ms,
            key: key.map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec).unwrap_or_default(),
            ..Default::default()
        };
        let read = record::ReadHeaders::parse(headers);
        out.event_type = read.event_type.unwrap_or_default();
        out.req_guid = read.req_guid;
        out.conn_group = read.conn_group;
        out.tenant = read.tenant;
        out.sent_time_us = read.sent_time_us;
        out.receive_time_us = read.receive_time_us;
        if out.event_type.is_empty() {
            out.event_type = topic.to_string();
        }
        out
    }

    /// What tells this record from another at its offset (see [`RecordFingerprint`]).
    pub fn fingerprint(&self) -> RecordFingerprint {
        RecordFingerprint::of(self.timestamp_ms, self.key.as_deref(), Some(&self.payload))
            .at(self.source_position.clone())
    }

    /// Bytes this record counts against the memory budget.
    pub fn size(&self) -> usize {
        RECORD_OVERHEAD
            + self.payload.len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self.event_type.len()
            + self.req_guid.as_ref().map_or(0, String::len)
            + self.conn_group.as_ref().map_or(0, String::len)
            + self.tenant.as_ref().map_or(0, String::len)
            + self.source_position.as_ref().map_or(0, String::len)
    }

    /// The time that places this record in a time partition, Unix microseconds: the
    /// chosen time, else the Kafka timestamp, else 0.
    pub fn event_time_us(&self, which: EventTime) -> i64 {
        let chosen = match which {
            EventTime::ReceiveTime => self.receive_time_us,
            EventTime::SentTime => self.sent_time_us,
            EventTime::KafkaTimestamp => None,
        };
        chosen
            .or(self.timestamp_ms.map(|ms| ms.saturating_mul(1000)))
            .unwrap_or(0)
    }
}

/// Why a flush is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushReason {
    /// `flush.maxRecords` reached.
    Records,
    /// `flush.maxBytes` reached.
    Bytes,
    /// The oldest record waited `flush.maxAge`.
    Age,
    /// The memory budget is exceeded and this is among the biggest buffers.
    Memory,
    /// A redone range is complete (see the sink's recovery).
    Redo,
    /// Shutdown, a revoked partition, or the end of a batch run.
    Drain,
}

impl FlushReason {
    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Records => "records",
            Self::Bytes => "bytes",
            Self::Age => "age",
            Self::Memory => "memory",
            Self::Redo => "redo",
            Self::Drain => "drain",
        }
    }
}

/// The records of one partition waiting for a flush.
#[derive(Debug, Default)]
pub struct PartitionBuffer {
    records: Vec<SinkRecord>,
    bytes: usize,
    oldest: Option<Instant>,
}

impl PartitionBuffer {
    /// Appends a record; it must follow the last one's offset.
    pub fn push(&mut self, record: SinkRecord, now: Instant) {
        debug_assert!(self.records.last().is_none_or(|r| r.offset < record.offset));
        self.bytes += record.size();
        self.oldest.get_or_insert(now);
        self.records.push(record);
    }

    /// Bytes counted against the memory budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Buffered records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// First and last buffered offsets.
    pub fn range(&self) -> Option<(i64, i64)> {
        Some((self.records.first()?.offset, self.records.last()?.offset))
    }

    /// Whether a size or age limit asks for a flush.
    pub fn due(&self, policy: &FlushSpec, now: Instant) -> Option<FlushReason> {
        if self.records.is_empty() {
            None
        } else if self.records.len() >= policy.max_records {
            Some(FlushReason::Records)
        } else if self.bytes >= policy.max_bytes {
            Some(FlushReason::Bytes)
        } else if self
            .oldest
            .is_some_and(|t| now.saturating_duration_since(t) >= policy.max_age)
        {
            Some(FlushReason::Age)
        } else {
            None
        }
    }

    /// How long until the age limit, if anything is buffered.
    pub fn age_deadline(&self, policy: &FlushSpec, now: Instant) -> Option<Duration> {
        self.oldest.map(|t| {
            policy
                .max_age
                .saturating_sub(now.saturating_duration_since(t))
        })
    }

    /// Empties the buffer, returning its records.
    pub fn take(&mut self) -> Vec<SinkRecord> {
        self.bytes = 0;
        self.oldest = None;
        std::mem::take(&mut self.records)
    }
}

/// The partitions to flush, biggest first, to bring `total` bytes under `budget`.
pub fn over_budget<K: Clone>(sizes: &[(K, usize)], total: usize, budget: usize) -> Vec<K> {
    let mut by_size: Vec<&(K, usize)> = sizes.iter().filter(|(_, s)| *s > 0).collect();
    by_size.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    let mut remaining = total;
    let mut out = Vec::new();
    for (key, size) in by_size {
        if remaining <= budget {
            break;
        }
        remaining -= size;
        out.push(key.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64, payload: usize) -> SinkRecord {
        SinkRecord {
            offset,
            payload: vec![0; payload],
            event_type: "t".into(),
            ..Default::default()
        }
    }

    #[test]
    fn headers_are_parsed_and_foreign_records_get_the_topic_as_type() {
        let r = SinkRecord::from_parts(
            "topic",
            5,
            Some(1000),
            Some(b"k"),
            Some(b"v"),
            [
                (record::EVENT_TYPE, Some(&b"page_view"[..])),
                (record::SENT_TIME, Some(&b"123"[..])),
                (record::RECEIVE_TIME, Some(&b"not a number"[..])),
                ("other", None),
            ],
        );
        assert_eq!(r.event_type, "page_view");
        assert_eq!(r.sent_time_us, Some(123));
        assert_eq!(r.receive_time_us, None);
        assert_eq!(r.event_time_us(EventTime::SentTime), 123);
        assert_eq!(r.event_time_us(EventTime::ReceiveTime), 1_000_000);
        let foreign = SinkRecord::from_parts("topic", 0, None, None, None, []);
        assert_eq!(foreign.event_type, "topic");
        assert_eq!(foreign.event_time_us(EventTime::KafkaTimestamp), 0);
    }

    #[test]
    fn flush_is_due_by_records_bytes_and_age() {
        let policy = FlushSpec {
            max_records: 3,
            max_bytes: 10_000,
            max_age: Duration::from_secs(60),
            memory_budget: 1 << 20,
        };
        let t0 = Instant::now();
        let mut b = PartitionBuffer::default();
        assert_eq!(b.due(&policy, t0), None);
        b.push(rec(1, 10), t0);
        b.push(rec(2, 10), t0);
        assert_eq!(b.due(&policy, t0), None);
        assert_eq!(
            b.due(&policy, t0 + Duration::from_secs(61)),
            Some(FlushReason::Age)
        );
        b.push(rec(3, 10), t0);
        assert_eq!(b.due(&policy, t0), Some(FlushReason::Records));
        assert_eq!(b.range(), Some((1, 3)));
        assert_eq!(b.take().len(), 3);
        assert!(b.is_empty() && b.bytes() == 0);
        b.push(rec(4, 20_000), t0);
        assert_eq!(b.due(&policy, t0), Some(FlushReason::Bytes));
    }

    #[test]
    fn the_biggest_buffers_go_first_until_under_budget() {
        let sizes = [("a", 10), ("b", 50), ("c", 30), ("d", 0)];
        assert_eq!(over_budget(&sizes, 90, 100), Vec::<&str>::new());
        assert_eq!(over_budget(&sizes, 90, 45), vec!["b"]);
        assert_eq!(over_budget(&sizes, 90, 5), vec!["b", "c", "a"]);
    }
}
