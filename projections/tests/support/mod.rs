//! Test support: a fresh database per test (events table from the server's migrations, read
//! side from this crate's), random raffle histories decided by the real aggregate, the log
//! written as the server writes it, and a plain fold over that log to compare with.

#![allow(dead_code)]

pub mod history;
pub mod oracle;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tombola_projections::{models, EventSource, Projection, Runtime, RuntimeConfig};

/// A fresh database from the one test kit (the server's schema, the private cluster when
/// there is no `DATABASE_URL`, dropped even when the test panics) plus the read side's tables.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    database: tombola_testkit::TestDb,
}

impl TestDb {
    pub async fn new() -> Self {
        let database = tombola_testkit::TestDb::new(12).await;
        tombola_projections::migrate(database.pool(), &models::all())
            .await
            .expect("the read side's tables");
        Self {
            pool: database.pool().clone(),
            url: database.url.clone(),
            database,
        }
    }

    pub async fn drop(self) {
        self.pool.close().await;
        self.database.drop_database().await;
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
        // The whole suite can be run against the parallel live path (decision 0029).
        parallel: std::env::var_os("TOMBOLA_TEST_PARALLEL_APPLY").is_some(),
    }
}

/// The test kit's `eventually`, for checks that answer yes or no.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let poll = || {
        let done = check();
        async move { done.await.then_some(()) }
    };
    tombola_testkit::eventually(timeout, what, poll).await
}
