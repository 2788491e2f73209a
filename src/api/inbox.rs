//! `/v1/payments/needs-action`: the operator's one list of provider payments to act on.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::{AppState, Query};
use crate::payments::inbox::{self, InboxEntry, InboxFilter};

#[derive(Debug, Deserialize, IntoParams)]
pub struct NeedsActionQuery {
    /// At most this many, newest first (default 100, at most 1,000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NeedsActionList {
    /// Failed or rejected deliveries, payments whose money must go back
    /// (`outcome: refund_required`) and payments that matched nothing
    /// (`outcome: payment_flagged`), newest first.
    pub payments: Vec<InboxEntry>,
}

/// Payments an operator must act on. Admin keys only; the CLI's
/// `tombola inbox list --needs-action` shows the same list.
#[utoipa::path(get, path = "/v1/payments/needs-action", tag = "operations", params(NeedsActionQuery),
    responses((status = 200, body = NeedsActionList)), security(("api_key" = [])))]
pub async fn needs_action(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<NeedsActionQuery>,
) -> Result<axum::Json<NeedsActionList>, ApiError> {
    caller.require(&[Role::Admin])?;
    let limit = super::raffles::page_limit(query.limit, 100, 1_000)?;
    let payments = inbox::list(
        state.engine.store(),
        InboxFilter::NeedsAction,
        i64::from(limit),
    )
    .await?;
    Ok(axum::Json(NeedsActionList { payments }))
}
