//! Fresh databases for tests and benchmarks: one new database per call on the server that
//! `DATABASE_URL` names, migrated and ready.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;
use uuid::Uuid;

use crate::store::{Store, StoreError};

/// The server to create test databases on.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A new, migrated database with a unique name, and its URL.
pub async fn fresh_database(max_connections: u32) -> Result<(Store, String), StoreError> {
    let server = PgConnectOptions::from_str(&server_url())?;
    let name = format!("tombola_test_{}", Uuid::new_v4().simple());
    let mut admin = server.clone().database("postgres").connect().await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
    admin.close().await?;
    let options = server.database(&name);
    let url = options.to_url_lossy().to_string();
    let store = Store::connect(&url, max_connections).await?;
    store.migrate().await?;
    Ok((store, url))
}
