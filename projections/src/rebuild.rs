//! Rebuilds: a projection replayed from the log into shadow tables while the live tables
//! keep serving, then swapped in, tables and checkpoints together, in one transaction.
//!
//! The shadow tables and their checkpoints survive an interruption: running the rebuild
//! again (same projection version) resumes where it stopped. The swap takes the
//! projection's swap lock exclusively, which every batch holds shared, so it never lands
//! between a batch's statements; readers see the old tables until it commits and the new
//! ones after, never a half-built model. What arrived while the shadow caught up is applied
//! to it by the live runtime after the swap (the checkpoints moved with the tables).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use uuid::Uuid;

use crate::projection::{Projection, Slot, Tables};
use crate::runtime::{swap_lock_key, Outcome, RuntimeHandle};
use crate::schema::{create_tables, lock_schema, run_ddl};
use crate::timings::{Phase, RebuildTimings};

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("no projection named {0}")]
    Unknown(String),
    #[error("{0} keeps totals across raffles: rebuild it for every raffle")]
    NotPerRaffle(&'static str),
    #[error("raffle {raffle_id} failed at event {sequence}: {error}")]
    Failed {
        raffle_id: Uuid,
        sequence: u64,
        error: String,
    },
    /// The shadow kept falling behind the live tables (commands arriving faster than it
    /// catches up, or a raffle it cannot see): nothing was swapped; run it again to resume.
    #[error("the shadow tables could not catch up with the live ones")]
    Behind,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// How far a rebuild is: events applied to the shadow (this run) and the log's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    pub applied: u64,
    pub total: u64,
}

impl RuntimeHandle {
    /// Events applied to shadow tables since this runtime started: a progress counter.
    pub fn rebuilt_events(&self) -> u64 {
        self.inner.rebuilt.load(Ordering::Relaxed)
    }

    /// Where this runtime's rebuilds spent their time, phase by phase.
    pub fn rebuild_timings(&self) -> RebuildTimings {
        self.inner.clock.snapshot()
    }

    /// Rebuilds `name` from the log, for every raffle or only `raffle`, and swaps it in.
    /// Resumes a rebuild of the same version that was interrupted. `total` is told the
    /// number of events to replay once it is known.
    pub async fn rebuild(
        &self,
        name: &str,
        raffle: Option<Uuid>,
        total: impl FnOnce(u64),
    ) -> Result<(), RebuildError> {
        self.rebuild_set(&[name], raffle, total).await
    }

    /// Rebuilds every projection in `names` for every raffle, reading the log once for all
    /// of them (each batch is applied to every shadow in one transaction), then swaps each in.
    pub async fn rebuild_all(
        &self,
        names: &[&str],
        total: impl FnOnce(u64),
    ) -> Result<(), RebuildError> {
        self.rebuild_set(names, None, total).await
    }

    async fn rebuild_set(
        &self,
        names: &[&str],
        raffle: Option<Uuid>,
        total: impl FnOnce(u64),
    ) -> Result<(), RebuildError> {
        let mut projections: Vec<Arc<dyn Projection>> = Vec::new();
        for name in names {
            let projection = self
                .projections()
                .iter()
                .find(|p| p.name() == *name)
                .cloned()
                .ok_or_else(|| RebuildError::Unknown((*name).to_owned()))?;
            if raffle.is_some() && !projection.raffle_scoped() {
                return Err(RebuildError::NotPerRaffle(projection.name()));
            }
            projections.push(projection);
        }
        let projections: Vec<&dyn Projection> = projections.iter().map(|p| p.as_ref()).collect();
        for projection in &projections {
            self.prepare_shadow(*projection).await?;
        }
        let raffles = self.raffles(raffle).await?;
        let mut remaining = 0;
        for (raffle_id, head) in &raffles {
            let mut done = u64::MAX;
            for projection in &projections {
                let at = crate::runtime::checkpoint(
                    self.read_pool(),
                    projection.name(),
                    Slot::Shadow,
                    *raffle_id,
                )
                .await?;
                done = done.min(at);
            }
            remaining += head.saturating_sub(done);
        }
        total(remaining);
        let clock = &self.inner.clock;
        let started = std::time::Instant::now();
        self.fill_shadows(&projections, &raffles).await?;
        clock.add(Phase::Fill, started.elapsed());
        for projection in &projections {
            if raffle.is_none() {
                let started = std::time::Instant::now();
                self.index_shadow(*projection).await?;
                clock.add(Phase::Index(projection.name()), started.elapsed());
            }
            // The swap refuses while the shadow is behind the live tables anywhere (readers
            // waiting for a position must never see the model go back): catch up and try
            // again, with the raffles created meanwhile.
            let started = std::time::Instant::now();
            while !self.swap(*projection, raffle).await? {
                let raffles = self.raffles(raffle).await?;
                self.fill_shadows(&[*projection], &raffles).await?;
            }
            clock.add(Phase::Swap(projection.name()), started.elapsed());
        }
        for (raffle_id, _) in self.raffles(raffle).await? {
            self.wake(raffle_id);
        }
        Ok(())
    }

    /// Every raffle with events (or only `raffle`) and its head.
    async fn raffles(&self, raffle: Option<Uuid>) -> Result<Vec<(Uuid, u64)>, sqlx::Error> {
        Ok(self
            .source()
            .heads()
            .await?
            .into_iter()
            .filter(|(id, _)| raffle.is_none_or(|r| r == *id))
            .collect())
    }

    /// Catches the shadows of `projections` up with `raffles`, two raffles at a time (one
    /// core reads and folds while the other writes).
    async fn fill_shadows(
        &self,
        projections: &[&dyn Projection],
        raffles: &[(Uuid, u64)],
    ) -> Result<(), RebuildError> {
        let next = AtomicUsize::new(0);
        futures::future::try_join(
            self.fill_worker(projections, raffles, &next),
            self.fill_worker(projections, raffles, &next),
        )
        .await?;
        Ok(())
    }

    /// Takes the next raffle nobody has taken until none is left.
    async fn fill_worker(
        &self,
        projections: &[&dyn Projection],
        raffles: &[(Uuid, u64)],
        next: &AtomicUsize,
    ) -> Result<(), RebuildError> {
        while let Some((raffle_id, _)) = raffles.get(next.fetch_add(1, Ordering::Relaxed)) {
            self.fill_shadow(projections, *raffle_id).await?;
        }
        Ok(())
    }

    async fn fill_shadow(
        &self,
        projections: &[&dyn Projection],
        raffle_id: Uuid,
    ) -> Result<(), RebuildError> {
        loop {
            match self
                .inner
                .catch_up_together(projections, raffle_id, Slot::Shadow)
                .await?
            {
                Some(Outcome::CaughtUp) => return Ok(()),
                // Another rebuild of the same projection holds this raffle: wait for it.
                Some(Outcome::Busy) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                // A batch failed: each projection alone, one event at a time from the
                // failing batch on, to apply what precedes the culprit and name it.
                None => {
                    for projection in projections {
                        loop {
                            match self
                                .inner
                                .catch_up(*projection, raffle_id, Slot::Shadow)
                                .await
                            {
                                Ok(Outcome::CaughtUp) => break,
                                Ok(Outcome::Busy) => {
                                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                                }
                                Err(f) => {
                                    return Err(RebuildError::Failed {
                                        raffle_id,
                                        sequence: f.sequence,
                                        error: f.error,
                                    })
                                }
                            }
                        }
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Builds the shadow's deferred indexes ([`Projection::indexes`]) once, in one
    /// transaction: a resumed rebuild finds them built or not at all.
    async fn index_shadow(&self, projection: &dyn Projection) -> Result<(), sqlx::Error> {
        let mut tx = crate::tx::begin(self.read_pool()).await?;
        let indexed: Option<bool> = sqlx::query_scalar(
            "SELECT shadow_indexed FROM projection_versions WHERE projection = $1 FOR UPDATE",
        )
        .bind(projection.name())
        .fetch_optional(&mut *tx)
        .await?;
        if indexed == Some(true) {
            return Ok(());
        }
        // The index builds sort millions of rows (`audit_index`: several per event); the
        // default 64 MB spills them to disk in runs (decision 0026).
        sqlx::query("SET LOCAL maintenance_work_mem = '256MB'")
            .execute(&mut *tx)
            .await?;
        run_ddl(&mut tx, &projection.indexes(Tables::SHADOW)).await?;
        for table in projection.tables() {
            sqlx::query(&format!("ANALYZE {}", Tables::SHADOW.name(table)))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE projection_versions SET shadow_indexed = true WHERE projection = $1")
            .bind(projection.name())
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Creates the shadow tables for this version, unless an interrupted rebuild of it left
    /// them (then they are resumed).
    async fn prepare_shadow(&self, projection: &dyn Projection) -> Result<(), sqlx::Error> {
        let mut tx = crate::tx::begin(self.read_pool()).await?;
        lock_schema(&mut tx).await?;
        let shadow: Option<Option<i32>> = sqlx::query_scalar(
            "SELECT shadow_version FROM projection_versions WHERE projection = $1",
        )
        .bind(projection.name())
        .fetch_optional(&mut *tx)
        .await?;
        let resumable = shadow.flatten() == Some(projection.version() as i32)
            && tables_exist(&mut tx, projection, Tables::SHADOW).await?;
        if !resumable {
            create_tables(&mut tx, projection, Tables::SHADOW).await?;
            sqlx::query(
                "DELETE FROM projection_checkpoints WHERE projection = $1 AND slot = 'shadow'",
            )
            .bind(projection.name())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO projection_versions (projection, version, shadow_version) \
                 VALUES ($1, $2, $2) \
                 ON CONFLICT (projection) DO UPDATE SET shadow_version = EXCLUDED.shadow_version, \
                   shadow_indexed = false, updated_at = now()",
            )
            .bind(projection.name())
            .bind(projection.version() as i32)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Swaps the shadow in; false (and nothing done) while it is behind the live tables.
    async fn swap(
        &self,
        projection: &dyn Projection,
        raffle: Option<Uuid>,
    ) -> Result<bool, sqlx::Error> {
        let name = projection.name();
        let mut tx = crate::tx::begin(self.read_pool()).await?;
        lock_schema(&mut tx).await?;
        let (class, object) = swap_lock_key(name);
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(class)
            .bind(object)
            .execute(&mut *tx)
            .await?;
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projection_checkpoints l \
             LEFT JOIN projection_checkpoints s \
               ON s.projection = l.projection AND s.raffle_id = l.raffle_id AND s.slot = 'shadow' \
             WHERE l.projection = $1 AND l.slot = 'live' \
               AND ($2::uuid IS NULL OR l.raffle_id = $2) \
               AND coalesce(s.sequence, 0) < l.sequence",
        )
        .bind(name)
        .bind(raffle)
        .fetch_one(&mut *tx)
        .await?;
        if behind > 0 {
            return Ok(false);
        }
        match raffle {
            None => {
                for table in projection.tables() {
                    let shadow = Tables::SHADOW.name(table);
                    sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(&format!("ALTER TABLE {shadow} RENAME TO {table}"))
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(
                    "DELETE FROM projection_checkpoints WHERE projection = $1 AND slot = 'live'",
                )
                .bind(name)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE projection_checkpoints SET slot = 'live' \
                     WHERE projection = $1 AND slot = 'shadow'",
                )
                .bind(name)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM projection_failures WHERE projection = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE projection_versions SET version = $2, shadow_version = NULL, \
                       updated_at = now() WHERE projection = $1",
                )
                .bind(name)
                .bind(projection.version() as i32)
                .execute(&mut *tx)
                .await?;
            }
            Some(raffle_id) => {
                for table in projection.tables() {
                    let shadow = Tables::SHADOW.name(table);
                    sqlx::query(&format!("DELETE FROM {table} WHERE raffle_id = $1"))
                        .bind(raffle_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(&format!(
                        "INSERT INTO {table} SELECT * FROM {shadow} WHERE raffle_id = $1"
                    ))
                    .bind(raffle_id)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(&format!("DROP TABLE {shadow}"))
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(
                    "DELETE FROM projection_checkpoints \
                     WHERE projection = $1 AND slot = 'live' AND raffle_id = $2",
                )
                .bind(name)
                .bind(raffle_id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE projection_checkpoints SET slot = 'live' \
                     WHERE projection = $1 AND slot = 'shadow' AND raffle_id = $2",
                )
                .bind(name)
                .bind(raffle_id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "DELETE FROM projection_checkpoints WHERE projection = $1 AND slot = 'shadow'",
                )
                .bind(name)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "DELETE FROM projection_failures WHERE projection = $1 AND raffle_id = $2",
                )
                .bind(name)
                .bind(raffle_id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE projection_versions SET shadow_version = NULL, updated_at = now() \
                     WHERE projection = $1",
                )
                .bind(name)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }
}

async fn tables_exist(
    conn: &mut sqlx::PgConnection,
    projection: &dyn Projection,
    tables: Tables,
) -> Result<bool, sqlx::Error> {
    for table in projection.tables() {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(tables.name(table))
            .fetch_one(&mut *conn)
            .await?;
        if found.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

impl RuntimeHandle {
    /// Projections whose live tables another version built: the server rebuilds them at
    /// start-up while the old tables keep serving (frozen at their checkpoints).
    pub async fn outdated(&self) -> Result<Vec<&'static str>, sqlx::Error> {
        let versions: Vec<(String, i32)> =
            sqlx::query_as("SELECT projection, version FROM projection_versions")
                .fetch_all(self.read_pool())
                .await?;
        Ok(self
            .projections()
            .iter()
            .filter(|p| {
                versions
                    .iter()
                    .any(|(name, v)| name == p.name() && *v as u32 != p.version())
            })
            .map(|p| p.name())
            .collect())
    }
}
