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
    copy_out_with(options, &[], copy, Decoding::AsIs).await
}

/// What the copy task does to `COPY`'s bytes before passing them on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoding {
    /// Pass them on untouched (`FORMAT csv`, or text that needs no escapes).
    AsIs,
    /// Undo the text format's escapes (`\\`, `\n`, `\r`, `\t`, `\b`, `\f`, `\v`) of a
    /// one-column `COPY` whose value is the finished line: it arrives as written.
    TextFormat,
}

/// Undoes the escapes `COPY … TO` writes in its text format, across chunk boundaries. A
/// chunk without a backslash (almost all) is copied as it is.
#[derive(Debug, Default)]
struct TextUnescape {
    /// The previous chunk ended with the backslash of an escape.
    pending: bool,
}

impl TextUnescape {
    fn unescaped(escape: u8) -> u8 {
        match escape {
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            other => other, // `\\` and an escaped delimiter stand for themselves
        }
    }

    fn decode(&mut self, mut input: &[u8], out: &mut BytesMut) {
        if self.pending {
            let Some((&escape, rest)) = input.split_first() else {
                return;
            };
            out.extend_from_slice(&[Self::unescaped(escape)]);
            input = rest;
            self.pending = false;
        }
        while let Some(at) = memchr::memchr(b'\\', input) {
            out.extend_from_slice(&input[..at]);
            match input.get(at + 1) {
                Some(&escape) => {
                    out.extend_from_slice(&[Self::unescaped(escape)]);
                    input = &input[at + 2..];
                }
                None => {
                    self.pending = true;
                    return;
                }
            }
        }
        out.extend_from_slice(input);
    }
}

/// The application name of every export's connection (what `pg_stat_activity` shows).
pub const APPLICATION_NAME: &str = "tombola-export";

/// Like [`copy_out`], after setting each `(name, value)` on the export's connection with
/// bound parameters: the session's own settings (`TimeZone`) or `tombola.*` values that
/// `copy` reads with `current_setting`. The connection serves this one export and closes
/// with it, so nothing set here outlives it. `decoding` says what the bytes need.
///
/// JIT compilation is off on it: a streaming `COPY` waited for it before its first row
/// (its cost estimate of a 1M-ticket export is over `jit_above_cost`), and the
/// expressions it compiles are too cheap per row to win that back. So is parallel query:
/// workers return rows out of order, so an ordered export gets a sort of every row (a
/// Gather Merge) before its first byte — 1.1-1.6 s instead of ~0.1 s at 1M tickets, where
/// the one-process plan walks the tickets' index in order and streams at once. Sorts are
/// a last resort for the same reason: at 10M tickets / 100,000 orders the planner took a
/// hash join and a sort of every ticket (the memoized order lookup looked too big to cache),
/// and the first row came after the 15 s request time-out (503); with `enable_sort` off it
/// walks the index and the first row comes at once (decision 0027).
pub async fn copy_out_with(
    options: &PgConnectOptions,
    settings: &[(&str, String)],
    copy: String,
    decoding: Decoding,
) -> Result<ExportStream, sqlx::Error> {
    let mut connection: PgConnection = options
        .clone()
        .application_name(APPLICATION_NAME)
        .connect()
        .await?;
    // Every setting in one round trip.
    let mut set = String::from(
        "SELECT set_config('jit', 'off', false), \
                set_config('max_parallel_workers_per_gather', '0', false), \
                set_config('enable_sort', 'off', false)",
    );
    for i in 0..settings.len() {
        set.push_str(&format!(
            ", set_config(${}, ${}, false)",
            2 * i + 1,
            2 * i + 2
        ));
    }
    let mut query = sqlx::query(&set);
    for (name, value) in settings {
        query = query.bind(*name).bind(value.as_str());
    }
    query.execute(&mut connection).await?;
    let (sender, mut receiver) = mpsc::channel::<Result<Bytes, sqlx::Error>>(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        let copied = async {
            let mut chunks = connection.copy_out_raw(&copy).await?;
            // PostgreSQL sends one message per row: passed on one by one, each would be a
            // channel hop, an HTTP chunk and a write of its own (14,000 rows/s measured).
            // What has already arrived goes on together, up to CHUNK_BYTES; nothing waits
            // for more, so the first bytes leave as soon as they come.
            let mut buffer = BytesMut::new();
            let mut unescape = TextUnescape::default();
            let mut push = |buffer: &mut BytesMut, chunk: &[u8]| match decoding {
                Decoding::AsIs => buffer.extend_from_slice(chunk),
                Decoding::TextFormat => unescape.decode(chunk, buffer),
            };
            while let Some(chunk) = chunks.next().await {
                push(&mut buffer, &chunk?);
                while buffer.len() < CHUNK_BYTES {
                    match chunks.next().now_or_never() {
                        Some(Some(chunk)) => push(&mut buffer, &chunk?),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What PostgreSQL's text format writes for `line` (CopyAttributeOutText).
    fn escaped(line: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in line {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                0x0b => out.extend_from_slice(b"\\v"),
                other => out.push(other),
            }
        }
        out
    }

    #[test]
    fn text_format_escapes_are_undone_across_any_chunk_boundary() {
        let line = "0001,sold,x,\"a \\ b\nc\r\",'\tcmd,\u{8}\u{b}\u{c},ñ\\\\".as_bytes();
        let wire = escaped(line);
        assert_ne!(wire, line);
        for split in 0..=wire.len() {
            let mut unescape = TextUnescape::default();
            let mut out = BytesMut::new();
            unescape.decode(&wire[..split], &mut out);
            unescape.decode(&wire[split..], &mut out);
            assert_eq!(&out[..], line, "split at {split}");
        }
        // One byte at a time.
        let mut unescape = TextUnescape::default();
        let mut out = BytesMut::new();
        for b in &wire {
            unescape.decode(std::slice::from_ref(b), &mut out);
        }
        assert_eq!(&out[..], line);
    }
}
