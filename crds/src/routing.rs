//! Routing: an event's type (and its sender's tenant) selects its Kafka topic.
//!
//! [`RoutingTable`] is pure: compiled once from a [`RoutingSpec`] (compiling validates
//! every rule and pattern), then asked for routes. Rules are tried in order and the first
//! match wins; types no rule matches and types that cannot form a legal topic name follow
//! the spec's policies. Results are memoised per (tenant, type), as both are few and
//! events many.
//!
//! Tenant isolation: a rule with `tenants` matches only those tenants' events, and a
//! `%t` pattern starts with the sender's tenant followed by `.` (`%t.…`). Tenant ids
//! cannot contain `.` ([`crate::auth::check_tenant_id`]), so whatever the event type, a
//! topic made from a `%t` pattern for tenant A is never one made for tenant B. Once any
//! pattern uses `%t`, every other topic the table can produce (patterns without `%t`,
//! the dead-letter topic) must be a fixed name without `.`, so it cannot fall into a
//! tenant's `<tenant>.` namespace either. A `%t` pattern refuses events of senders
//! without a tenant.
//! The gateway's router holds the current table and swaps in a new one when the routing
//! file changes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::pipeline::{InvalidPolicy, RoutingSpec, UnmatchedPolicy};
use globset::{Glob, GlobMatcher};

use crate::kafka_names::{check_topic_name, is_topic_char};
/// Types remembered per table; past this, routes are computed each time.
const CACHE_LIMIT: usize = 10_000;

/// Where one event goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Publish to this topic.
    Topic(Arc<str>),
    /// Publish to the dead-letter topic, with the reason in a record header.
    DeadLetter { topic: Arc<str>, reason: Arc<str> },
    /// Refuse this event with the reason.
    Reject(Arc<str>),
}

/// A routing spec that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RoutingError {
    /// The offending field, as a path in the spec.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn routing_error(field: impl Into<String>, message: impl Into<String>) -> RoutingError {
    RoutingError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Glob(GlobMatcher),
}

#[derive(Debug)]
struct Rule {
    matcher: Matcher,
    pattern: String,
    /// Tenants the rule applies to; empty: all senders.
    tenants: Vec<String>,
}

/// A compiled routing table.
#[derive(Debug)]
pub struct RoutingTable {
    rules: Vec<Rule>,
    default_pattern: String,
    unmatched: UnmatchedPolicy,
    invalid: InvalidPolicy,
    dead_letter_topic: Option<Arc<str>>,
    /// Whether routes depend on the tenant at all (memoised per tenant only then).
    uses_tenant: bool,
    cache: RwLock<RouteCache>,
}

/// Memoised routes by tenant (`""`: none), then event type.
#[derive(Debug, Default)]
struct RouteCache {
    by_tenant: HashMap<Box<str>, HashMap<Box<str>, Route>>,
    len: usize,
}

/// Substitutes the tenant for `%t` and then the first `%s` by the event type, as Raccoon
/// does; `None` when the pattern needs a tenant and there is none.
fn apply(pattern: &str, tenant: Option<&str>, event_type: &str) -> Option<String> {
    let pattern = match (pattern.contains(TENANT), tenant) {
        (false, _) => std::borrow::Cow::Borrowed(pattern),
        (true, Some(tenant)) => std::borrow::Cow::Owned(pattern.replacen(TENANT, tenant, 1)),
        (true, None) => return None,
    };
    Some(pattern.replacen("%s", event_type, 1))
}

/// The tenant placeholder of topic patterns.
const TENANT: &str = "%t";

/// A pattern's `%t`, if any, opens it, alone, followed by `.`; with `%t` elsewhere in
/// the table (`tenants`), a pattern without it is a fixed name without `.`.
fn check_tenant_placeholder(pattern: &str, tenants: bool) -> Result<(), String> {
    if !pattern.contains(TENANT) {
        if tenants && (pattern.contains('.') || pattern.contains("%s")) {
            return Err(format!(
                "{pattern:?}: where other patterns use %t, a topic without %t must be a fixed name without '.' (a '.' or an event type could put it in a tenant's <tenant>. namespace)"
            ));
        }
        return Ok(());
    }
    if pattern.matches(TENANT).count() > 1 {
        return Err(format!("{pattern:?} has %t more than once"));
    }
    if !pattern.starts_with("%t.") {
        return Err(format!(
            "{pattern:?} must start with %t. (tenant ids cannot contain '.', which keeps tenants' topics apart)"
        ));
    }
    Ok(())
}

impl RoutingTable {
    /// Compiles a spec, checking every rule, pattern and policy.
    pub fn compile(spec: &RoutingSpec) -> Result<Self, RoutingError> {
        let tenant_patterns = spec.default_pattern.contains(TENANT)
            || spec.rules.iter().any(|r| r.topic.contains(TENANT));
        let check_pattern = |field: String, pattern: &str| {
            check_tenant_placeholder(pattern, tenant_patterns)
                .map_err(|m| routing_error(field.clone(), m))?;
            // Samples stand in for `%t` and `%s`: the rest of the pattern must be legal.
            let sample = apply(pattern, Some("t"), "t").expect("a tenant is given");
            check_topic_name(&sample).map_err(|m| routing_error(field, m))
        };
        let mut rules = Vec::with_capacity(spec.rules.len());
        for (i, rule) in spec.rules.iter().enumerate() {
            let field = format!("routing.rules[{i}]");
            let matcher = match (&rule.exact, &rule.prefix, &rule.glob) {
                (Some(exact), None, None) => Matcher::Exact(exact.clone()),
                (None, Some(prefix), None) => Matcher::Prefix(prefix.clone()),
                (None, None, Some(glob)) => Matcher::Glob(
                    Glob::new(glob)
                        .map_err(|e| routing_error(format!("{field}.glob"), e.to_string()))?
                        .compile_matcher(),
                ),
                _ => {
                    return Err(routing_error(
                        field,
                        "set exactly one of exact, prefix and glob",
                    ));
                }
            };
            check_pattern(format!("{field}.topic"), &rule.topic)?;
            for (j, tenant) in rule.tenants.iter().enumerate() {
                crate::auth::check_tenant_id(tenant)
                    .map_err(|m| routing_error(format!("{field}.tenants[{j}]"), m))?;
            }
            rules.push(Rule {
                matcher,
                pattern: rule.topic.clone(),
                tenants: rule.tenants.clone(),
            });
        }
        check_pattern("routing.defaultPattern".into(), &spec.default_pattern)?;
        let dead_letter_topic = match &spec.dead_letter_topic {
            Some(topic) => {
                check_topic_name(topic).map_err(|m| routing_error("routing.deadLetterTopic", m))?;
                if tenant_patterns && topic.contains('.') {
                    return Err(routing_error(
                        "routing.deadLetterTopic",
                        "where patterns use %t, the dead-letter topic must not contain '.' (it would be in a tenant's namespace)",
                    ));
                }
                Some(Arc::from(topic.as_str()))
            }
            None => None,
        };
        let needs_dead_letter = spec.unmatched == UnmatchedPolicy::DeadLetter
            || spec.invalid == InvalidPolicy::DeadLetter;
        if needs_dead_letter && dead_letter_topic.is_none() {
            return Err(routing_error(
                "routing.deadLetterTopic",
                "required when a policy is deadLetter",
            ));
        }
        let uses_tenant = tenant_patterns || rules.iter().any(|r| !r.tenants.is_empty());
        Ok(Self {
            uses_tenant,
            rules,
            default_pattern: spec.default_pattern.clone(),
            unmatched: spec.unmatched,
            invalid: spec.invalid,
            dead_letter_topic,
            cache: RwLock::new(RouteCache::default()),
        })
    }

    /// Whether routes depend on the sender's tenant (a `%t` pattern or a rule with
    /// `tenants`).
    pub fn uses_tenant(&self) -> bool {
        self.uses_tenant
    }

    /// The route for an event of `tenant` (`None`: a sender without one), memoised.
    pub fn route(&self, tenant: Option<&str>, event_type: &str) -> Route {
        let tenant_key = if self.uses_tenant {
            tenant.unwrap_or("")
        } else {
            ""
        };
        if let Some(route) = self
            .cache
            .read()
            .expect("cache lock")
            .by_tenant
            .get(tenant_key)
            .and_then(|types| types.get(event_type))
        {
            return route.clone();
        }
        let route = self.resolve(tenant, event_type);
        let mut cache = self.cache.write().expect("cache lock");
        if cache.len < CACHE_LIMIT {
            let previous = cache
                .by_tenant
                .entry(tenant_key.into())
                .or_default()
                .insert(event_type.into(), route.clone());
            cache.len += usize::from(previous.is_none());
        }
        route
    }

    /// The route for an event of `tenant`, computed.
    pub fn resolve(&self, tenant: Option<&str>, event_type: &str) -> Route {
        let invalid = |reason: String| match (self.invalid, &self.dead_letter_topic) {
            (InvalidPolicy::DeadLetter, Some(topic)) => Route::DeadLetter {
                topic: topic.clone(),
                reason: reason.into(),
            },
            _ => Route::Reject(reason.into()),
        };
        if event_type.is_empty() {
            return invalid("event type is empty".into());
        }
        if let Some(c) = event_type.chars().find(|c| !is_topic_char(*c)) {
            return invalid(format!(
                "event type {event_type:?} contains {c:?}; only letters, digits, '.', '_' and '-' can form a topic name"
            ));
        }
        let matched = self.rules.iter().find(|rule| {
            let for_sender = rule.tenants.is_empty()
                || tenant.is_some_and(|t| rule.tenants.iter().any(|r| r == t));
            for_sender
                && match &rule.matcher {
                    Matcher::Exact(t) => t == event_type,
                    Matcher::Prefix(p) => event_type.starts_with(p.as_str()),
                    Matcher::Glob(g) => g.is_match(event_type),
                }
        });
        let pattern = match (matched, self.unmatched, &self.dead_letter_topic) {
            (Some(rule), _, _) => &rule.pattern,
            (None, UnmatchedPolicy::DefaultPattern, _) => &self.default_pattern,
            (None, UnmatchedPolicy::DeadLetter, Some(topic)) => {
                return Route::DeadLetter {
                    topic: topic.clone(),
                    reason: format!("no routing rule matches event type {event_type:?}").into(),
                };
            }
            (None, _, _) => {
                return Route::Reject(
                    format!("no routing rule matches event type {event_type:?}").into(),
                );
            }
        };
        let Some(topic) = apply(pattern, tenant, event_type) else {
            return Route::Reject(
                format!(
                    "the topic pattern {pattern:?} for event type {event_type:?} needs a tenant, and this sender has none (use an API key or a JWT)"
                )
                .into(),
            );
        };
        match check_topic_name(&topic) {
            Ok(()) => Route::Topic(topic.into()),
            Err(message) => invalid(format!(
                "event type {event_type:?} gives an illegal topic: {message}"
            )),
        }
    }
}

/// Reads and compiles a routing file: a YAML [`RoutingSpec`] without `file`.
pub fn load_routing_file(path: &std::path::Path) -> Result<RoutingTable, RoutingError> {
    let field = || format!("routing file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| routing_error(field(), e.to_string()))?;
    // An empty file is far more likely a write in progress than a wish for defaults.
    if text.trim().is_empty() {
        return Err(routing_error(field(), "the file is empty"));
    }
    let spec: RoutingSpec =
        crate::config::from_yaml_str(&text).map_err(|e| routing_error(field(), e.to_string()))?;
    if spec.file.is_some() {
        return Err(routing_error(
            field(),
            "a routing file cannot name another file",
        ));
    }
    RoutingTable::compile(&spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::RouteRule;

    fn rule(kind: &str, value: &str, topic: &str) -> RouteRule {
        let mut r = RouteRule {
            topic: topic.into(),
            ..Default::default()
        };
        match kind {
            "exact" => r.exact = Some(value.into()),
            "prefix" => r.prefix = Some(value.into()),
            _ => r.glob = Some(value.into()),
        }
        r
    }

    fn topic(t: &str) -> Route {
        Route::Topic(t.into())
    }

    #[test]
    fn raccoon_default_pattern() {
        let table = RoutingTable::compile(&RoutingSpec::default()).unwrap();
        assert_eq!(
            table.route(None, "page_view"),
            topic("clickstream-page_view-log")
        );
        // Raccoon would publish an empty type to clickstream--log; Weir refuses it.
        assert!(matches!(table.route(None, ""), Route::Reject(r) if r.contains("empty")));
    }

    #[test]
    fn rules_apply_in_order() {
        let spec = RoutingSpec {
            rules: vec![
                rule("exact", "ad_click", "ads-clicks"),
                rule("prefix", "ad_", "ads-%s"),
                rule("glob", "iot.*.temp", "iot-temperature"),
                rule("glob", "iot.*", "iot-other"),
            ],
            ..Default::default()
        };
        let table = RoutingTable::compile(&spec).unwrap();
        assert_eq!(table.route(None, "ad_click"), topic("ads-clicks"));
        assert_eq!(table.route(None, "ad_view"), topic("ads-ad_view"));
        assert_eq!(table.route(None, "iot.dev1.temp"), topic("iot-temperature"));
        assert_eq!(table.route(None, "iot.dev1.hum"), topic("iot-other"));
        assert_eq!(table.route(None, "search"), topic("clickstream-search-log"));
        // Memoised answers equal computed ones.
        assert_eq!(table.route(None, "ad_view"), table.resolve(None, "ad_view"));
    }

    #[test]
    fn unmatched_policies() {
        let mut spec = RoutingSpec {
            rules: vec![rule("exact", "a", "topic-a")],
            unmatched: UnmatchedPolicy::Reject,
            ..Default::default()
        };
        let table = RoutingTable::compile(&spec).unwrap();
        assert!(
            matches!(table.route(None, "b"), Route::Reject(r) if r.contains("no routing rule"))
        );
        assert_eq!(table.route(None, "a"), topic("topic-a"));

        spec.unmatched = UnmatchedPolicy::DeadLetter;
        assert!(
            RoutingTable::compile(&spec).is_err(),
            "dead letter topic required"
        );
        spec.dead_letter_topic = Some("dlq".into());
        let table = RoutingTable::compile(&spec).unwrap();
        assert!(
            matches!(table.route(None, "b"), Route::DeadLetter { topic, .. } if &*topic == "dlq")
        );
    }

    #[test]
    fn invalid_types() {
        let mut spec = RoutingSpec::default();
        let table = RoutingTable::compile(&spec).unwrap();
        for bad in ["has space", "slash/y", "ünï", "a:b"] {
            assert!(matches!(table.route(None, bad), Route::Reject(_)), "{bad}");
        }
        let long = "x".repeat(240);
        assert!(matches!(table.route(None, &long), Route::Reject(r) if r.contains("249")));

        spec.invalid = InvalidPolicy::DeadLetter;
        spec.dead_letter_topic = Some("weir-dead-letter".into());
        let table = RoutingTable::compile(&spec).unwrap();
        match table.route(None, "has space") {
            Route::DeadLetter { topic, reason } => {
                assert_eq!(&*topic, "weir-dead-letter");
                assert!(reason.contains("' '"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tenant_patterns_and_rules() {
        let mut only_acme = rule("exact", "ad_click", "acme-ads");
        only_acme.tenants = vec!["acme".into()];
        let spec = RoutingSpec {
            rules: vec![only_acme, rule("prefix", "iot", "%t.iot")],
            default_pattern: "%t.clickstream-%s-log".into(),
            dead_letter_topic: Some("weir-dead-letter".into()),
            ..Default::default()
        };
        let table = RoutingTable::compile(&spec).unwrap();
        assert!(table.uses_tenant());
        assert_eq!(
            table.route(Some("acme"), "ad_click"),
            topic("acme-ads"),
            "acme's own rule"
        );
        assert_eq!(
            table.route(Some("globex"), "ad_click"),
            topic("globex.clickstream-ad_click-log"),
            "another tenant's rule does not apply"
        );
        assert_eq!(table.route(Some("globex"), "iot.temp"), topic("globex.iot"));
        assert!(
            matches!(table.route(None, "page"), Route::Reject(r) if r.contains("needs a tenant"))
        );
        // The cache keeps tenants apart.
        assert_eq!(table.route(Some("a"), "x"), topic("a.clickstream-x-log"));
        assert_eq!(table.route(Some("b"), "x"), topic("b.clickstream-x-log"));

        for (pattern, why) in [
            ("%s-%t.x", "must start with %t."),
            ("%t-%s", "must start with %t."),
            ("archive-%t.%s", "must start with %t."),
            ("%t.%t.%s", "more than once"),
        ] {
            let spec = RoutingSpec {
                default_pattern: pattern.into(),
                ..Default::default()
            };
            let err = RoutingTable::compile(&spec).expect_err(pattern);
            assert!(err.message.contains(why), "{pattern}: {err}");
            assert_eq!(err.field, "routing.defaultPattern");
        }
        // Beside a %t pattern, other topics must stay out of the tenants' namespaces.
        for (topic, field) in [
            ("shared.%s", "routing.rules[0].topic"),
            ("x-%s", "routing.rules[0].topic"),
        ] {
            let spec = RoutingSpec {
                rules: vec![rule("exact", "a", topic)],
                default_pattern: "%t.events".into(),
                ..Default::default()
            };
            let err = RoutingTable::compile(&spec).expect_err(topic);
            assert_eq!(err.field, field, "{err}");
        }
        let spec = RoutingSpec {
            default_pattern: "%t.events".into(),
            dead_letter_topic: Some("dead.letters".into()),
            ..Default::default()
        };
        let err = RoutingTable::compile(&spec).unwrap_err();
        assert_eq!(err.field, "routing.deadLetterTopic");
        let mut bad_tenant = rule("exact", "a", "t");
        bad_tenant.tenants = vec!["a.b".into()];
        let spec = RoutingSpec {
            rules: vec![bad_tenant],
            ..Default::default()
        };
        let err = RoutingTable::compile(&spec).unwrap_err();
        assert_eq!(err.field, "routing.rules[0].tenants[0]");
    }

    proptest::proptest! {
        /// A topic in a tenant's namespace (`<tenant>.…`) is only ever made for that
        /// tenant, whatever the event types and whichever rule matches; so two tenants
        /// never share a `%t` topic.
        #[test]
        fn tenants_never_share_a_topic(
            a in "[a-z0-9_-]{1,8}",
            b in "[a-z0-9_-]{1,8}",
            type_a in "[a-z0-9._-]{1,12}",
            type_b in "[a-z0-9._-]{1,12}",
        ) {
            proptest::prop_assume!(a != b);
            let mut only_b = rule("prefix", "b", "%t.b-%s");
            only_b.tenants = vec![b.clone()];
            let spec = RoutingSpec {
                rules: vec![
                    rule("prefix", "a", "%t.a-%s"),
                    only_b,
                    rule("exact", "x", "shared-fixed"),
                ],
                default_pattern: "%t.events-%s".into(),
                ..Default::default()
            };
            let table = RoutingTable::compile(&spec).unwrap();
            for (tenant, event_type) in [(&a, &type_a), (&b, &type_b)] {
                if let Route::Topic(topic) = table.route(Some(tenant), event_type)
                    && let Some((owner, _)) = topic.split_once('.')
                {
                    proptest::prop_assert_eq!(owner, tenant.as_str());
                }
            }
            if let (Route::Topic(x), Route::Topic(y)) =
                (table.route(Some(&a), &type_a), table.route(Some(&b), &type_b))
            {
                proptest::prop_assert!(x != y || &*x == "shared-fixed");
            }
        }
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases = [
            (
                RoutingSpec {
                    rules: vec![RouteRule {
                        topic: "t".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                "routing.rules[0]",
            ),
            (
                RoutingSpec {
                    rules: vec![rule("glob", "a[", "t")],
                    ..Default::default()
                },
                "routing.rules[0].glob",
            ),
            (
                RoutingSpec {
                    rules: vec![rule("exact", "a", "bad topic")],
                    ..Default::default()
                },
                "routing.rules[0].topic",
            ),
            (
                RoutingSpec {
                    default_pattern: "x/%s".into(),
                    ..Default::default()
                },
                "routing.defaultPattern",
            ),
            (
                RoutingSpec {
                    dead_letter_topic: Some("..".into()),
                    ..Default::default()
                },
                "routing.deadLetterTopic",
            ),
        ];
        for (spec, field) in cases {
            let err = RoutingTable::compile(&spec).expect_err("must fail");
            assert_eq!(err.field, field, "{err}");
        }
    }
}
