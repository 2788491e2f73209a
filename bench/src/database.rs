//! The databases a bench run creates, their removal once its figures are read, and what a
//! measured window starts from.
//!
//! A run leaves no database behind, even when it fails: each holds a few hundred MB, and its
//! dirty pages would otherwise be written out, by eviction and by the kernel's writeback,
//! while the next run is being measured.

use std::sync::Mutex;

use tombola::store::Store;

/// Databases created and not yet dropped.
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A new, migrated database; its URL is for [`discard`].
pub async fn fresh(max_connections: u32) -> Result<(Store, String), String> {
    let (store, url) = tombola::testing::fresh_database(max_connections)
        .await
        .map_err(|e| format!("creating the bench database: {e}"))?;
    CREATED.lock().expect("registry").push(url.clone());
    Ok((store, url))
}

/// Like [`fresh`], named `<prefix>_<random>` (several people may bench on one server).
pub async fn fresh_named(prefix: &str, max_connections: u32) -> Result<(Store, String), String> {
    use sqlx::{ConnectOptions, Connection};
    use std::str::FromStr;
    let valid = !prefix.is_empty()
        && prefix.len() <= 30
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err("the database prefix must be 1-30 of a-z, 0-9 and _".into());
    }
    let failed = |e: sqlx::Error| format!("creating the bench database: {e}");
    let server = sqlx::postgres::PgConnectOptions::from_str(&tombola::testing::server_url())
        .map_err(failed)?;
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut admin = server
        .clone()
        .database("postgres")
        .connect()
        .await
        .map_err(failed)?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .map_err(failed)?;
    admin.close().await.map_err(failed)?;
    let url = server.database(&name).to_url_lossy().to_string();
    CREATED.lock().expect("registry").push(url.clone());
    let store = Store::connect(&url, max_connections)
        .await
        .map_err(|e| format!("connecting to the bench database: {e}"))?;
    store
        .migrate()
        .await
        .map_err(|e| format!("migrating the bench database: {e}"))?;
    Ok((store, url))
}

/// Closes the bench's own connections and drops the database.
pub async fn discard(store: Store, url: &str) -> Result<(), String> {
    store.pool().close().await;
    drop_database(url).await
}

/// Runs a bench to its end, then drops whatever databases it created and did not drop
/// itself (it stopped on an error); their connections are cut off.
pub async fn discarding_leftovers<T>(run: impl std::future::Future<Output = T>) -> T {
    let outcome = run.await;
    discard_leftovers().await;
    outcome
}

async fn discard_leftovers() {
    let leftovers = std::mem::take(&mut *CREATED.lock().expect("registry"));
    for url in leftovers {
        if let Err(error) = drop_database(&url).await {
            eprintln!("{error}");
        }
    }
}

async fn drop_database(url: &str) -> Result<(), String> {
    tombola::testing::drop_database(url)
        .await
        .map_err(|e| format!("dropping the bench database: {e}"))?;
    CREATED
        .lock()
        .expect("registry")
        .retain(|created| created != url);
    Ok(())
}

/// Writes out what is dirty now, so that the window about to be measured carries no disk
/// traffic of the set-up or of earlier runs. Left to the kernel, that traffic is written
/// ~30 s after it was dirtied, in one burst, and every WAL flush in the window queues behind
/// it (30–470 ms stalls). Needs the right to `CHECKPOINT`; without it, the run goes on.
pub async fn checkpoint(store: &Store, bench: &str) {
    if let Err(error) = sqlx::query("CHECKPOINT").execute(store.pool()).await {
        eprintln!("{bench} bench: no checkpoint before the measured window ({error})");
    }
}

/// The server settings that decide how often the disk stalls a commit, for the report.
pub async fn settings(store: &Store) -> Result<serde_json::Value, String> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, current_setting(name) FROM pg_settings WHERE name IN \
         ('max_wal_size', 'min_wal_size', 'checkpoint_timeout', 'shared_buffers', \
          'synchronous_commit', 'autovacuum')",
    )
    .fetch_all(store.pool())
    .await
    .map_err(|e| format!("reading the server's settings: {e}"))?;
    Ok(serde_json::Value::Object(
        rows.into_iter()
            .map(|(name, value)| (name, serde_json::Value::String(value)))
            .collect(),
    ))
}
