//! `exports_log`: every export of a raffle's data — who, what, with which filters, when, and
//! how it ended. Exports carry buyers' personal data; this is where the audit trail shows
//! who took it away.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

/// An export about to start.
#[derive(Debug, Clone)]
pub struct NewExport<'a> {
    pub raffle_id: Uuid,
    /// `key:<id>` or `operator:<user>`.
    pub actor: &'a str,
    /// `api` or `operator`.
    pub source: &'a str,
    /// `tickets`, `orders` or `events`.
    pub what: &'a str,
    /// `csv` or `ndjson`.
    pub format: &'a str,
    /// The filters and options as given (status, since, until, q, lang).
    pub filters: serde_json::Value,
    pub request_id: Option<&'a str>,
}

/// How an export ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// The client went away before the end.
    Aborted,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Aborted => "aborted",
            Self::Failed => "failed",
        }
    }
}

/// One recorded export.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct ExportEntry {
    pub export_id: Uuid,
    pub raffle_id: Uuid,
    pub actor: String,
    /// `api` or `operator`.
    pub source: String,
    /// `tickets`, `orders` or `events`.
    pub what: String,
    /// `csv` or `ndjson`.
    pub format: String,
    /// The filters and options it was asked with.
    #[schema(value_type = Object)]
    pub filters: serde_json::Value,
    pub request_id: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `completed`, `aborted` (the client left) or `failed`.
    pub outcome: String,
    /// Bytes sent, once finished.
    pub bytes: Option<i64>,
}

/// Records that an export starts; its id (time-ordered).
pub async fn start(pool: &PgPool, export: &NewExport<'_>) -> Result<Uuid, sqlx::Error> {
    let export_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO exports_log (export_id, raffle_id, actor, source, what, format, filters, \
                                  request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(export_id)
    .bind(export.raffle_id)
    .bind(export.actor)
    .bind(export.source)
    .bind(export.what)
    .bind(export.format)
    .bind(&export.filters)
    .bind(export.request_id)
    .execute(pool)
    .await?;
    Ok(export_id)
}

/// Records how an export ended.
pub async fn finish(
    pool: &PgPool,
    export_id: Uuid,
    outcome: Outcome,
    bytes: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE exports_log SET finished_at = now(), outcome = $2, bytes = $3 \
         WHERE export_id = $1 AND outcome = 'running'",
    )
    .bind(export_id)
    .bind(outcome.as_str())
    .bind(bytes as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// A raffle's exports, oldest first, after `after` (keyset pagination).
pub async fn list(
    pool: &PgPool,
    raffle_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ExportEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT export_id, raffle_id, actor, source, what, format, filters, request_id, \
                started_at, finished_at, outcome, bytes \
         FROM exports_log WHERE raffle_id = $1 AND ($2::uuid IS NULL OR export_id > $2) \
         ORDER BY export_id LIMIT $3",
    )
    .bind(raffle_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}
