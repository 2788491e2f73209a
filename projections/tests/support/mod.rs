//! Test support: a fresh database per test (events table from the server's migrations, read
//! side from this crate's), random raffle histories decided by the real aggregate, the log
//! written as the server writes it, and a plain fold over that log to compare with.

#![allow(dead_code)]

pub mod history;
pub mod oracle;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use tombola_projections::{models, EventSource, Projection, Runtime, RuntimeConfig};
use uuid::Uuid;

static WRITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../migrations")
};

pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
}

impl TestDb {
    /// A new database with the write side's schema and the read side's bookkeeping.
    pub async fn new() -> Self {
        let server = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL names the PostgreSQL server tests create databases on");
        let server = PgConnectOptions::from_str(&server).unwrap();
        let name = format!("tombola_test_{}", Uuid::new_v4().simple());
        let mut admin = server.clone().database("postgres").connect().await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let options = server.database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(12)
            .connect_with(options)
            .await
            .unwrap();
        WRITE_MIGRATOR.run(&pool).await.unwrap();
        tombola_projections::migrate(&pool, &models::all())
            .await
            .unwrap();
        Self { pool, url }
    }

    pub async fn drop(self) {
        self.pool.close().await;
        let options = PgConnectOptions::from_str(&self.url).unwrap();
        let name = options.get_database().unwrap().to_owned();
        let mut admin = options.database("postgres").connect().await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
    }

    pub fn runtime(&self, config: RuntimeConfig) -> Runtime {
        self.runtime_with(models::all(), config)
    }

    pub fn runtime_with(
        &self,
        projections: Vec<Arc<dyn Projection>>,
        config: RuntimeConfig,
    ) -> Runtime {
        Runtime::new(
            EventSource::new(self.pool.clone()),
            self.pool.clone(),
            projections,
            config,
        )
    }
}

/// Small batches and a quick poll: many transactions, many interleavings.
pub fn eager(batch_size: usize) -> RuntimeConfig {
    RuntimeConfig {
        batch_size,
        poll_interval: Duration::from_millis(20),
        concurrency: 3,
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
    }
}

/// Polls `check` until it holds or `timeout` passes (then panics with `what`).
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
