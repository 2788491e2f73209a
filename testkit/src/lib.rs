//! Tombola's one test harness, for every integration test binary (and every crate's tests):
//! [`TestApp`] runs the real server (`Application::build`) on a free port over a fresh
//! database, with API keys for every role, request helpers, signed Stripe deliveries and a
//! hand-cranked inbox worker; [`TestDb`] is a fresh database alone, for tests of the engine
//! and the store; [`engine`] holds the engine-level helpers; [`eventually`] polls.
//!
//! A crate rather than a module under `tests/`: compiled once instead of once per test
//! binary, with no `dead_code` allowances for the helpers a binary does not use, and usable
//! by the other workspace crates' tests (the projections, the benchmarks) as a
//! dev-dependency.
//!
//! A test's database is dropped when its [`TestDb`] (or the [`TestApp`] holding it) is
//! dropped, also when the test panics. Server logs are printed only when `TEST_LOG` is set.

mod app;
mod db;
pub mod engine;
mod payments;
mod poll;
pub mod proxy;
pub mod requests;
pub mod telemetry;

pub use app::{
    spawn_app, spawn_app_with, test_settings, TestApp, ORGANIZER, OTHER_ORGANIZER, SEED,
};
pub use db::{drop_database, DatabaseGuard, TestDb};
pub use payments::{Delivery, InboxRow, Order, COMMITMENT, PRICE, SECRET};
pub use poll::eventually;

/// Server and engine logs for the test that runs, when `TEST_LOG` is set (`RUST_LOG` filters).
pub fn init_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
