//! The log the sink reads, as an interface: Kafka is the one implementation today
//! ([`super::kafka_source`] holds its hook). A log of shards with sequence numbers and
//! leases (Amazon Kinesis) implements the same pieces:
//!
//! - [`LogRecord`]: one record, borrowed from the client (no copy of the payload);
//! - [`RecordSource`]: the next record, commits, the log's first and end offsets, and
//!   reading a partition again from a position (its log's start for a new generation,
//!   or where its markers say after another writer fenced it);
//! - the assignment calls on the consumer's core ([`super::consume::Core::take_partition`]
//!   and [`super::consume::Core::release_partitions`]), which a source makes when it is
//!   given or loses a partition (a Kafka rebalance, a Kinesis lease), before any record
//!   of it is read.
//!
//! Offsets are the sink's dense `i64` numbering of a partition's records, ordered and
//! not necessarily contiguous (compaction leaves holes). A log that seeks by its own
//! positions instead (Kinesis sequence numbers: decimal strings of up to 129 digits)
//! numbers each shard's records densely itself, from the offset its partition was
//! taken at, and reports each record's own position ([`LogRecord::source_position`]):
//! markers keep the positions around their ranges, and taking a partition returns the
//! [`super::partition::Anchor`] to start reading at.

use std::future::Future;

use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::buffer::SinkRecord;
use super::partition::{Anchor, Position, Tp};
use super::progress::{RecordFingerprint, SourcePosition};

/// One record of a partition, as its log hands it over.
pub trait LogRecord {
    /// The topic (Kafka) or stream (Kinesis).
    fn topic(&self) -> &str;
    /// The partition (Kafka) or shard (Kinesis).
    fn partition(&self) -> i32;
    /// The record's position in its partition.
    fn offset(&self) -> i64;
    /// The log's timestamp, Unix milliseconds.
    fn timestamp_ms(&self) -> Option<i64>;
    /// The record's key.
    fn key(&self) -> Option<&[u8]>;
    /// The record's value.
    fn payload(&self) -> Option<&[u8]>;
    /// The record's headers, in order.
    fn headers(&self) -> Vec<(&str, Option<&[u8]>)>;
    /// The record's position in its log's own terms, for logs that do not seek by
    /// offset (a Kinesis sequence number); Kafka has none.
    fn source_position(&self) -> Option<SourcePosition> {
        None
    }

    /// What tells this record from another at the same offset.
    fn fingerprint(&self) -> RecordFingerprint {
        RecordFingerprint::of(self.timestamp_ms(), self.key(), self.payload())
            .at(self.source_position())
    }

    /// The record with the gateway's headers parsed.
    fn to_sink_record(&self) -> SinkRecord {
        let mut record = SinkRecord::from_parts(
            self.topic(),
            self.offset(),
            self.timestamp_ms(),
            self.key(),
            self.payload(),
            self.headers(),
        );
        record.source_position = self.source_position();
        record
    }
}

/// Where the sink reads records from.
pub trait RecordSource: Send + Sync + 'static {
    /// A record borrowed from the source.
    type Record<'a>: LogRecord
    where
        Self: 'a;
    /// The source's own error.
    type Error: std::fmt::Display + Send;

    /// The next record of any assigned partition, in each partition's order.
    fn recv(&self) -> impl Future<Output = Result<Self::Record<'_>, Self::Error>> + Send;

    /// Records that each partition's records below the given position are in storage.
    /// `wait`: return only once the log has it (at stop); else in the background.
    fn commit(&self, positions: &[(Tp, i64)], wait: bool) -> Result<(), Self::Error>;

    /// Reads the partition from `position` on (a source that seeks by its own
    /// positions uses `anchor` when given); what was fetched before is dropped, so the
    /// next record of the partition is the one at `position`.
    fn seek(&self, tp: &Tp, position: Position, anchor: Option<&Anchor>)
    -> Result<(), Self::Error>;

    /// The partition's first offset and end offset (the next it will give). Blocks.
    fn watermarks(&self, tp: &Tp) -> Result<(i64, i64), Self::Error>;
}

impl LogRecord for BorrowedMessage<'_> {
    fn topic(&self) -> &str {
        Message::topic(self)
    }

    fn partition(&self) -> i32 {
        Message::partition(self)
    }

    fn offset(&self) -> i64 {
        Message::offset(self)
    }

    fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp().to_millis()
    }

    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }

    fn payload(&self) -> Option<&[u8]> {
        Message::payload(self)
    }

    fn headers(&self) -> Vec<(&str, Option<&[u8]>)> {
        Message::headers(self)
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default()
    }
}
