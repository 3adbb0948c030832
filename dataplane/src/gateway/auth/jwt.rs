//! JWT verification: OAuth2 access tokens signed by an identity provider.
//!
//! Invariants:
//! - A key verifies only one algorithm: the JWK's `alg`, else the one of its type (RSA:
//!   RS256, P-256: ES256, P-384: ES384, Ed25519: EdDSA); HS256 only with
//!   `auth.jwt.hmacSecretFile`, whose secret must be at least 32 bytes (RFC 7518 §3.2). So `alg: none`,
//!   an RSA public key used as an HMAC secret, or an algorithm the key was not made for
//!   are refused before any signature check.
//! - `exp` is required; `exp`, `nbf`, `iss` and `aud` are checked with `leeway`.
//! - A token is verified once: the result is cached (bounded) until the token expires,
//!   so a client that sends the same token with every batch pays one map lookup. New
//!   keys clear the cache, and a verdict reached with keys replaced meanwhile is not
//!   cached (a generation number tells).
//! - `jwksUrl` is fetched at most once per `jwksMinRefreshInterval`, however many
//!   tokens name unknown key ids.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use weir_crds::auth::JwtSpec;

use super::AuthError;

/// Verified tokens remembered at once.
const CACHE_LIMIT: usize = 10_000;
/// Longest wait for the JWKS URL.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest HS256 secret: as many bytes as the hash's output (RFC 7518 §3.2).
pub const MIN_HMAC_SECRET: usize = 32;
/// Latest `exp` taken: 9999-12-31T23:59:59Z. Later ones are refused rather than let
/// time arithmetic overflow.
const MAX_EXP: u64 = 253_402_300_799;

/// What a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The tenant claim, checked as a tenant id.
    pub tenant: Arc<str>,
    /// The key claim, when present.
    pub api_key: Option<String>,
    /// `exp`.
    pub expires: SystemTime,
}

/// The verification keys of one JWKS version.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    /// Keys without a `kid`; a token without `kid` may use one if it is the only key.
    all: Vec<(DecodingKey, Algorithm)>,
}

impl KeySet {
    /// Reads a JWKS document. Keys of unknown types and symmetric keys are skipped with
    /// a warning (HS256 comes only from the secret file); a document with no usable key
    /// is an error.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Self::default();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone();
            match usable(jwk) {
                Ok(key) => {
                    if let Some(kid) = kid {
                        keys.by_kid.insert(kid, key.clone());
                    }
                    keys.all.push(key);
                }
                Err(why) => tracing::warn!(kid = ?kid, "JWKS key skipped: {why}"),
            }
        }
        if keys.all.is_empty() {
            return Err("the JWKS has no usable key (RSA, P-256, P-384 or Ed25519)".into());
        }
        Ok(keys)
    }
}

/// A JWK's key and the one algorithm it verifies.
fn usable(jwk: &Jwk) -> Result<(DecodingKey, Algorithm), String> {
    let from_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P384 => {
            Algorithm::ES384
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys are not taken from a JWKS".into());
        }
        _ => return Err("unsupported key type or curve".into()),
    };
    let alg = match jwk.common.key_algorithm {
        Some(named) => {
            let alg = Algorithm::from_str(&named.to_string())
                .map_err(|_| format!("unsupported alg {named}"))?;
            if alg.family() != from_type.family() {
                return Err(format!("alg {named} does not fit the key's type"));
            }
            alg
        }
        None => from_type,
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok((key, alg))
}

/// Verifies tokens against the current keys.
pub struct JwtVerifier {
    spec: JwtSpec,
    /// The JWKS file's keys.
    file_keys: ArcSwap<KeySet>,
    /// The JWKS URL's keys.
    url_keys: ArcSwap<KeySet>,
    hmac: ArcSwap<Option<DecodingKey>>,
    fetcher: Option<Fetcher>,
    cache: Mutex<HashMap<Box<str>, VerifiedToken>>,
    /// Bumped by every change of keys or secret.
    generation: AtomicU64,
}

struct Fetcher {
    url: String,
    client: reqwest::Client,
    /// Held while fetching; the time of the last fetch.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl JwtVerifier {
    /// A verifier without keys yet; `install_*` and [`JwtVerifier::refresh`] add them.
    pub fn new(spec: &JwtSpec) -> Self {
        let fetcher = spec.jwks_url.as_ref().map(|url| Fetcher {
            url: url.clone(),
            client: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                // A redirect could lead off the configured (https) origin.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client builds"),
            last: tokio::sync::Mutex::new(None),
        });
        Self {
            spec: spec.clone(),
            file_keys: ArcSwap::from_pointee(KeySet::default()),
            url_keys: ArcSwap::from_pointee(KeySet::default()),
            hmac: ArcSwap::from_pointee(None),
            fetcher,
            cache: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// Drops cached verdicts after a change of keys.
    fn keys_changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.lock().expect("cache lock").clear();
    }

    /// Replaces the JWKS file's keys (the URL's stay). Cached verdicts are dropped, so a
    /// key removed from the set stops verifying at once.
    pub fn install_keys(&self, keys: KeySet) {
        self.file_keys.store(Arc::new(keys));
        self.keys_changed();
    }

    /// Replaces the HS256 secret (the file's bytes, trailing newline removed). A secret
    /// shorter than [`MIN_HMAC_SECRET`] bytes (an empty file, say) is refused, and the
    /// previous one stays: with it, anyone could sign tokens.
    pub fn install_hmac_secret(&self, secret: &[u8]) -> Result<(), String> {
        let secret = secret.strip_suffix(b"\n").unwrap_or(secret);
        let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
        if secret.len() < MIN_HMAC_SECRET {
            return Err(format!(
                "the HS256 secret has {} bytes; at least {MIN_HMAC_SECRET} are required",
                secret.len()
            ));
        }
        self.hmac
            .store(Arc::new(Some(DecodingKey::from_secret(secret))));
        self.keys_changed();
        Ok(())
    }

    /// Fetches `jwksUrl` unless it was fetched less than `jwksMinRefreshInterval` ago
    /// (or `force`). Returns whether new keys were installed.
    pub async fn refresh(&self, force: bool) -> Result<bool, String> {
        let Some(fetcher) = &self.fetcher else {
            return Ok(false);
        };
        let mut last = fetcher.last.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < self.spec.jwks_min_refresh_interval) {
            return Ok(false);
        }
        *last = Some(Instant::now());
        let fetched = async {
            let response = fetcher
                .client
                .get(&fetcher.url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("cannot fetch {}: {e}", fetcher.url))?;
            let body = response
                .bytes()
                .await
                .map_err(|e| format!("cannot read {}: {e}", fetcher.url))?;
            KeySet::parse(&body).map_err(|e| format!("{}: {e}", fetcher.url))
        }
        .await?;
        self.url_keys.store(Arc::new(fetched));
        self.keys_changed();
        Ok(true)
    }

    /// The URL's refresh loop: every `jwksRefreshInterval` until `stop`.
    pub async fn refresh_periodically(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        if self.fetcher.is_none() {
            return;
        }
        let mut ticker = tokio::time::interval(self.spec.jwks_refresh_interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(error) = self.refresh(true).await {
                tracing::error!(%error, "JWKS refresh failed; keeping the previous keys");
            }
        }
    }

    /// Verifies a token: cached verdicts first, then the signature and the claims.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        if let Some(hit) = self.cache.lock().expect("cache lock").get(token)
            && SystemTime::now() < hit.expires + self.spec.leeway
        {
            return Ok(hit.clone());
        }
        let generation = self.generation.load(Ordering::Acquire);
        let header = read_header(token)?;
        let key = match header.alg {
            Algorithm::HS256 => match &**self.hmac.load() {
                Some(secret) => (secret.clone(), Algorithm::HS256),
                None => {
                    return Err(AuthError::Jwt(
                        "HS256 tokens are not accepted (auth.jwt.hmacSecretFile is not set)".into(),
                    ));
                }
            },
            _ => match self.jwks_key(header.kid.as_deref()) {
                Some(key) => key,
                None => {
                    // Keys rotate: an unknown kid may be a new key. One bounded fetch.
                    if let Err(error) = self.refresh(false).await {
                        tracing::warn!(%error, "JWKS fetch for an unknown key id failed");
                    }
                    self.jwks_key(header.kid.as_deref()).ok_or_else(|| {
                        AuthError::Jwt(match &header.kid {
                            Some(kid) => format!("unknown key id (kid) {kid:?}"),
                            None => "the token names no key id (kid) and the JWKS has several keys"
                                .into(),
                        })
                    })?
                }
            },
        };
        let (key, key_alg) = key;
        if header.alg != key_alg {
            return Err(AuthError::Jwt(format!(
                "the token's alg {:?} does not match its key ({key_alg:?})",
                header.alg
            )));
        }
        let verified = self.check(token, &key, key_alg)?;
        let mut cache = self.cache.lock().expect("cache lock");
        // Keys replaced while this token was checked: its key may be gone.
        if self.generation.load(Ordering::Acquire) == generation {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(token.into(), verified.clone());
        }
        Ok(verified)
    }

    /// The key a token names, from the file's keys, then the URL's; a token that names
    /// none may use the only key there is.
    fn jwks_key(&self, kid: Option<&str>) -> Option<(DecodingKey, Algorithm)> {
        let (file, url) = (self.file_keys.load(), self.url_keys.load());
        match kid {
            Some(kid) => file
                .by_kid
                .get(kid)
                .or_else(|| url.by_kid.get(kid))
                .cloned(),
            None => match (file.all.as_slice(), url.all.as_slice()) {
                ([only], []) | ([], [only]) => Some(only.clone()),
                _ => None,
            },
        }
    }

    fn check(
        &self,
        token: &str,
        key: &DecodingKey,
        alg: Algorithm,
    ) -> Result<VerifiedToken, AuthError> {
        let mut validation = Validation::new(alg);
        validation.leeway = self.spec.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &self.spec.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.spec.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &validation,
        )
        .map_err(|e| AuthError::Jwt(self.explain(e.kind())))?;
        let claims = data.claims;
        let tenant_claim = &self.spec.tenant_claim;
        let tenant = match claims.get(tenant_claim) {
            Some(serde_json::Value::String(t)) => t,
            Some(_) => {
                return Err(AuthError::Jwt(format!(
                    "the {tenant_claim} claim is not a string"
                )));
            }
            None => {
                return Err(AuthError::Jwt(format!(
                    "the token has no {tenant_claim} claim (auth.jwt.tenantClaim)"
                )));
            }
        };
        weir_crds::auth::check_tenant_id(tenant)
            .map_err(|m| AuthError::Jwt(format!("the {tenant_claim} claim: {m}")))?;
        let expires = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .filter(|s| *s <= MAX_EXP)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .ok_or_else(|| {
                AuthError::Jwt("exp is not a number of seconds before the year 10000".into())
            })?;
        let api_key = claims
            .get(&self.spec.key_claim)
            .and_then(serde_json::Value::as_str)
            .map(str::to_string);
        Ok(VerifiedToken {
            tenant: tenant.as_str().into(),
            api_key,
            expires,
        })
    }

    fn explain(&self, kind: &ErrorKind) -> String {
        match kind {
            ErrorKind::ExpiredSignature => "the token has expired (exp)".into(),
            ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
            ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
            ErrorKind::InvalidIssuer => format!(
                "the token's issuer (iss) is not {:?}",
                self.spec.issuer.as_deref().unwrap_or_default()
            ),
            ErrorKind::InvalidAudience => format!(
                "the token's audience (aud) does not include {:?}",
                self.spec.audience.as_deref().unwrap_or_default()
            ),
            ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
            ErrorKind::InvalidAlgorithm => "the token's alg does not match its key".into(),
            other => format!("the token cannot be read: {other:?}"),
        }
    }
}

/// The algorithms a token may name.
const ACCEPTED: &str = "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256";

/// Reads a token's header, refusing algorithms outside [`ACCEPTED`] (`none` included)
/// with a message that names them. The header is parsed once; only a header that does
/// not parse is looked into again, for the `alg` to name.
fn read_header(token: &str) -> Result<jsonwebtoken::Header, AuthError> {
    let refused = |alg: &str| {
        AuthError::Jwt(format!(
            "the token's alg {alg:?} is not accepted (accepted: {ACCEPTED})"
        ))
    };
    match jsonwebtoken::decode_header(token) {
        Ok(header) if matches!(header.alg, Algorithm::HS384 | Algorithm::HS512) => {
            Err(refused(&format!("{:?}", header.alg)))
        }
        Ok(header) => Ok(header),
        Err(error) => Err(match named_alg(token) {
            Some(alg) => refused(&alg),
            None => AuthError::Jwt(format!("the token's header cannot be read: {error}")),
        }),
    }
}

/// The `alg` a token's header names, if its header is base64url JSON with one.
fn named_alg(token: &str) -> Option<String> {
    let encoded = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .ok()?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(json.get("alg")?.as_str()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> JwtVerifier {
        let spec = JwtSpec {
            hmac_secret_file: Some("unused".into()),
            leeway: Duration::ZERO,
            ..JwtSpec::default()
        };
        let verifier = JwtVerifier::new(&spec);
        verifier.install_hmac_secret(SECRET).unwrap();
        let jwks = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jwt/jwks.json"),
        )
        .unwrap();
        verifier.install_keys(KeySet::parse(&jwks).unwrap());
        verifier
    }

    fn hs256(claims: serde_json::Value, secret: &[u8], kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    #[tokio::test]
    async fn hs256_with_the_secret_only() {
        let v = verifier();
        let claims = serde_json::json!({"tenant_id": "acme", "exp": 4_102_444_800u64});
        let ok = v
            .verify(&hs256(claims.clone(), SECRET, None))
            .await
            .unwrap();
        assert_eq!(&*ok.tenant, "acme");
        // Signed with the RSA public key as the HMAC secret, naming the RSA key.
        let public = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jwt/rsa1.pub.pem"),
        )
        .unwrap();
        let confused = v.verify(&hs256(claims, &public, Some("rsa1"))).await;
        assert!(
            matches!(&confused, Err(AuthError::Jwt(m)) if m.contains("signature")),
            "{confused:?}"
        );
    }

    #[tokio::test]
    async fn short_secrets_and_absurd_expiry_are_refused() {
        let v = verifier();
        for short in [&b""[..], b"\n", b"short-secret\n"] {
            assert!(v.install_hmac_secret(short).is_err(), "{short:?}");
        }
        // The previous secret stays.
        let claims = serde_json::json!({"tenant_id": "acme", "exp": 4_102_444_800u64});
        assert!(v.verify(&hs256(claims, SECRET, None)).await.is_ok());
        let far = serde_json::json!({"tenant_id": "acme", "exp": u64::MAX});
        let refused = v.verify(&hs256(far, SECRET, None)).await;
        assert!(
            matches!(&refused, Err(AuthError::Jwt(m)) if m.contains("year 10000")),
            "{refused:?}"
        );
    }
}
