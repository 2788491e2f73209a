//! A raffle's stream exactly as stored, read in keyset pages: what every check of the log
//! starts from. Reading the stored text (not the decoded events) is the point: the chain
//! covers those bytes, and an edit that still decodes must still be caught.

use std::collections::VecDeque;

use sqlx::PgPool;
use uuid::Uuid;

use crate::store::RAFFLE_STREAM;

/// Rows per round trip: large enough to amortise it, small enough to keep memory flat.
const PAGE: i64 = 5_000;

/// One stored event, as text.
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub sequence: u64,
    pub event_type: String,
    pub event_version: String,
    pub payload: String,
    pub metadata: String,
}

/// Reads one raffle's stream in sequence order, a page at a time, holding no transaction
/// open between pages (a long audit never blocks vacuum or the writers).
pub struct LogReader {
    pool: PgPool,
    aggregate_id: String,
    after: i64,
    page: VecDeque<RawEvent>,
    done: bool,
}

impl LogReader {
    pub fn new(pool: PgPool, raffle_id: Uuid) -> Self {
        Self::after(pool, raffle_id, 0)
    }

    /// Reads the events after `sequence` only.
    pub fn after(pool: PgPool, raffle_id: Uuid, sequence: u64) -> Self {
        Self {
            pool,
            aggregate_id: raffle_id.to_string(),
            after: sequence.min(i64::MAX as u64) as i64,
            page: VecDeque::new(),
            done: false,
        }
    }

    /// Whether every event read so far was handed out and more may follow: the next one
    /// costs a round trip.
    pub fn between_pages(&self) -> bool {
        self.page.is_empty() && !self.done
    }

    pub async fn next(&mut self) -> Result<Option<RawEvent>, sqlx::Error> {
        if self.page.is_empty() && !self.done {
            let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
                "SELECT sequence, event_type, event_version, payload::text, metadata::text \
                 FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 \
                 ORDER BY sequence LIMIT $4",
            )
            .bind(RAFFLE_STREAM)
            .bind(&self.aggregate_id)
            .bind(self.after)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            self.done = (rows.len() as i64) < PAGE;
            if let Some(last) = rows.last() {
                self.after = last.0;
            }
            self.page.extend(rows.into_iter().map(
                |(sequence, event_type, event_version, payload, metadata)| RawEvent {
                    sequence: sequence as u64,
                    event_type,
                    event_version,
                    payload,
                    metadata,
                },
            ));
        }
        Ok(self.page.pop_front())
    }
}

/// The number of events in a raffle's stream: its last sequence, since streams are gapless
/// (for progress bars; a verification never trusts it).
pub async fn stream_length(pool: &PgPool, raffle_id: Uuid) -> Result<u64, sqlx::Error> {
    let last: Option<i64> = sqlx::query_scalar(
        "SELECT max(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(RAFFLE_STREAM)
    .bind(raffle_id.to_string())
    .fetch_one(pool)
    .await?;
    Ok(last.unwrap_or(0) as u64)
}
