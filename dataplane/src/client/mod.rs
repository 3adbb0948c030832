//! Client tools: `weir send` for the first minute, `weir loadgen` for benchmarks.

pub mod loadgen;
pub mod send;
