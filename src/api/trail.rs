//! The audit trail over HTTP: a raffle's events filtered by order, ticket, payment, actor,
//! type and time, and the history of one ticket or one order. Events carry buyers' data:
//! organizers (their raffles) and admins only.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::{AppState, Path, Query};
use crate::audit::trail::{TrailPage, TrailQuery};

const MAX_PAGE: u32 = 1_000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Events about this order.
    pub order_id: Option<Uuid>,
    /// Events that held, issued, released, expired, refunded or drew this number.
    pub ticket: Option<u32>,
    /// Events about this payment id (a provider's, or a manual payment's reference).
    #[param(max_length = 255)]
    pub payment_id: Option<String>,
    /// Events caused by this actor (`key:<id>`, `system`, …).
    #[param(max_length = 255)]
    pub actor: Option<String>,
    /// Events of this type, e.g. `TicketsIssued`.
    #[param(rename = "type", max_length = 64)]
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// RFC 3339: events recorded from this instant on.
    pub since: Option<String>,
    /// RFC 3339: events recorded before this instant.
    pub until: Option<String>,
    /// `next_after_sequence` of the previous page.
    #[param(minimum = 0)]
    pub after_sequence: Option<i64>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Wait (bounded) until the audit index reflects this position, from a command's
    /// `Tombola-Position` header.
    pub min_position: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// `next_after_sequence` of the previous page.
    #[param(minimum = 0)]
    pub after_sequence: Option<i64>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Wait (bounded) until the audit index reflects this position.
    pub min_position: Option<String>,
}

fn time(field: &'static str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(t.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| ApiError::invalid(field, "must be an RFC 3339 time with offset"))
    })
    .transpose()
}

fn text(
    field: &'static str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) => {
            Err(ApiError::invalid(
                field,
                format!("must be 1 to {max} characters, no control characters"),
            ))
        }
        other => Ok(other),
    }
}

/// A keyset position: absent is the start.
fn after(value: Option<i64>) -> Result<u64, ApiError> {
    u64::try_from(value.unwrap_or(0))
        .map_err(|_| ApiError::invalid("after_sequence", "must not be negative"))
}

async fn page(
    state: &AppState,
    caller: &Caller,
    raffle_id: Uuid,
    mut query: TrailQuery,
    limit: Option<u32>,
    min_position: Option<&str>,
) -> Result<axum::Json<TrailPage>, ApiError> {
    caller.require(&[Role::Admin, Role::Organizer])?;
    state.authorize(caller, raffle_id).await?;
    query.limit = super::raffles::page_limit(limit, 100, MAX_PAGE)?;
    let read = state.read_side()?;
    super::read::reach(read, raffle_id, min_position, &["audit_index"]).await?;
    let page = crate::audit::trail::query(
        read.runtime.read_pool(),
        state.engine.store().pool(),
        raffle_id,
        &query,
    )
    .await?;
    Ok(axum::Json(page))
}

/// The raffle's events, filtered (every filter given must match) and in sequence order,
/// each with its actor, source, request id, time, chain hash, payload and metadata.
#[utoipa::path(get, path = "/v1/raffles/{id}/events", tag = "audit",
    params(("id" = Uuid, Path), EventsParams),
    responses((status = 200, body = TrailPage), (status = 403, description = "Client keys cannot read the trail"),
        (status = 404), (status = 422),
        (status = 503, description = "The audit index had not reached min_position in time, or is not served")),
    security(("api_key" = [])))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(params): Query<EventsParams>,
) -> Result<axum::Json<TrailPage>, ApiError> {
    let query = TrailQuery {
        order_id: params.order_id,
        ticket: params.ticket,
        payment_id: text("payment_id", params.payment_id, 255)?,
        actor: text("actor", params.actor, 255)?,
        event_type: text("type", params.event_type, 64)?,
        since: time("since", params.since.as_deref())?,
        until: time("until", params.until.as_deref())?,
        after_sequence: after(params.after_sequence)?,
        limit: 0,
    };
    page(
        &state,
        &caller,
        id,
        query,
        params.limit,
        params.min_position.as_deref(),
    )
    .await
}

/// Every event that touched one number: holds, issues, releases, expiries, refunds and the
/// draw, with actor, source, request id and time.
#[utoipa::path(get, path = "/v1/raffles/{id}/tickets/{number}/history", tag = "audit",
    params(("id" = Uuid, Path), ("number" = u32, Path), PageParams),
    responses((status = 200, body = TrailPage), (status = 403, description = "Client keys cannot read the trail"),
        (status = 404), (status = 422),
        (status = 503, description = "The audit index had not reached min_position in time, or is not served")),
    security(("api_key" = [])))]
pub async fn ticket_history(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, number)): Path<(Uuid, u32)>,
    Query(params): Query<PageParams>,
) -> Result<axum::Json<TrailPage>, ApiError> {
    let query = TrailQuery {
        ticket: Some(number),
        after_sequence: after(params.after_sequence)?,
        ..TrailQuery::default()
    };
    page(
        &state,
        &caller,
        id,
        query,
        params.limit,
        params.min_position.as_deref(),
    )
    .await
}

/// Every event about one order: its reservation, payments, issue, expiry or release,
/// refunds.
#[utoipa::path(get, path = "/v1/raffles/{id}/orders/{order_id}/history", tag = "audit",
    params(("id" = Uuid, Path), ("order_id" = Uuid, Path), PageParams),
    responses((status = 200, body = TrailPage), (status = 403, description = "Client keys cannot read the trail"),
        (status = 404), (status = 422),
        (status = 503, description = "The audit index had not reached min_position in time, or is not served")),
    security(("api_key" = [])))]
pub async fn order_history(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, order_id)): Path<(Uuid, Uuid)>,
    Query(params): Query<PageParams>,
) -> Result<axum::Json<TrailPage>, ApiError> {
    let query = TrailQuery {
        order_id: Some(order_id),
        after_sequence: after(params.after_sequence)?,
        ..TrailQuery::default()
    };
    page(
        &state,
        &caller,
        id,
        query,
        params.limit,
        params.min_position.as_deref(),
    )
    .await
}
