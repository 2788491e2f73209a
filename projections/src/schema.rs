//! The read database's schema: the runtime's bookkeeping (migrations, numbered in the
//! workspace's sequence but kept in this crate's own set so that they can be applied to a
//! separate read database), and each projection's tables (created from its `schema`).

use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::projection::{Projection, Tables};

/// The read side's migrations. `ignore_missing`: when the read database is the write
/// database, the server's migrations share sqlx's history table with these.
pub static MIGRATOR: Migrator = Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations")
};

#[derive(Debug, thiserror::Error)]
pub enum ReadStoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

/// Applies the bookkeeping migrations and creates every projection's live tables that do
/// not exist yet, recording the version they are built for. Safe from several nodes at once.
pub async fn migrate(
    pool: &PgPool,
    projections: &[std::sync::Arc<dyn Projection>],
) -> Result<(), ReadStoreError> {
    MIGRATOR.run(pool).await?;
    for projection in projections {
        let mut tx = crate::tx::begin(pool).await?;
        lock_schema(&mut tx).await?;
        let known: Option<i32> =
            sqlx::query_scalar("SELECT version FROM projection_versions WHERE projection = $1")
                .bind(projection.name())
                .fetch_optional(&mut *tx)
                .await?;
        if known.is_none() {
            create_tables(&mut tx, projection.as_ref(), Tables::LIVE).await?;
            run_ddl(&mut tx, &projection.indexes(Tables::LIVE)).await?;
            sqlx::query("INSERT INTO projection_versions (projection, version) VALUES ($1, $2)")
                .bind(projection.name())
                .bind(projection.version() as i32)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Serializes schema changes across nodes (creation, swaps).
pub(crate) async fn lock_schema(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    // An arbitrary constant: "tombola projections schema".
    sqlx::query("SELECT pg_advisory_xact_lock(7391001)")
        .execute(conn)
        .await?;
    Ok(())
}

/// Drops whatever is left of `tables` and creates them afresh, without the indexes of
/// [`Projection::indexes`].
pub(crate) async fn create_tables(
    conn: &mut sqlx::PgConnection,
    projection: &dyn Projection,
    tables: Tables,
) -> Result<(), sqlx::Error> {
    for name in projection.tables() {
        sqlx::query(&format!("DROP TABLE IF EXISTS {}", tables.name(name)))
            .execute(&mut *conn)
            .await?;
    }
    run_ddl(conn, &projection.schema(tables)).await
}

/// Runs `ddl` one statement at a time (ours hold no semicolons but between statements).
pub(crate) async fn run_ddl(conn: &mut sqlx::PgConnection, ddl: &str) -> Result<(), sqlx::Error> {
    for statement in ddl.split(';') {
        if !statement.trim().is_empty() {
            sqlx::query(statement).execute(&mut *conn).await?;
        }
    }
    Ok(())
}
