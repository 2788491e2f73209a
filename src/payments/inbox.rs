//! The durable inbox of provider deliveries.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::store::{Store, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueDelivery {
    pub provider: String,
    pub event_id: String,
    /// The body as received (the column is `json`, which keeps the text).
    pub payload: String,
    pub payment_id: Option<String>,
    pub attempts: i32,
}

/// Takes up to `limit` due deliveries, locked for this transaction; other workers skip them.
pub async fn take_due(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> Result<Vec<DueDelivery>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT provider, event_id, payload::text AS payload, payment_id, attempts FROM payment_inbox \
         WHERE status = 'pending' AND next_attempt_at <= now() \
         ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?)
}

/// Keeps a delivery that verified but could not be read, settled `rejected` with the reason,
/// so that operators see it; a redelivery finds it there. `payload` must be JSON (a body
/// that is not is kept as a JSON string).
pub async fn store_unreadable(
    store: &Store,
    provider: &str,
    event_id: &str,
    event_type: &str,
    payload: &str,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO payment_inbox \
           (provider, event_id, event_type, payload, status, last_error, processed_at) \
         VALUES ($1, $2, $3, $4::json, 'rejected', $5, now()) \
         ON CONFLICT (provider, event_id) DO NOTHING",
    )
    .bind(provider)
    .bind(event_id)
    .bind(event_type)
    .bind(payload)
    .bind(reason)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// The raffle and order a payment id was announced with (refunds rarely carry them); once
/// retention pruned that delivery, `payment_orders` remembers them.
pub async fn find_order_of_payment(
    store: &Store,
    provider: &str,
    payment_id: &str,
) -> Result<Option<(Uuid, Uuid)>, StoreError> {
    Ok(sqlx::query_as(
        "(SELECT raffle_id, order_id FROM payment_inbox \
         WHERE provider = $1 AND payment_id = $2 AND raffle_id IS NOT NULL AND order_id IS NOT NULL \
         LIMIT 1) \
         UNION ALL \
         (SELECT raffle_id, order_id FROM payment_orders WHERE provider = $1 AND payment_id = $2) \
         LIMIT 1",
    )
    .bind(provider)
    .bind(payment_id)
    .fetch_optional(store.pool())
    .await?)
}

pub enum Settlement<'a> {
    /// Applied (or found already applied): `outcome` says what happened.
    Done { outcome: &'a str },
    /// Refused for good by the raffle's rules; kept for an operator.
    Rejected { error: &'a str },
    /// Try again at `next_attempt_at`; after the last attempt it is marked failed.
    Retry {
        error: &'a str,
        next_attempt_at: DateTime<Utc>,
        give_up: bool,
    },
}

/// One row's settlement: `attempts` is how many tries the row had when it was taken.
pub struct Settled<'a> {
    pub provider: &'a str,
    pub event_id: &'a str,
    pub attempts: i32,
    pub settlement: Settlement<'a>,
}

/// Settles a batch of deliveries with one statement. A row changes only if its attempt count
/// is still the one it was taken with: a leased row that a poller took meanwhile keeps that
/// poller's settlement.
///
/// The guard is the attempt count, not `status = 'pending'`: that predicate lets the planner
/// drive the update from the partial queue index, full of dead entries between vacuums
/// (figures: docs/decisions/0011).
pub async fn settle(
    executor: impl sqlx::PgExecutor<'_>,
    settled: &[Settled<'_>],
) -> Result<(), StoreError> {
    let mut providers = Vec::with_capacity(settled.len());
    let mut event_ids = Vec::with_capacity(settled.len());
    let mut attempts = Vec::with_capacity(settled.len());
    let mut statuses = Vec::with_capacity(settled.len());
    let mut outcomes = Vec::with_capacity(settled.len());
    let mut errors = Vec::with_capacity(settled.len());
    let mut next_attempts = Vec::with_capacity(settled.len());
    for row in settled {
        let (status, outcome, error, next) = match &row.settlement {
            Settlement::Done { outcome } => ("done", Some(*outcome), None, None),
            Settlement::Rejected { error } => ("rejected", None, Some(*error), None),
            Settlement::Retry {
                error,
                next_attempt_at,
                give_up,
            } => (
                if *give_up { "failed" } else { "pending" },
                None,
                Some(*error),
                Some(*next_attempt_at),
            ),
        };
        providers.push(row.provider);
        event_ids.push(row.event_id);
        attempts.push(row.attempts);
        statuses.push(status);
        outcomes.push(outcome);
        errors.push(error);
        next_attempts.push(next);
    }
    sqlx::query(
        "UPDATE payment_inbox i SET status = t.status, outcome = COALESCE(t.outcome, i.outcome), \
           last_error = t.error, attempts = i.attempts + 1, \
           next_attempt_at = COALESCE(t.next_attempt_at, i.next_attempt_at), \
           processed_at = CASE WHEN t.status IN ('done', 'rejected') THEN now() END \
         FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], \
                     $7::timestamptz[]) \
           AS t(provider, event_id, attempts, status, outcome, error, next_attempt_at) \
         WHERE i.provider = t.provider AND i.event_id = t.event_id AND i.attempts = t.attempts",
    )
    .bind(&providers)
    .bind(&event_ids)
    .bind(&attempts)
    .bind(&statuses)
    .bind(&outcomes)
    .bind(&errors)
    .bind(&next_attempts)
    .execute(executor)
    .await?;
    for status in statuses {
        metrics::counter!("tombola_payment_inbox_settled_total", "status" => status).increment(1);
    }
    Ok(())
}

/// The inbox's backlog, for `/metrics`: deliveries waiting (and how long the oldest has),
/// and deliveries given up on, which need an operator.
pub async fn record_backlog(pool: &sqlx::PgPool) -> Result<(), StoreError> {
    let (pending, oldest, failed): (i64, Option<f64>, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM payment_inbox WHERE status = 'pending'), \
                (SELECT extract(epoch FROM now() - min(received_at))::float8 \
                   FROM payment_inbox WHERE status = 'pending'), \
                (SELECT count(*) FROM payment_inbox WHERE status = 'failed')",
    )
    .fetch_one(pool)
    .await?;
    metrics::gauge!("tombola_payment_inbox_pending").set(pending as f64);
    metrics::gauge!("tombola_payment_inbox_oldest_pending_seconds").set(oldest.unwrap_or(0.0));
    metrics::gauge!("tombola_payment_inbox_failed").set(failed as f64);
    Ok(())
}

/// Ends the leases of deliveries that this node's workers will not apply after all (the
/// hand-off channel was full, or the node is stopping): they are due at once, for any
/// node's pollers. A row a poller already took has moved past attempt 0 and stays as is.
pub async fn release(
    executor: impl sqlx::PgExecutor<'_>,
    leased: &[(&str, &str)],
) -> Result<(), StoreError> {
    let providers: Vec<&str> = leased.iter().map(|(provider, _)| *provider).collect();
    let event_ids: Vec<&str> = leased.iter().map(|(_, event_id)| *event_id).collect();
    sqlx::query(
        "UPDATE payment_inbox i SET next_attempt_at = now() \
         FROM UNNEST($1::text[], $2::text[]) AS t(provider, event_id) \
         WHERE i.provider = t.provider AND i.event_id = t.event_id AND i.attempts = 0",
    )
    .bind(&providers)
    .bind(&event_ids)
    .execute(executor)
    .await?;
    Ok(())
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct InboxEntry {
    pub provider: String,
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `done`, `ignored`, `rejected` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// What applying it led to, e.g. `tickets_issued`, `refund_required`, `payment_flagged`.
    pub outcome: Option<String>,
    pub payment_id: Option<String>,
    pub raffle_id: Option<uuid::Uuid>,
    pub order_id: Option<uuid::Uuid>,
    pub received_at: DateTime<Utc>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxFilter {
    All,
    /// Failed or rejected: the delivery itself could not be applied.
    Failed,
    /// Everything an operator must act on: failed or rejected deliveries, and applied ones
    /// whose money must go back (`refund_required`) or matched nothing (`payment_flagged`).
    NeedsAction,
}

/// Recent deliveries, newest first.
pub async fn list(
    store: &Store,
    filter: InboxFilter,
    limit: i64,
) -> Result<Vec<InboxEntry>, StoreError> {
    let condition = match filter {
        InboxFilter::All => "true",
        InboxFilter::Failed => "status IN ('failed', 'rejected')",
        InboxFilter::NeedsAction => {
            "(status IN ('failed', 'rejected') \
              OR (status = 'done' AND outcome IN ('refund_required', 'payment_flagged')))"
        }
    };
    Ok(sqlx::query_as(&format!(
        "SELECT provider, event_id, event_type, status, attempts, last_error, outcome, \
                payment_id, raffle_id, order_id, received_at \
         FROM payment_inbox WHERE {condition} ORDER BY received_at DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(store.pool())
    .await?)
}

/// Puts a failed or rejected delivery back in the queue, now. Returns whether one was found.
pub async fn retry(store: &Store, event_id: &str) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE payment_inbox SET status = 'pending', next_attempt_at = now(), attempts = 0 \
         WHERE event_id = $1 AND status IN ('failed', 'rejected')",
    )
    .bind(event_id)
    .execute(store.pool())
    .await?
    .rows_affected();
    Ok(updated > 0)
}
