//! Weir's operator: IngestPipeline and SinkBinding custom resources reconciled into the
//! gateway and sink workloads that run them.
//!
//! The path of a reconcile, one module each: [`build`] (pure: resource → desired
//! objects), [`apply`] (server-side apply of what drifted ([`drift`]), prune), [`topics`] (Kafka admin),
//! [`status`] (pure: observations → conditions), [`controller`] (the reconcilers that
//! chain them), [`run`] (watches, leader election, metrics). [`render`] runs the same
//! builders offline.

pub mod apply;
pub mod build;
pub mod controller;
pub mod drift;
pub mod metrics;
pub mod render;
pub mod run;
pub mod status;
pub mod topics;
