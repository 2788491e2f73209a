//! An event as projections see it: its stream position, the fact, and who caused it.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tombola_domain::RaffleEvent;
use uuid::Uuid;

use crate::RAFFLE_STREAM;

#[derive(Debug, Clone)]
pub struct Envelope {
    pub raffle_id: Uuid,
    pub sequence: u64,
    pub event: RaffleEvent,
    /// API key id, `system`, or an operator's name (from the event's metadata).
    pub actor: String,
    pub recorded_at: DateTime<Utc>,
    /// The event's chain hash as stored: carried into a paid order's receipt, never checked
    /// here (verifying the chain is the audit's job).
    pub hash: Option<String>,
}

/// Only the metadata fields the read side uses; the write side's `EventMetadata` has more
/// (the chain's links), whose rules projections must not depend on.
#[derive(Deserialize)]
struct Metadata {
    actor: String,
    recorded_at: DateTime<Utc>,
    #[serde(default)]
    hash: Option<String>,
}

/// Where events are read from: the write database's `events` table.
#[derive(Clone, Debug)]
pub struct EventSource {
    pool: sqlx::PgPool,
}

/// An event that cannot be read back as a [`RaffleEvent`]: a poison event for whoever reads it.
#[derive(Debug, thiserror::Error)]
#[error("event {sequence}: {reason}")]
pub struct DecodeError {
    pub sequence: u64,
    pub reason: String,
}

impl EventSource {
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// Up to `limit` events of one stream after `after`, in sequence order, as stored text.
    pub async fn read_after(
        &self,
        raffle_id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RawEvent>, sqlx::Error> {
        sqlx::query_as(
            "SELECT sequence, payload::text, metadata::text FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 \
             ORDER BY sequence LIMIT $4",
        )
        .bind(RAFFLE_STREAM)
        .bind(raffle_id.to_string())
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
    }

    /// Each raffle's last sequence (raffles known to the registry and having events).
    pub async fn heads(&self) -> Result<Vec<(Uuid, u64)>, sqlx::Error> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT r.raffle_id, h.sequence FROM raffles r \
             CROSS JOIN LATERAL ( \
               SELECT max(sequence) AS sequence FROM events e \
               WHERE e.aggregate_type = $1 AND e.aggregate_id = r.raffle_id::text) h \
             WHERE h.sequence IS NOT NULL",
        )
        .bind(RAFFLE_STREAM)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(r, s)| (r, s as u64)).collect())
    }

    /// When the event at `sequence` was recorded (for lag in seconds).
    pub async fn recorded_at(
        &self,
        raffle_id: Uuid,
        sequence: u64,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let metadata: Option<String> = sqlx::query_scalar(
            "SELECT metadata::text FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
        )
        .bind(RAFFLE_STREAM)
        .bind(raffle_id.to_string())
        .bind(sequence as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(metadata
            .and_then(|text| serde_json::from_str::<Metadata>(&text).ok())
            .map(|m| m.recorded_at))
    }
}

/// An event as stored: sequence, payload and metadata JSON.
pub type RawEvent = (i64, String, String);

/// Parses stored rows; the first one that does not parse stops the batch there.
pub fn decode(raffle_id: Uuid, rows: &[RawEvent]) -> (Vec<Envelope>, Option<DecodeError>) {
    let mut out = Vec::with_capacity(rows.len());
    for (sequence, payload, metadata) in rows {
        let sequence = *sequence as u64;
        let parsed = serde_json::from_str::<RaffleEvent>(payload)
            .map_err(|e| format!("payload: {e}"))
            .and_then(|event| {
                serde_json::from_str::<Metadata>(metadata)
                    .map_err(|e| format!("metadata: {e}"))
                    .map(|m| (event, m))
            });
        match parsed {
            Ok((event, metadata)) => out.push(Envelope {
                raffle_id,
                sequence,
                event,
                actor: metadata.actor,
                recorded_at: metadata.recorded_at,
                hash: metadata.hash,
            }),
            Err(reason) => return (out, Some(DecodeError { sequence, reason })),
        }
    }
    (out, None)
}
