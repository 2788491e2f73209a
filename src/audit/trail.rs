//! The audit trail's queries: which events of a raffle touched an order, a ticket number, a
//! payment id or an actor, of which type, when. The keys are looked up in the `audit_index`
//! read model (on the read database), a page of sequences at a time; the events themselves
//! are then read from the log (the write database), so what is shown is exactly what is
//! stored, hash included.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use tombola_projections::models::audit_index::{
    EVENTS as AUDIT_EVENTS, ORDERS as AUDIT_ORDERS, PAYMENTS as AUDIT_PAYMENTS,
    TICKETS as AUDIT_TICKETS,
};
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
    // Version 4 of `audit_index` (decision 0029): a row per event (type, time, actor) and a
    // table per kind of key, each keyed `(raffle_id, key, sequence)`. The page is driven by
    // one index range in sequence order — the first key given (ticket, order, payment, then
    // actor), or the raffle's events — and every other key given must have a row at the same
    // sequence. Every parameter appears in every statement (PostgreSQL types them from use).
    let after = query.after_sequence.min(i64::MAX as u64) as i64;
    let fetch = i64::from(query.limit) + 1;
    let others = |driver: &str| {
        let mut conditions = Vec::new();
        if driver != "ticket" {
            conditions.push(format!(
                "($4::bigint IS NULL OR EXISTS (SELECT 1 FROM {AUDIT_TICKETS} k \
                   WHERE k.raffle_id = $1 AND k.number = $4 AND k.sequence = e.sequence))"
            ));
        }
        if driver != "order" {
            conditions.push(format!(
                "($3::uuid IS NULL OR EXISTS (SELECT 1 FROM {AUDIT_ORDERS} k \
                   WHERE k.raffle_id = $1 AND k.order_id = $3 AND k.sequence = e.sequence))"
            ));
        }
        if driver != "payment" {
            conditions.push(format!(
                "($5::text IS NULL OR EXISTS (SELECT 1 FROM {AUDIT_PAYMENTS} k \
                   WHERE k.raffle_id = $1 AND k.payment_id = $5 AND k.sequence = e.sequence))"
            ));
        }
        if driver != "actor" {
            conditions.push("($6::text IS NULL OR e.actor = $6)".to_owned());
        }
        conditions.join(" AND ")
    };
    let filters = "($7::text IS NULL OR e.event_type = $7) \
                   AND ($8::timestamptz IS NULL OR e.recorded_at >= $8) \
                   AND ($9::timestamptz IS NULL OR e.recorded_at < $9)";
    let keyed = |driver: &str, table: &str, column: &str, param: &str| {
        format!(
            "SELECT d.sequence FROM {table} d \
             JOIN {AUDIT_EVENTS} e ON e.raffle_id = d.raffle_id AND e.sequence = d.sequence \
             WHERE d.raffle_id = $1 AND d.{column} = {param} AND d.sequence > $2 \
               AND {} AND {filters} \
             ORDER BY d.sequence LIMIT $10",
            others(driver)
        )
    };
    let sql = if query.ticket.is_some() {
        keyed("ticket", AUDIT_TICKETS, "number", "$4::bigint")
    } else if query.order_id.is_some() {
        keyed("order", AUDIT_ORDERS, "order_id", "$3")
    } else if query.payment_id.is_some() {
        keyed("payment", AUDIT_PAYMENTS, "payment_id", "$5")
    } else if query.actor.is_some() {
        format!(
            "SELECT e.sequence FROM {AUDIT_EVENTS} e \
             WHERE e.raffle_id = $1 AND e.actor = $6 AND e.sequence > $2 AND {} AND {filters} \
             ORDER BY e.sequence LIMIT $10",
            others("actor")
        )
    } else {
        format!(
            "SELECT e.sequence FROM {AUDIT_EVENTS} e \
             WHERE e.raffle_id = $1 AND e.sequence > $2 AND {} AND {filters} \
             ORDER BY e.sequence LIMIT $10",
            others("")
        )
    };
    let sequences: Vec<i64> = sqlx::query_scalar(&sql)
        .bind(raffle_id)
        .bind(after)
        .bind(query.order_id)
        .bind(query.ticket.map(i64::from))
        .bind(query.payment_id.as_deref())
        .bind(query.actor.as_deref())
        .bind(query.event_type.as_deref())
        .bind(query.since)
        .bind(query.until)
        .bind(fetch)
        .fetch_all(read)
        .await?;
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
