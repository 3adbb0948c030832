//! Specs checked once into the settings the data plane runs on: [`GatewaySettings`]
//! from a [`crate::PipelineSpec`], [`SinkSettings`] from a [`crate::SinkSpec`], each by
//! `TryFrom`. A spec that converts is one the runtime accepts: the operator validates
//! with the same conversion, and the runtime reads only the settings.

mod gateway;
mod sink;

pub use gateway::{DELIVERY_GRACE, GatewayAddrs, GatewaySettings, RoutingSource, TlsFiles};
pub use sink::SinkSettings;

use crate::config::{ConfigError, invalid};

/// Parses a listen address, naming the field when it is not `host:port`.
fn parse_addr(field: &str, addr: &str) -> Result<std::net::SocketAddr, ConfigError> {
    addr.parse()
        .map_err(|e| invalid(field, format!("{addr:?} is not host:port ({e})")))
}
