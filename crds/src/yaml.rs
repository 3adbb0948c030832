//! A guard run on configuration text before a YAML parser sees it.
//!
//! libyaml's scanner (under serde_yaml) costs time quadratic in the depth of flow
//! collections (`[[[[…` or `{{{{…`): 100,000 brackets took 55 s to be refused. No
//! configuration nests more than a few levels, so text nested deeper than
//! [`MAX_NESTING`] is refused in one linear pass, before parsing.

/// Deepest flow nesting (`[` / `{`) accepted.
pub const MAX_NESTING: usize = 64;

/// Refuses text whose flow collections nest deeper than [`MAX_NESTING`], naming the
/// line. Brackets inside quoted strings and comments do not count.
pub fn check_nesting(text: &str) -> Result<(), String> {
    let mut depth = 0usize;
    let mut line = 1;
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut previous = '\n';
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
            comment = false;
            // Quoted scalars may span lines; a flow collection may too.
        } else if comment {
        } else if let Some(q) = quote {
            if c == q {
                quote = None;
            } else if q == '"' && c == '\\' {
                chars.next();
            }
        } else {
            match c {
                '#' if previous.is_whitespace() => comment = true,
                '"' | '\'' => quote = Some(c),
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(format!(
                            "line {line}: YAML nested deeper than {MAX_NESTING} levels"
                        ));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        previous = c;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_at_once() {
        let deep = "[".repeat(100_000);
        let started = std::time::Instant::now();
        let error = check_nesting(&format!("a: 1\nb: {deep}")).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(error, "line 2: YAML nested deeper than 64 levels");
        assert!(check_nesting(&"[".repeat(64)).is_ok());
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let text = format!(
            "a: \"{open}\"\nb: '{open}'\nc: x # {open}\nd: \"\\\"{open}\"\ne: [[1], {{x: [2]}}]\n",
            open = "[".repeat(100)
        );
        assert!(check_nesting(&text).is_ok());
    }
}
