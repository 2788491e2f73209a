//! Retention: what Tombola stores only for a while is deleted once that while is over.
//!
//! - Idempotency-Key records, after `idempotency_ttl` (24 h by default, as Stripe's): a
//!   retry after that is a new request.
//! - Settled payment deliveries (`done`, `ignored`), `settled_inbox_ttl` (30 days) after they
//!   were received and settled; their payload holds the buyer's email. Which order each
//!   payment paid for moves to `payment_orders`, for refunds that come later. `pending`,
//!   `failed` and `rejected` rows stay: they are work, or an operator's.
//! - Rate-limit buckets that have been full for a minute (a missing row is a full bucket).
//!
//! Each statement deletes at most `batch` rows, picked with `SKIP LOCKED`, and commits on its
//! own: a pass never holds many locks, never waits for a row in use, and every node may run
//! it at once. Ages are measured against the injected clock's "now".

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// How long things are kept, and how many rows a statement deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub idempotency_ttl: Duration,
    pub settled_inbox_ttl: Duration,
    pub batch: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            idempotency_ttl: Duration::from_secs(24 * 3600),
            settled_inbox_ttl: Duration::from_secs(30 * 86_400),
            batch: 1000,
        }
    }
}

/// Rows one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    pub idempotency_keys: u64,
    pub payment_inbox: u64,
    pub rate_limit_buckets: u64,
}

/// A bucket full for this long is deleted.
const FULL_BUCKET_GRACE_SECS: f64 = 60.0;

impl Retention {
    /// One pass at `now`: every batch until none is full.
    pub async fn run_once(
        &self,
        pool: &PgPool,
        now: DateTime<Utc>,
    ) -> Result<Removed, sqlx::Error> {
        let idempotency_cutoff = before(now, self.idempotency_ttl);
        let inbox_cutoff = before(now, self.settled_inbox_ttl);
        let bucket_cutoff = now.timestamp() as f64 - FULL_BUCKET_GRACE_SECS;
        let batch = i64::from(self.batch.max(1));
        let removed = Removed {
            idempotency_keys: in_batches(batch, || {
                sqlx::query_scalar(
                    "WITH old AS ( \
                       SELECT scope, key FROM idempotency_keys WHERE created_at < $1 \
                       ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
                     deleted AS ( \
                       DELETE FROM idempotency_keys i USING old \
                       WHERE i.scope = old.scope AND i.key = old.key RETURNING 1) \
                     SELECT count(*) FROM deleted",
                )
                .bind(idempotency_cutoff)
                .bind(batch)
                .fetch_one(pool)
            })
            .await?,
            payment_inbox: in_batches(batch, || {
                sqlx::query_scalar(
                    "WITH old AS ( \
                       SELECT provider, event_id FROM payment_inbox \
                       WHERE received_at < $1 AND status IN ('done', 'ignored') \
                         AND COALESCE(processed_at, received_at) < $1 \
                       LIMIT $2 FOR UPDATE SKIP LOCKED), \
                     deleted AS ( \
                       DELETE FROM payment_inbox i USING old \
                       WHERE i.provider = old.provider AND i.event_id = old.event_id \
                       RETURNING i.provider, i.payment_id, i.raffle_id, i.order_id), \
                     kept AS ( \
                       INSERT INTO payment_orders (provider, payment_id, raffle_id, order_id) \
                       SELECT DISTINCT ON (provider, payment_id) \
                              provider, payment_id, raffle_id, order_id \
                       FROM deleted WHERE payment_id IS NOT NULL AND raffle_id IS NOT NULL \
                         AND order_id IS NOT NULL \
                       ON CONFLICT DO NOTHING) \
                     SELECT count(*) FROM deleted",
                )
                .bind(inbox_cutoff)
                .bind(batch)
                .fetch_one(pool)
            })
            .await?,
            rate_limit_buckets: in_batches(batch, || {
                sqlx::query_scalar(
                    "WITH old AS ( \
                       SELECT bucket FROM rate_limit_buckets WHERE tat < $1 \
                       LIMIT $2 FOR UPDATE SKIP LOCKED), \
                     deleted AS ( \
                       DELETE FROM rate_limit_buckets b USING old \
                       WHERE b.bucket = old.bucket RETURNING 1) \
                     SELECT count(*) FROM deleted",
                )
                .bind(bucket_cutoff)
                .bind(batch)
                .fetch_one(pool)
            })
            .await?,
        };
        for (table, count) in [
            ("idempotency_keys", removed.idempotency_keys),
            ("payment_inbox", removed.payment_inbox),
            ("rate_limit_buckets", removed.rate_limit_buckets),
        ] {
            let labels = [("table", table)];
            metrics::counter!("tombola_retention_deleted_total", &labels).increment(count);
        }
        Ok(removed)
    }

    /// Runs a pass every `interval` on `clock` until `stop`; a failed pass is logged and
    /// tried again at the next.
    pub fn spawn(
        self,
        pool: PgPool,
        clock: Arc<dyn Clock>,
        interval: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let now = tombola_domain::Clock::now(clock.as_ref());
                match self.run_once(&pool, now).await {
                    Ok(removed) if removed != Removed::default() => {
                        tracing::info!(
                            idempotency_keys = removed.idempotency_keys,
                            payment_inbox = removed.payment_inbox,
                            rate_limit_buckets = removed.rate_limit_buckets,
                            "retention pass"
                        );
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "retention pass failed"),
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = clock.sleep_until(
                        now.checked_add_signed(to_chrono(interval)).unwrap_or(DateTime::<Utc>::MAX_UTC)
                    ) => {}
                }
            }
        })
    }
}

/// Runs `statement` (which deletes at most `batch` rows and says how many) until a batch is
/// not full; yields between batches so that a long pass shares the runtime.
async fn in_batches<F, Fut>(batch: i64, mut statement: F) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<i64, sqlx::Error>>,
{
    let mut total = 0u64;
    loop {
        let deleted = statement().await?;
        total += u64::try_from(deleted).unwrap_or(0);
        if deleted < batch {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// `now` less `age`, or the beginning of time.
fn before(now: DateTime<Utc>, age: Duration) -> DateTime<Utc> {
    now.checked_sub_signed(to_chrono(age))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}
