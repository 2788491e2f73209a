//! One group commit: all events of a writer's batch, the idempotency records of the
//! commands in it and the raffle's registry row, in one transaction with one multi-row
//! insert per table.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::idempotency::IdempotencyRecord;
use super::{Store, StoreError, EVENTS_CHANNEL, RAFFLE_STREAM};

/// An event ready to store: payload and metadata already serialized (and hashed).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub sequence: u64,
    pub event_type: &'static str,
    pub event_version: &'static str,
    pub payload: String,
    pub metadata: String,
    pub order_id: Option<Uuid>,
}

#[derive(Debug, Default)]
pub struct AppendBatch {
    pub events: Vec<NewEvent>,
    pub idempotency: Vec<IdempotencyRecord>,
    /// Registry row after this batch.
    pub registry: Option<RegistryRow>,
}

#[derive(Debug, Clone)]
pub struct RegistryRow {
    pub organizer_id: String,
    pub title: String,
    pub status: &'static str,
    pub last_sequence: u64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer (another node) appended to the stream first, or stored the same
    /// idempotency key: reload and decide again.
    #[error("the stream moved on: another writer appended first")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AppendError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict,
            _ => Self::Store(StoreError::Database(error)),
        }
    }
}

impl AppendBatch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.idempotency.is_empty()
    }
}

impl Store {
    #[tracing::instrument(skip_all, fields(raffle_id = %raffle_id, events = batch.events.len()))]
    pub async fn append(&self, raffle_id: Uuid, batch: &AppendBatch) -> Result<(), AppendError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let aggregate_id = raffle_id.to_string();
        if !batch.events.is_empty() {
            let mut sequences = Vec::with_capacity(batch.events.len());
            let mut types = Vec::with_capacity(batch.events.len());
            let mut versions = Vec::with_capacity(batch.events.len());
            let mut payloads = Vec::with_capacity(batch.events.len());
            let mut metadata = Vec::with_capacity(batch.events.len());
            let mut orders = Vec::with_capacity(batch.events.len());
            for event in &batch.events {
                orders.push(event.order_id);
                sequences.push(event.sequence as i64);
                types.push(event.event_type);
                versions.push(event.event_version);
                payloads.push(event.payload.as_str());
                metadata.push(event.metadata.as_str());
            }
            sqlx::query(
                "INSERT INTO events \
                   (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
                    metadata, order_id) \
                 SELECT $1, $2, t.seq, t.etype, t.ever, t.payload::json, t.meta::json, t.order_id \
                 FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], \
                             $8::uuid[]) AS t(seq, etype, ever, payload, meta, order_id)",
            )
            .bind(RAFFLE_STREAM)
            .bind(&aggregate_id)
            .bind(&sequences)
            .bind(&types)
            .bind(&versions)
            .bind(&payloads)
            .bind(&metadata)
            .bind(&orders)
            .execute(&mut *tx)
            .await?;
        }
        if !batch.idempotency.is_empty() {
            let scopes: Vec<&str> = batch.idempotency.iter().map(|r| r.scope.as_str()).collect();
            let keys: Vec<&str> = batch.idempotency.iter().map(|r| r.key.as_str()).collect();
            let hashes: Vec<&[u8]> = batch
                .idempotency
                .iter()
                .map(|r| r.request_hash.as_slice())
                .collect();
            let responses: Vec<String> = batch
                .idempotency
                .iter()
                .map(|r| r.response.to_string())
                .collect();
            sqlx::query(
                "INSERT INTO idempotency_keys (scope, key, request_hash, raffle_id, response) \
                 SELECT t.scope, t.key, t.hash, $1, t.response::jsonb \
                 FROM UNNEST($2::text[], $3::text[], $4::bytea[], $5::text[]) \
                   AS t(scope, key, hash, response)",
            )
            .bind(raffle_id)
            .bind(&scopes)
            .bind(&keys)
            .bind(&hashes)
            .bind(&responses)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(row) = &batch.registry {
            sqlx::query(
                "INSERT INTO raffles \
                   (raffle_id, organizer_id, title, status, last_sequence, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, now()) \
                 ON CONFLICT (raffle_id) DO UPDATE \
                   SET status = EXCLUDED.status, last_sequence = EXCLUDED.last_sequence, \
                       updated_at = now()",
            )
            .bind(raffle_id)
            .bind(&row.organizer_id)
            .bind(&row.title)
            .bind(row.status)
            .bind(row.last_sequence as i64)
            .bind(row.created_at)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(last) = batch.events.last() {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(EVENTS_CHANNEL)
                .bind(format!("{raffle_id}:{}", last.sequence))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

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
