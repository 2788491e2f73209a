//! The databases a bench run creates, and their removal once its figures are read.
//!
//! A run leaves nothing behind: each database holds a few hundred MB, and its dirty pages
//! would otherwise be written out, by eviction and by the kernel's writeback, while the
//! next run is being measured.

use tombola::store::Store;

/// A new, migrated database; its URL is for [`discard`].
pub async fn fresh(max_connections: u32) -> Result<(Store, String), String> {
    tombola::testing::fresh_database(max_connections)
        .await
        .map_err(|e| format!("creating the bench database: {e}"))
}

/// Closes the bench's own connections and drops the database.
pub async fn discard(store: Store, url: &str) -> Result<(), String> {
    store.pool().close().await;
    tombola::testing::drop_database(url)
        .await
        .map_err(|e| format!("dropping the bench database: {e}"))
}
