//! Buying: reserve numbers, read and release an order, confirm a manual payment, refund.

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};
use tombola_domain::{
    parse_text, Buyer, ConfirmManualPayment, OrderView, RaffleCommand, RefundOrder, Reserve,
    Selection, TextKind,
};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::views::{BuyerBody, OrderBody};
use super::{command_meta, ApiJson, AppState, Path};
use crate::engine::Applied;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    pub buyer: BuyerBody,
    /// These exact numbers…
    #[serde(default)]
    #[schema(min_items = 1)]
    pub numbers: Option<Vec<u32>>,
    /// …or this many random free numbers.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub quantity: Option<u32>,
}

/// Hold numbers for a buyer until `expires_at`; payment issues them.
#[utoipa::path(post, path = "/v1/raffles/{id}/reservations", tag = "orders",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: 1 to 255 visible ASCII characters",
        pattern = "^[!-~]([ !-~]{0,253}[!-~])?$")),
    request_body = ReserveRequest,
    responses((status = 201, body = OrderBody, headers(("Tombola-Position" = String, description = "<raffle id>:<sequence> the reservation committed at; pass as min_position to read endpoints"))),
        (status = 409, description = "Numbers taken or sales closed"),
        (status = 422, description = "Invalid request or limit exceeded")),
    security(("api_key" = [])))]
pub async fn reserve(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    ApiJson(body): ApiJson<ReserveRequest>,
) -> Result<(StatusCode, HeaderMap, axum::Json<OrderBody>), ApiError> {
    state.authorize(&caller, id).await?;
    let meta = command_meta(
        &caller,
        &headers,
        Method::POST,
        &format!("/v1/raffles/{id}/reservations"),
        &body,
    )?;
    let buyer = Buyer::parse(
        &body.buyer.name,
        &body.buyer.email,
        body.buyer.phone.as_deref(),
    )?;
    let selection = match (body.numbers, body.quantity) {
        (Some(numbers), None) => Selection::Numbers(numbers),
        (None, Some(quantity)) => Selection::Random(quantity),
        _ => {
            return Err(ApiError::invalid(
                "numbers",
                "give either numbers or quantity",
            ))
        }
    };
    let order_id = Uuid::now_v7();
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
    let command = RaffleCommand::Reserve(Reserve {
        order_id,
        buyer,
        selection,
    });
    let applied = state.engine.execute(id, command, meta).await?;
    let position = super::read::position_headers(id, &applied);
    let replayed = applied.replayed;
    let events: Vec<_> = applied.events.into_iter().map(|e| e.event).collect();
    // A new reservation is answered from its own committed event: reading the raffle again
    // waits for every append in flight, which stalls the writer's pipeline (decision 0019).
    // A replayed one names the order the first attempt created, which may have been paid or
    // released since: that one is read.
    let fresh = (!replayed)
        .then(|| events.iter().find_map(tombola_domain::OrderView::reserved))
        .flatten();
    let view = match fresh {
        Some(view) => view,
        None => {
            let order_id = events.iter().find_map(|e| e.order_id()).unwrap_or(order_id);
            state
                .engine
                .order_view(id, order_id)
                .await
                .map_err(|error| after_commit(error.into()))?
                .ok_or(ApiError::NotFound("order"))?
        }
    };
    Ok((
        StatusCode::CREATED,
        position,
        axum::Json(OrderBody::new(id, view, &events)),
    ))
}

async fn read_order(state: &AppState, id: Uuid, order_id: Uuid) -> Result<OrderBody, ApiError> {
    let view = state
        .engine
        .order_view(id, order_id)
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    with_history(state, id, view).await
}

/// `view` completed from the order's events: buyer, payment, flags, receipt.
async fn with_history(state: &AppState, id: Uuid, view: OrderView) -> Result<OrderBody, ApiError> {
    let order_id = view.order_id;
    let paid = view.issued_at.is_some();
    let events = state.engine.store().order_events(id, order_id).await?;
    let mut body = OrderBody::new(id, view, &events);
    if paid {
        let pool = state.engine.store().pool();
        body.receipt = crate::audit::chain::receipt_of(pool, id, order_id).await?;
    }
    Ok(body)
}

/// A failure to read the answer of a command that committed (or did so on an earlier
/// attempt): not "unavailable", which says nothing was applied.
fn after_commit(error: ApiError) -> ApiError {
    match error {
        ApiError::Unavailable { .. } | ApiError::Overloaded { .. } => ApiError::OutcomeUnknown,
        other => other,
    }
}

/// The answer to a command on an order that committed. It never says `unavailable`, which
/// a client takes for "not applied": the command is in the log. The order comes from the
/// decision (no trip through the writer); if its history cannot be read now, the answer
/// shows what the decision knows, and a GET of the order shows the rest.
async fn committed_order(
    state: &AppState,
    id: Uuid,
    order_id: Uuid,
    applied: Applied,
) -> Result<OrderBody, ApiError> {
    let Some(view) = applied.view else {
        // Replayed, or a compact raffle's settled order: read it; failing now is "committed,
        // answer unknown", and a retry with the same key replays it.
        return read_order(state, id, order_id).await.map_err(after_commit);
    };
    match with_history(state, id, view.clone()).await {
        Ok(body) => Ok(body),
        Err(error) => {
            tracing::warn!(raffle_id = %id, %order_id, error = error.code(), "order history unreadable after a commit; answering from the decision");
            let events: Vec<_> = applied.events.into_iter().map(|e| e.event).collect();
            Ok(OrderBody::new(id, view, &events))
        }
    }
}

/// An order: status, numbers, amount, buyer, hold expiry and payment.
#[utoipa::path(get, path = "/v1/raffles/{id}/orders/{order_id}", tag = "orders",
    params(("id" = Uuid, Path), ("order_id" = Uuid, Path)),
    responses((status = 200, body = OrderBody), (status = 404)), security(("api_key" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, order_id)): Path<(Uuid, Uuid)>,
) -> Result<axum::Json<OrderBody>, ApiError> {
    state.authorize(&caller, id).await?;
    Ok(axum::Json(read_order(&state, id, order_id).await?))
}

/// Release a reservation (the buyer gives up the hold). Releasing twice is harmless.
#[utoipa::path(delete, path = "/v1/raffles/{id}/orders/{order_id}", tag = "orders",
    params(("id" = Uuid, Path), ("order_id" = Uuid, Path)),
    responses((status = 200, body = OrderBody, headers(("Tombola-Position" = String, description = "<raffle id>:<sequence> the command committed at"))), (status = 404), (status = 409)), security(("api_key" = [])))]
pub async fn release(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((id, order_id)): Path<(Uuid, Uuid)>,
) -> Result<(HeaderMap, axum::Json<OrderBody>), ApiError> {
    state.authorize(&caller, id).await?;
    let path = format!("/v1/raffles/{id}/orders/{order_id}");
    let meta = command_meta(&caller, &headers, Method::DELETE, &path, &())?;
    let applied = state
        .engine
        .execute(id, RaffleCommand::Release { order_id }, meta)
        .await?;
    let position = super::read::position_headers(id, &applied);
    Ok((
        position,
        axum::Json(committed_order(&state, id, order_id, applied).await?),
    ))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualPaymentRequest {
    /// How the buyer paid, e.g. `cash`, `bank_transfer`.
    #[schema(min_length = 1, max_length = 64)]
    pub method: String,
    /// The organizer's reference (receipt number, transfer id…).
    #[schema(min_length = 1, max_length = 200)]
    pub reference: String,
}

/// The organizer confirms a payment received by hand; issues the tickets once.
#[utoipa::path(post, path = "/v1/raffles/{id}/orders/{order_id}/manual-payment", tag = "orders",
    params(("id" = Uuid, Path), ("order_id" = Uuid, Path)), request_body = ManualPaymentRequest,
    responses((status = 200, body = OrderBody, headers(("Tombola-Position" = String, description = "<raffle id>:<sequence> the command committed at"))), (status = 404), (status = 409)), security(("api_key" = [])))]
pub async fn manual_payment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((id, order_id)): Path<(Uuid, Uuid)>,
    ApiJson(body): ApiJson<ManualPaymentRequest>,
) -> Result<(HeaderMap, axum::Json<OrderBody>), ApiError> {
    caller.require(&[Role::Admin, Role::Organizer])?;
    state.authorize(&caller, id).await?;
    let method = parse_text("method", &body.method, TextKind::Name, 64)?;
    let reference = parse_text("reference", &body.reference, TextKind::Note, 200)?;
    let path = format!("/v1/raffles/{id}/orders/{order_id}/manual-payment");
    let meta = command_meta(&caller, &headers, Method::POST, &path, &body)?;
    let command = RaffleCommand::ConfirmManualPayment(ConfirmManualPayment {
        order_id,
        method,
        reference,
        confirmed_by: caller.actor(),
    });
    let applied = state.engine.execute(id, command, meta).await?;
    let position = super::read::position_headers(id, &applied);
    Ok((
        position,
        axum::Json(committed_order(&state, id, order_id, applied).await?),
    ))
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    #[serde(default)]
    #[schema(min_length = 1, max_length = 500)]
    pub reason: Option<String>,
    /// Total refunded so far, in minor units; less than the order's amount is a partial
    /// refund that keeps the tickets. Default: the whole amount.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub amount: Option<i64>,
}

/// Refund a paid order; its numbers return to the pool while sales are open.
#[utoipa::path(post, path = "/v1/raffles/{id}/orders/{order_id}/refund", tag = "orders",
    params(("id" = Uuid, Path), ("order_id" = Uuid, Path)), request_body = RefundRequest,
    responses((status = 200, body = OrderBody, headers(("Tombola-Position" = String, description = "<raffle id>:<sequence> the command committed at"))), (status = 404), (status = 409)), security(("api_key" = [])))]
pub async fn refund(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((id, order_id)): Path<(Uuid, Uuid)>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(HeaderMap, axum::Json<OrderBody>), ApiError> {
    caller.require(&[Role::Admin, Role::Organizer])?;
    state.authorize(&caller, id).await?;
    let body = super::optional_json::<RefundRequest>(&body?)?;
    let path = format!("/v1/raffles/{id}/orders/{order_id}/refund");
    let meta = command_meta(&caller, &headers, Method::POST, &path, &body)?;
    let command = RaffleCommand::Refund(RefundOrder {
        order_id,
        amount_refunded_minor: body.amount,
        reason: match &body.reason {
            Some(reason) => parse_text("reason", reason, TextKind::Note, 500)?,
            None => "refunded by the organizer".into(),
        },
        refund_id: None,
    });
    let applied = state.engine.execute(id, command, meta).await?;
    let position = super::read::position_headers(id, &applied);
    Ok((
        position,
        axum::Json(committed_order(&state, id, order_id, applied).await?),
    ))
}
