//! Deliveries as their owners see them, and what an operator does about them: redeliver
//! one message, or recover every failed one since a time.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::journal::{self, kind, Entry};

/// One message to one endpoint.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Delivery {
    pub msg_id: String,
    pub event_type: String,
    pub raffle_id: Uuid,
    /// `pending` (to send, or to retry at `next_attempt_at`), `succeeded`, or `dead`
    /// (dead-lettered after its last attempt; redeliver it).
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One recorded step of a message's delivery to an endpoint, from its delivery stream.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptRecord {
    /// Position in the raffle's delivery stream.
    pub sequence: i64,
    /// `WebhookAttempted`, `WebhookSucceeded`, `WebhookFailed`, `WebhookDeadLettered`,
    /// `WebhookEndpointDisabled` or `WebhookRedeliveryRequested`.
    pub event_type: String,
    pub recorded_at: String,
    /// The event: `attempt`, `status`, `latency_ms`, `error`, `response_excerpt`, …
    #[schema(value_type = Object)]
    pub detail: Value,
}

pub async fn list(
    pool: &PgPool,
    endpoint_id: Uuid,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<Delivery>, sqlx::Error> {
    sqlx::query_as(
        "SELECT msg_id, event_type, raffle_id, status, attempts, next_attempt_at, last_status, \
           last_error, created_at, updated_at FROM webhook_deliveries \
         WHERE endpoint_id = $1 AND ($2::text IS NULL OR status = $2) \
         ORDER BY created_at DESC, sequence DESC, msg_id LIMIT $3",
    )
    .bind(endpoint_id)
    .bind(status)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The message's raffle, if it was ever meant for this endpoint.
async fn raffle_of(
    pool: &PgPool,
    endpoint_id: Uuid,
    msg_id: &str,
) -> Result<Option<(Uuid, Option<Uuid>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.raffle_id, m.order_id FROM webhook_deliveries d JOIN webhook_messages m USING (msg_id) \
         WHERE d.endpoint_id = $1 AND d.msg_id = $2",
    )
    .bind(endpoint_id)
    .bind(msg_id)
    .fetch_optional(pool)
    .await
}

/// `None`: no such delivery.
pub async fn attempts(
    pool: &PgPool,
    endpoint_id: Uuid,
    msg_id: &str,
) -> Result<Option<Vec<AttemptRecord>>, sqlx::Error> {
    let Some((raffle_id, _)) = raffle_of(pool, endpoint_id, msg_id).await? else {
        return Ok(None);
    };
    let records = journal::of_message(pool, raffle_id, endpoint_id, msg_id).await?;
    Ok(Some(
        records
            .into_iter()
            .map(
                |(sequence, event_type, detail, recorded_at)| AttemptRecord {
                    sequence,
                    event_type,
                    recorded_at,
                    detail,
                },
            )
            .collect(),
    ))
}

/// Sends the message again, with a fresh schedule, whatever became of it. False: no such
/// delivery.
pub async fn redeliver(
    pool: &PgPool,
    endpoint_id: Uuid,
    msg_id: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let Some((raffle_id, order_id)) = raffle_of(pool, endpoint_id, msg_id).await? else {
        return Ok(false);
    };
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $3, \
           lease_until = NULL, updated_at = $3 WHERE endpoint_id = $1 AND msg_id = $2",
    )
    .bind(endpoint_id)
    .bind(msg_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    journal::append(
        &mut tx,
        raffle_id,
        order_id,
        actor,
        now,
        &[Entry {
            kind: kind::REDELIVERY_REQUESTED,
            payload: json!({"msg_id": msg_id, "endpoint_id": endpoint_id}),
        }],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Sends again every message to the endpoint since `since` that it has not received:
/// dead-lettered ones get a fresh schedule, ones waiting for a retry go now, and messages
/// made while it was disabled (never queued for it) are queued. Returns how many.
pub async fn recover(
    pool: &PgPool,
    endpoint_id: Uuid,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let mut tx = tombola_projections::begin(pool).await?;
    // The outbox's own matching rules (outbox.rs), over the messages kept since `since`.
    let missed = sqlx::query(
        "INSERT INTO webhook_deliveries (endpoint_id, msg_id, raffle_id, order_key, sequence, \
           event_type, next_attempt_at, created_at, updated_at) \
         SELECT e.endpoint_id, m.msg_id, m.raffle_id, coalesce(m.order_id, m.raffle_id), \
           m.sequence, m.event_type, $3, $3, $3 \
         FROM webhook_endpoints e \
         JOIN webhook_messages m ON m.recorded_at >= greatest($2, e.created_at) \
           AND (cardinality(e.event_types) = 0 OR m.event_type = ANY (e.event_types)) \
           AND (e.raffle_id IS NULL OR e.raffle_id = m.raffle_id) \
           AND (e.organizer_id IS NULL OR e.organizer_id = \
                (SELECT organizer_id FROM raffles r WHERE r.raffle_id = m.raffle_id)) \
         WHERE e.endpoint_id = $1 \
         ON CONFLICT DO NOTHING",
    )
    .bind(endpoint_id)
    .bind(since)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let recovered = sqlx::query(
        "UPDATE webhook_deliveries SET \
           attempts = CASE WHEN status = 'dead' THEN 0 ELSE attempts END, \
           status = 'pending', next_attempt_at = $3, updated_at = $3 \
         WHERE endpoint_id = $1 AND created_at >= $2 \
           AND (status = 'dead' OR (status = 'pending' AND attempts > 0 \
                AND (lease_until IS NULL OR lease_until <= $3)))",
    )
    .bind(endpoint_id)
    .bind(since)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(missed.rows_affected() + recovered.rows_affected())
}
