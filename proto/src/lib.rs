//! Weir's wire contract.
//!
//! `raccoon` is the Raccoon v1beta1 event API (package `raystack.raccoon.v1beta1`) with
//! Weir's backwards-compatible extensions; `weir` serves the same messages under the
//! service name `weir.v1.EventService`. Modules nest by protobuf package, as the
//! generated code refers to other packages by relative path.

#[allow(clippy::all, missing_docs)]
pub mod raystack {
    pub mod raccoon {
        pub mod v1beta1 {
            tonic::include_proto!("raystack.raccoon.v1beta1");
        }
    }
}

#[allow(clippy::all, missing_docs)]
pub mod weir {
    pub mod v1 {
        tonic::include_proto!("weir.v1");
    }
}

pub use raccoon::{Code, Event, EventResult, SendEventRequest, SendEventResponse, Status};
pub use raystack::raccoon::v1beta1 as raccoon;
