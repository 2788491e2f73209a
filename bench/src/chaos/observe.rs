//! What the checker reads from PostgreSQL after the run: every raffle's stream with its
//! metadata, the payment inbox, the read models and their checkpoints, and the verdict of
//! the hash-chain verifier (`tombola::audit::chain`, the code `tombola audit verify` runs).

use std::collections::BTreeMap;

use sqlx::PgPool;
use tombola::audit::chain::{verify_raffle, Expectations};
use tombola_domain::RaffleEvent;
use tombola_projections::{EventSource, Runtime, RuntimeConfig};
use uuid::Uuid;

use super::check::{InboxRow, Logged, Observed};

pub async fn observe(pool: &PgPool) -> Result<Observed, Box<dyn std::error::Error>> {
    let mut observed = Observed {
        observed_at: chrono::Utc::now(),
        projections: tombola_projections::models::all()
            .iter()
            .map(|p| p.name().to_owned())
            .collect(),
        ..Observed::default()
    };
    let rows: Vec<(String, i64, String, String)> = sqlx::query_as(
        "SELECT aggregate_id, sequence, payload::text, metadata::text FROM events \
         WHERE aggregate_type = $1 ORDER BY aggregate_id, sequence",
    )
    .bind(tombola::store::RAFFLE_STREAM)
    .fetch_all(pool)
    .await?;
    for (raffle, sequence, payload, metadata) in rows {
        let raffle: Uuid = raffle.parse()?;
        let event: RaffleEvent = serde_json::from_str(&payload)?;
        let metadata: BTreeMap<String, String> = serde_json::from_str(&metadata)?;
        observed.streams.entry(raffle).or_default().push(Logged {
            sequence: sequence as u64,
            event,
            request_id: metadata.get("request_id").cloned().unwrap_or_default(),
            idempotency_key: metadata.get("idempotency_key").cloned(),
        });
    }
    let inbox: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT event_id, status, outcome, last_error FROM payment_inbox WHERE provider = 'stripe'",
    )
    .fetch_all(pool)
    .await?;
    for (event_id, status, outcome, last_error) in inbox {
        observed.inbox.insert(
            event_id,
            InboxRow {
                status,
                outcome,
                last_error,
            },
        );
    }
    let checkpoints: Vec<(String, Uuid, i64)> = sqlx::query_as(
        "SELECT projection, raffle_id, sequence FROM projection_checkpoints WHERE slot = 'live'",
    )
    .fetch_all(pool)
    .await?;
    for (projection, raffle, sequence) in checkpoints {
        observed
            .checkpoints
            .insert((raffle, projection), sequence as u64);
    }
    let orders: Vec<(Uuid, Uuid, String, Vec<i32>)> =
        sqlx::query_as("SELECT raffle_id, order_id, status, numbers FROM read_orders")
            .fetch_all(pool)
            .await?;
    for (raffle, order, status, numbers) in orders {
        let mut numbers: Vec<u32> = numbers.into_iter().map(|n| n as u32).collect();
        numbers.sort_unstable();
        observed
            .read_orders
            .entry(raffle)
            .or_default()
            .insert(order, (status, numbers));
    }
    let tickets: Vec<(Uuid, i32, Uuid, String)> =
        sqlx::query_as("SELECT raffle_id, number, order_id, status FROM read_tickets")
            .fetch_all(pool)
            .await?;
    for (raffle, number, order, status) in tickets {
        observed
            .read_tickets
            .entry(raffle)
            .or_default()
            .insert(number as u32, (order, status));
    }
    let raffles: Vec<Uuid> = observed.streams.keys().copied().collect();
    for raffle in raffles {
        let report = verify_raffle(pool, raffle, &Expectations::default(), |_| {}).await?;
        let drawn = observed.streams[&raffle]
            .iter()
            .any(|l| matches!(l.event, RaffleEvent::WinnersDrawn { .. }));
        if drawn {
            let draw = tombola::audit::draw::verify_draw(pool, raffle).await?;
            if !draw.verified {
                observed.unverified_draws.push((
                    raffle,
                    serde_json::to_string(&draw).unwrap_or_else(|_| "not verified".into()),
                ));
            }
        }
        if !report.intact {
            observed.broken_chains.push((
                raffle,
                serde_json::to_string(&report).unwrap_or_else(|_| "broken".into()),
            ));
        }
    }
    Ok(observed)
}

/// Brings every projection of every raffle to its stream's head with the projection
/// runtime's own catch-up (`tombola_projections`, the code every node runs), once the nodes
/// are stopped. Between the settling and the stop, hold timers keep firing (a hold reserved
/// in the last minute expires after the traffic ends), and a node that stops leaves its
/// projections where they are, to resume at the next start (`startup.rs`): the log then ends
/// a few events past some checkpoints, with nobody left to apply them. That is no broken
/// promise, so the harness applies those events itself before the checker compares the read
/// models with the log; whether the nodes kept up while they ran is what [`settle`] says.
/// Returns how many (projection, raffle) pairs were behind.
pub async fn finish_projections(pool: &PgPool) -> Result<usize, Box<dyn std::error::Error>> {
    let runtime = Runtime::new(
        EventSource::new(pool.clone()),
        pool.clone(),
        tombola_projections::models::all(),
        RuntimeConfig::default(),
    );
    let handle = runtime.handle();
    let heads: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, max(sequence) FROM events WHERE aggregate_type = $1 \
         GROUP BY aggregate_id",
    )
    .bind(tombola::store::RAFFLE_STREAM)
    .fetch_all(pool)
    .await?;
    let mut behind = 0;
    for (raffle, head) in heads {
        let raffle: Uuid = raffle.parse()?;
        for projection in handle.projections() {
            if handle.position(projection.name(), raffle).await? < head as u64 {
                behind += 1;
                handle.catch_up(projection.name(), raffle).await?;
            }
        }
    }
    Ok(behind)
}

/// Waits until no delivery is pending and every projection has reached every stream's
/// head, or `limit` passes. Deliveries waiting out a retry backoff are made due at once (as
/// `tombola inbox retry` would): the backoff after a fault can reach minutes. Returns what
/// was still left when `limit` passed, or None once settled.
pub async fn settle(
    pool: &PgPool,
    limit: std::time::Duration,
) -> Result<Option<String>, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + limit;
    let projections = tombola_projections::models::all().len() as i64;
    loop {
        sqlx::query(
            "UPDATE payment_inbox SET next_attempt_at = now() \
             WHERE status = 'pending' AND next_attempt_at > now()",
        )
        .execute(pool)
        .await?;
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM payment_inbox WHERE status = 'pending'")
                .fetch_one(pool)
                .await?;
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ( \
               SELECT aggregate_id, max(sequence) AS head FROM events \
               WHERE aggregate_type = $1 GROUP BY aggregate_id) s \
             WHERE (SELECT count(*) FROM projection_checkpoints c \
                    WHERE c.slot = 'live' AND c.raffle_id = s.aggregate_id::uuid \
                      AND c.sequence = s.head) < $2",
        )
        .bind(tombola::store::RAFFLE_STREAM)
        .bind(projections)
        .fetch_one(pool)
        .await?;
        if pending == 0 && behind == 0 {
            return Ok(None);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Some(format!(
                "{pending} deliveries pending and {behind} raffles with projections behind \
                 their stream's head after {} s",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
