//! The sink: Kafka topics into files in an object store, each record exactly once.
//!
//! Data path: a source ([`source`]: the interface; [`kafka_source`]: Kafka, with its
//! rebalance hook; [`assignment`]: partitions given and taken) → consume ([`consume`]:
//! the loop) → partition state ([`partition`], [`partitions`]: pure, decides ranges) →
//! buffer
//! ([`buffer`]) → encode ([`encode`], [`columns`], [`layout`]) → upload ([`upload`]) →
//! commit ([`progress`], then the Kafka offset). [`service`] starts and stops it.
//!
//! # Guarantee: every record lands in exactly one committed file
//!
//! Each partition is written as a chain of *ranges*. A flush of offsets `s..=e` goes:
//!
//! 1. encode the records into files named from `(topic, partition, s)` (pure: the same
//!    records give the same names and bytes);
//! 2. create the progress marker `<s>.json` = `{s, e, files}` with a create-only write;
//! 3. upload the files (each upload is atomic);
//! 4. commit offset `e + 1` to Kafka (a hint for lag metrics and for step R below).
//!
//! The next range of the partition starts at `e + 1`, and a partition has at most one
//! flush in flight, so marker *k + 1* is created only after marker *k*'s files are all
//! uploaded. On assignment, before any record of the partition is consumed, the
//! rebalance hook recovers (R): it reads the newest marker; if all its files exist,
//! consumption resumes at `e + 1`; if not, the range is *redone*: consumption resumes at
//! `s`, and exactly `s..=e` is encoded and uploaded again under the same names
//! (replacing any file of the range; files the range no longer produces are deleted),
//! with no new marker. Without a marker, Kafka's committed offset decides.
//!
//! Why that is exactly once: a record at offset `o` is in a file only if some marker's
//! range holds `o` (files are uploaded after their marker). Marker ranges never overlap:
//! each starts right after its predecessor ended, and the create-only write means two
//! writers can never fix two different ranges at one start (the loser — a sink that
//! lost its partition in a rebalance but was still flushing — sees the other's marker
//! and drops its buffer; when the loser is the partition's owner, fenced by a late
//! flush of its previous owner, it then recovers from the markers again and goes on). Within a range each record goes to one file (or to the dead
//! letters), and rewriting a range replaces its files by name. And every marker is
//! eventually complete: only the newest can lack files, and recovery redoes it. Crashes
//! anywhere in 1–4 therefore leave either no marker (the range is consumed again from
//! the last complete one) or a marker that the next owner completes.
//!
//! Rebalances: the hook waits for the revoked partitions' in-flight flushes to finish
//! and drops their buffers; the new owner recovers from the markers. Readers may see a
//! range's files appear one by one, never a record twice.
//!
//! Replay: markers, not the Kafka offset, decide where a partition resumes. Resetting
//! the group's offsets does not rewrite files; write to a new prefix instead.

mod assignment;
pub mod audit;
pub mod buffer;
pub mod columns;
pub mod consume;
pub mod encode;
pub mod failpoint;
pub mod flush;
mod kafka_source;
pub mod layout;
pub mod metrics;
pub mod partition;
pub mod partitions;
pub mod progress;
pub mod service;
pub mod source;
pub mod upload;

pub use partitions::SinkReport;
pub use service::Sink;
