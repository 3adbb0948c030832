//! Kafka's naming rules, for everything that names a topic: the gateway's routing, the
//! sink's sources and dead letters, and the operator's topic list.

use crate::pipeline::MAX_TOPIC_NAME;

/// Whether `name` is a legal Kafka topic name; the error says what is wrong.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name.len() > MAX_TOPIC_NAME {
        return Err(format!(
            "topic name is {} characters; Kafka allows {MAX_TOPIC_NAME}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is reserved"));
    }
    if let Some(c) = name.chars().find(|c| !is_topic_char(*c)) {
        return Err(format!(
            "topic name {name:?} contains {c:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Whether a character may appear in a topic name: letters, digits, '.', '_' and '-'.
pub fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka() {
        assert!(check_topic_name("clickstream-page_view.log").is_ok());
        assert!(check_topic_name("").is_err());
        assert!(check_topic_name("..").is_err());
        assert!(check_topic_name(&"a".repeat(MAX_TOPIC_NAME + 1)).is_err());
        let error = check_topic_name("a/b").unwrap_err();
        assert!(error.contains("'/'"), "{error}");
    }
}
