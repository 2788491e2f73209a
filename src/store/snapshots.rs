//! Saving a raffle's binary snapshot (loading it is part of [`super::load`]).

use uuid::Uuid;

use super::{Store, StoreError};

impl Store {
    /// Stores a snapshot unless a newer one is already there (several nodes may race).
    pub async fn save_snapshot(
        &self,
        raffle_id: Uuid,
        last_sequence: u64,
        last_hash: &str,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO raffle_snapshots (raffle_id, last_sequence, last_hash, format, payload) \
             VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (raffle_id) DO UPDATE \
               SET last_sequence = EXCLUDED.last_sequence, last_hash = EXCLUDED.last_hash, \
                   format = EXCLUDED.format, payload = EXCLUDED.payload, taken_at = now() \
             WHERE raffle_snapshots.last_sequence < EXCLUDED.last_sequence",
        )
        .bind(raffle_id)
        .bind(last_sequence as i64)
        .bind(last_hash)
        .bind(payload)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
