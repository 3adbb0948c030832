//! API keys: the parsed `auth.apiKeysFile`, looked up by the SHA-256 of a presented key.
//!
//! Only hashes are held; a key is found by hashing what the client sent. A set is
//! replaced whole on reload, so a request sees either the old file or the new one.

use std::collections::HashMap;
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};
use weir_crds::auth::{ApiKeysError, parse_api_keys};

/// A SHA-256 digest.
pub type KeyHash = [u8; 32];

/// One API key, as the file describes it.
#[derive(Debug)]
pub struct ApiKey {
    /// The key's hash.
    pub hash: KeyHash,
    /// The tenant it sends for.
    pub tenant: Arc<str>,
    /// For logs and metrics: the entry's `name`, else the hash's first 12 hex digits.
    pub label: Arc<str>,
    /// Event types the key may send; `None`: any.
    pub event_types: Option<GlobSet>,
    /// Quota overrides.
    pub events_per_second: Option<u32>,
    /// Quota overrides.
    pub bytes_per_second: Option<u32>,
    /// Quota overrides.
    pub max_connections: Option<u32>,
    /// Revoked.
    pub disabled: bool,
}

impl ApiKey {
    /// Whether the key may send events of this type.
    pub fn allows(&self, event_type: &str) -> bool {
        self.event_types
            .as_ref()
            .is_none_or(|set| set.is_match(event_type))
    }
}

/// The keys of one version of the file.
#[derive(Debug, Default)]
pub struct ApiKeySet {
    by_hash: HashMap<KeyHash, Arc<ApiKey>>,
}

/// The SHA-256 of a presented key.
pub fn hash(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeySet {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, ApiKeysError> {
        let mut by_hash = HashMap::new();
        for entry in parse_api_keys(text)? {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&entry.sha256, &mut digest).expect("checked as 64 hex digits");
            let event_types = if entry.event_types.is_empty() {
                None
            } else {
                let mut set = GlobSetBuilder::new();
                for glob in &entry.event_types {
                    set.add(Glob::new(glob).expect("checked when parsed"));
                }
                Some(set.build().map_err(|e| ApiKeysError {
                    field: "eventTypes".into(),
                    message: e.to_string(),
                })?)
            };
            let label = entry
                .name
                .clone()
                .unwrap_or_else(|| entry.sha256[..12].to_string());
            by_hash.insert(
                digest,
                Arc::new(ApiKey {
                    hash: digest,
                    tenant: entry.tenant.into(),
                    label: label.into(),
                    event_types,
                    events_per_second: entry.events_per_second,
                    bytes_per_second: entry.bytes_per_second,
                    max_connections: entry.max_connections,
                    disabled: entry.disabled,
                }),
            );
        }
        Ok(Self { by_hash })
    }

    /// The entry of a key's hash, disabled or not.
    pub fn get(&self, hash: &KeyHash) -> Option<&Arc<ApiKey>> {
        self.by_hash.get(hash)
    }

    /// Keys in the set.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether the set has no keys.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_their_hash_only() {
        let text = format!(
            "- sha256: {}\n  tenant: acme\n  eventTypes: ['page_*']\n- sha256: {}\n  tenant: globex\n  name: old\n  disabled: true\n",
            hex::encode(hash("k-acme")),
            hex::encode(hash("k-old")).to_uppercase(),
        );
        let set = ApiKeySet::parse(&text).unwrap();
        assert_eq!(set.len(), 2);
        let acme = set.get(&hash("k-acme")).unwrap();
        assert_eq!(&*acme.tenant, "acme");
        assert!(acme.allows("page_view") && !acme.allows("click"));
        assert_eq!(&*acme.label, &hex::encode(hash("k-acme"))[..12]);
        let old = set.get(&hash("k-old")).unwrap();
        assert!(old.disabled && old.allows("anything"));
        assert_eq!(&*old.label, "old");
        assert!(set.get(&hash("k-other")).is_none());
    }
}
