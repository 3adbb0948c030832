//! Weir's data plane.
//!
//! - [`gateway`]: takes event batches over WebSocket, HTTP and gRPC, routes each event
//!   to a Kafka topic and acknowledges the batch once Kafka has it.
//! - [`sink`]: consumes the gateway's topics and writes them as Parquet or JSON-lines
//!   files to an object store, each record exactly once.
//! - [`record`]: the record headers the gateway writes for downstream consumers.
//! - Settings come from `weir_crds::config` (YAML + environment) and
//!   `weir_crds::settings` (checked once); logging, the ops server and Kafka clients
//!   from `weir_runtime`.
//! - [`dev`]: `weir dev`, everything on an embedded Kafka.
//! - [`client`]: `weir send` and `weir loadgen`.

pub mod client;
pub mod dev;
pub mod gateway;
pub mod record;
pub mod sink;
