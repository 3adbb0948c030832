//! The gateway's settings: a [`PipelineSpec`] checked once and turned into what the
//! gateway runs on (parsed addresses, the compiled routing table, typed limits). The
//! gateway reads nothing else; the operator builds the same settings to validate a
//! spec before it deploys it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::PipelineSpec;
use crate::config::{ConfigError, invalid};
use crate::pipeline::{
    AckMode, AuthSpec, CorsSpec, IdentitySpec, KafkaSpec, LimitsSpec, ShutdownSpec, TenantsSpec,
    TlsSpec, TopicSpec, WebSocketSpec,
};
use crate::routing::RoutingTable;

/// Time a call may take past the read, admission and delivery timeouts (answering,
/// writing); bounds the gRPC call timeout and the idle timeout's minimum.
pub const DELIVERY_GRACE: Duration = Duration::from_secs(5);

/// A pipeline spec, checked.
#[derive(Debug)]
pub struct GatewaySettings {
    /// Where each transport listens.
    pub listen: GatewayAddrs,
    /// The brokers, client properties and delivery timeout.
    pub kafka: KafkaSpec,
    /// When a batch is answered.
    pub acks: AckMode,
    /// The routing table, or the file it is read (and re-read) from.
    pub routing: RoutingSource,
    /// Topics created or grown before serving (`weir gateway --create-topics`, the
    /// operator).
    pub topics: Vec<TopicSpec>,
    /// Sizes, counts and timeouts.
    pub limits: LimitsSpec,
    /// How a client's identity is read.
    pub identity: IdentitySpec,
    /// Credentials: tokens, API keys, JWTs.
    pub auth: AuthSpec,
    /// Quotas of tenants and API keys.
    pub tenants: TenantsSpec,
    /// TLS on the HTTP and gRPC listeners; `None`: plain TCP.
    pub tls: Option<TlsFiles>,
    /// Browser origins allowed over HTTP.
    pub cors: CorsSpec,
    /// WebSocket connection settings.
    pub websocket: WebSocketSpec,
    /// Draining on stop.
    pub shutdown: ShutdownSpec,
}

/// The gateway's listen addresses, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayAddrs {
    /// WebSocket and HTTP.
    pub http: SocketAddr,
    /// gRPC.
    pub grpc: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics: SocketAddr,
}

/// The certificate and key files of the gateway's TLS listeners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// How often both are checked for changes.
    pub reload_interval: Duration,
}

/// Where routes come from.
#[derive(Debug)]
pub enum RoutingSource {
    /// The spec's own rules, compiled.
    Inline(Arc<RoutingTable>),
    /// A routing file, read at start and polled for changes.
    File {
        /// The file.
        path: PathBuf,
        /// How often it is polled.
        reload_interval: Duration,
    },
}

impl TryFrom<PipelineSpec> for GatewaySettings {
    type Error = ConfigError;

    fn try_from(spec: PipelineSpec) -> Result<Self, ConfigError> {
        let listen = GatewayAddrs {
            http: super::parse_addr("listen.http", &spec.listen.http)?,
            grpc: super::parse_addr("listen.grpc", &spec.listen.grpc)?,
            metrics: super::parse_addr("listen.metrics", &spec.listen.metrics)?,
        };
        check(&spec)?;
        let tls = tls_files(&spec.listen.tls)?;
        let routing = match &spec.routing.file {
            Some(path) => RoutingSource::File {
                path: PathBuf::from(path),
                reload_interval: spec.routing.reload_interval,
            },
            None => RoutingSource::Inline(Arc::new(
                RoutingTable::compile(&spec.routing).map_err(|e| invalid(&e.field, e.message))?,
            )),
        };
        Ok(Self {
            listen,
            kafka: spec.kafka,
            acks: spec.acks,
            routing,
            topics: spec.topics,
            limits: spec.limits,
            identity: spec.identity,
            auth: spec.auth,
            tenants: spec.tenants,
            tls,
            cors: spec.cors,
            websocket: spec.websocket,
            shutdown: spec.shutdown,
        })
    }
}

impl GatewaySettings {
    /// The longest a call may take: reading the batch, waiting for admission and for
    /// Kafka, and answering. gRPC calls are cut there; idle connections must outlive it.
    pub fn longest_call(&self) -> Duration {
        longest_call(&self.limits, &self.kafka)
    }
}

fn longest_call(limits: &LimitsSpec, kafka: &KafkaSpec) -> Duration {
    limits.read_timeout + limits.admission_timeout + kafka.delivery_timeout + DELIVERY_GRACE
}

/// Checks what the types alone cannot, except the listen addresses and the routing
/// table, which are checked by building them.
fn check(spec: &PipelineSpec) -> Result<(), ConfigError> {
    check_kafka(&spec.kafka)?;
    check_limits(spec)?;
    check_clients(spec)?;
    check_auth(spec)?;
    check_topics(&spec.topics)
}

/// TLS is on when both files are named; one without the other is a mistake.
fn tls_files(tls: &TlsSpec) -> Result<Option<TlsFiles>, ConfigError> {
    match (&tls.cert_file, &tls.key_file) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            if tls.reload_interval.is_zero() {
                return Err(invalid(
                    "listen.tls.reloadInterval",
                    "must be greater than 0",
                ));
            }
            Ok(Some(TlsFiles {
                cert: cert.into(),
                key: key.into(),
                reload_interval: tls.reload_interval,
            }))
        }
        (Some(_), None) => Err(invalid(
            "listen.tls.keyFile",
            "is required with listen.tls.certFile",
        )),
        (None, Some(_)) => Err(invalid(
            "listen.tls.certFile",
            "is required with listen.tls.keyFile",
        )),
    }
}

/// API keys, JWT and quota settings.
fn check_auth(spec: &PipelineSpec) -> Result<(), ConfigError> {
    let (auth, jwt, tenants) = (&spec.auth, &spec.auth.jwt, &spec.tenants);
    if auth.is_enabled() && auth.reload_interval.is_zero() {
        return Err(invalid("auth.reloadInterval", "must be greater than 0"));
    }
    if let Some(url) = &jwt.jwks_url {
        // Keys fetched in clear text could be swapped by anyone on the path, who could
        // then sign tokens for any tenant: plain http only to this host.
        let loopback = |u: &url::Url| match u.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        match url::Url::parse(url) {
            Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && loopback(&u)) => {}
            _ => {
                return Err(invalid(
                    "auth.jwt.jwksUrl",
                    format!("{url:?} is not an https URL (plain http only to localhost)"),
                ));
            }
        }
    }
    if jwt.is_enabled() {
        for (field, claim) in [
            ("auth.jwt.tenantClaim", &jwt.tenant_claim),
            ("auth.jwt.keyClaim", &jwt.key_claim),
        ] {
            if claim.trim().is_empty() {
                return Err(invalid(field, "must name a claim"));
            }
        }
        for (field, value) in [
            ("auth.jwt.jwksRefreshInterval", jwt.jwks_refresh_interval),
            (
                "auth.jwt.jwksMinRefreshInterval",
                jwt.jwks_min_refresh_interval,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be greater than 0"));
            }
        }
    }
    if tenants.burst_seconds == 0 {
        return Err(invalid("tenants.burstSeconds", "must be at least 1"));
    }
    if tenants.max_tracked == 0 {
        return Err(invalid("tenants.maxTracked", "must be greater than 0"));
    }
    for tenant in tenants.quotas.keys() {
        crate::auth::check_tenant_id(tenant)
            .map_err(|m| invalid(&format!("tenants.quotas.{tenant}"), m))?;
    }
    Ok(())
}

/// The brokers and the delivery timeout (the sink checks its Kafka the same way).
pub(super) fn check_kafka(kafka: &KafkaSpec) -> Result<(), ConfigError> {
    if kafka.bootstrap_servers.trim().is_empty() {
        return Err(invalid(
            "kafka.bootstrapServers",
            "must name at least one broker",
        ));
    }
    let timeout = kafka.delivery_timeout;
    if timeout.is_zero() || timeout.as_millis() > i32::MAX as u128 {
        return Err(invalid(
            "kafka.deliveryTimeout",
            "must be between 1ms and 24 days",
        ));
    }
    Ok(())
}

/// Sizes, counts and timeouts: each positive, the byte budgets within a semaphore's
/// reach, and the idle timeout longer than any call.
fn check_limits(spec: &PipelineSpec) -> Result<(), ConfigError> {
    let limits = &spec.limits;
    for (field, value) in [
        ("limits.maxBatchBytes", limits.max_batch_bytes),
        ("limits.maxEventsPerBatch", limits.max_events_per_batch),
        ("limits.maxInflightBytes", limits.max_inflight_bytes),
        (
            "limits.maxInflightBatchesPerConnection",
            limits.max_inflight_batches_per_connection,
        ),
        ("websocket.maxConnections", spec.websocket.max_connections),
        ("limits.maxConnections", limits.max_connections),
    ] {
        if value == 0 {
            return Err(invalid(field, "must be greater than 0"));
        }
    }
    // Byte budgets held as semaphore permits, which are u32.
    for (field, value) in [
        (
            "limits.maxInflightBytesPerConnection",
            limits.max_inflight_bytes_per_connection,
        ),
        (
            "websocket.maxQueuedAnswerBytes",
            spec.websocket.max_queued_answer_bytes,
        ),
        (
            "websocket.maxQueuedAnswerBytesTotal",
            spec.websocket.max_queued_answer_bytes_total,
        ),
    ] {
        if value == 0 || value > u32::MAX as usize {
            return Err(invalid(field, "must be between 1 byte and 4 GiB"));
        }
    }
    for (field, value) in [
        ("limits.headerReadTimeout", limits.header_read_timeout),
        (
            "limits.idleConnectionTimeout",
            limits.idle_connection_timeout,
        ),
        ("limits.writeTimeout", limits.write_timeout),
        ("limits.readTimeout", limits.read_timeout),
    ] {
        if value.is_zero() {
            return Err(invalid(field, "must be greater than 0"));
        }
    }
    let longest_call = longest_call(limits, &spec.kafka);
    if limits.idle_connection_timeout <= longest_call {
        return Err(invalid(
            "limits.idleConnectionTimeout",
            format!(
                "must be longer than the longest call ({longest_call:?}: limits.readTimeout + limits.admissionTimeout + kafka.deliveryTimeout + 5s), or a client waiting for its answer would be disconnected"
            ),
        ));
    }
    if limits.max_batch_bytes > limits.max_inflight_bytes {
        return Err(invalid(
            "limits.maxBatchBytes",
            format!(
                "{} is larger than limits.maxInflightBytes ({}), so such a batch could never be admitted",
                limits.max_batch_bytes, limits.max_inflight_bytes
            ),
        ));
    }
    if limits.max_batch_bytes > u32::MAX as usize {
        return Err(invalid("limits.maxBatchBytes", "must be below 4 GiB"));
    }
    Ok(())
}

/// WebSocket keep-alive, credentials and identity.
fn check_clients(spec: &PipelineSpec) -> Result<(), ConfigError> {
    if spec.websocket.ping_interval.is_zero() {
        return Err(invalid("websocket.pingInterval", "must be greater than 0"));
    }
    if spec.websocket.idle_timeout <= spec.websocket.ping_interval {
        return Err(invalid(
            "websocket.idleTimeout",
            "must be longer than websocket.pingInterval, or live clients would be closed",
        ));
    }
    if let Some(i) = spec.auth.tokens.iter().position(|t| t.trim().is_empty()) {
        return Err(invalid(
            &format!("auth.tokens[{i}]"),
            "is empty; a blank token would let a request with an empty credential in",
        ));
    }
    if spec.identity.id_header.trim().is_empty() {
        return Err(invalid("identity.idHeader", "must not be empty"));
    }
    Ok(())
}

fn check_topics(topics: &[TopicSpec]) -> Result<(), ConfigError> {
    if topics.len() > crate::pipeline::MAX_TOPICS {
        return Err(invalid(
            "topics",
            format!(
                "lists {} topics; at most {} are allowed",
                topics.len(),
                crate::pipeline::MAX_TOPICS
            ),
        ));
    }
    for (i, topic) in topics.iter().enumerate() {
        crate::kafka_names::check_topic_name(&topic.name)
            .map_err(|m| invalid(&format!("topics[{i}].name"), m))?;
        if topic.partitions < 1 {
            return Err(invalid(
                &format!("topics[{i}].partitions"),
                "must be at least 1",
            ));
        }
    }
    Ok(())
}
