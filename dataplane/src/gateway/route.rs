//! The gateway's router: the current [`RoutingTable`], swapped for a new one when the
//! routing file changes.
//!
//! A batch routes all its events against one table, so a reload never splits a batch
//! between two tables; a file that fails to compile leaves the old table in place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
pub use weir_crds::routing::{Route, RoutingError, RoutingTable, load_routing_file};

/// The current routing table, reloadable from a file.
pub struct Router {
    current: ArcSwap<RoutingTable>,
}

impl Router {
    /// A router over a compiled table.
    pub fn new(table: Arc<RoutingTable>) -> Self {
        Self {
            current: ArcSwap::new(table),
        }
    }

    /// The table to route one batch with.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.current.load_full()
    }

    /// Replaces the table.
    pub fn replace(&self, table: RoutingTable) {
        self.current.store(Arc::new(table));
    }
}

/// Watches a routing file and swaps in each new version that compiles.
pub async fn watch_routing_file(
    router: Arc<Router>,
    path: PathBuf,
    interval: Duration,
    metrics: Arc<super::metrics::Metrics>,
    stop: tokio_util::sync::CancellationToken,
) {
    let initial = tokio::fs::read(&path).await.ok();
    let file = path.clone();
    super::reload::watch_file(
        path,
        interval,
        initial,
        stop,
        move |_| match load_routing_file(&file) {
            Ok(table) => {
                router.replace(table);
                metrics.routing_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(path = %file.display(), "routing table reloaded");
            }
            Err(error) => {
                metrics.routing_reloads.with_label_values(&["error"]).inc();
                tracing::error!(%error, "routing file rejected; keeping the previous table");
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(t: &str) -> Route {
        Route::Topic(t.into())
    }

    #[test]
    fn routing_file_reload_keeps_old_table_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing.yaml");
        std::fs::write(&path, "rules:\n  - exact: a\n    topic: first\n").unwrap();
        let router = Router::new(Arc::new(load_routing_file(&path).unwrap()));
        assert_eq!(router.table().route(None, "a"), topic("first"));

        std::fs::write(&path, "rules:\n  - exact: a\n    topic: second\n").unwrap();
        router.replace(load_routing_file(&path).unwrap());
        assert_eq!(router.table().route(None, "a"), topic("second"));

        std::fs::write(&path, "rules:\n  - exact: a\n    topik: typo\n").unwrap();
        let err = load_routing_file(&path).err().unwrap();
        assert!(err.to_string().contains("topik"), "{err}");
        std::fs::write(&path, "\n").unwrap();
        let err = load_routing_file(&path).err().unwrap();
        assert!(err.to_string().contains("empty"), "{err}");
        assert_eq!(router.table().route(None, "a"), topic("second"));
    }
}
