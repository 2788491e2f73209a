//! Commit notices to other nodes over NOTIFY (the listening side is
//! `engine::remote_commits`).

use super::{Store, StoreError, EVENTS_CHANNEL};

impl Store {
    /// Tells other nodes (LISTEN on [`EVENTS_CHANNEL`]) that streams grew, as `raffle:sequence`
    /// notices. Sent after the appends commit, never inside them: a transaction that notifies
    /// holds PostgreSQL's global notify lock through its commit's WAL flush, so every raffle's
    /// group commit queued behind every other's. A notify-only transaction does not wait for
    /// a flush, and nothing depends on notices for correctness.
    pub async fn announce(&self, notices: &[String]) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, notice) FROM UNNEST($2::text[]) AS notice")
            .bind(EVENTS_CHANNEL)
            .bind(notices)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
