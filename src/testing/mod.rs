//! Fresh databases for tests and benchmarks: one new database per call, migrated and ready,
//! on the server that `DATABASE_URL` names or else on the private cluster under
//! `TOMBOLA_DATA_DIR` (default `.tombola` in the workspace), which is started if needed
//! and left running for the next test run. [`Faults`] are what tests inject into an engine.

mod faults;
pub use faults::Faults;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;
use uuid::Uuid;

use crate::store::{Store, StoreError};

/// The server to create test databases on.
pub fn server_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return url;
        }
        let dir = std::env::var_os("TOMBOLA_DATA_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tombola"));
        let cluster = crate::pgcluster::PrivateCluster::ensure(&dir)
            .unwrap_or_else(|e| panic!("no DATABASE_URL and no private cluster: {e}"));
        let url = cluster.url();
        cluster.keep_running();
        url
    })
    .clone()
}

/// A new, migrated database with a unique name, and its URL.
pub async fn fresh_database(max_connections: u32) -> Result<(Store, String), StoreError> {
    let server = PgConnectOptions::from_str(&server_url())?;
    let name = format!("tombola_test_{}", Uuid::new_v4().simple());
    let mut admin = server.clone().database("postgres").connect().await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let options = server.database(&name);
    let url = options.to_url_lossy().to_string();
    let store = Store::connect(&url, max_connections).await?;
    store.migrate().await?;
    Ok((store, url))
}

/// Drops the database `url` names, terminating whatever is still connected to it: the
/// other half of [`fresh_database`].
pub async fn drop_database(url: &str) -> Result<(), StoreError> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options
        .get_database()
        .map(str::to_owned)
        .ok_or_else(|| sqlx::Error::Configuration("the url names no database".into()))?;
    let mut admin = options.database("postgres").connect().await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    Ok(())
}
