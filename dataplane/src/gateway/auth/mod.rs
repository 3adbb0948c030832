//! Who is sending: static tokens, API keys and JWTs, turned into a [`Principal`] (the
//! tenant and the key a request sends for).
//!
//! Invariants:
//! - Authentication is on as soon as any credential source is configured; then a
//!   request without a valid credential is refused (UNAUTHORIZED) before its body is
//!   read. An empty credential is always refused.
//! - Credential files are replaced whole when they change and load; a file that does
//!   not load is logged and counted, and the previous version stays in force.
//! - A principal is checked again while a WebSocket stays open
//!   ([`Authenticator::still_valid`]): a key revoked by a reload, or a JWT past its
//!   `exp`, ends the connection after what it sent is answered.

pub mod api_keys;
pub mod credential;
pub mod jwt;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use weir_crds::auth::AuthSpec;

use super::ack::Rejection;
use super::metrics::Metrics;
use api_keys::{ApiKey, ApiKeySet, KeyHash};
use credential::Credential;
use jwt::JwtVerifier;

/// Why a credential was refused. Each variant is one `reason` label of
/// `weir_gateway_auth_refused_total`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No credential anywhere.
    #[error(
        "missing credentials: send Authorization: Bearer <key or token>, X-Weir-Key, or the key/token query parameter"
    )]
    Missing,
    /// A credential that is present but empty.
    #[error("empty credential in {0}")]
    Empty(String),
    /// Not a token, and no API key with this hash.
    #[error("unknown API key or token")]
    Unknown,
    /// A key marked `disabled`, or one removed from the file while its connection was open.
    #[error("API key {0} is revoked")]
    Revoked(String),
    /// A JWT that does not verify; says why.
    #[error("invalid JWT: {0}")]
    Jwt(String),
    /// A JWT past its `exp`, noticed on an open connection.
    #[error("the JWT expired")]
    Expired,
}

impl AuthError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Empty(_) => "empty",
            AuthError::Unknown => "unknown",
            AuthError::Revoked(_) => "revoked",
            AuthError::Jwt(_) => "invalid_jwt",
            AuthError::Expired => "expired",
        }
    }
}

impl From<AuthError> for Rejection {
    fn from(error: AuthError) -> Self {
        Rejection::Unauthorized(error.to_string())
    }
}

/// Who a request sends for.
#[derive(Clone, Debug, Default)]
pub struct Principal {
    /// The tenant; `None` for static tokens and unauthenticated gateways.
    pub tenant: Option<Arc<str>>,
    /// The API key (given directly, or as a JWT's key claim).
    pub key: Option<Arc<ApiKey>>,
    /// When a JWT stops being valid.
    pub expires: Option<SystemTime>,
}

impl PartialEq for Principal {
    fn eq(&self, other: &Self) -> bool {
        self.tenant == other.tenant
            && self.key.as_ref().map(|k| k.hash) == other.key.as_ref().map(|k| k.hash)
            && self.expires == other.expires
    }
}

impl Eq for Principal {}

impl Principal {
    /// Whether the principal's key allows this event type.
    pub fn allows(&self, event_type: &str) -> bool {
        self.key.as_ref().is_none_or(|k| k.allows(event_type))
    }
}

/// Checks credentials against the current tokens, keys and JWKS.
pub struct Authenticator {
    header: String,
    enabled: bool,
    tokens: ArcSwap<HashSet<String>>,
    api_keys: ArcSwap<ApiKeySet>,
    jwt: Option<Arc<JwtVerifier>>,
    spec: AuthSpec,
    /// Each file's content as loaded at start, so that the watchers see a change made
    /// between loading and watching.
    loaded: Mutex<HashMap<String, Vec<u8>>>,
}

impl Authenticator {
    /// Reads every configured credential file; a file that cannot be read or parsed
    /// stops the start with an error that names it. The JWKS URL is fetched once; if
    /// that fails the gateway starts anyway (the identity provider may come up later)
    /// and refuses JWTs until a fetch succeeds.
    pub async fn load(spec: &AuthSpec) -> anyhow::Result<Self> {
        let mut loaded = HashMap::new();
        let mut read = |path: &String, field: &str| -> anyhow::Result<Vec<u8>> {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {field} {path}"))?;
            loaded.insert(path.clone(), bytes.clone());
            Ok(bytes)
        };
        let file_tokens = match &spec.tokens_file {
            Some(path) => token_lines(&read(path, "auth.tokensFile")?),
            None => HashSet::new(),
        };
        let api_keys = match &spec.api_keys_file {
            Some(path) => parse_keys(&read(path, "auth.apiKeysFile")?)
                .with_context(|| format!("auth.apiKeysFile {path}"))?,
            None => ApiKeySet::default(),
        };
        let jwt = if spec.jwt.is_enabled() {
            let verifier = JwtVerifier::new(&spec.jwt);
            if let Some(path) = &spec.jwt.jwks_file {
                let keys = jwt::KeySet::parse(&read(path, "auth.jwt.jwksFile")?)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("auth.jwt.jwksFile {path}"))?;
                verifier.install_keys(keys);
            }
            if let Some(path) = &spec.jwt.hmac_secret_file {
                verifier
                    .install_hmac_secret(&read(path, "auth.jwt.hmacSecretFile")?)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("auth.jwt.hmacSecretFile {path}"))?;
            }
            if let Err(error) = verifier.refresh(true).await {
                tracing::error!(%error, "auth.jwt.jwksUrl: no keys yet; JWTs are refused until a fetch succeeds");
            }
            Some(Arc::new(verifier))
        } else {
            None
        };
        Ok(Self {
            header: spec.header.clone(),
            enabled: spec.is_enabled(),
            tokens: ArcSwap::from_pointee(all_tokens(spec, file_tokens)),
            api_keys: ArcSwap::from_pointee(api_keys),
            jwt,
            spec: spec.clone(),
            loaded: Mutex::new(loaded),
        })
    }

    /// Whether requests must authenticate.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The header credentials come in (`auth.header`).
    pub fn header(&self) -> &str {
        &self.header
    }

    /// Finds and checks a request's credential. `header(name)` and `query(name)` return
    /// a header's and a query parameter's value.
    pub async fn authenticate<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a str>,
        query: impl Fn(&str) -> Option<&'a str>,
        metrics: &Metrics,
    ) -> Result<Principal, Rejection> {
        if !self.enabled {
            return Ok(Principal::default());
        }
        let outcome = match credential::find(&self.header, header, query) {
            Ok(Some(credential)) => self.check(credential).await,
            Ok(None) => Err(AuthError::Missing),
            Err(error) => Err(error),
        };
        outcome.map_err(|error| {
            metrics
                .auth_refused
                .with_label_values(&[error.reason()])
                .inc();
            error.into()
        })
    }

    async fn check(&self, credential: Credential<'_>) -> Result<Principal, AuthError> {
        if self.tokens.load().contains(credential.text) {
            return Ok(Principal::default());
        }
        if credential.is_jwt()
            && let Some(jwt) = &self.jwt
        {
            let verified = jwt.verify(credential.text).await?;
            let key = match &verified.api_key {
                Some(key) => self.current_key(&api_keys::hash(key))?,
                None => None,
            };
            if let Some(key) = &key
                && key.tenant != verified.tenant
            {
                return Err(AuthError::Jwt(format!(
                    "the token's API key belongs to another tenant than its {} claim",
                    self.spec.jwt.tenant_claim
                )));
            }
            return Ok(Principal {
                tenant: Some(verified.tenant),
                key,
                expires: Some(verified.expires),
            });
        }
        match self.current_key(&api_keys::hash(credential.text))? {
            Some(key) => Ok(Principal {
                tenant: Some(key.tenant.clone()),
                key: Some(key),
                expires: None,
            }),
            None => Err(AuthError::Unknown),
        }
    }

    /// The current entry of a key hash; `Revoked` if disabled.
    fn current_key(&self, hash: &KeyHash) -> Result<Option<Arc<ApiKey>>, AuthError> {
        match self.api_keys.load().get(hash) {
            Some(key) if key.disabled => Err(AuthError::Revoked(key.label.to_string())),
            Some(key) => Ok(Some(key.clone())),
            None => Ok(None),
        }
    }

    /// Whether an open connection's principal still holds: its key is still in the file
    /// and enabled, and its JWT has not expired.
    pub fn still_valid(&self, principal: &Principal) -> Result<(), AuthError> {
        if let Some(expires) = principal.expires
            && SystemTime::now() >= expires + self.spec.jwt.leeway
        {
            return Err(AuthError::Expired);
        }
        if let Some(key) = &principal.key {
            match self.current_key(&key.hash)? {
                // A key moved to another tenant no longer sends for this one.
                Some(current) if current.tenant == key.tenant => {}
                _ => return Err(AuthError::Revoked(key.label.to_string())),
            }
        }
        Ok(())
    }

    /// Reloads the credential files when they change and refreshes the JWKS URL, until
    /// `stop`.
    pub fn watch(self: &Arc<Self>, metrics: Arc<Metrics>, stop: &CancellationToken) {
        let reloader = |path: &String, file, apply| {
            let initial = self.loaded.lock().expect("loaded lock").remove(path);
            super::reload::spawn_reloader(
                PathBuf::from(path),
                file,
                self.spec.reload_interval,
                initial,
                stop.clone(),
                metrics.clone(),
                apply,
            );
        };
        type Apply = Box<dyn FnMut(&[u8]) -> Result<(), String> + Send>;
        if let Some(path) = &self.spec.tokens_file {
            let this = self.clone();
            let apply: Apply = Box::new(move |text| {
                let tokens = all_tokens(&this.spec, token_lines(text));
                this.tokens.store(Arc::new(tokens));
                Ok(())
            });
            reloader(path, "tokens", apply);
        }
        if let Some(path) = &self.spec.api_keys_file {
            let this = self.clone();
            let apply: Apply = Box::new(move |text| {
                let keys = parse_keys(text).map_err(|e| format!("{e:#}"))?;
                this.api_keys.store(Arc::new(keys));
                Ok(())
            });
            reloader(path, "apiKeys", apply);
        }
        let Some(jwt) = &self.jwt else { return };
        if let Some(path) = &self.spec.jwt.jwks_file {
            let jwt = jwt.clone();
            let apply: Apply = Box::new(move |text| {
                jwt.install_keys(jwt::KeySet::parse(text)?);
                Ok(())
            });
            reloader(path, "jwks", apply);
        }
        if let Some(path) = &self.spec.jwt.hmac_secret_file {
            let jwt = jwt.clone();
            let apply: Apply = Box::new(move |secret| jwt.install_hmac_secret(secret));
            reloader(path, "hmacSecret", apply);
        }
        tokio::spawn(jwt.clone().refresh_periodically(stop.clone()));
    }
}

/// The tokens of a tokens file: one per line, `#` comments.
fn token_lines(text: &[u8]) -> HashSet<String> {
    String::from_utf8_lossy(text)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// `auth.tokens` and the tokens file's.
fn all_tokens(spec: &AuthSpec, from_file: HashSet<String>) -> HashSet<String> {
    spec.tokens.iter().cloned().chain(from_file).collect()
}

fn parse_keys(text: &[u8]) -> anyhow::Result<ApiKeySet> {
    let text = std::str::from_utf8(text).context("the file is not UTF-8")?;
    Ok(ApiKeySet::parse(text)?)
}
