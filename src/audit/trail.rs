//! The audit trail's queries: which events of a raffle touched an order, a ticket number, a
//! payment id or an actor, of which type, when. The keys are looked up in the `audit_index`
//! read model (on the read database), a page of sequences at a time; the events themselves
//! are then read from the log (the write database), so what is shown is exactly what is
//! stored, hash included.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use tombola_projections::models::audit_index::TABLE as AUDIT_INDEX;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store::RAFFLE_STREAM;

/// Which events: every given key must match (an order *and* a ticket: the events that
/// touched both), then the type and the half-open time range.
#[derive(Debug, Clone, Default)]
pub struct TrailQuery {
    pub order_id: Option<Uuid>,
    pub ticket: Option<u32>,
    pub payment_id: Option<String>,
    pub actor: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Keyset pagination: events after this sequence.
    pub after_sequence: u64,
    pub limit: u32,
}

/// One event as the audit trail shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrailEvent {
    pub sequence: u64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: Option<String>,
    /// `key:<id>`, `system`, or an operator.
    pub actor: Option<String>,
    /// `api`, `webhook`, `operator` or `system`.
    pub source: Option<String>,
    pub request_id: Option<String>,
    /// The event's chain hash: `sequence:hash` is a head (or, for `TicketsIssued`, a receipt)
    /// that `audit verify` can check later.
    pub hash: Option<String>,
    /// What happened, as stored.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Everything recorded about it (correlation and causation ids, idempotency key, the
    /// chain), as stored.
    #[schema(value_type = Object)]
    pub metadata: Value,
}

/// A page of the trail.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrailPage {
    pub events: Vec<TrailEvent>,
    /// Pass as `after_sequence` for the next page; absent on the last one.
    pub next_after_sequence: Option<u64>,
}

/// One page of the events of `raffle_id` that match `query`, in sequence order. Reads the
/// index on `read`, the events on `log`.
pub async fn query(
    read: &PgPool,
    log: &PgPool,
    raffle_id: Uuid,
    query: &TrailQuery,
) -> Result<TrailPage, sqlx::Error> {
    // Each key given is one (kind, key) the event must be indexed under; with none, every
    // event has exactly one `actor` entry, so the type and time filters still use the index.
    let mut kinds: Vec<&str> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    let mut add = |kind, key: String| {
        kinds.push(kind);
        keys.push(key);
    };
    if let Some(order_id) = query.order_id {
        add("order", order_id.to_string());
    }
    if let Some(ticket) = query.ticket {
        add("ticket", ticket.to_string());
    }
    if let Some(payment_id) = &query.payment_id {
        add("payment", payment_id.clone());
    }
    if let Some(actor) = &query.actor {
        add("actor", actor.clone());
    }
    // Two statements rather than one with `($3 AND kind = 'actor') OR (kind, key) IN (…)`:
    // that OR kept the primary key to its `raffle_id` prefix under any plan, so every page
    // read all of a raffle's entries (decision 0026). Joined to the keys, each key is one
    // range of `(raffle_id, kind, key, sequence)`; without keys, the actor entries (one per
    // event) are the events.
    let after = query.after_sequence.min(i64::MAX as u64) as i64;
    let fetch = i64::from(query.limit) + 1;
    let sequences: Vec<i64> = if kinds.is_empty() {
        sqlx::query_scalar(&format!(
            "SELECT sequence FROM {AUDIT_INDEX} \
             WHERE raffle_id = $1 AND kind = 'actor' AND sequence > $2 \
               AND ($3::text IS NULL OR event_type = $3) \
               AND ($4::timestamptz IS NULL OR recorded_at >= $4) \
               AND ($5::timestamptz IS NULL OR recorded_at < $5) \
             ORDER BY sequence LIMIT $6"
        ))
        .bind(raffle_id)
        .bind(after)
        .bind(query.event_type.as_deref())
        .bind(query.since)
        .bind(query.until)
        .bind(fetch)
        .fetch_all(read)
        .await?
    } else {
        sqlx::query_scalar(&format!(
            "SELECT a.sequence FROM UNNEST($3::text[], $4::text[]) AS k(kind, key) \
             JOIN {AUDIT_INDEX} a ON a.raffle_id = $1 AND a.kind = k.kind AND a.key = k.key \
               AND a.sequence > $2 \
             WHERE ($5::text IS NULL OR a.event_type = $5) \
               AND ($6::timestamptz IS NULL OR a.recorded_at >= $6) \
               AND ($7::timestamptz IS NULL OR a.recorded_at < $7) \
             GROUP BY a.sequence HAVING count(DISTINCT a.kind) = $8 \
             ORDER BY a.sequence LIMIT $9"
        ))
        .bind(raffle_id)
        .bind(after)
        .bind(&kinds)
        .bind(&keys)
        .bind(query.event_type.as_deref())
        .bind(query.since)
        .bind(query.until)
        .bind(kinds.len() as i64)
        .bind(fetch)
        .fetch_all(read)
        .await?
    };
    let more = sequences.len() > query.limit as usize;
    let page = &sequences[..sequences.len().min(query.limit as usize)];
    let events = read_events(log, raffle_id, page).await?;
    Ok(TrailPage {
        next_after_sequence: more.then(|| events.last().map(|e| e.sequence)).flatten(),
        events,
    })
}

/// The stored events at `sequences`, in order.
pub async fn read_events(
    log: &PgPool,
    raffle_id: Uuid,
    sequences: &[i64],
) -> Result<Vec<TrailEvent>, sqlx::Error> {
    let rows: Vec<(i64, String, String, Value, Value)> = sqlx::query_as(
        "SELECT sequence, event_type, event_version, payload, metadata FROM events \
         WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = ANY($3) \
         ORDER BY sequence",
    )
    .bind(RAFFLE_STREAM)
    .bind(raffle_id.to_string())
    .bind(sequences)
    .fetch_all(log)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(sequence, event_type, event_version, payload, metadata)| {
            let field = |name: &str| metadata[name].as_str().map(str::to_owned);
            TrailEvent {
                sequence: sequence as u64,
                event_type,
                event_version,
                recorded_at: field("recorded_at"),
                actor: field("actor"),
                source: field("source"),
                request_id: field("request_id"),
                hash: field("hash"),
                payload,
                metadata,
            }
        })
        .collect())
}
