//! The Postgres event store: streams in postgres-es's layout, Tombola's binary snapshots,
//! idempotency records, and the per-raffle registry row. One [`Store::append`] call is one
//! transaction: the writer's whole group commit.

mod append;
pub mod chain;
mod idempotency;
mod load;
pub mod metadata;
mod notify;
mod snapshots;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

pub use append::{AppendBatch, AppendError, NewEvent, RegistryRow};
pub use idempotency::{IdempotencyRecord, IdempotencyRequest};
pub use load::{LoadedRaffle, StoredEvent};
pub use metadata::{EventMetadata, Source};

/// `ignore_missing`: the read side's migrations (tombola-projections, numbered in the same
/// sequence) share sqlx's history table when the read database is this one.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations")
};

/// The aggregate type under which raffle streams are stored (cqrs-es `Aggregate::TYPE`).
pub const RAFFLE_STREAM: &str = "raffle";
/// Postgres NOTIFY channel announcing committed batches to other nodes.
pub const EVENTS_CHANNEL: &str = "tombola_events";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether a write that failed with this error may still have committed: its statement
    /// was (or may have been) sent, and no answer from the database says it stored nothing.
    /// A lost connection leaves that unknown, and so does an error the server sends as it
    /// shuts down, crashes or terminates the backend (SQLSTATE classes 08, 57, 58, XX),
    /// which can come after the commit is durable. Only a statement that never left the
    /// pool, or that the database refused with another error, certainly stored nothing.
    pub fn in_doubt(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(db)) => {
                db.code().is_some_and(|code| sqlstate_in_doubt(&code))
            }
            Self::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Configuration(_),
            ) => false,
            Self::Database(_) => true,
            Self::Migration(_) | Self::Corrupt(_) => false,
        }
    }
}

/// Whether an error with this SQLSTATE can come from a server that had committed the
/// statement: connection exceptions, operator intervention (shutdown, terminated backend),
/// system and internal errors.
pub(crate) fn sqlstate_in_doubt(code: &str) -> bool {
    ["08", "57", "58", "XX"]
        .iter()
        .any(|class| code.starts_with(class))
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn connect(database_url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(database_url)?.application_name("tombola");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// A store on the same database with a pool of its own, as large as this one's, that
    /// does not ping on checkout: one more round trip on every group commit. A dead
    /// connection fails its append instead, and the writer reloads through this store's
    /// pool, which does ping. Opens nothing yet: connections open on first use, on the
    /// caller's runtime. `role` names its connections in `pg_stat_activity`.
    pub fn sibling(&self, role: &str) -> Self {
        self.sibling_with(self.options_for(role))
    }

    /// A [`Self::sibling`] whose commits return before their WAL is flushed
    /// (`synchronous_commit = off`): for writes that are redone when a crash loses them, and
    /// that no one is told about before then. WAL order still holds: such a commit survives
    /// a crash only if everything committed before it does.
    pub fn sibling_without_flush_wait(&self, role: &str) -> Self {
        self.sibling_with(
            self.options_for(role)
                .options([("synchronous_commit", "off")]),
        )
    }

    /// This pool's connection options, its connections named `role`.
    fn options_for(&self, role: &str) -> PgConnectOptions {
        (*self.pool.connect_options())
            .clone()
            .application_name(role)
    }

    fn sibling_with(&self, options: PgConnectOptions) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(self.pool.options().get_max_connections())
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .connect_lazy_with(options);
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations; safe to run from several nodes at once (sqlx takes an
    /// advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Raffles whose holds may need expiring: those off sale whose last hold has not gone
    /// yet and, with `on_sale`, every raffle on sale.
    pub async fn raffles_with_holds(&self, on_sale: bool) -> Result<Vec<uuid::Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT raffle_id FROM raffles WHERE $1 AND status = 'on_sale' \
             UNION ALL \
             SELECT raffle_id FROM raffles WHERE holds_until IS NOT NULL AND status <> 'on_sale'",
        )
        .bind(on_sale)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A raffle off sale found without holds at `sequence` no longer needs loading at
    /// start-up. Holds never come back once sales close, and a registry row written after
    /// `sequence` is left as it is.
    pub async fn forget_holds(
        &self,
        raffle_id: uuid::Uuid,
        sequence: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE raffles SET holds_until = NULL \
             WHERE raffle_id = $1 AND holds_until IS NOT NULL AND status <> 'on_sale' \
               AND status_sequence <= $2",
        )
        .bind(raffle_id)
        .bind(sequence as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Raffles from the registry, oldest first, optionally one organizer's or in one status.
pub async fn list_raffles(
    store: &Store,
    organizer_id: Option<&str>,
    status: Option<&str>,
    after: Option<uuid::Uuid>,
    limit: i64,
) -> Result<Vec<(uuid::Uuid, String, String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT raffle_id, title, organizer_id, status FROM raffles \
         WHERE ($1::text IS NULL OR organizer_id = $1) AND ($2::text IS NULL OR status = $2) \
           AND ($3::uuid IS NULL OR raffle_id > $3) \
         ORDER BY raffle_id LIMIT $4",
    )
    .bind(organizer_id)
    .bind(status)
    .bind(after)
    .bind(limit)
    .fetch_all(store.pool())
    .await?)
}

/// A raffle's terms, from the `RaffleCreated` event that opens its stream (for tools that
/// run without the engine, such as the CLI's exports). `None`: no such raffle.
pub async fn raffle_config(
    store: &Store,
    raffle_id: uuid::Uuid,
) -> Result<Option<tombola_domain::RaffleConfig>, anyhow::Error> {
    let payload: Option<String> = sqlx::query_scalar(
        "SELECT payload::text FROM events \
         WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = 1",
    )
    .bind(RAFFLE_STREAM)
    .bind(raffle_id.to_string())
    .fetch_optional(store.pool())
    .await?;
    Ok(
        match payload
            .map(|p| serde_json::from_str::<tombola_domain::RaffleEvent>(&p))
            .transpose()?
        {
            Some(tombola_domain::RaffleEvent::RaffleCreated { config, .. }) => Some(config),
            _ => None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_in_doubt_unless_it_never_left_the_pool_or_the_database_refused_it() {
        let lost = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "got 0 bytes at EOF");
        assert!(StoreError::Database(sqlx::Error::Io(lost)).in_doubt());
        assert!(StoreError::Database(sqlx::Error::Protocol("cut".into())).in_doubt());
        assert!(!StoreError::Database(sqlx::Error::PoolTimedOut).in_doubt());
        assert!(!StoreError::Database(sqlx::Error::PoolClosed).in_doubt());
        assert!(!StoreError::Corrupt("bad".into()).in_doubt());
        for code in ["08006", "57P01", "57P02", "58030", "XX000"] {
            assert!(sqlstate_in_doubt(code), "{code}");
        }
        for code in ["23505", "22021", "40001", "53300"] {
            assert!(!sqlstate_in_doubt(code), "{code}");
        }
    }
}
