//! Saving a raffle's binary snapshot (loading it is part of [`super::load`]).

use sqlx::Connection as _;
use uuid::Uuid;

use super::{Store, StoreError};

/// A connection's buffers grow to the largest message it carried and stay so: after a
/// snapshot of more than this, they are shrunk (a 10M-ticket raffle's is ~50 MB, and every
/// pooled connection would otherwise keep one such buffer for good).
pub(super) const LARGE_MESSAGE: usize = 1 << 20;

impl Store {
    /// Stores a snapshot unless a newer one is already there (several nodes may race).
    pub async fn save_snapshot(
        &self,
        raffle_id: Uuid,
        last_sequence: u64,
        last_hash: &str,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(
            "INSERT INTO raffle_snapshots (raffle_id, last_sequence, last_hash, format, payload) \
             VALUES ($1, $2, $3, $5, $4) \
             ON CONFLICT (raffle_id) DO UPDATE \
               SET last_sequence = EXCLUDED.last_sequence, last_hash = EXCLUDED.last_hash, \
                   format = EXCLUDED.format, payload = EXCLUDED.payload, taken_at = now() \
             WHERE raffle_snapshots.last_sequence < EXCLUDED.last_sequence",
        )
        .bind(raffle_id)
        .bind(last_sequence as i64)
        .bind(last_hash)
        .bind(payload)
        // The encoding's version byte (decision 0022: 2 is the compact form).
        .bind(i16::from(payload.get(4).copied().unwrap_or(1)))
        .execute(&mut *conn)
        .await?;
        if payload.len() > LARGE_MESSAGE {
            conn.shrink_buffers();
        }
        Ok(())
    }
}
