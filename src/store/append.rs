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
    /// The stream's last sequence when the batch was decided.
    pub base_sequence: u64,
    pub events: Vec<NewEvent>,
    pub idempotency: Vec<IdempotencyRecord>,
    /// Registry row, when this batch created the raffle or changed its status.
    pub registry: Option<RegistryRow>,
}

#[derive(Debug, Clone)]
pub struct RegistryRow {
    pub organizer_id: String,
    pub title: String,
    pub status: &'static str,
    /// The sequence of the event that set `status`.
    pub status_sequence: u64,
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
            // Binary COPY: measured faster than a multi-row INSERT for a group commit's rows.
            // A duplicate (aggregate, sequence) still fails the primary key: the conflict.
            let mut copy = tx
                .copy_in_raw(
                    "COPY events (aggregate_type, aggregate_id, sequence, event_type, \
                     event_version, payload, metadata, order_id) FROM STDIN (FORMAT binary)",
                )
                .await?;
            copy.send(copy_rows(&aggregate_id, &batch.events)).await?;
            copy.finish().await?;
        } else if !batch.idempotency.is_empty() {
            // No event to collide on: these answers (refusals, replays) were decided at
            // `base_sequence`, and a node that was behind must not store them as final.
            let last: Option<i64> = sqlx::query_scalar(
                "SELECT max(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
            )
            .bind(RAFFLE_STREAM)
            .bind(&aggregate_id)
            .fetch_one(&mut *tx)
            .await?;
            if last.unwrap_or(0) as u64 != batch.base_sequence {
                return Err(AppendError::Conflict);
            }
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
                   (raffle_id, organizer_id, title, status, status_sequence, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, now()) \
                 ON CONFLICT (raffle_id) DO UPDATE \
                   SET status = EXCLUDED.status, status_sequence = EXCLUDED.status_sequence, \
                       updated_at = now()",
            )
            .bind(raffle_id)
            .bind(&row.organizer_id)
            .bind(&row.title)
            .bind(row.status)
            .bind(row.status_sequence as i64)
            .bind(row.created_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

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

/// The events in PostgreSQL's binary COPY format: a header, then per row a field count and
/// each field as length + bytes (`json` takes its text, `bigint` 8 bytes big-endian, `uuid`
/// 16 bytes, NULL length -1), then a trailer.
fn copy_rows(aggregate_id: &str, events: &[NewEvent]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let size: usize = events
        .iter()
        .map(|e| e.payload.len() + e.metadata.len() + 160)
        .sum();
    let mut out = Vec::with_capacity(21 + size);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for event in events {
        out.extend_from_slice(&8i16.to_be_bytes());
        field(&mut out, RAFFLE_STREAM.as_bytes());
        field(&mut out, aggregate_id.as_bytes());
        field(&mut out, &(event.sequence as i64).to_be_bytes());
        field(&mut out, event.event_type.as_bytes());
        field(&mut out, event.event_version.as_bytes());
        field(&mut out, event.payload.as_bytes());
        field(&mut out, event.metadata.as_bytes());
        match event.order_id {
            Some(order_id) => field(&mut out, order_id.as_bytes()),
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}
