//! Weir's data plane.
//!
//! - [`gateway`]: takes event batches over WebSocket, HTTP and gRPC, routes each event
//!   to a Kafka topic and acknowledges the batch once Kafka has it.
//! - [`sink`]: consumes the gateway's topics and writes them as Parquet or JSON-lines
//!   files to an object store, each record exactly once.
//! - [`config`]: the YAML + environment configuration, validated once.
//! - [`kafka`]: producer settings, topic creation and the embedded mock cluster.
//! - [`record`]: the record headers the gateway writes for downstream consumers.
//! - [`dev`]: `weir dev`, everything on an embedded Kafka.
//! - [`client`]: `weir send` and `weir loadgen`.

pub mod client;
pub mod config;
pub mod dev;
pub mod gateway;
pub mod kafka;
pub mod record;
pub mod sink;
pub mod telemetry;
