//! The process's limit of open files (`RLIMIT_NOFILE`). Every connection is a file: a
//! gateway allowed 40,000 connections per port but started under the common soft limit
//! of 1,024 fails to accept past about a thousand, and only its accept-error log says
//! why. At start the soft limit is raised to the hard one (as Go's runtime does), and
//! a limit still below what the settings allow is logged in words (at info: the
//! default connection limits are generous, and most machines never see them).

/// Files a process keeps open besides its connections: listeners, Kafka sockets,
/// librdkafka's pipes, logs, libraries.
pub const RESERVED_FILES: u64 = 256;

/// The soft limit to set for a process with these soft and hard limits: the hard one,
/// when it is higher (never lower: raising it costs nothing, and a lower soft limit
/// only fails later).
pub fn raised_soft_limit(soft: u64, hard: u64) -> Option<u64> {
    (hard > soft).then_some(hard)
}

/// Raises the soft limit of open files to the hard limit and warns, naming `what`
/// allows the connections, when `wanted` files do not fit. Returns the limit in force.
pub fn ensure(wanted: u64, what: &str) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    // `None` means unlimited.
    let soft = current.current.unwrap_or(u64::MAX);
    let hard = current.maximum.unwrap_or(u64::MAX);
    let mut limit = soft;
    if let Some(raised) = raised_soft_limit(soft, hard) {
        let new = Rlimit {
            current: current.maximum,
            maximum: current.maximum,
        };
        match setrlimit(Resource::Nofile, new) {
            Ok(()) => {
                tracing::debug!(from = soft, to = raised, "raised the open-files limit");
                limit = raised;
            }
            Err(error) => {
                tracing::warn!(%error, soft, hard, "cannot raise the open-files limit to its hard limit");
            }
        }
    }
    if limit < wanted {
        tracing::info!(
            limit,
            wanted,
            "the process may open {limit} files but {what} allows about {wanted}: connections past the limit are refused at accept; raise the container's or the service's nofile limit (ulimit -n), or lower the connection limit"
        );
    }
    limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_goes_up_to_the_hard_one_and_never_down() {
        assert_eq!(raised_soft_limit(1024, 1_048_576), Some(1_048_576));
        assert_eq!(raised_soft_limit(65_536, 65_536), None);
        assert_eq!(raised_soft_limit(u64::MAX, u64::MAX), None);
    }

    #[test]
    fn the_limit_in_force_is_at_least_the_soft_limit_before() {
        let before = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let limit = ensure(16, "this test");
        assert!(limit >= before.current.unwrap_or(u64::MAX), "never lowered");
        let after = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(
            after.current, after.maximum,
            "the soft limit is the hard one"
        );
    }
}
