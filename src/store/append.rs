//! One group commit: all events of a writer's batch, the idempotency records of the
//! commands in it and the raffle's registry row, in one statement (one round trip, atomic).
//! Telling other nodes about it is [`super::notify`]; snapshots are [`super::snapshots`].

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::idempotency::IdempotencyRecord;
use super::{sqlstate_in_doubt, Store, StoreError, RAFFLE_STREAM};

/// An event ready to store: payload and metadata already serialized (and hashed).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub sequence: u64,
    pub event_type: &'static str,
    pub event_version: &'static str,
    pub payload: String,
    pub metadata: String,
    pub order_id: Option<Uuid>,
}

#[derive(Debug, Default)]
pub struct AppendBatch {
    /// The stream's last sequence when the batch was decided.
    pub base_sequence: u64,
    pub events: Vec<NewEvent>,
    pub idempotency: Vec<IdempotencyRecord>,
    /// Registry row, when this batch created the raffle or changed its status.
    pub registry: Option<RegistryRow>,
    /// Some command was refused: with no event to collide on, the stream's tip is checked,
    /// so that a refusal decided on a stale state is decided again.
    pub refusals: bool,
}

impl AppendBatch {
    /// `later`, decided on top of this batch, joins it (one group commit).
    pub fn extend(&mut self, later: AppendBatch) {
        self.events.extend(later.events);
        self.idempotency.extend(later.idempotency);
        self.refusals |= later.refusals;
        if later.registry.is_some() {
            self.registry = later.registry;
        }
    }
}

#[derive(Debug, Clone)]
pub struct RegistryRow {
    pub organizer_id: String,
    pub title: String,
    pub status: &'static str,
    /// The sequence of the event that set `status`.
    pub status_sequence: u64,
    pub created_at: DateTime<Utc>,
    /// When the raffle's last live hold ends (`None`: no hold). Start-up loads every raffle
    /// on sale, and those off sale with this set: their holds still need expiring.
    pub holds_until: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer (another node) appended to the stream first, or stored the same
    /// idempotency key: reload and decide again.
    #[error("the stream moved on: another writer appended first")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A statement shared with other raffles' appends failed (other than by a conflict).
    #[error("{0}")]
    Shared(String),
}

impl From<sqlx::Error> for AppendError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict,
            _ => Self::Store(StoreError::Database(error)),
        }
    }
}

impl AppendError {
    /// Whether the database reported the failure itself, so the statement certainly stored
    /// nothing. A lost connection leaves that unknown: the commit may have happened. So
    /// does an error the server sends as it shuts down, crashes or terminates the backend
    /// (SQLSTATE classes 08, 57, 58, XX): the statement's commit may already be durable
    /// when that error is raised (a terminated backend, an error at commit itself).
    pub fn stored_nothing(&self) -> bool {
        match self {
            Self::Conflict => true,
            Self::Store(StoreError::Database(sqlx::Error::Database(db))) => {
                !db.code().is_some_and(|code| sqlstate_in_doubt(&code))
            }
            _ => false,
        }
    }
}

impl AppendBatch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.idempotency.is_empty() && !self.refusals
    }
}

impl Store {
    /// Appends one raffle's batch.
    #[tracing::instrument(skip_all, fields(raffle_id = %raffle_id, events = batch.events.len()))]
    pub async fn append(&self, raffle_id: Uuid, batch: &AppendBatch) -> Result<(), AppendError> {
        if batch.events.is_empty() {
            return self.store_answers(raffle_id, batch).await;
        }
        self.append_all(&[(raffle_id, batch)]).await
    }

    /// Appends the batches of several raffles, each with events, all or none: one statement,
    /// so one round trip, committed on its own. (A transaction around a COPY took four round
    /// trips: BEGIN, COPY, its data, COMMIT; with a few events per group commit, those were
    /// most of the database's work per append.) A duplicate (aggregate, sequence) or
    /// idempotency key fails the whole statement: the conflict.
    #[tracing::instrument(skip_all, fields(batches = batches.len()))]
    pub async fn append_all(&self, batches: &[(Uuid, &AppendBatch)]) -> Result<(), AppendError> {
        // Rows in one order on every node (raffle, then sequence; keys by scope and key):
        // two nodes' groups that share raffles then collide on the first shared key, which
        // fails one of them at once, instead of each holding a key the other waits for (a
        // deadlock PostgreSQL breaks only after a second).
        let mut batches = batches.to_vec();
        batches.sort_unstable_by_key(|(raffle_id, _)| *raffle_id);
        let mut records: Vec<(Uuid, &IdempotencyRecord)> = batches
            .iter()
            .flat_map(|(raffle_id, batch)| batch.idempotency.iter().map(|r| (*raffle_id, r)))
            .collect();
        records.sort_unstable_by(|(_, a), (_, b)| (&a.scope, &a.key).cmp(&(&b.scope, &b.key)));
        let mut rows = EventRows::default();
        let mut answers = Answers::default();
        let mut registry = RegistryRows::default();
        for (raffle_id, batch) in &batches {
            debug_assert!(
                !batch.events.is_empty(),
                "answers alone go through store_answers"
            );
            rows.add(*raffle_id, &batch.events);
            if let Some(row) = &batch.registry {
                registry.add(*raffle_id, row);
            }
        }
        for (raffle_id, record) in records {
            answers.push(raffle_id, record);
        }
        sqlx::query(
            "WITH appended AS ( \
               INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                                   event_version, payload, metadata, order_id) \
               SELECT $1, e.raffle_id::text, e.sequence, e.event_type, e.event_version, \
                      e.payload::json, e.metadata::json, e.order_id \
               FROM UNNEST($2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
                           $7::text[], $8::uuid[]) \
                 AS e(raffle_id, sequence, event_type, event_version, payload, metadata, order_id) \
             ), remembered AS ( \
               INSERT INTO idempotency_keys (scope, key, request_hash, raffle_id, response) \
               SELECT k.scope, k.key, k.hash, k.raffle_id, k.response::jsonb \
               FROM UNNEST($9::uuid[], $10::text[], $11::text[], $12::bytea[], $13::text[]) \
                 AS k(raffle_id, scope, key, hash, response) \
             ) \
             INSERT INTO raffles \
               (raffle_id, organizer_id, title, status, status_sequence, created_at, updated_at, \
                holds_until) \
             SELECT r.raffle_id, r.organizer_id, r.title, r.status, r.status_sequence, \
                    r.created_at, now(), r.holds_until \
             FROM UNNEST($14::uuid[], $15::text[], $16::text[], $17::text[], $18::bigint[], \
                         $19::timestamptz[], $20::timestamptz[]) \
               AS r(raffle_id, organizer_id, title, status, status_sequence, created_at, \
                    holds_until) \
             ON CONFLICT (raffle_id) DO UPDATE \
               SET status = EXCLUDED.status, status_sequence = EXCLUDED.status_sequence, \
                   updated_at = now(), holds_until = EXCLUDED.holds_until",
        )
        .bind(RAFFLE_STREAM)
        .bind(&rows.raffles)
        .bind(&rows.sequences)
        .bind(&rows.types)
        .bind(&rows.versions)
        .bind(&rows.payloads)
        .bind(&rows.metadata)
        .bind(&rows.orders)
        .bind(&answers.raffles)
        .bind(&answers.scopes)
        .bind(&answers.keys)
        .bind(&answers.hashes)
        .bind(&answers.responses)
        .bind(&registry.raffles)
        .bind(&registry.organizers)
        .bind(&registry.titles)
        .bind(&registry.statuses)
        .bind(&registry.sequences)
        .bind(&registry.created)
        .bind(&registry.holds_until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A batch with answers (refusals, replays) but no event. With no event to collide on,
    /// the answers were decided at `base_sequence`, and a node that was behind must not give
    /// them as final: the stream's tip is checked, in the transaction that stores their
    /// idempotency records if there are any.
    async fn store_answers(&self, raffle_id: Uuid, batch: &AppendBatch) -> Result<(), AppendError> {
        if batch.idempotency.is_empty() {
            if !batch.refusals {
                return Ok(());
            }
            return check_tip(&self.pool, raffle_id, batch.base_sequence).await;
        }
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        check_tip(&mut *tx, raffle_id, batch.base_sequence).await?;
        let mut answers = Answers::default();
        for record in &batch.idempotency {
            answers.push(raffle_id, record);
        }
        sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, request_hash, raffle_id, response) \
             SELECT k.scope, k.key, k.hash, k.raffle_id, k.response::jsonb \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[]) \
               AS k(raffle_id, scope, key, hash, response)",
        )
        .bind(&answers.raffles)
        .bind(&answers.scopes)
        .bind(&answers.keys)
        .bind(&answers.hashes)
        .bind(&answers.responses)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Fails with a conflict unless the stream ends at `sequence`.
async fn check_tip(
    executor: impl sqlx::PgExecutor<'_>,
    raffle_id: Uuid,
    sequence: u64,
) -> Result<(), AppendError> {
    let last: Option<i64> = sqlx::query_scalar(
        "SELECT max(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(RAFFLE_STREAM)
    .bind(raffle_id.to_string())
    .fetch_one(executor)
    .await?;
    if last.unwrap_or(0) as u64 == sequence {
        Ok(())
    } else {
        Err(AppendError::Conflict)
    }
}

/// Events of one or more raffles, as columns.
#[derive(Default)]
struct EventRows<'a> {
    raffles: Vec<Uuid>,
    sequences: Vec<i64>,
    types: Vec<&'static str>,
    versions: Vec<&'static str>,
    payloads: Vec<&'a str>,
    metadata: Vec<&'a str>,
    orders: Vec<Option<Uuid>>,
}

impl<'a> EventRows<'a> {
    fn add(&mut self, raffle_id: Uuid, events: &'a [NewEvent]) {
        for event in events {
            self.raffles.push(raffle_id);
            self.sequences.push(event.sequence as i64);
            self.types.push(event.event_type);
            self.versions.push(event.event_version);
            self.payloads.push(&event.payload);
            self.metadata.push(&event.metadata);
            self.orders.push(event.order_id);
        }
    }
}

/// Idempotency records, as columns.
#[derive(Default)]
struct Answers<'a> {
    raffles: Vec<Uuid>,
    scopes: Vec<&'a str>,
    keys: Vec<&'a str>,
    hashes: Vec<&'a [u8]>,
    responses: Vec<String>,
}

impl<'a> Answers<'a> {
    fn push(&mut self, raffle_id: Uuid, record: &'a IdempotencyRecord) {
        self.raffles.push(raffle_id);
        self.scopes.push(&record.scope);
        self.keys.push(&record.key);
        self.hashes.push(&record.request_hash);
        self.responses.push(record.response.to_string());
    }
}

/// Registry rows, as columns.
#[derive(Default)]
struct RegistryRows<'a> {
    raffles: Vec<Uuid>,
    organizers: Vec<&'a str>,
    titles: Vec<&'a str>,
    statuses: Vec<&'static str>,
    sequences: Vec<i64>,
    created: Vec<DateTime<Utc>>,
    holds_until: Vec<Option<DateTime<Utc>>>,
}

impl<'a> RegistryRows<'a> {
    fn add(&mut self, raffle_id: Uuid, row: &'a RegistryRow) {
        self.raffles.push(raffle_id);
        self.organizers.push(&row.organizer_id);
        self.titles.push(&row.title);
        self.statuses.push(row.status);
        self.sequences.push(row.status_sequence as i64);
        self.created.push(row.created_at);
        self.holds_until.push(row.holds_until);
    }
}
