//! Who may send, and what each tenant gets: the `auth`, `tenants` and `listen.tls`
//! parts of a [`crate::PipelineSpec`], and the format of the API keys file.
//!
//! Credentials are of three kinds, all optional: static bearer tokens (`auth.tokens`,
//! no tenant), API keys (`auth.apiKeysFile`: SHA-256 hashes, each bound to one tenant)
//! and JWTs (`auth.jwt`: signed by an identity provider, the tenant in a claim).
//! Authentication is on as soon as any of them is configured.
//!
//! A tenant id is 1 to [`MAX_TENANT_ID`] letters, digits, `_` or `-`. It becomes part of
//! topic names (`%t` in routing patterns) and object-store paths (`tenant=<id>/`), so it
//! can never contain `.` or `/`: a routing pattern puts `.` after `%t`, which keeps two
//! tenants' topics apart whatever their event types.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest tenant id.
pub const MAX_TENANT_ID: usize = 64;

/// Whether `id` is a legal tenant id; says why not.
pub fn check_tenant_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_TENANT_ID {
        return Err(format!(
            "tenant id {id:?} must be 1 to {MAX_TENANT_ID} characters"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "tenant id {id:?} contains {c:?}; only letters, digits, '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Authentication. Off while no token, API keys file, JWKS or HMAC secret is configured;
/// once any is, every request needs a valid credential.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AuthSpec {
    /// Header carrying a token, API key or JWT, as `Bearer <credential>` or bare. An API
    /// key may also come as `X-Weir-Key`, and any credential as the `key` or `token`
    /// query parameter (browsers cannot set headers on a WebSocket or `sendBeacon`).
    pub header: String,
    /// Static bearer tokens; they carry no tenant. Prefer `tokensFile` so tokens stay
    /// out of the spec.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
    /// File with one static token per line (for example a mounted Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<String>,
    /// YAML list of API keys, `[{sha256: <hex SHA-256 of the key>, tenant: <id>}, …]`,
    /// each entry optionally with `name`, `eventTypes`, `eventsPerSecond`,
    /// `bytesPerSecond`, `maxConnections` and `disabled`. Reloaded when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_file: Option<String>,
    /// OAuth2 access tokens (JWTs) from an identity provider.
    pub jwt: JwtSpec,
    /// How often the API keys file, the JWKS file and the HMAC secret file are checked
    /// for changes.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reload_interval: Duration,
}

impl Default for AuthSpec {
    fn default() -> Self {
        Self {
            header: "Authorization".into(),
            tokens: Vec::new(),
            tokens_file: None,
            api_keys_file: None,
            jwt: JwtSpec::default(),
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl AuthSpec {
    /// Whether any credential is configured, i.e. whether requests must authenticate.
    pub fn is_enabled(&self) -> bool {
        !self.tokens.is_empty()
            || self.tokens_file.is_some()
            || self.api_keys_file.is_some()
            || self.jwt.is_enabled()
    }
}

/// JWT verification. On when `jwksFile`, `jwksUrl` or `hmacSecretFile` is set.
///
/// RS256, ES256 and EdDSA tokens are checked against the JWKS (the key named by the
/// token's `kid`, or the only key when the token names none), HS256 tokens only against
/// `hmacSecretFile`. A key verifies only the algorithm of its own type, so `alg: none`
/// and algorithm confusion (an RSA public key used as an HMAC secret) are refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct JwtSpec {
    /// JWKS (`{"keys": [...]}`) in a file, reloaded when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// JWKS URL of the identity provider (`https://…/.well-known/jwks.json`); fetched at
    /// start, every `jwksRefreshInterval`, and when a token names an unknown `kid` (at
    /// most once per `jwksMinRefreshInterval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// File holding the HS256 secret (its bytes, trailing newline removed). Without it,
    /// HS256 tokens are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hmac_secret_file: Option<String>,
    /// Required `iss` claim; unset accepts any issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim (one of the token's audiences); unset accepts any audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Claim holding the tenant id. Required in every token.
    pub tenant_claim: String,
    /// Claim holding an API key (subscription models): when the token has it and its
    /// hash is in `apiKeysFile`, that key's event types, quotas and `disabled` apply.
    pub key_claim: String,
    /// Clock skew allowed when checking `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// How often `jwksUrl` is fetched again.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub jwks_refresh_interval: Duration,
    /// Shortest time between two fetches of `jwksUrl` (an unknown `kid` triggers one).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub jwks_min_refresh_interval: Duration,
}

impl Default for JwtSpec {
    fn default() -> Self {
        Self {
            jwks_file: None,
            jwks_url: None,
            hmac_secret_file: None,
            issuer: None,
            audience: None,
            tenant_claim: "tenant_id".into(),
            key_claim: "api_key".into(),
            leeway: Duration::from_secs(60),
            jwks_refresh_interval: Duration::from_secs(3600),
            jwks_min_refresh_interval: Duration::from_secs(30),
        }
    }
}

impl JwtSpec {
    /// Whether JWTs are accepted.
    pub fn is_enabled(&self) -> bool {
        self.jwks_file.is_some() || self.jwks_url.is_some() || self.hmac_secret_file.is_some()
    }
}

/// Rates and connections one tenant or one API key may use. `0` means no limit.
///
/// Rates are token buckets that hold `burst` worth of the rate: a client may send a
/// second's worth at once (with the default burst), then the rate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct QuotaSpec {
    /// Events per second.
    pub events_per_second: u32,
    /// Batch bytes (as received) per second.
    pub bytes_per_second: u32,
    /// WebSocket connections open at once.
    pub max_connections: u32,
}

/// Quotas of tenants and API keys. Over a rate: RATE_LIMITED (HTTP 429 with
/// `Retry-After`, gRPC RESOURCE_EXHAUSTED) and nothing of the batch is published; over
/// the connections: the upgrade is refused with 429.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TenantsSpec {
    /// What each tenant gets unless `quotas` lists it.
    pub quota: QuotaSpec,
    /// Per-tenant quotas, by tenant id, replacing `quota` for that tenant. At most 10,000.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 10_000))]
    pub quotas: BTreeMap<String, QuotaSpec>,
    /// What each API key gets (within its tenant's quota) unless its entry in
    /// `auth.apiKeysFile` sets its own.
    pub key_quota: QuotaSpec,
    /// How many seconds of its rate a bucket holds.
    pub burst_seconds: u32,
    /// Tenants and keys with their own buckets at once; past it the least recently
    /// used idle ones are forgotten (and start again with a full bucket).
    pub max_tracked: usize,
}

impl Default for TenantsSpec {
    fn default() -> Self {
        Self {
            quota: QuotaSpec::default(),
            quotas: BTreeMap::new(),
            key_quota: QuotaSpec::default(),
            burst_seconds: 1,
            max_tracked: 100_000,
        }
    }
}

/// TLS on the HTTP/WebSocket and gRPC listeners (the metrics listener stays plain).
/// On when `certFile` and `keyFile` are set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TlsSpec {
    /// PEM certificate chain, leaf first (a mounted `kubernetes.io/tls` Secret's `tls.crt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1; `tls.key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// How often both files are checked; a changed pair that loads replaces the old one
    /// for new connections.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reload_interval: Duration,
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            reload_interval: Duration::from_secs(30),
        }
    }
}

/// One entry of the API keys file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`); the key itself is never
    /// stored.
    pub sha256: String,
    /// The tenant the key sends for.
    pub tenant: String,
    /// A label for logs and metrics (never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Event types this key may send (globs: `page_*`); empty allows any. Other types
    /// are refused per event with BAD_REQUEST.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    /// Overrides `tenants.keyQuota.eventsPerSecond` for this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<u32>,
    /// Overrides `tenants.keyQuota.bytesPerSecond` for this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u32>,
    /// Overrides `tenants.keyQuota.maxConnections` for this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// A revoked key: refused like an unknown one, and its open WebSockets are closed.
    #[serde(default)]
    pub disabled: bool,
}

/// An API keys file that cannot be used; names the entry.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ApiKeysError {
    /// The offending entry, e.g. `[3].sha256`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Reads an API keys file's text: the entries, each checked (hash format, tenant id, no
/// hash twice). Hashes come back lower-case. An empty file is refused: it is far more
/// likely a write in progress than a wish to revoke every key (`[]` says that).
pub fn parse_api_keys(text: &str) -> Result<Vec<ApiKeyEntry>, ApiKeysError> {
    let error = |field: String, message: String| ApiKeysError { field, message };
    if text.trim().is_empty() {
        return Err(error(
            "the file".into(),
            "is empty; write [] for no keys".into(),
        ));
    }
    let mut entries: Vec<ApiKeyEntry> =
        crate::config::from_yaml_str(text).map_err(|e| error(String::new(), e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in entries.iter_mut().enumerate() {
        entry.sha256 = entry.sha256.trim().to_ascii_lowercase();
        if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(error(
                format!("[{i}].sha256"),
                "must be 64 hex digits, the SHA-256 of the key (printf %s \"$KEY\" | sha256sum)"
                    .into(),
            ));
        }
        if !seen.insert(entry.sha256.clone()) {
            return Err(error(
                format!("[{i}].sha256"),
                "the same key is listed twice".into(),
            ));
        }
        check_tenant_id(&entry.tenant).map_err(|m| error(format!("[{i}].tenant"), m))?;
        for (j, glob) in entry.event_types.iter().enumerate() {
            globset::Glob::new(glob)
                .map_err(|e| error(format!("[{i}].eventTypes[{j}]"), e.to_string()))?;
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for good in ["acme", "acme-corp", "t_1", &"x".repeat(64)] {
            assert!(check_tenant_id(good).is_ok(), "{good}");
        }
        for bad in ["", "a.b", "a/b", "ü", "a b", &"x".repeat(65)] {
            assert!(check_tenant_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_keys_file() {
        let hash = "A".repeat(64);
        let text = format!(
            "- sha256: {hash}\n  tenant: acme\n  eventTypes: [page_*]\n  eventsPerSecond: 5\n- sha256: {}\n  tenant: other\n  disabled: true\n",
            "b".repeat(64)
        );
        let keys = parse_api_keys(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].sha256, "a".repeat(64));
        assert_eq!(keys[0].events_per_second, Some(5));
        assert!(keys[1].disabled);
        assert!(parse_api_keys("[]").unwrap().is_empty());
        assert!(parse_api_keys(" \n").unwrap_err().message.contains("empty"));

        let cases = [
            ("- sha256: abc\n  tenant: a\n", "[0].sha256"),
            (&format!("- sha256: {hash}\n  tenant: a.b\n"), "[0].tenant"),
            (
                &format!("- sha256: {hash}\n  tenant: a\n- sha256: {hash}\n  tenant: b\n"),
                "[1].sha256",
            ),
            (
                &format!("- sha256: {hash}\n  tenant: a\n  eventTypes: ['a[']\n"),
                "[0].eventTypes[0]",
            ),
        ];
        for (text, field) in cases {
            assert_eq!(parse_api_keys(text).unwrap_err().field, field, "{text}");
        }
        let typo = parse_api_keys(&format!("- sha256: {hash}\n  tenant: a\n  tennant: b\n"));
        assert!(typo.unwrap_err().message.contains("tennant"));
    }
}
