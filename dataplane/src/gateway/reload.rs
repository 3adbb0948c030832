//! Files the gateway re-reads while it runs: the routing file, API keys, JWKS, the HMAC
//! secret and TLS certificates.
//!
//! Polls the content rather than using file-system events: a Kubernetes ConfigMap or
//! Secret mount changes through a symlink swap, which content polling sees and inotify
//! on the file does not. A file that cannot be read counts as a change only once it
//! reads again, so a file briefly missing during the swap keeps what was loaded.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

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

/// Watches a credential file (`file` names it in logs and in
/// `weir_gateway_credential_reloads_total`): each new content goes to `apply`, which
/// installs it whole or refuses it, and then what is in force stays.
pub fn spawn_reloader(
    path: PathBuf,
    file: &'static str,
    interval: Duration,
    initial: Option<Vec<u8>>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    mut apply: impl FnMut(&[u8]) -> Result<(), String> + Send + 'static,
) {
    let shown = path.display().to_string();
    tokio::spawn(watch_file(path, interval, initial, stop, move |content| {
        let result = match apply(content) {
            Ok(()) => {
                tracing::info!(path = shown, file, "reloaded");
                "ok"
            }
            Err(error) => {
                tracing::error!(path = shown, file, %error, "rejected; keeping the previous version");
                "error"
            }
        };
        metrics
            .credential_reloads
            .with_label_values(&[file, result])
            .inc();
    }));
}
