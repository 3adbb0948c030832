//! Files the gateway re-reads while it runs: the routing file, API keys, JWKS, the HMAC
//! secret and TLS certificates.
//!
//! Polls the content rather than using file-system events: a Kubernetes ConfigMap or
//! Secret mount changes through a symlink swap, which content polling sees and inotify
//! on the file does not. A file that cannot be read counts as a change only once it
//! reads again, so a file briefly missing during the swap keeps what was loaded.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Calls `changed` with a file's new content whenever it differs from what was last
/// read, checking every `interval` until `stop`. `initial` is the content already
/// loaded at start.
pub async fn watch_file(
    path: PathBuf,
    interval: Duration,
    initial: Option<Vec<u8>>,
    stop: CancellationToken,
    mut changed: impl FnMut(&[u8]) + Send,
) {
    let mut last = initial;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Ok(now) = tokio::fs::read(&path).await else {
            continue;
        };
        if last.as_ref() != Some(&now) {
            changed(&now);
            last = Some(now);
        }
    }
}
