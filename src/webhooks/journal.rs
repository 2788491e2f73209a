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

/// The metadata every delivery-stream event carries.
pub fn metadata(actor: &str, at: DateTime<Utc>) -> String {
    json!({
        "actor": actor,
        "source": "system",
        "recorded_at": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    })
    .to_string()
}

/// Appends `entries` to `raffle_id`'s delivery stream, in one statement (inside the
/// caller's transaction, if any). The stream's counter row is locked until that commits,
/// so concurrent appends to one stream take turns and sequences stay gapless.
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
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind).collect();
    let payloads: Vec<String> = entries.iter().map(|e| e.payload.to_string()).collect();
    sqlx::query(&format!("WITH {APPEND_CTE} SELECT 1"))
        .bind(raffle_id)
        .bind(&kinds)
        .bind(&payloads)
        .bind(metadata(actor, at))
        .bind(order_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The append as common table expressions over `$1` raffle id, `$2` event types, `$3`
/// payloads, `$4` metadata, `$5` order id, to be combined with other changes into one
/// statement (one round trip, atomic without a transaction).
pub const APPEND_CTE: &str = "\
    journal_stream AS ( \
      INSERT INTO webhook_streams (raffle_id, last_sequence) VALUES ($1, cardinality($2::text[])) \
      ON CONFLICT (raffle_id) DO UPDATE \
        SET last_sequence = webhook_streams.last_sequence + cardinality($2::text[]) \
      RETURNING last_sequence), \
    journal_events AS ( \
      INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
        payload, metadata, order_id) \
      SELECT 'webhook_delivery', $1::text, s.last_sequence - cardinality($2::text[]) + e.i, \
        e.k, '1', e.p::json, $4::json, $5 \
      FROM journal_stream s, UNNEST($2::text[], $3::text[]) WITH ORDINALITY AS e(k, p, i) \
      RETURNING 1)";

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
