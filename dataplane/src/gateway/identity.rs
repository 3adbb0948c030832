//! Who is sending: connection identity (with the principal [`super::auth`] found), and
//! the registry of open WebSocket connections that enforces the connection limit and
//! the duplicate policy. Identities of different tenants never collide: the duplicate
//! check compares (tenant, id, group).
//!
//! Invariant: the registry's count equals the number of live [`ConnectionGuard`]s, since
//! a guard is the only way to be counted and dropping it is the only way out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use weir_crds::pipeline::{DuplicatePolicy, IdentitySpec};

use super::ack::Rejection;
use super::auth::Principal;

/// The identity of a connection or request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The id header's value; `None` for anonymous clients.
    pub id: Option<String>,
    /// The group header's value, or the default group.
    pub group: String,
    /// The tenant and key the credentials name.
    pub principal: Principal,
}

impl Identity {
    /// The sender's tenant, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.principal.tenant.as_deref()
    }
}

/// Reads identity from request headers (`header(name)` returns a header's value).
pub fn identify<'a>(
    spec: &IdentitySpec,
    principal: Principal,
    header: impl Fn(&str) -> Option<&'a str>,
) -> Result<Identity, Rejection> {
    let id = header(&spec.id_header)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    if id.is_none() && spec.require_id {
        return Err(Rejection::BadRequest(format!(
            "missing connection id header {}",
            spec.id_header
        )));
    }
    let group = header(&spec.group_header)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or(&spec.default_group)
        .to_string();
    Ok(Identity {
        id,
        group,
        principal,
    })
}

struct Entry {
    connection: u64,
    kick: CancellationToken,
}

/// The open WebSocket connections.
pub struct ConnectionRegistry {
    max: usize,
    policy: DuplicatePolicy,
    count: AtomicUsize,
    next_id: AtomicU64,
    by_identity: Mutex<HashMap<IdentityKey, Entry>>,
}

/// (tenant, id, group).
type IdentityKey = (Option<Arc<str>>, String, String);

fn identity_key(identity: &Identity, id: &str) -> IdentityKey {
    (
        identity.principal.tenant.clone(),
        id.to_string(),
        identity.group.clone(),
    )
}

/// Membership in the registry; leaving it on drop.
pub struct ConnectionGuard {
    registry: Arc<ConnectionRegistry>,
    identity: Identity,
    connection: u64,
    /// Cancelled when a newer connection with the same identity replaces this one.
    pub kicked: CancellationToken,
}

impl ConnectionRegistry {
    /// A registry with a connection limit and a duplicate policy.
    pub fn new(max: usize, policy: DuplicatePolicy) -> Self {
        Self {
            max,
            policy,
            count: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            by_identity: Mutex::new(HashMap::new()),
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits a connection, or says why not.
    pub fn register(self: &Arc<Self>, identity: &Identity) -> Result<ConnectionGuard, Rejection> {
        let admitted = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(Rejection::ConnectionLimit(self.max));
        }
        let connection = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kicked = CancellationToken::new();
        if let (Some(id), false) = (&identity.id, self.policy == DuplicatePolicy::Allow) {
            let key = identity_key(identity, id);
            let mut map = self.by_identity.lock().expect("registry lock");
            if let Some(existing) = map.get(&key) {
                if self.policy == DuplicatePolicy::Reject {
                    drop(map);
                    self.count.fetch_sub(1, Ordering::AcqRel);
                    return Err(Rejection::DuplicateIdentity {
                        id: key.1,
                        group: key.2,
                    });
                }
                existing.kick.cancel();
            }
            map.insert(
                key,
                Entry {
                    connection,
                    kick: kicked.clone(),
                },
            );
        }
        Ok(ConnectionGuard {
            registry: self.clone(),
            identity: identity.clone(),
            connection,
            kicked,
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(id) = &self.identity.id {
            let key = identity_key(&self.identity, id);
            let mut map = self.registry.by_identity.lock().expect("registry lock");
            // A replacing connection owns the entry now; leave it alone.
            if map
                .get(&key)
                .is_some_and(|e| e.connection == self.connection)
            {
                map.remove(&key);
            }
        }
        self.registry.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(id: &str, group: &str) -> Identity {
        Identity {
            id: Some(id.into()),
            group: group.into(),
            principal: Principal::default(),
        }
    }

    #[test]
    fn reads_headers_with_default_group() {
        let spec = IdentitySpec::default();
        let id = identify(&spec, Principal::default(), |h| {
            (h == "X-User-ID").then_some("u1")
        })
        .unwrap();
        assert_eq!(id, ident("u1", "--default--"));
        let anon = identify(&spec, Principal::default(), |_| None).unwrap();
        assert_eq!(anon.id, None);
        let strict = IdentitySpec {
            require_id: true,
            ..Default::default()
        };
        let err = identify(&strict, Principal::default(), |_| None).unwrap_err();
        assert!(err.to_string().contains("X-User-ID"));
    }

    #[test]
    fn connection_limit() {
        let reg = Arc::new(ConnectionRegistry::new(2, DuplicatePolicy::Reject));
        let a = reg.register(&ident("a", "g")).unwrap();
        let _b = reg.register(&ident("b", "g")).unwrap();
        assert_eq!(
            reg.register(&ident("c", "g")).err(),
            Some(Rejection::ConnectionLimit(2))
        );
        drop(a);
        assert!(reg.register(&ident("c", "g")).is_ok());
    }

    #[test]
    fn duplicate_policies() {
        let reg = Arc::new(ConnectionRegistry::new(10, DuplicatePolicy::Reject));
        let first = reg.register(&ident("a", "g")).unwrap();
        assert!(matches!(
            reg.register(&ident("a", "g")),
            Err(Rejection::DuplicateIdentity { .. })
        ));
        let _other_group = reg.register(&ident("a", "h")).unwrap();
        assert_eq!(reg.len(), 2, "a refused duplicate is not counted");
        drop(first);
        let _again = reg.register(&ident("a", "g")).unwrap();

        let reg = Arc::new(ConnectionRegistry::new(10, DuplicatePolicy::Replace));
        let old = reg.register(&ident("a", "g")).unwrap();
        let new = reg.register(&ident("a", "g")).unwrap();
        assert!(old.kicked.is_cancelled());
        drop(old);
        // The old connection leaving must not unregister the new one.
        let newer = reg.register(&ident("a", "g")).unwrap();
        assert!(new.kicked.is_cancelled());
        assert!(!newer.kicked.is_cancelled());

        let reg = Arc::new(ConnectionRegistry::new(10, DuplicatePolicy::Allow));
        let _x = reg.register(&ident("a", "g")).unwrap();
        let _y = reg.register(&ident("a", "g")).unwrap();
        assert_eq!(reg.len(), 2);
    }

    #[test]
    fn the_same_id_in_two_tenants_is_no_duplicate() {
        let reg = Arc::new(ConnectionRegistry::new(10, DuplicatePolicy::Reject));
        let of = |tenant: &str| Identity {
            principal: Principal {
                tenant: Some(tenant.into()),
                ..Default::default()
            },
            ..ident("u1", "g")
        };
        let _a = reg.register(&of("acme")).unwrap();
        let _b = reg.register(&of("globex")).unwrap();
        assert!(reg.register(&of("acme")).is_err());
    }
}
