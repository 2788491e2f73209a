//! Exports stream from PostgreSQL's `COPY … TO STDOUT` straight to the HTTP response or a
//! file: memory stays flat whatever the raffle's size. Each export runs on a connection of
//! its own, outside the pool: when the client goes away the stream is dropped, the
//! connection closes, and PostgreSQL ends the query at its next write.
//!
//! `COPY` takes no bind parameters. Rather than quote free text into its statement, such a
//! value travels as a bound parameter of `set_config` on the export's own connection, and
//! the statement reads it back with `current_setting` (decision 0015).

pub mod csv;
pub mod events;
pub mod log;
pub mod recorded;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};
use tokio::sync::mpsc;

/// Chunks in flight between PostgreSQL and the client: a slow client slows the query
/// rather than filling memory.
const CHUNKS_IN_FLIGHT: usize = 16;

/// The most bytes passed on at once (so at most 16 x 64 KiB wait for a slow client).
const CHUNK_BYTES: usize = 64 * 1024;

pub type ExportStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Runs `copy` (a `COPY … TO STDOUT` built from trusted parts only) on a fresh connection
/// and streams its bytes. A statement PostgreSQL refuses fails here, before any byte is
/// sent; a failure later ends the stream with that error.
pub async fn copy_out(
    options: &PgConnectOptions,
    copy: String,
) -> Result<ExportStream, sqlx::Error> {
    copy_out_with(options, &[], copy).await
}

/// The application name of every export's connection (what `pg_stat_activity` shows).
pub const APPLICATION_NAME: &str = "tombola-export";

/// Like [`copy_out`], after setting each `(name, value)` on the export's connection with
/// bound parameters: the session's own settings (`TimeZone`) or `tombola.*` values that
/// `copy` reads with `current_setting`. The connection serves this one export and closes
/// with it, so nothing set here outlives it.
pub async fn copy_out_with(
    options: &PgConnectOptions,
    settings: &[(&str, String)],
    copy: String,
) -> Result<ExportStream, sqlx::Error> {
    let mut connection: PgConnection = options
        .clone()
        .application_name(APPLICATION_NAME)
        .connect()
        .await?;
    for (name, value) in settings {
        sqlx::query("SELECT set_config($1, $2, false)")
            .bind(name)
            .bind(value)
            .execute(&mut connection)
            .await?;
    }
    let (sender, mut receiver) = mpsc::channel::<Result<Bytes, sqlx::Error>>(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        let copied = async {
            let mut chunks = connection.copy_out_raw(&copy).await?;
            // PostgreSQL sends one message per row: passed on one by one, each would be a
            // channel hop, an HTTP chunk and a write of its own (14,000 rows/s measured).
            // What has already arrived goes on together, up to CHUNK_BYTES; nothing waits
            // for more, so the first bytes leave as soon as they come.
            let mut buffer = BytesMut::new();
            while let Some(chunk) = chunks.next().await {
                buffer.extend_from_slice(&chunk?);
                while buffer.len() < CHUNK_BYTES {
                    match chunks.next().now_or_never() {
                        Some(Some(chunk)) => buffer.extend_from_slice(&chunk?),
                        Some(None) | None => break,
                    }
                }
                if sender.send(Ok(buffer.split().freeze())).await.is_err() {
                    break; // the reader is gone: dropping the connection ends the query
                }
            }
            Ok::<(), sqlx::Error>(())
        };
        if let Err(error) = copied.await {
            let _ = sender.send(Err(error)).await;
        }
    });
    let first = match receiver.recv().await {
        Some(Err(error)) => return Err(error),
        other => other,
    };
    let rest = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    Ok(futures::stream::iter(first)
        .chain(rest)
        .map(|chunk| chunk.map_err(std::io::Error::other))
        .boxed())
}
