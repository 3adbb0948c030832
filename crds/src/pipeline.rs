//! The data-plane part of an ingest pipeline: everything `weir gateway` and `weir dev`
//! read. The operator's IngestPipeline resource embeds this spec unchanged, so the YAML
//! a user applies to a cluster also runs locally.
//!
//! Conventions: camelCase keys (Kubernetes style), every field optional with a default,
//! unknown keys rejected so a typo is an error rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::auth::{AuthSpec, JwtSpec, QuotaSpec, TenantsSpec, TlsSpec};

/// What an ingest pipeline does with events: where they come in, how they are routed,
/// and which Kafka cluster receives them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PipelineSpec {
    /// Addresses the gateway listens on.
    pub listen: ListenSpec,
    /// The Kafka cluster events are published to.
    pub kafka: KafkaSpec,
    /// How an event's type selects its Kafka topic.
    pub routing: RoutingSpec,
    /// Topics to create (or grow to the given partition count) before traffic flows.
    /// Keyed by name, so a cluster can compare each topic with its previous version.
    /// At most 1,000 (the API server prices each CEL rule by the longest list it may run
    /// over, so the list needs a bound).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[schemars(length(max = MAX_TOPICS))]
    pub topics: Vec<TopicSpec>,
    /// When a batch is acknowledged: after Kafka has every event (`sync`), or after the
    /// events are queued for Kafka (`async`).
    pub acks: AckMode,
    /// Size and concurrency limits.
    pub limits: LimitsSpec,
    /// How a connection is identified.
    pub identity: IdentitySpec,
    /// Credentials: static tokens, API keys and JWTs. Off while none is configured.
    pub auth: AuthSpec,
    /// Quotas of tenants and API keys.
    pub tenants: TenantsSpec,
    /// Cross-origin requests from browsers.
    pub cors: CorsSpec,
    /// WebSocket connection behaviour.
    pub websocket: WebSocketSpec,
    /// Graceful shutdown.
    pub shutdown: ShutdownSpec,
}

/// Listen addresses, `host:port`. Port 0 picks a free port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ListenSpec {
    /// HTTP and WebSocket (`POST`/`GET /api/v1/events`, `GET /ping`).
    pub http: String,
    /// gRPC (`raystack.raccoon.v1beta1.EventService` and `weir.v1.EventService`).
    pub grpc: String,
    /// Prometheus `/metrics`, `/healthz` and `/readyz`.
    pub metrics: String,
    /// TLS on the HTTP and gRPC listeners.
    pub tls: TlsSpec,
}

impl Default for ListenSpec {
    fn default() -> Self {
        Self {
            http: "0.0.0.0:8080".into(),
            grpc: "0.0.0.0:8081".into(),
            metrics: "0.0.0.0:9090".into(),
            tls: TlsSpec::default(),
        }
    }
}

/// Connection to a Kafka cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// librdkafka properties passed through unchanged (for example `compression.type`,
    /// `linger.ms`, `security.protocol`). They override Weir's defaults.
    /// Numbers and booleans are accepted in a file and passed on as text; in a cluster
    /// the API server takes text only, so quote them (`linger.ms: "5"`).
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "scalar_map"
    )]
    pub properties: BTreeMap<String, String>,
    /// How long Kafka may take to acknowledge an event before it is reported as failed
    /// (librdkafka `message.timeout.ms`). A sync-ack batch is answered within this time.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub delivery_timeout: Duration,
}

impl Default for KafkaSpec {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".into(),
            properties: BTreeMap::new(),
            delivery_timeout: Duration::from_secs(30),
        }
    }
}

/// Most topics one pipeline may list.
pub const MAX_TOPICS: usize = 1000;
/// Kafka's own limit on a topic name's length.
pub const MAX_TOPIC_NAME: usize = 249;

/// A topic to ensure exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.name.matches('^[a-zA-Z0-9._-]{1,249}$') && self.name != '.' && self.name != '..'",
        "message": "a topic name is 1 to 249 letters, digits, '.', '_' or '-' (and not '.' or '..')"
    },
    {
        "rule": "self.partitions >= 1",
        "message": "partitions must be at least 1"
    },
    {
        "rule": "!has(self.replicationFactor) || self.replicationFactor >= 1",
        "message": "replicationFactor must be at least 1 (leave it out for the broker's default)"
    },
    {
        "rule": "self.partitions >= oldSelf.partitions",
        "message": "partitions can only grow: Kafka cannot remove partitions from a topic"
    }
]))]
pub struct TopicSpec {
    /// Topic name.
    #[schemars(length(max = MAX_TOPIC_NAME))]
    pub name: String,
    /// Partition count; an existing topic with fewer partitions is grown, never shrunk.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor; unset uses the broker's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// Topic-level configs (for example `retention.ms`; quote numbers in a cluster).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "scalar_map"
    )]
    pub configs: BTreeMap<String, String>,
}

/// A map whose values may be any YAML/JSON scalar, kept as text (librdkafka and topic
/// configs are all strings, but `linger.ms: 5` is what people write).
fn scalar_map<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Integer(i64),
        Float(f64),
        Bool(bool),
    }
    let map = BTreeMap::<String, Scalar>::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Scalar::Text(t) => t,
                Scalar::Integer(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (k, text)
        })
        .collect())
}

fn default_partitions() -> i32 {
    3
}

/// The routing table: ordered rules, then a default pattern.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RoutingSpec {
    /// Rules tried in order; the first that matches the event type picks the topic.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RouteRule>,
    /// Topic for types no rule matches: `%s` is replaced by the event type and `%t` by
    /// the sender's tenant (`%t.clickstream-%s-log`; `%t` must come first, then `.`).
    pub default_pattern: String,
    /// What to do with an event whose type no rule matches.
    pub unmatched: UnmatchedPolicy,
    /// What to do with an event whose type cannot form a legal topic name (empty, longer
    /// than the topic limit, or characters other than letters, digits, `.`, `_`, `-`).
    pub invalid: InvalidPolicy,
    /// Topic for dead-lettered events. Required when either policy is `deadLetter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Read the table from this YAML file instead (same fields as this object, without
    /// `file`) and reload it when its content changes, keeping connections open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// How often the routing file is checked for changes.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reload_interval: Duration,
}

impl Default for RoutingSpec {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default_pattern: "clickstream-%s-log".into(),
            unmatched: UnmatchedPolicy::default(),
            invalid: InvalidPolicy::default(),
            dead_letter_topic: None,
            file: None,
            reload_interval: Duration::from_secs(5),
        }
    }
}

/// One routing rule. Exactly one of `exact`, `prefix` and `glob` is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Matches this event type exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Matches event types that start with this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Matches event types against a glob (`*`, `?`, `[abc]`, `{a,b}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// Destination topic; `%s` is replaced by the event type and `%t` by the sender's
    /// tenant (`%t` must come before `%s`, followed by `.`).
    pub topic: String,
    /// Tenants this rule applies to; empty: every sender. Events of other tenants go
    /// on to the next rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub tenants: Vec<String>,
}

/// Policy for event types that no rule matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum UnmatchedPolicy {
    /// Publish to the default pattern's topic.
    #[default]
    DefaultPattern,
    /// Publish to the dead-letter topic.
    DeadLetter,
    /// Reject the event with a per-event BAD_REQUEST; the rest of the batch goes on.
    Reject,
}

/// Policy for event types that cannot form a legal topic name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum InvalidPolicy {
    /// Reject the event with a per-event BAD_REQUEST; the rest of the batch goes on.
    #[default]
    Reject,
    /// Publish to the dead-letter topic.
    DeadLetter,
}

/// When a batch is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AckMode {
    /// Answer after Kafka acknowledged every event; the answer lists the failed ones.
    #[default]
    Sync,
    /// Answer once the events are queued for Kafka. Faster, but a later Kafka failure is
    /// only logged and counted.
    Async,
}

/// Size and concurrency limits. They bound memory and keep clients from hanging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitsSpec {
    /// Largest batch accepted, in bytes after decompression (HTTP body, WebSocket message,
    /// gRPC message). Larger batches get PAYLOAD_TOO_LARGE (HTTP 413).
    #[serde(with = "crate::byte_size")]
    #[schemars(schema_with = "crate::byte_size::schema")]
    pub max_batch_bytes: usize,
    /// Most events in one batch. More get BAD_REQUEST.
    pub max_events_per_batch: usize,
    /// Bytes of event payload accepted but not yet acknowledged by Kafka, across all
    /// connections. A batch that finds no room within `admissionTimeout` gets
    /// RATE_LIMITED (HTTP 429 with Retry-After).
    #[serde(with = "crate::byte_size")]
    #[schemars(schema_with = "crate::byte_size::schema")]
    pub max_inflight_bytes: usize,
    /// Batches one WebSocket connection may have in flight; past this the gateway stops
    /// reading from that connection until replies go out.
    pub max_inflight_batches_per_connection: usize,
    /// Bytes of batches one WebSocket connection may have in flight (received, not yet
    /// answered); past this the gateway stops reading from it. A batch larger than this
    /// still goes through, alone.
    #[serde(with = "crate::byte_size")]
    #[schemars(schema_with = "crate::byte_size::schema")]
    pub max_inflight_bytes_per_connection: usize,
    /// How long a batch may wait for room under `maxInflightBytes`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub admission_timeout: Duration,
    /// Longest time to receive one HTTP request body (or gRPC request); a client that
    /// sends slower gets BAD_REQUEST (HTTP 408) instead of holding a connection forever.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub read_timeout: Duration,
    /// Longest time to receive an HTTP request's headers (WebSocket handshakes
    /// included); the connection is closed after it.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub header_read_timeout: Duration,
    /// A connection (HTTP, WebSocket, gRPC) from which nothing was read for this long is
    /// closed. Must be longer than the longest call: `readTimeout + admissionTimeout +
    /// kafka.deliveryTimeout + 5s`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_connection_timeout: Duration,
    /// Longest time one answer may take to be written (HTTP body, WebSocket frame,
    /// gRPC keepalive acknowledgement); a client that does not read is disconnected.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub write_timeout: Duration,
    /// Most connections open at once on each of the HTTP port (WebSocket connections
    /// included) and the gRPC port; past it new connections are closed at once.
    pub max_connections: usize,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_batch_bytes: 4 * 1024 * 1024,
            max_events_per_batch: 10_000,
            max_inflight_bytes: 256 * 1024 * 1024,
            max_inflight_batches_per_connection: 64,
            max_inflight_bytes_per_connection: 16 * 1024 * 1024,
            admission_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            idle_connection_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(10),
            max_connections: 40_000,
        }
    }
}

/// Connection identity, read from request headers (gRPC: metadata).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IdentitySpec {
    /// Header carrying the connection id (for example a user or device id).
    pub id_header: String,
    /// Header carrying the connection group.
    pub group_header: String,
    /// Group used when the group header is absent.
    pub default_group: String,
    /// Refuse requests without the id header (BAD_REQUEST). When false they are served
    /// anonymously: no duplicate check, and no record key unless the event has one.
    pub require_id: bool,
    /// What happens when a WebSocket connects with an (id, group) already connected.
    pub duplicates: DuplicatePolicy,
    /// Also read the id, the group and the auth token from query parameters named like
    /// their headers (`?x-user-id=u1&authorization=…`, names case-insensitive) when the
    /// header is absent: browsers' `WebSocket` and `navigator.sendBeacon` cannot set
    /// headers. Off by default, because URLs end up in access logs.
    pub query_parameters: bool,
}

impl Default for IdentitySpec {
    fn default() -> Self {
        Self {
            id_header: "X-User-ID".into(),
            group_header: "X-User-Group".into(),
            default_group: "--default--".into(),
            require_id: false,
            duplicates: DuplicatePolicy::default(),
            query_parameters: false,
        }
    }
}

/// Policy for a second WebSocket connection with the same identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DuplicatePolicy {
    /// Refuse the new connection (MAX_USER_LIMIT_REACHED, close 1008), as Raccoon does.
    #[default]
    Reject,
    /// Close the old connection (after its in-flight batches are answered) and accept the new one.
    Replace,
    /// Accept both.
    Allow,
}

/// Cross-origin resource sharing for browser clients of the HTTP endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CorsSpec {
    /// Origins allowed to call the HTTP endpoint; `*` allows any. Empty disables CORS. A
    /// POST carrying `Origin` (from a browser page) is taken only from these origins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Request headers browsers may send besides the identity and auth headers, which
    /// are always allowed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_headers: Vec<String>,
    /// How long browsers may cache a preflight answer.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,
}

impl Default for CorsSpec {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_headers: Vec::new(),
            max_age: Duration::from_secs(600),
        }
    }
}

/// WebSocket connections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WebSocketSpec {
    /// Most WebSocket connections open at once; past it new ones get
    /// MAX_CONNECTION_LIMIT_REACHED and close 1008.
    pub max_connections: usize,
    /// How often the server pings each connection.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ping_interval: Duration,
    /// A connection from which no frame at all (data, ping or pong) arrived for this
    /// long is closed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Answer bytes one connection may have waiting to be written. When its answers do
    /// not drain within `limits.writeTimeout`, the connection is closed (1008).
    #[serde(with = "crate::byte_size")]
    #[schemars(schema_with = "crate::byte_size::schema")]
    pub max_queued_answer_bytes: usize,
    /// Answer bytes all connections together may have waiting to be written.
    #[serde(with = "crate::byte_size")]
    #[schemars(schema_with = "crate::byte_size::schema")]
    pub max_queued_answer_bytes_total: usize,
    /// Origins (`https://app.example.com`) whose pages may open WebSocket connections;
    /// an upgrade with another `Origin` header gets 403, which stops other sites' pages
    /// from connecting with a visitor's cookies. Upgrades without `Origin` (not from a
    /// browser) are always served. Empty: any origin.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
}

impl Default for WebSocketSpec {
    fn default() -> Self {
        Self {
            max_connections: 30_000,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            max_queued_answer_bytes: 1024 * 1024,
            max_queued_answer_bytes_total: 256 * 1024 * 1024,
            allowed_origins: Vec::new(),
        }
    }
}

/// Graceful shutdown on SIGTERM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ShutdownSpec {
    /// Longest wait for in-flight batches to be answered and Kafka to be flushed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownSpec {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(30),
        }
    }
}
