//! The delivery streams: every attempt and its outcome as an event in the log, under the
//! aggregate type `webhook_delivery`, one stream per raffle (so the hot ticket stream is
//! never written or locked by deliveries). Events carry the order they are about in the
//! `order_id` column, so an order's audit trail lists its deliveries beside its tickets.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

pub const STREAM: &str = "webhook_delivery";

/// The event types of a delivery stream.
pub mod kind {
    pub const ATTEMPTED: &str = "WebhookAttempted";
    pub const SUCCEEDED: &str = "WebhookSucceeded";
    pub const FAILED: &str = "WebhookFailed";
    pub const DEAD_LETTERED: &str = "WebhookDeadLettered";
    pub const ENDPOINT_DISABLED: &str = "WebhookEndpointDisabled";
    pub const REDELIVERY_REQUESTED: &str = "WebhookRedeliveryRequested";
}

/// One event to append: its type and flat JSON payload (`msg_id`, `endpoint_id`, …).
pub struct Entry {
    pub kind: &'static str,
    pub payload: Value,
}

/// Appends `entries` to `raffle_id`'s delivery stream inside the caller's transaction. The
/// stream's counter row is locked until it commits, so concurrent appends to one stream
/// take turns and sequences stay gapless.
pub async fn append(
    conn: &mut PgConnection,
    raffle_id: Uuid,
    order_id: Option<Uuid>,
    actor: &str,
    at: DateTime<Utc>,
    entries: &[Entry],
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let n = entries.len() as i64;
    let last: i64 = sqlx::query_scalar(
        "INSERT INTO webhook_streams (raffle_id, last_sequence) VALUES ($1, $2) \
         ON CONFLICT (raffle_id) DO UPDATE SET last_sequence = webhook_streams.last_sequence + $2 \
         RETURNING last_sequence",
    )
    .bind(raffle_id)
    .bind(n)
    .fetch_one(&mut *conn)
    .await?;
    let metadata = json!({
        "actor": actor,
        "source": "system",
        "recorded_at": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    })
    .to_string();
    let sequences: Vec<i64> = (last - n + 1..=last).collect();
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind).collect();
    let payloads: Vec<String> = entries.iter().map(|e| e.payload.to_string()).collect();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
           payload, metadata, order_id) \
         SELECT $1, $2, s, k, '1', p::json, $3::json, $4 \
         FROM UNNEST($5::bigint[], $6::text[], $7::text[]) AS e(s, k, p)",
    )
    .bind(STREAM)
    .bind(raffle_id.to_string())
    .bind(metadata)
    .bind(order_id)
    .bind(&sequences)
    .bind(&kinds)
    .bind(&payloads)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A message's recorded attempts and outcomes, oldest first.
pub async fn of_message(
    pool: &sqlx::PgPool,
    raffle_id: Uuid,
    endpoint_id: Uuid,
    msg_id: &str,
) -> Result<Vec<(i64, String, Value, String)>, sqlx::Error> {
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT sequence, event_type, payload::text, metadata ->> 'recorded_at' FROM events \
         WHERE aggregate_type = $1 AND aggregate_id = $2 AND payload ->> 'msg_id' = $3 \
           AND payload ->> 'endpoint_id' = $4 ORDER BY sequence",
    )
    .bind(STREAM)
    .bind(raffle_id.to_string())
    .bind(msg_id)
    .bind(endpoint_id.to_string())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(s, k, p, at)| (s, k, serde_json::from_str(&p).unwrap_or(Value::Null), at))
        .collect())
}
