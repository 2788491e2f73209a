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
    let entries: Vec<(Uuid, Option<Uuid>, Entry)> = entries
        .iter()
        .map(|e| {
            let entry = Entry {
                kind: e.kind,
                payload: e.payload.clone(),
            };
            (raffle_id, order_id, entry)
        })
        .collect();
    append_many(conn, actor, at, &entries).await
}

/// Appends events to several raffles' delivery streams in one statement: `entries` are
/// (raffle, order, event), kept in their order within each stream. Stream rows are locked
/// in raffle order, so two nodes appending to the same streams cannot deadlock.
pub async fn append_many(
    conn: &mut PgConnection,
    actor: &str,
    at: DateTime<Utc>,
    entries: &[(Uuid, Option<Uuid>, Entry)],
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let raffles: Vec<Uuid> = entries.iter().map(|(raffle, _, _)| *raffle).collect();
    let orders: Vec<Option<Uuid>> = entries.iter().map(|(_, order, _)| *order).collect();
    let kinds: Vec<&str> = entries.iter().map(|(_, _, e)| e.kind).collect();
    let payloads: Vec<String> = entries
        .iter()
        .map(|(_, _, e)| e.payload.to_string())
        .collect();
    sqlx::query(
        "WITH input AS ( \
           SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[]) \
             WITH ORDINALITY AS e(raffle_id, k, p, o, i)), \
         counts AS (SELECT raffle_id, count(*) AS n FROM input GROUP BY raffle_id), \
         streams AS ( \
           INSERT INTO webhook_streams (raffle_id, last_sequence) \
           SELECT raffle_id, n FROM counts ORDER BY raffle_id \
           ON CONFLICT (raffle_id) DO UPDATE \
             SET last_sequence = webhook_streams.last_sequence + EXCLUDED.last_sequence \
           RETURNING raffle_id, last_sequence) \
         INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
           payload, metadata, order_id) \
         SELECT 'webhook_delivery', e.raffle_id::text, \
           s.last_sequence - c.n + row_number() OVER (PARTITION BY e.raffle_id ORDER BY e.i), \
           e.k, '1', e.p::json, $5::json, e.o \
         FROM input e JOIN streams s USING (raffle_id) JOIN counts c USING (raffle_id)",
    )
    .bind(&raffles)
    .bind(&kinds)
    .bind(&payloads)
    .bind(&orders)
    .bind(metadata(actor, at))
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
