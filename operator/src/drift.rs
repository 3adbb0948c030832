//! Whether a live child still holds what the operator wants it to hold.
//!
//! The desired object lists only the fields the operator owns; the live one also has
//! what the API server defaulted (a container's `terminationMessagePath`, a Service's
//! `clusterIP`) and what other managers own (the HPA's replica count). So the live
//! object is current when the desired one is contained in it: every field the desired
//! object sets has the same value live, quantities by their value (the API server
//! writes `500m` for `0.5`). Lists of named items (containers, env, volumes, ports)
//! match item by name, and items another manager added live are theirs, as server-side
//! apply sees them; other lists match item by item. Anything else is drift: a hand edit,
//! or an object another tool rewrote, and the shell applies the desired object again.
//!
//! Pure: no I/O, so it is tested on plain JSON.

use serde_json::Value;

/// The first place where `live` does not hold what `desired` sets, as a field path
/// (`spec.template.spec.containers[0].image`), or `None` when it holds all of it.
pub fn first_difference(desired: &Value, live: &Value) -> Option<String> {
    difference(desired, live, &mut Vec::new())
}

fn difference(desired: &Value, live: &Value, path: &mut Vec<String>) -> Option<String> {
    let here = |path: &[String]| path.join("").trim_start_matches('.').to_string();
    match (desired, live) {
        // Unset desired fields are not owned; the API server drops empty strings, maps
        // and lists of `omitempty` fields. (`false` and 0 the builders set only on
        // pointer fields, which the server keeps, so a missing one is drift.)
        (Value::Null, _) => None,
        (d, Value::Null) if is_zero(d) => None,
        (Value::Object(d), Value::Object(l)) => d.iter().find_map(|(key, value)| {
            path.push(format!(".{key}"));
            let found = difference(value, l.get(key).unwrap_or(&Value::Null), path);
            path.pop();
            found
        }),
        (Value::Array(d), Value::Array(l)) if d.iter().all(|item| item.get("name").is_some()) => {
            d.iter().find_map(|item| {
                let name = &item["name"];
                path.push(format!("[name={}]", name.as_str().unwrap_or_default()));
                let found = match l.iter().find(|live| live.get("name") == Some(name)) {
                    Some(live) => difference(item, live, path),
                    None => Some(here(path)),
                };
                path.pop();
                found
            })
        }
        (Value::Array(d), Value::Array(l)) if d.len() == l.len() => {
            d.iter().zip(l).enumerate().find_map(|(i, (d, l))| {
                path.push(format!("[{i}]"));
                let found = difference(d, l, path);
                path.pop();
                found
            })
        }
        (Value::Number(d), Value::Number(l)) => (d.as_f64() != l.as_f64()).then(|| here(path)),
        (Value::String(d), Value::String(l)) if d != l => {
            let quantity = path
                .iter()
                .rev()
                .nth(1)
                .is_some_and(|parent| parent == ".limits" || parent == ".requests");
            let same =
                quantity && quantity_value(d).is_some() && quantity_value(d) == quantity_value(l);
            (!same).then(|| here(path))
        }
        (d, l) if d == l => None,
        _ => Some(here(path)),
    }
}

/// What `omitempty` leaves out of a live object.
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

/// The value of a Kubernetes quantity (`250m`, `1Gi`, `1e3`, `0.7`) in nano-units,
/// exactly (decimal arithmetic, rounded up as the API server rounds), for comparing two
/// spellings of the same amount; `None` when the text is not a quantity.
fn quantity_value(text: &str) -> Option<i128> {
    const BINARY: [(&str, u32); 6] = [
        ("Ki", 1),
        ("Mi", 2),
        ("Gi", 3),
        ("Ti", 4),
        ("Pi", 5),
        ("Ei", 6),
    ];
    const DECIMAL: [(&str, i32); 8] = [
        ("n", -9),
        ("u", -6),
        ("m", -3),
        ("k", 3),
        ("M", 6),
        ("G", 9),
        ("T", 12),
        ("P", 15),
    ];
    let (number, power_of_1024, mut exponent) = if let Some((number, k)) = BINARY
        .iter()
        .find_map(|(suffix, k)| text.strip_suffix(suffix).map(|n| (n, *k)))
    {
        (number, k, 0)
    } else if let Some((number, e)) = DECIMAL
        .iter()
        .find_map(|(suffix, e)| text.strip_suffix(suffix).map(|n| (n, *e)))
    {
        (number, 0, e)
    } else if let Some(number) = text.strip_suffix('E') {
        (number, 0, 18)
    } else if let Some((number, e)) = text.split_once(['e', 'E']) {
        (number, 0, e.parse::<i32>().ok()?)
    } else {
        (text, 0, 0)
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{whole}{fraction}");
    let negative = digits.starts_with('-');
    let digits = digits.trim_start_matches(['-', '+']);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 30 {
        return None;
    }
    let mut value: i128 = digits.parse().ok()?;
    exponent += 9 - i32::try_from(fraction.len()).ok()?;
    if exponent >= 0 {
        value = value.checked_mul(10i128.checked_pow(exponent.try_into().ok()?)?)?;
    } else {
        let divisor = 10i128.checked_pow((-exponent).try_into().ok()?)?;
        value = (value + divisor - 1) / divisor;
    }
    value = value.checked_mul(1024i128.checked_pow(power_of_1024)?)?;
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_other_managers_fields_are_not_drift() {
        let desired = json!({
            "metadata": {"labels": {"a": "1"}, "annotations": {}},
            "spec": {"template": {"spec": {"containers": [{"name": "gateway", "image": "weir:1",
                     "volumeMounts": [{"name": "config", "subPath": ""}]}]}},
                     "tolerations": []}
        });
        let live = json!({
            "metadata": {"labels": {"a": "1", "other": "x"}, "resourceVersion": "7"},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [
                {"name": "gateway", "image": "weir:1", "terminationMessagePath": "/dev/termination-log",
                 "volumeMounts": [{"name": "config"}]}
            ]}}}
        });
        assert_eq!(first_difference(&desired, &live), None);
    }

    #[test]
    fn hand_edits_are_drift_and_named_by_path() {
        let desired =
            json!({"spec": {"template": {"spec": {"containers": [{"image": "weir:1"}]}}}});
        let live =
            json!({"spec": {"template": {"spec": {"containers": [{"image": "weir:hacked"}]}}}});
        assert_eq!(
            first_difference(&desired, &live).as_deref(),
            Some("spec.template.spec.containers[0].image")
        );
        let data = json!({"data": {"routing.yaml": "rules: []"}});
        assert_eq!(
            first_difference(&data, &json!({"data": {"routing.yaml": "edited"}})).as_deref(),
            Some("data.routing.yaml")
        );
        assert_eq!(
            first_difference(&data, &json!({"data": {}})).as_deref(),
            Some("data.routing.yaml")
        );
        // A list of unnamed items that grew or shrank by hand.
        assert_eq!(
            first_difference(&json!({"args": ["a", "b"]}), &json!({"args": ["a"]})).as_deref(),
            Some("args")
        );
    }

    #[test]
    fn quantities_compare_by_value_only_under_resources() {
        let desired = json!({"resources": {"limits": {"cpu": "0.5", "memory": "1024Mi"}, "requests": {"cpu": "1000m"}}});
        let live = json!({"resources": {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "1"}}});
        assert_eq!(first_difference(&desired, &live), None);
        let edited = json!({"resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "1"}}});
        assert_eq!(
            first_difference(&desired, &edited).as_deref(),
            Some("resources.limits.cpu")
        );
        // A removed `allowPrivilegeEscalation: false` is drift.
        assert!(first_difference(&json!({"a": false}), &json!({})).is_some());
        // Elsewhere text is text.
        assert!(
            first_difference(
                &json!({"data": {"x": "1k"}}),
                &json!({"data": {"x": "1000"}})
            )
            .is_some()
        );
        // Numbers compare by value.
        assert_eq!(first_difference(&json!({"n": 1}), &json!({"n": 1.0})), None);
    }

    #[test]
    fn quantity_spellings() {
        let nano = 1_000_000_000;
        assert_eq!(quantity_value("250m"), Some(nano / 4));
        assert_eq!(quantity_value("2Ki"), Some(2048 * nano));
        assert_eq!(quantity_value("1e3"), Some(1000 * nano));
        assert_eq!(quantity_value("3"), Some(3 * nano));
        assert_eq!(quantity_value("lots"), None);
        // Spellings a float gets wrong: the API server stores 0.7 as 700m.
        for (a, b) in [
            ("0.7", "700m"),
            ("2.3", "2300m"),
            ("0.009", "9m"),
            ("1.5Gi", "1536Mi"),
        ] {
            assert_eq!(quantity_value(a), quantity_value(b), "{a} {b}");
        }
        assert_ne!(quantity_value("0.7"), quantity_value("701m"));
    }
}
