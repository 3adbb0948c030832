//! Byte sizes in configuration: a plain number of bytes, or a number with a unit as
//! Kubernetes quantities and humans write them (`128Mi`, `1.5GiB`, `64k`, `10MB`).
//! Binary units (`Ki`, `Mi`, `Gi`, `KiB` …) are powers of 1024, decimal ones (`k`, `M`,
//! `G`, `MB` …) powers of 1000, case-insensitively, as the `bytesize` crate reads them.
//!
//! Use on a `usize` field with `#[serde(with = "crate::byte_size")]` and
//! `#[schemars(schema_with = "crate::byte_size::schema")]`. Sizes always print as
//! numbers, so `--print-config` shows exactly the bytes that apply.

use serde::Serializer;
use serde::de::{self, Deserializer, Visitor};

/// Writes the size as a number of bytes.
pub fn serialize<S: Serializer>(bytes: &usize, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(*bytes as u64)
}

/// Reads a number of bytes or a size with a unit.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    deserializer.deserialize_any(SizeVisitor)
}

/// Parses `128Mi`, `1.5GiB`, `4096`: the same rules as configuration files.
pub fn parse(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let parsed: bytesize::ByteSize = trimmed.parse().map_err(|_| {
        format!(
            "{text:?} is not a size: write bytes (4096) or a number with a unit (128Mi, 1GiB, 64k)"
        )
    })?;
    // The parser saturates on overflow; a size that large is a typo, not a limit.
    if parsed.as_u64() == u64::MAX {
        return Err(format!("{text:?} is too large to be a size"));
    }
    usize::try_from(parsed.as_u64()).map_err(|_| format!("{text:?} is too large to be a size"))
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number of bytes or a size with a unit such as 128Mi")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        usize::try_from(v).map_err(|_| E::custom(format!("{v} is too large to be a size")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
        u64::try_from(v)
            .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
            .and_then(|v| self.visit_u64(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        parse(v).map_err(E::custom)
    }
}

/// What the CRD's rule accepts as a string size (the loaders' parser accepts the same).
const SIZE_PATTERN: &str = r"^\s*[0-9]+(\.[0-9]+)?\s*([kKmMgGtTpPeE][iI]?[bB]?|[bB])?\s*$";

/// The CRD schema: an int-or-string field whose integers may not be negative and whose
/// strings must read as sizes, checked by a CEL rule (an int-or-string field cannot carry
/// `minimum` or `pattern` for one of its types only), so the API server refuses what the
/// loaders would.
pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // `string(self)` reads an integer as its digits, so one pattern refuses negative
    // numbers and text that is not a size alike.
    let rule = format!(
        "size(string(self)) <= 32 && string(self).matches('{}')",
        SIZE_PATTERN.replace('\\', "\\\\")
    );
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        // kube marks optional int-or-string fields nullable; a null size would be kept
        // and fail the operator's typed reads, so the API server must drop it instead.
        "nullable": false,
        "x-kubernetes-validations": [{
            "rule": rule,
            "message": "a size is a number of bytes (4096) or a number with a unit (128Mi, 1GiB, 64k)"
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse("128Mi"), Ok(128 << 20));
        assert_eq!(parse("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse("64k"), Ok(64_000));
        assert_eq!(parse("10 MB"), Ok(10_000_000));
        assert_eq!(parse("4096"), Ok(4096));
        assert!(parse("12 parsecs").unwrap_err().contains("not a size"));
        assert!(parse("Mi").is_err());
        assert!(parse("99999999999Ei").unwrap_err().contains("too large"));
    }

    #[test]
    fn numbers_and_strings_in_yaml() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Limits {
            #[serde(with = "super")]
            size: usize,
        }
        let read = |yaml: &str| serde_yaml::from_str::<Limits>(yaml).map(|l| l.size);
        assert_eq!(read("size: 128Mi").unwrap(), 128 << 20);
        assert_eq!(read("size: 1024").unwrap(), 1024);
        assert!(
            read("size: -1")
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        let printed = serde_yaml::to_string(&Limits { size: 2048 }).unwrap();
        assert_eq!(printed.trim(), "size: 2048");
    }
}
