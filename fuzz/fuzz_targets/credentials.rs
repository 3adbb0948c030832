//! Credentials as clients send them: the auth header, `X-Weir-Key`, the `key` and
//! `token` query parameters, JWTs (header, claims, signature) and the API keys file.
//! Always a principal or an error that names the problem: never a panic or a hang.
//!
//! Input: a first line whose bytes say which of the four places hold a value (lowest
//! bit of byte i), then up to four lines with the values.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weir::gateway::auth::api_keys::{ApiKeySet, hash};
use weir::gateway::auth::credential::{KEY_HEADER, find};
use weir::gateway::auth::jwt::{JwtVerifier, KeySet};
use weir_crds::auth::JwtSpec;

fn verifier() -> &'static (tokio::runtime::Runtime, JwtVerifier) {
    static VERIFIER: OnceLock<(tokio::runtime::Runtime, JwtVerifier)> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let verifier = JwtVerifier::new(&JwtSpec {
            hmac_secret_file: Some("unused".into()),
            issuer: Some("https://idp.example.test".into()),
            ..JwtSpec::default()
        });
        verifier
            .install_hmac_secret(b"fuzz-secret-of-at-least-32-bytes!!")
            .unwrap();
        verifier.install_keys(
            KeySet::parse(include_bytes!("../../dataplane/tests/data/jwt/jwks.json")).unwrap(),
        );
        (runtime, verifier)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(5, '\n');
    let present = lines.next().unwrap_or_default().as_bytes();
    let values: Vec<&str> = lines.collect();
    let get = |i: usize| {
        present
            .get(i)
            .is_some_and(|b| b & 1 == 1)
            .then(|| values.get(i).copied())
            .flatten()
    };
    let header = |name: &str| match name {
        "Authorization" => get(0),
        name if name.eq_ignore_ascii_case(KEY_HEADER) => get(1),
        _ => None,
    };
    let query = |name: &str| match name {
        "key" => get(2),
        "token" => get(3),
        _ => None,
    };
    if let Ok(Some(credential)) = find("Authorization", header, query) {
        assert!(!credential.text.is_empty(), "an empty credential is an error");
        let _ = hash(credential.text);
        if credential.is_jwt() {
            let (runtime, verifier) = verifier();
            // The fuzzer cannot sign, so nothing it makes may verify.
            let verified = runtime.block_on(verifier.verify(credential.text));
            assert!(verified.is_err(), "{verified:?}");
        }
    }
    let _ = ApiKeySet::parse(text);
});
