//! Leasing tokens from the shared bucket: one statement, one round trip, atomic against
//! every other node (the upsert locks the row; its SET reads the row's latest version).
//! The arithmetic is `gcra::take`'s.

use sqlx::PgPool;

use super::config::Limit;

/// What the shared bucket answered.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    /// Tokens granted to this node (0: the bucket is empty).
    pub granted: u32,
    /// The bucket's theoretical arrival time after the lease, seconds since the epoch.
    pub tat: f64,
}

/// Takes up to `wanted` tokens from `bucket` at `now` (seconds since the epoch, the node's
/// clock: nodes need synchronized clocks, as for any time-based rule).
pub async fn lease(
    pool: &PgPool,
    bucket: &str,
    now: f64,
    limit: &Limit,
    wanted: u32,
) -> Result<Lease, sqlx::Error> {
    let (granted, tat): (i32, f64) = sqlx::query_as(
        "INSERT INTO rate_limit_buckets AS b (bucket, tat, granted) \
         VALUES ($1, $2 + LEAST($4, $5) * $3, LEAST($4, $5)) \
         ON CONFLICT (bucket) DO UPDATE SET \
           granted = GREATEST(0, LEAST($4, \
               floor($5 - (GREATEST(b.tat, $2) - $2) / $3 + 1e-9)))::int, \
           tat = GREATEST(b.tat, $2) + GREATEST(0, LEAST($4, \
               floor($5 - (GREATEST(b.tat, $2) - $2) / $3 + 1e-9))) * $3 \
         RETURNING granted, tat",
    )
    .bind(bucket)
    .bind(now)
    .bind(limit.interval())
    .bind(i32::try_from(wanted).unwrap_or(i32::MAX))
    .bind(i32::try_from(limit.burst).unwrap_or(i32::MAX))
    .fetch_one(pool)
    .await?;
    Ok(Lease {
        granted: u32::try_from(granted).unwrap_or(0),
        tat,
    })
}
