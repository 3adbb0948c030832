//! The API server refuses a CRD whose CEL rules it cannot price: it estimates each
//! rule's worst-case cost from the bounds (`maxLength`, `maxItems`, `maxProperties`) of
//! what the rule reads, multiplied by how often the rule runs (once per item of every
//! list around it), and refuses a rule over 10,000,000 or a CRD over 100,000,000.
//! An unbounded string or list makes the estimate as large as a 3 MiB request allows,
//! which is how a real API server came to refuse the IngestPipeline CRD.
//!
//! This test reads every rule of the generated CRDs, finds what it reads (`self.a.b`,
//! `oldSelf.a`), and fails when
//! - a string, list or map it reads, or a list it runs inside, has no bound, or
//! - the estimated cost passes a tenth of either limit.
//!
//! The estimate follows cel-go's cost model where it matters here: reading a string or
//! comparing it costs a tenth of its length, `matches` costs that times a quarter of the
//! pattern's length, a list or map read whole costs its bound times its items' cost, and
//! every rule runs once per item of each enclosing list or map.

mod common;

use common::schema;
use serde_json::Value;

/// apiextensions' `StaticEstimatedCostLimit`: one rule, times its cardinality.
const RULE_LIMIT: f64 = 10_000_000.0;
/// apiextensions' `StaticEstimatedCRDCostLimit`: all rules of a CRD.
const CRD_LIMIT: f64 = 100_000_000.0;
/// How close to a limit an estimate may come.
const MARGIN: f64 = 0.1;

/// A rule found in the schema, with where it runs and how often.
struct Placed<'a> {
    path: String,
    node: &'a Value,
    rule: String,
    /// Product of the bounds of every list and map around the rule.
    cardinality: f64,
}

/// Every rule under `node`. Unbounded enclosing lists are reported in `problems`.
fn rules<'a>(
    node: &'a Value,
    path: &str,
    cardinality: f64,
    out: &mut Vec<Placed<'a>>,
    problems: &mut Vec<String>,
) {
    for rule in node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push(Placed {
            path: path.into(),
            node,
            rule: rule["rule"].as_str().unwrap().into(),
            cardinality,
        });
    }
    if let Some(properties) = node["properties"].as_object() {
        for (name, child) in properties {
            rules(child, &format!("{path}.{name}"), cardinality, out, problems);
        }
    }
    for (key, bound, children) in [
        ("items", "maxItems", &node["items"]),
        (
            "additionalProperties",
            "maxProperties",
            &node["additionalProperties"],
        ),
    ] {
        if !children.is_object() {
            continue;
        }
        let mut inner = Vec::new();
        rules(children, &format!("{path}[]"), 1.0, &mut inner, problems);
        if inner.is_empty() {
            continue;
        }
        let Some(max) = node[bound].as_f64() else {
            problems.push(format!(
                "{path} has rules in its {key} but no {bound}: each rule's cost is multiplied by \
                 the number of items, which the API server then takes as unbounded"
            ));
            continue;
        };
        for mut placed in inner {
            placed.cardinality *= max * cardinality;
            out.push(placed);
        }
    }
}

/// The worst-case cost of reading `node` whole; `Err` names what has no bound.
fn size(node: &Value, path: &str) -> Result<f64, String> {
    let bounded = |bound: &str| {
        node[bound]
            .as_f64()
            .ok_or_else(|| format!("{path} is read by a rule but has no {bound}"))
    };
    if node["x-kubernetes-preserve-unknown-fields"] == true || node["additionalProperties"] == true
    {
        return Err(format!(
            "{path} is read by a rule but keeps unknown fields, so its size has no bound"
        ));
    }
    match node["type"].as_str() {
        Some("string") if node["enum"].is_array() => Ok(1.0),
        Some("string") => Ok((bounded("maxLength")? * 0.1).ceil()),
        Some("array") => Ok(bounded("maxItems")? * size(&node["items"], &format!("{path}[]"))?),
        Some("object") if node["additionalProperties"].is_object() => {
            Ok(bounded("maxProperties")?
                * size(&node["additionalProperties"], &format!("{path}[]"))?)
        }
        Some("object") => {
            let mut total = 1.0;
            for (name, child) in node["properties"].as_object().into_iter().flatten() {
                total += size(child, &format!("{path}.{name}"))?;
            }
            Ok(total)
        }
        _ => Ok(1.0),
    }
}

/// What a rule reads: the field paths after each `self` or `oldSelf`, and for each the
/// length of the pattern when the value is the receiver of `matches`.
fn reads(rule: &str) -> Vec<(Vec<String>, Option<usize>)> {
    let bytes = rule.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let word = ["oldSelf", "self"]
            .into_iter()
            .find(|w| rest.starts_with(w.as_bytes()) && (i == 0 || !ident(bytes[i - 1])));
        let Some(word) = word else {
            i += 1;
            continue;
        };
        i += word.len();
        if i < bytes.len() && ident(bytes[i]) {
            continue;
        }
        let mut path = Vec::new();
        let mut method = None;
        while i < bytes.len() && bytes[i] == b'.' {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && ident(bytes[end]) {
                end += 1;
            }
            let name = &rule[start..end];
            i = end;
            if bytes.get(end) == Some(&b'(') {
                method = Some(name.to_string());
                break;
            }
            path.push(name.to_string());
        }
        // The pattern's length, from its opening quote to the next quote; a pattern
        // that is not a plain literal counts as the rest of the rule.
        let pattern = (method.as_deref() == Some("matches")).then(|| {
            let quoted = rule.get(i + 1..).unwrap_or_default().trim_start();
            let quoted = quoted.strip_prefix('r').unwrap_or(quoted);
            match quoted.chars().next() {
                Some(quote @ ('\'' | '"')) => quoted[1..].find(quote).unwrap_or(quoted.len()),
                _ => quoted.len(),
            }
        });
        found.push((path, pattern));
    }
    found
}

/// The schema of `path` below `node`.
fn resolve<'a>(node: &'a Value, path: &[String]) -> &'a Value {
    path.iter()
        .fold(node, |node, name| &node["properties"][name.as_str()])
}

/// Checks one CRD; returns its problems and the estimate of all its rules.
fn check(file: &str) -> (Vec<String>, f64) {
    let root = schema(file);
    let mut placed = Vec::new();
    let mut problems = Vec::new();
    rules(&root, "", 1.0, &mut placed, &mut problems);
    assert!(!placed.is_empty(), "{file} has CEL rules to check");
    let mut total = 0.0;
    for rule in &placed {
        // Macros run their body once per item; this estimate does not price that.
        if [".all(", ".exists(", ".exists_one(", ".map(", ".filter("]
            .iter()
            .any(|m| rule.rule.contains(m))
        {
            problems.push(format!(
                "{}: rule {:?} iterates; extend this check to price its body per item",
                rule.path, rule.rule
            ));
            continue;
        }
        let mut per_call = 1.0;
        for (path, pattern) in reads(&rule.rule) {
            let read = resolve(rule.node, &path);
            let at = std::iter::once(rule.path.as_str())
                .chain(path.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(".");
            if read.is_null() {
                problems.push(format!(
                    "{at}: rule {:?} reads a field the schema lacks",
                    rule.rule
                ));
                continue;
            }
            match size(read, &at) {
                Ok(size) => {
                    let factor = pattern.map_or(1.0, |len| (len as f64 * 0.25).ceil());
                    per_call += size * factor;
                }
                Err(problem) => problems.push(format!("{problem} (rule {:?})", rule.rule)),
            }
        }
        let cost = per_call * rule.cardinality;
        if cost > RULE_LIMIT * MARGIN {
            problems.push(format!(
                "{}: rule {:?} is estimated at {cost}, over a tenth of the API server's limit \
                 {RULE_LIMIT}; lower the bounds of what it reads",
                rule.path, rule.rule
            ));
        }
        total += cost;
    }
    if total > CRD_LIMIT * MARGIN {
        problems.push(format!(
            "all rules together are estimated at {total}, over a tenth of {CRD_LIMIT}"
        ));
    }
    (problems, total)
}

#[test]
fn every_rule_reads_only_bounded_values_within_the_cost_budget() {
    for file in [
        "ingestpipelines.weir.dev.yaml",
        "sinkbindings.weir.dev.yaml",
    ] {
        let (problems, total) = check(file);
        assert!(problems.is_empty(), "{file}:\n{}", problems.join("\n"));
        println!("{file}: estimated CEL cost {total}");
    }
}

#[test]
fn the_check_catches_unbounded_reads_and_unbounded_lists() {
    let schema: Value = serde_json::json!({
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": { "name": { "type": "string" } },
                    "x-kubernetes-validations": [{ "rule": "self.name.matches('^[a-z]+$')" }]
                }
            }
        }
    });
    let mut placed = Vec::new();
    let mut problems = Vec::new();
    rules(&schema, "", 1.0, &mut placed, &mut problems);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("no maxItems"), "{problems:?}");
    let name = resolve(&schema["properties"]["items"]["items"], &["name".into()]);
    assert!(
        size(name, ".items[].name")
            .unwrap_err()
            .contains("maxLength")
    );
}

#[test]
fn reads_finds_fields_and_patterns() {
    assert_eq!(
        reads("self.name.matches('^[a-z]{1,3}$') && self.name != '.'"),
        vec![
            (vec!["name".to_string()], Some(12)),
            (vec!["name".to_string()], None)
        ]
    );
    assert_eq!(
        reads("self.partitions >= oldSelf.partitions"),
        vec![
            (vec!["partitions".to_string()], None),
            (vec!["partitions".to_string()], None)
        ]
    );
    assert_eq!(reads("self >= 0"), vec![(vec![], None)]);
    assert_eq!(reads("!has(self.replicationFactor)").len(), 1);
}
