//! Crash injection for the sink's exactly-once tests.
//!
//! `WEIR_SINK_CRASH_AT=<point>:<n>` aborts the process (no unwinding, no flushing, like
//! `kill -9`) the `n`th time execution reaches `<point>`. Points: `after_encode`,
//! `after_claim`, `after_file_upload` (each file), `after_uploads`, `after_commit`. Unset (always,
//! outside tests), a check is one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a crash.
pub const CRASH_AT_ENV: &str = "WEIR_SINK_CRASH_AT";

static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

/// Aborts if `point` is the armed one and this is its `n`th hit.
pub fn hit(point: &str) {
    let armed = ARMED.get_or_init(|| {
        let value = std::env::var(CRASH_AT_ENV).ok()?;
        let (name, n) = value.split_once(':')?;
        Some((name.to_string(), n.parse().ok()?))
    });
    if let Some((name, n)) = armed
        && name == point
        && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n
    {
        eprintln!("{CRASH_AT_ENV}: crashing at {point} (hit {n})");
        std::process::abort();
    }
}
