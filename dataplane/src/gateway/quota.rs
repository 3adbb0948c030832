//! Quotas per tenant and per API key: events/s and bytes/s as token buckets (GCRA, from
//! `governor`), and open WebSocket connections as counters.
//!
//! Invariants:
//! - A batch is checked whole before admission: it is published entirely or refused
//!   entirely (RATE_LIMITED with the wait until it would fit), so nothing accepted is
//!   ever dropped for a quota. Its tenant's buckets are checked first, then its key's.
//!   A batch refused by a later bucket has used the earlier buckets' tokens (a bucket
//!   cannot give tokens back), which errs on the side of the limit.
//! - A batch larger than a whole bucket can never pass; it is refused as BAD_REQUEST
//!   (retrying would not help) with the limit in the message.
//! - At most `tenants.maxTracked` tenants and keys have state. Past it, owners with no
//!   open connection whose buckets have refilled (idle for `burstSeconds`) are
//!   forgotten, which loses nothing; if none has, the least recently used idle owner
//!   is, and starts again with a full bucket.
//! - Keys are told apart by their hash, never their name, so two keys with the same
//!   `name` never share a bucket. A quota changed by a reload (the keys file) takes
//!   effect with a fresh bucket.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use weir_crds::auth::{QuotaSpec, TenantsSpec};

use super::ack::Rejection;
use super::auth::Principal;
use super::auth::api_keys::KeyHash;
use super::metrics::Metrics;

/// Buckets and connection count of one tenant or key.
struct Usage {
    quota: QuotaSpec,
    events: Option<DefaultDirectRateLimiter>,
    bytes: Option<DefaultDirectRateLimiter>,
    connections: u32,
    last_used: Instant,
}

impl Usage {
    fn new(quota: &QuotaSpec, burst_seconds: u32) -> Self {
        let bucket = |rate: u32| {
            let rate = NonZeroU32::new(rate)?;
            let burst = NonZeroU32::new(rate.get().saturating_mul(burst_seconds))
                .expect("burstSeconds is at least 1");
            Some(DefaultDirectRateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ))
        };
        Self {
            quota: quota.clone(),
            events: bucket(quota.events_per_second),
            bytes: bucket(quota.bytes_per_second),
            connections: 0,
            last_used: Instant::now(),
        }
    }
}

/// Whose quota: a tenant or an API key (by its hash).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Owner {
    Tenant(Arc<str>),
    Key(KeyHash),
}

/// An owner and its quota.
struct Applies<'a> {
    owner: Owner,
    /// How messages name it: the tenant id or the key's label.
    label: &'a str,
    quota: QuotaSpec,
}

impl Applies<'_> {
    /// How messages name the owner; only built for a refusal.
    fn name(&self) -> String {
        match self.owner {
            Owner::Tenant(_) => format!("tenant {}", self.label),
            Owner::Key(_) => format!("API key {}", self.label),
        }
    }
}

/// The quota state of every tenant and key seen.
pub struct Quotas {
    spec: TenantsSpec,
    /// Whether any quota is set at all; when not, checks are free.
    active: bool,
    usage: Mutex<HashMap<Owner, Usage>>,
    /// Counts refusals (`weir_gateway_tenant_rate_limited_total`).
    metrics: Arc<Metrics>,
}

/// A WebSocket connection counted against its tenant's and key's `maxConnections`;
/// uncounted on drop.
pub struct ConnectionQuota {
    quotas: Arc<Quotas>,
    counted: Vec<Owner>,
}

impl Drop for ConnectionQuota {
    fn drop(&mut self) {
        let mut usage = self.quotas.usage.lock().expect("quota lock");
        for owner in &self.counted {
            if let Some(u) = usage.get_mut(owner) {
                u.connections = u.connections.saturating_sub(1);
            }
        }
    }
}

impl Quotas {
    /// Quotas from the spec.
    pub fn new(spec: &TenantsSpec, metrics: Arc<Metrics>) -> Self {
        let set = |q: &QuotaSpec| *q != QuotaSpec::default();
        let active = set(&spec.quota) || set(&spec.key_quota) || spec.quotas.values().any(set);
        Self {
            spec: spec.clone(),
            active,
            usage: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The quotas that apply to a principal.
    fn owners<'a>(&self, principal: &'a Principal) -> Vec<Applies<'a>> {
        let mut owners = Vec::with_capacity(2);
        if let Some(tenant) = &principal.tenant {
            let quota = self.spec.quotas.get(&**tenant).unwrap_or(&self.spec.quota);
            owners.push(Applies {
                owner: Owner::Tenant(tenant.clone()),
                label: tenant,
                quota: quota.clone(),
            });
        }
        if let Some(key) = &principal.key {
            let base = &self.spec.key_quota;
            let quota = QuotaSpec {
                events_per_second: key.events_per_second.unwrap_or(base.events_per_second),
                bytes_per_second: key.bytes_per_second.unwrap_or(base.bytes_per_second),
                max_connections: key.max_connections.unwrap_or(base.max_connections),
            };
            owners.push(Applies {
                owner: Owner::Key(key.hash),
                label: &key.label,
                quota,
            });
        }
        owners.retain(|a| a.quota != QuotaSpec::default());
        owners
    }

    /// Runs `f` on an owner's usage, creating it (and making room) first.
    fn with_usage<T>(&self, applies: &Applies<'_>, f: impl FnOnce(&mut Usage) -> T) -> T {
        let mut usage = self.usage.lock().expect("quota lock");
        if !usage.contains_key(&applies.owner) && usage.len() >= self.spec.max_tracked {
            self.make_room(&mut usage);
        }
        let entry = usage
            .entry(applies.owner.clone())
            .or_insert_with(|| Usage::new(&applies.quota, self.spec.burst_seconds));
        if entry.quota != applies.quota {
            let connections = entry.connections;
            *entry = Usage::new(&applies.quota, self.spec.burst_seconds);
            entry.connections = connections;
        }
        entry.last_used = Instant::now();
        f(entry)
    }

    /// Forgets owners whose state says nothing any more (idle, buckets refilled), or
    /// else the least recently used idle one.
    fn make_room(&self, usage: &mut HashMap<Owner, Usage>) {
        let refilled = Duration::from_secs(u64::from(self.spec.burst_seconds));
        usage.retain(|_, u| u.connections > 0 || u.last_used.elapsed() < refilled);
        if usage.len() < self.spec.max_tracked {
            return;
        }
        let oldest = usage
            .iter()
            .filter(|(_, u)| u.connections == 0)
            .min_by_key(|(_, u)| u.last_used)
            .map(|(owner, _)| owner.clone());
        if let Some(owner) = oldest {
            usage.remove(&owner);
        }
    }

    /// Takes a batch of `events` events and `bytes` bytes from the principal's buckets,
    /// or says how long to wait.
    pub fn take(
        &self,
        principal: &Principal,
        events: usize,
        bytes: usize,
    ) -> Result<(), Rejection> {
        if !self.active {
            return Ok(());
        }
        for applies in self.owners(principal) {
            let taken = self.with_usage(&applies, |usage| {
                for (bucket, amount, unit, field) in [
                    (&usage.events, events, "events", "eventsPerSecond"),
                    (&usage.bytes, bytes, "bytes", "bytesPerSecond"),
                ] {
                    let (Some(bucket), Some(n)) =
                        (bucket, NonZeroU32::new(u32::try_from(amount).unwrap_or(u32::MAX)))
                    else {
                        continue;
                    };
                    match bucket.check_n(n) {
                        Ok(Ok(())) => {}
                        Ok(Err(not_until)) => {
                            let wait = not_until.wait_time_from(DefaultClock::default().now());
                            return Err(Rejection::QuotaExceeded {
                                message: format!(
                                    "{} is over its quota of {field} ({unit}); retry in {:.1}s",
                                    applies.name(),
                                    wait.as_secs_f64()
                                ),
                                retry_after: wait,
                            });
                        }
                        Err(capacity) => {
                            return Err(Rejection::BadRequest(format!(
                                "a batch of {amount} {unit} exceeds what {} may send at once ({} {unit}: {field} × tenants.burstSeconds); send smaller batches",
                                applies.name(),
                                capacity.0
                            )));
                        }
                    }
                }
                Ok(())
            });
            taken.map_err(|refused| self.counted(principal, refused))?;
        }
        Ok(())
    }

    /// Counts a quota refusal by tenant.
    fn counted(&self, principal: &Principal, refused: Rejection) -> Rejection {
        if matches!(refused, Rejection::QuotaExceeded { .. }) {
            let tenant = principal.tenant.as_deref().unwrap_or_default();
            self.metrics
                .tenant_rate_limited
                .with_label_values(&[self.metrics.tenants.get(tenant)])
                .inc();
        }
        refused
    }

    /// Counts a new WebSocket connection, or refuses it when its tenant or key has
    /// `maxConnections` open.
    pub fn connect(self: &Arc<Self>, principal: &Principal) -> Result<ConnectionQuota, Rejection> {
        let mut guard = ConnectionQuota {
            quotas: self.clone(),
            counted: Vec::new(),
        };
        if !self.active {
            return Ok(guard);
        }
        for applies in self.owners(principal) {
            self.with_usage(&applies, |usage| {
                let max = usage.quota.max_connections;
                if max > 0 && usage.connections >= max {
                    return Err(Rejection::QuotaExceeded {
                        message: format!(
                            "{} has its quota of {} WebSocket connections (maxConnections) open",
                            applies.name(),
                            max
                        ),
                        retry_after: Duration::from_secs(5),
                    });
                }
                usage.connections += 1;
                Ok(())
            })
            .map_err(|refused| self.counted(principal, refused))?;
            guard.counted.push(applies.owner);
        }
        Ok(guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(t: &str) -> Principal {
        Principal {
            tenant: Some(t.into()),
            ..Default::default()
        }
    }

    fn spec(events: u32, bytes: u32, connections: u32) -> TenantsSpec {
        TenantsSpec {
            quota: QuotaSpec {
                events_per_second: events,
                bytes_per_second: bytes,
                max_connections: connections,
            },
            ..Default::default()
        }
    }

    #[test]
    fn no_quota_no_limit() {
        let q = Quotas::new(&TenantsSpec::default(), Arc::default());
        for _ in 0..1000 {
            q.take(&tenant("a"), 1_000_000, 1 << 30).unwrap();
        }
        assert!(
            q.usage.lock().unwrap().is_empty(),
            "no state without quotas"
        );
    }

    #[test]
    fn events_bucket_refuses_then_recovers() {
        let metrics = Arc::new(Metrics::new());
        let q = Quotas::new(&spec(100, 0, 0), metrics.clone());
        q.take(&tenant("a"), 60, 10).unwrap();
        match q.take(&tenant("a"), 60, 10) {
            Err(Rejection::QuotaExceeded {
                message,
                retry_after,
            }) => {
                assert!(message.contains("tenant a") && message.contains("eventsPerSecond"));
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            other => panic!("{other:?}"),
        }
        let refused = metrics.tenant_rate_limited.with_label_values(&["a"]);
        assert_eq!(refused.get(), 1, "counted by tenant");
        // Another tenant has its own bucket.
        q.take(&tenant("b"), 100, 10).unwrap();
        // Too big for the bucket at all: retrying cannot help.
        assert!(matches!(
            q.take(&tenant("c"), 101, 10),
            Err(Rejection::BadRequest(m)) if m.contains("smaller batches")
        ));
        std::thread::sleep(Duration::from_millis(700));
        q.take(&tenant("a"), 60, 10).unwrap();
    }

    #[test]
    fn per_tenant_override_and_bytes() {
        let mut s = spec(0, 1000, 0);
        s.quotas.insert(
            "big".into(),
            QuotaSpec {
                bytes_per_second: 1_000_000,
                ..Default::default()
            },
        );
        let q = Quotas::new(&s, Arc::default());
        q.take(&tenant("big"), 1, 500_000).unwrap();
        q.take(&tenant("small"), 1, 900).unwrap();
        assert!(matches!(
            q.take(&tenant("small"), 1, 200),
            Err(Rejection::QuotaExceeded { message, .. }) if message.contains("bytesPerSecond")
        ));
    }

    #[test]
    fn connections_are_counted_and_released() {
        let q = Arc::new(Quotas::new(&spec(0, 0, 2), Arc::default()));
        let a = q.connect(&tenant("a")).unwrap();
        let _b = q.connect(&tenant("a")).unwrap();
        assert!(matches!(
            q.connect(&tenant("a")),
            Err(Rejection::QuotaExceeded { .. })
        ));
        let _other = q.connect(&tenant("x")).unwrap();
        drop(a);
        q.connect(&tenant("a")).unwrap();
    }

    #[test]
    fn keys_with_the_same_name_have_their_own_buckets() {
        use crate::gateway::auth::api_keys::ApiKeySet;
        let text = format!(
            "- sha256: '{}'\n  tenant: a\n  name: web\n- sha256: '{}'\n  tenant: b\n  name: web\n",
            "1".repeat(64),
            "2".repeat(64)
        );
        let keys = ApiKeySet::parse(&text).unwrap();
        let principal = |digit: &str| {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(digit.repeat(64), &mut hash).unwrap();
            let key = keys.get(&hash).unwrap().clone();
            Principal {
                tenant: Some(key.tenant.clone()),
                key: Some(key),
                expires: None,
            }
        };
        let q = Quotas::new(
            &TenantsSpec {
                key_quota: QuotaSpec {
                    events_per_second: 10,
                    ..Default::default()
                },
                ..Default::default()
            },
            Arc::default(),
        );
        q.take(&principal("1"), 10, 1).unwrap();
        q.take(&principal("2"), 10, 1).unwrap();
        assert!(q.take(&principal("1"), 10, 1).is_err());
    }

    #[test]
    fn tracked_state_is_bounded() {
        let mut s = spec(10, 0, 0);
        s.max_tracked = 3;
        let q = Quotas::new(&s, Arc::default());
        for i in 0..10 {
            q.take(&tenant(&format!("t{i}")), 1, 1).unwrap();
        }
        assert!(q.usage.lock().unwrap().len() <= 3);
    }
}
