//! Transactions that a cancelled future cannot leave open.
//!
//! sqlx 0.8.6's `begin` sends `BEGIN` and then waits for the reply; it counts the transaction
//! (and so knows to roll it back) only once the reply is in. A future dropped during that
//! wait — a runtime stopped, a request whose client went away — returns the connection to
//! the pool *inside an open transaction that sqlx does not know about*. Whoever gets that
//! connection next runs its autocommit statements in a transaction nobody commits: a write is
//! invisible to everyone else (an event appended that way leaves a hole that a reader of the
//! stream steps over, so a projection skips it), and its locks are held until the connection
//! happens to be used for a transaction again (a rebuild's swap waits on them: a hang).
//! `tests/runtime.rs::a_begin_cancelled_half_way_leaves_no_transaction_open` shows both.

use sqlx::{PgPool, Postgres, Transaction};

/// `pool.begin()`, run to completion on a task of its own: if the caller stops waiting, the
/// transaction is still counted, then dropped, so sqlx rolls it back before the connection is
/// used again.
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let pool = pool.clone();
    match tokio::spawn(async move { pool.begin().await }).await {
        Ok(begun) => begun,
        Err(join) => Err(sqlx::Error::Io(std::io::Error::other(join.to_string()))),
    }
}
