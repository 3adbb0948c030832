//! What every Weir process stands on, below the gateway, the sink and the operator:
//!
//! - [`telemetry`]: logging, the operations HTTP server (`/metrics`, `/healthz`,
//!   `/readyz`), metrics rendering and label budgets, shutdown signals.
//! - [`kafka`]: producer settings, librdkafka timeouts and log throttling, topic
//!   creation, and the embedded mock cluster of `weir dev` and the tests.
//! - [`open_files`]: the process's limit of open files, raised to what a server of
//!   many connections needs.
//!
//! Nothing here knows about gateways or sinks; it depends only on the spec types.

pub mod kafka;
pub mod open_files;
pub mod telemetry;
