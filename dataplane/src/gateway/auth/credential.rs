//! Where a request's credential is: pure parsing of headers and query parameters.
//!
//! Looked for in this order, the first present wins: the auth header (`Bearer <c>`, any
//! case of the scheme, or the bare credential), `X-Weir-Key`, then the `key` and `token`
//! query parameters (browsers cannot set headers on a WebSocket or `sendBeacon`). A
//! present but empty credential is an error, never "no credential".

use super::AuthError;

/// The header an API key may come in besides the auth header.
pub const KEY_HEADER: &str = "X-Weir-Key";
/// Query parameters a credential may come in.
pub const QUERY_PARAMETERS: [&str; 2] = ["key", "token"];

/// A credential, trimmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credential<'a> {
    /// The credential itself.
    pub text: &'a str,
}

impl Credential<'_> {
    /// Whether the credential has a JWT's shape: three base64url parts joined by dots.
    /// API keys and tokens with exactly two dots and only base64url characters would
    /// be taken for JWTs; key generators produce neither.
    pub fn is_jwt(&self) -> bool {
        let mut parts = 0;
        for part in self.text.split('.') {
            parts += 1;
            if part.is_empty() && parts < 3
                || !part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return false;
            }
        }
        parts == 3
    }
}

/// Finds the request's credential. `header(name)` and `query(name)` return a header's
/// and a query parameter's value; `auth_header` is `auth.header`.
pub fn find<'a>(
    auth_header: &str,
    header: impl Fn(&str) -> Option<&'a str>,
    query: impl Fn(&str) -> Option<&'a str>,
) -> Result<Option<Credential<'a>>, AuthError> {
    if let Some(value) = header(auth_header) {
        return non_empty(bearer(value), auth_header).map(Some);
    }
    if let Some(value) = header(KEY_HEADER) {
        return non_empty(value.trim(), KEY_HEADER).map(Some);
    }
    for name in QUERY_PARAMETERS {
        if let Some(value) = query(name) {
            return non_empty(bearer(value), name).map(Some);
        }
    }
    Ok(None)
}

/// The credential of a `Bearer <credential>` value (RFC 9110 §11.1: the scheme is
/// case-insensitive), or the value itself when it names no scheme.
fn bearer(value: &str) -> &str {
    let value = value.trim();
    match value.split_once(char::is_whitespace) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        None if value.eq_ignore_ascii_case("bearer") => "",
        _ => value,
    }
}

fn non_empty<'a>(text: &'a str, source: &str) -> Result<Credential<'a>, AuthError> {
    if text.is_empty() {
        return Err(AuthError::Empty(source.to_string()));
    }
    Ok(Credential { text })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find_in<'a>(
        headers: &'a [(&'a str, &'a str)],
        query: &'a [(&'a str, &'a str)],
    ) -> Result<Option<Credential<'a>>, AuthError> {
        find(
            "Authorization",
            |n| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| *v)
            },
            |n| query.iter().find(|(k, _)| *k == n).map(|(_, v)| *v),
        )
    }

    #[test]
    fn header_then_key_header_then_query() {
        fn text(r: Result<Option<Credential<'_>>, AuthError>) -> Option<&str> {
            r.unwrap().map(|c| c.text)
        }
        assert_eq!(
            text(find_in(&[("authorization", "Bearer a")], &[])),
            Some("a")
        );
        assert_eq!(
            text(find_in(&[("Authorization", "BEARER  a ")], &[])),
            Some("a")
        );
        assert_eq!(text(find_in(&[("Authorization", "a")], &[])), Some("a"));
        assert_eq!(
            text(find_in(&[("Authorization", "a"), ("X-Weir-Key", "b")], &[])),
            Some("a")
        );
        assert_eq!(
            text(find_in(&[("x-weir-key", "b")], &[("key", "c")])),
            Some("b")
        );
        assert_eq!(
            text(find_in(&[], &[("key", "c"), ("token", "d")])),
            Some("c")
        );
        assert_eq!(text(find_in(&[], &[("token", "d")])), Some("d"));
        assert_eq!(text(find_in(&[], &[])), None);
        for (headers, query) in [
            (&[("Authorization", "Bearer ")][..], &[][..]),
            (&[("Authorization", "  ")][..], &[][..]),
            (&[("X-Weir-Key", "")][..], &[][..]),
            (&[][..], &[("key", "")][..]),
        ] {
            assert!(
                matches!(find_in(headers, query), Err(AuthError::Empty(_))),
                "{headers:?} {query:?}"
            );
        }
    }

    #[test]
    fn jwt_shape() {
        let c = |text| Credential { text };
        assert!(c("eyJh.eyJz.c2ln").is_jwt());
        assert!(
            c("eyJh.eyJz.").is_jwt(),
            "an unsigned token is a JWT (and refused)"
        );
        for not in [
            "key", "a.b", "a.b.c.d", ".b.c", "a..c", "a b.c.d", "a.b.c=", "a+.b.c",
        ] {
            assert!(!c(not).is_jwt(), "{not}");
        }
    }
}
