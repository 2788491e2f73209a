//! Exports of a raffle's buyers and tickets for spreadsheets (`tickets.csv`, `orders.csv`),
//! and the record of every export taken. Exports carry personal data: organizers (their
//! own raffles) and admins only; each one is recorded in `exports_log` before its first
//! byte. They stream from the read models with constant memory and share the node's limit
//! on heavy reads (429 + Retry-After beyond it).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::{AppState, Path, Query, REQUEST_ID};
use crate::export::csv::{CsvFilter, Dataset, Lang, Terms};
use crate::export::log::{ExportEntry, NewExport};
use crate::export::recorded::Recorded;
use crate::export::ExportStream;

/// The id of the `exports_log` row that records this export.
pub const EXPORT_ID: HeaderName = HeaderName::from_static("tombola-export-id");

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CsvParams {
    /// Header language: `es` or `en`. Default: `es` for MXN raffles, `en` otherwise.
    #[param(pattern = "^(es|en)$")]
    pub lang: Option<String>,
    /// Comma-separated statuses. Tickets: `held`, `sold`; orders: `reserved`, `paid`,
    /// `expired`, `released`, `refund_required`, `refunded`. Default: all.
    pub status: Option<String>,
    /// RFC 3339 time with offset: rows from this instant on (tickets: held or sold since;
    /// orders: reserved at).
    pub since: Option<String>,
    /// RFC 3339 time with offset: rows before this instant.
    pub until: Option<String>,
    /// Part of the buyer's name, e-mail or phone, or of the payment reference (at most 200
    /// characters; matched literally, case-insensitively).
    #[param(max_length = 200)]
    pub q: Option<String>,
    /// Wait (bounded) until the read models reflect this position, from a command's
    /// `Tombola-Position` header.
    pub min_position: Option<String>,
}

/// Who may take personal data away: organizers (their raffles, checked next) and admins.
async fn allowed(state: &AppState, caller: &Caller, raffle_id: Uuid) -> Result<(), ApiError> {
    caller.require(&[Role::Admin, Role::Organizer])?;
    state.authorize(caller, raffle_id).await
}

/// Records the export, then answers with its stream; the permit and the record's end live
/// as long as the body. The record's commit and the export's connection and first rows are
/// awaited together (both before the first byte leaves): one after the other, they were a
/// good part of the time to the first byte (decision 0027).
pub(super) async fn respond(
    state: &AppState,
    export: NewExport<'_>,
    content_type: &'static str,
    filename: &str,
    stream: impl std::future::Future<Output = Result<ExportStream, sqlx::Error>>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let pool = state.engine.store().pool().clone();
    let (export_id, stream) = tokio::join!(crate::export::log::start(&pool, &export), stream);
    // Not recorded: nothing is sent (dropping the stream closes its connection).
    let export_id = export_id?;
    let stream = match stream {
        Ok(stream) => stream,
        Err(error) => {
            let _ = crate::export::log::finish(
                &pool,
                export_id,
                crate::export::log::Outcome::Failed,
                0,
            )
            .await;
            return Err(error.into());
        }
    };
    let body = Recorded::new(stream, pool, export_id, permit);
    let disposition = format!("attachment; filename=\"{filename}\"");
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&export_id.to_string()) {
        headers.insert(EXPORT_ID, value);
    }
    Ok(response)
}

pub(super) fn request_id(headers: &HeaderMap) -> Option<&str> {
    headers.get(REQUEST_ID).and_then(|v| v.to_str().ok())
}

async fn csv_export(
    state: AppState,
    caller: Caller,
    headers: HeaderMap,
    raffle_id: Uuid,
    params: CsvParams,
    dataset: Dataset,
) -> Result<Response, ApiError> {
    allowed(&state, &caller, raffle_id).await?;
    let config = state
        .engine
        .read(raffle_id, |raffle| raffle.config().cloned())
        .await?
        .ok_or(ApiError::NotFound("raffle"))?;
    let lang = Lang::parse(params.lang.as_deref(), &config)
        .map_err(|reason| ApiError::invalid("lang", reason))?;
    let filter = CsvFilter::parse(
        dataset,
        params.status.as_deref(),
        params.since.as_deref(),
        params.until.as_deref(),
        params.q.as_deref(),
    )
    .map_err(|(field, reason)| ApiError::invalid(field, reason))?;
    let read = state.read_side()?;
    super::read::reach(
        read,
        raffle_id,
        params.min_position.as_deref(),
        &["tickets", "orders"],
    )
    .await?;
    let permit = state.heavy_read()?;
    let options = read.runtime.read_pool().connect_options();
    let terms = Terms::from(&config);
    let mut filters = serde_json::to_value(&filter).map_err(ApiError::internal)?;
    filters["lang"] = serde_json::to_value(lang).map_err(ApiError::internal)?;
    let actor = caller.actor();
    let export = NewExport {
        raffle_id,
        actor: &actor,
        source: "api",
        what: dataset.as_str(),
        format: "csv",
        filters,
        request_id: request_id(&headers),
    };
    let filename = format!("{}.csv", dataset.as_str());
    let stream = crate::export::csv::csv(&options, raffle_id, dataset, &terms, lang, &filter);
    respond(
        &state,
        export,
        "text/csv; charset=utf-8",
        &filename,
        stream,
        permit,
    )
    .await
}

/// One row per held or sold ticket: number (zero-padded as the raffle shows it), status,
/// order, buyer, purchase and reservation times in the raffle's time zone, the order's
/// amount, payment method and reference. UTF-8 with a BOM, RFC 4180 quoting; text a
/// spreadsheet would run as a formula starts with `'`. Organizers and admins only.
#[utoipa::path(get, path = "/v1/raffles/{id}/exports/tickets.csv", tag = "exports",
    params(("id" = Uuid, Path), CsvParams),
    responses((status = 200, content_type = "text/csv", description = "The tickets, streamed",
            headers(("Tombola-Export-Id" = Uuid, description = "The exports_log record of this export"))),
        (status = 403, description = "Client keys cannot export"), (status = 404), (status = 422),
        (status = 429, description = "As many exports as the node allows are running; see Retry-After"),
        (status = 503, description = "The read models had not reached min_position in time, or are not served")),
    security(("api_key" = [])))]
pub async fn tickets_csv(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Query(params): Query<CsvParams>,
) -> Result<Response, ApiError> {
    csv_export(state, caller, headers, id, params, Dataset::Tickets).await
}

/// One row per order: buyer, numbers, amounts, payment, and the times it changed, in the
/// raffle's time zone. Same format, filters and access as `tickets.csv`.
#[utoipa::path(get, path = "/v1/raffles/{id}/exports/orders.csv", tag = "exports",
    params(("id" = Uuid, Path), CsvParams),
    responses((status = 200, content_type = "text/csv", description = "The orders, streamed",
            headers(("Tombola-Export-Id" = Uuid, description = "The exports_log record of this export"))),
        (status = 403, description = "Client keys cannot export"), (status = 404), (status = 422),
        (status = 429, description = "As many exports as the node allows are running; see Retry-After"),
        (status = 503, description = "The read models had not reached min_position in time, or are not served")),
    security(("api_key" = [])))]
pub async fn orders_csv(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Query(params): Query<CsvParams>,
) -> Result<Response, ApiError> {
    csv_export(state, caller, headers, id, params, Dataset::Orders).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportsParams {
    /// The last `export_id` of the previous page.
    pub after: Option<Uuid>,
    /// 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExportsPage {
    pub exports: Vec<ExportEntry>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next_after: Option<Uuid>,
}

/// Every export taken of the raffle's data, oldest first: who, what, with which filters,
/// when, and how it ended. Organizers (their raffles) and admins only.
#[utoipa::path(get, path = "/v1/raffles/{id}/exports", tag = "exports",
    params(("id" = Uuid, Path), ExportsParams),
    responses((status = 200, body = ExportsPage), (status = 403), (status = 404), (status = 422)),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(params): Query<ExportsParams>,
) -> Result<axum::Json<ExportsPage>, ApiError> {
    allowed(&state, &caller, id).await?;
    let limit = super::raffles::page_limit(params.limit, 100, 500)? as i64;
    let mut exports =
        crate::export::log::list(state.engine.store().pool(), id, params.after, limit + 1).await?;
    let next_after = if exports.len() as i64 > limit {
        exports.truncate(limit as usize);
        exports.last().map(|e| e.export_id)
    } else {
        None
    };
    Ok(axum::Json(ExportsPage {
        exports,
        next_after,
    }))
}
