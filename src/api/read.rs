//! Read endpoints served from the read models (the projections crate): stats, order search,
//! ticket lookup, projection status. `min_position` (from a command's `Tombola-Position`)
//! makes a read wait, bounded, until the read model has caught up with that command.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tombola_projections::queries::{self, OrderFilter};
use tombola_projections::RuntimeHandle;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::{AppState, Path, Query};
use crate::engine::Applied;

/// The stream position a command committed at: `<raffle id>:<sequence>`.
pub const POSITION: HeaderName = HeaderName::from_static("tombola-position");
const MAX_PAGE: i64 = 500;

#[derive(Clone)]
pub struct ReadSide {
    pub runtime: RuntimeHandle,
    pub min_position_wait: Duration,
}

/// `Tombola-Position` for a command's response; none when it stored nothing new.
pub fn position_headers(raffle_id: Uuid, applied: &Applied) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(last) = applied.events.iter().map(|e| e.sequence).max() {
        if let Ok(value) = HeaderValue::from_str(&format!("{raffle_id}:{last}")) {
            headers.insert(POSITION, value);
        }
    }
    headers
}

impl AppState {
    pub(super) fn read_side(&self) -> Result<&ReadSide, ApiError> {
        self.read
            .as_ref()
            .ok_or(ApiError::NotConfigured("read models"))
    }
}

/// Waits until `projections` have applied `raffle_id` up to `min_position`, if given.
pub(super) async fn reach(
    read: &ReadSide,
    raffle_id: Uuid,
    min_position: Option<&str>,
    projections: &[&str],
) -> Result<(), ApiError> {
    let Some(position) = min_position else {
        return Ok(());
    };
    let invalid = || {
        ApiError::invalid(
            "min_position",
            "must be <raffle id>:<sequence> or <sequence>",
        )
    };
    let sequence = match position.split_once(':') {
        // The hyphenated form only, as the header gives it and the schema's pattern says.
        Some((raffle, sequence)) if raffle.len() == 36 => {
            let raffle: Uuid = raffle.parse().map_err(|_| invalid())?;
            if raffle != raffle_id {
                return Err(ApiError::invalid("min_position", "names another raffle"));
            }
            sequence
        }
        Some(_) => return Err(invalid()),
        None => position,
    };
    // Digits only (`u64::from_str` would also take a leading `+`).
    if sequence.is_empty() || sequence.len() > 19 || !sequence.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let sequence: u64 = sequence.parse().map_err(|_| invalid())?;
    let reached = read
        .runtime
        .wait_for(projections, raffle_id, sequence, read.min_position_wait)
        .await?;
    if reached {
        Ok(())
    } else {
        Err(ApiError::Unavailable {
            retry_after: Duration::from_secs(1),
        })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PositionQuery {
    /// Wait (bounded) until the read model reflects this position, from a command's
    /// `Tombola-Position` header.
    #[param(
        pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}:)?[0-9]{1,19}$"
    )]
    pub min_position: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrdersByStatusBody {
    pub reserved: i64,
    pub paid: i64,
    pub expired: i64,
    pub released: i64,
    pub refund_required: i64,
    pub refunded: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HourBody {
    pub hour: DateTime<Utc>,
    pub tickets: i64,
    pub orders: i64,
    pub revenue_minor: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RaffleStatsBody {
    pub raffle_id: Uuid,
    pub status: String,
    pub ticket_count: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub currency: String,
    /// Paid orders less refunds, in minor units.
    pub revenue_minor: i64,
    pub orders: OrdersByStatusBody,
    pub reservations: i64,
    pub expirations: i64,
    pub payments: i64,
    pub late_payments: i64,
    pub refunds_required: i64,
    /// Share of reservations whose hold ran out.
    pub hold_expiry_rate: f64,
    /// Share of reservations that were paid.
    pub conversion_rate: f64,
    pub sales_per_hour: Vec<HourBody>,
}

/// A raffle's figures from the read model: counts, revenue, orders by status, rates, sales
/// per hour.
#[utoipa::path(get, path = "/v1/raffles/{id}/stats", tag = "read",
    params(("id" = Uuid, Path), PositionQuery),
    responses((status = 200, body = RaffleStatsBody), (status = 404),
        (status = 503, description = "The read model had not reached min_position in time")),
    security(("api_key" = [])))]
pub async fn raffle_stats(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(query): Query<PositionQuery>,
) -> Result<axum::Json<RaffleStatsBody>, ApiError> {
    state.authorize(&caller, id).await?;
    let read = state.read_side()?;
    reach(read, id, query.min_position.as_deref(), &["raffle_stats"]).await?;
    let (t, hourly) = queries::raffle_stats(read.runtime.read_pool(), id)
        .await?
        .ok_or(ApiError::NotFound("raffle stats"))?;
    Ok(axum::Json(RaffleStatsBody {
        raffle_id: id,
        available: t.available(),
        hold_expiry_rate: t.hold_expiry_rate(),
        conversion_rate: t.conversion_rate(),
        status: t.status,
        ticket_count: t.ticket_count,
        reserved: t.reserved,
        sold: t.sold,
        currency: t.currency,
        revenue_minor: t.revenue_minor,
        orders: OrdersByStatusBody {
            reserved: t.orders.reserved,
            paid: t.orders.paid,
            expired: t.orders.expired,
            released: t.orders.released,
            refund_required: t.orders.refund_required,
            refunded: t.orders.refunded,
        },
        reservations: t.reservations,
        expirations: t.expirations,
        payments: t.payments,
        late_payments: t.late_payments,
        refunds_required: t.refunds_required,
        sales_per_hour: hourly
            .into_iter()
            .map(|(hour, tickets, orders, revenue_minor)| HourBody {
                hour,
                tickets,
                orders,
                revenue_minor,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PlatformQuery {
    /// Admin keys only: one organizer's figures.
    pub organizer_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CurrencyTotalsBody {
    pub currency: String,
    pub raffles: i64,
    pub raffles_on_sale: i64,
    pub tickets_sold: i64,
    pub tickets_reserved: i64,
    pub orders_paid: i64,
    pub reservations: i64,
    pub revenue_minor: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlatformStatsBody {
    /// Whose raffles: the caller's organizer, or every organizer's (`null`, admin keys).
    pub organizer_id: Option<String>,
    pub by_currency: Vec<CurrencyTotalsBody>,
}

/// Totals across raffles per currency: every organizer's for admin keys, the key's own
/// organizer's otherwise.
#[utoipa::path(get, path = "/v1/stats", tag = "read", params(PlatformQuery),
    responses((status = 200, body = PlatformStatsBody), (status = 403)),
    security(("api_key" = [])))]
pub async fn platform_stats(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<PlatformQuery>,
) -> Result<axum::Json<PlatformStatsBody>, ApiError> {
    let organizer_id = match (caller.role, &caller.organizer_id, query.organizer_id) {
        (Role::Admin, _, asked) => asked,
        (_, Some(own), None) => Some(own.clone()),
        (_, Some(own), Some(asked)) if *own == asked => Some(asked),
        _ => return Err(ApiError::Forbidden),
    };
    let read = state.read_side()?;
    let totals = queries::platform_stats(read.runtime.read_pool(), organizer_id.as_deref()).await?;
    Ok(axum::Json(PlatformStatsBody {
        organizer_id,
        by_currency: totals
            .into_iter()
            .map(|t| CurrencyTotalsBody {
                currency: t.currency,
                raffles: t.raffles,
                raffles_on_sale: t.raffles_on_sale,
                tickets_sold: t.tickets_sold,
                tickets_reserved: t.tickets_reserved,
                orders_paid: t.orders_paid,
                reservations: t.reservations,
                revenue_minor: t.revenue_minor,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct OrdersQuery {
    /// reserved, paid, expired, released, refund_required or refunded.
    #[param(pattern = "^(reserved|paid|expired|released|refund_required|refunded)$")]
    pub status: Option<String>,
    /// Part of the buyer's name, e-mail or phone, or of the payment reference.
    pub q: Option<String>,
    /// 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// The last order id of the previous page.
    pub after: Option<Uuid>,
    /// As for the other read endpoints.
    #[param(
        pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}:)?[0-9]{1,19}$"
    )]
    pub min_position: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderRowBody {
    pub order_id: Uuid,
    pub status: String,
    pub buyer_name: String,
    pub buyer_email: String,
    pub buyer_phone: Option<String>,
    pub numbers: Vec<i32>,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method: Option<String>,
    pub payment_reference: Option<String>,
    pub reserved_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub released_at: Option<DateTime<Utc>>,
    pub refunded_at: Option<DateTime<Utc>>,
    pub late_payment: bool,
    pub refund_required: bool,
    pub amount_refunded_minor: i64,
    /// Once paid: `SEQUENCE:HASH` of the event that issued the tickets (the receipt that
    /// `tombola audit verify --receipt` checks).
    pub receipt: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPageBody {
    pub orders: Vec<OrderRowBody>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next_after: Option<Uuid>,
}

const STATUSES: &[&str] = &[
    "reserved",
    "paid",
    "expired",
    "released",
    "refund_required",
    "refunded",
];

/// A raffle's orders from the read model, by order id, filtered and searched.
#[utoipa::path(get, path = "/v1/raffles/{id}/orders", tag = "read",
    params(("id" = Uuid, Path), OrdersQuery),
    responses((status = 200, body = OrderPageBody), (status = 404), (status = 422),
        (status = 503, description = "The read model had not reached min_position in time")),
    security(("api_key" = [])))]
pub async fn orders(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(query): Query<OrdersQuery>,
) -> Result<axum::Json<OrderPageBody>, ApiError> {
    state.authorize(&caller, id).await?;
    if let Some(status) = &query.status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(ApiError::invalid(
                "status",
                "must be reserved, paid, expired, released, refund_required or refunded",
            ));
        }
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1 to 500"));
    }
    let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if q.is_some_and(|q| q.chars().count() > 200) {
        return Err(ApiError::invalid("q", "must be at most 200 characters"));
    }
    let read = state.read_side()?;
    reach(read, id, query.min_position.as_deref(), &["orders"]).await?;
    let rows = queries::orders(
        read.runtime.read_pool(),
        id,
        &OrderFilter {
            status: query.status.as_deref(),
            q,
            after: query.after,
            limit: limit + 1,
        },
    )
    .await?;
    let more = rows.len() as i64 > limit;
    let orders: Vec<OrderRowBody> = rows
        .into_iter()
        .take(limit as usize)
        .map(|o| OrderRowBody {
            order_id: o.order_id,
            status: o.status,
            buyer_name: o.buyer_name,
            buyer_email: o.buyer_email,
            buyer_phone: o.buyer_phone,
            numbers: o.numbers,
            amount_minor: o.amount_minor,
            currency: o.currency,
            payment_method: o.payment_method,
            payment_reference: o.payment_reference,
            reserved_at: o.reserved_at,
            expires_at: o.expires_at,
            paid_at: o.paid_at,
            expired_at: o.expired_at,
            released_at: o.released_at,
            refunded_at: o.refunded_at,
            late_payment: o.late_payment,
            refund_required: o.refund_required,
            amount_refunded_minor: o.amount_refunded_minor,
            receipt: o.receipt,
        })
        .collect();
    let next_after = if more {
        orders.last().map(|o| o.order_id)
    } else {
        None
    };
    Ok(axum::Json(OrderPageBody { orders, next_after }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TicketBody {
    pub number: u32,
    /// `free`, `held` or `sold`.
    pub status: String,
    pub order_id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
}

/// Who holds or owns a number, from the read model.
#[utoipa::path(get, path = "/v1/raffles/{id}/tickets/{number}", tag = "read",
    params(("id" = Uuid, Path), ("number" = u32, Path), PositionQuery),
    responses((status = 200, body = TicketBody), (status = 404),
        (status = 503, description = "The read model had not reached min_position in time")),
    security(("api_key" = [])))]
pub async fn ticket(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, number)): Path<(Uuid, u32)>,
    Query(query): Query<PositionQuery>,
) -> Result<axum::Json<TicketBody>, ApiError> {
    state.authorize(&caller, id).await?;
    let range = state
        .engine
        .read(id, |raffle| {
            raffle
                .config()
                .map(|c| c.first_number..=c.first_number + (c.ticket_count - 1))
        })
        .await?
        .ok_or(ApiError::NotFound("raffle"))?;
    if !range.contains(&number) {
        return Err(ApiError::NotFound("ticket"));
    }
    let read = state.read_side()?;
    reach(read, id, query.min_position.as_deref(), &["tickets"]).await?;
    let found = queries::ticket(read.runtime.read_pool(), id, number).await?;
    Ok(axum::Json(match found {
        Some((order_id, status, since)) => TicketBody {
            number,
            status,
            order_id: Some(order_id),
            since: Some(since),
        },
        None => TicketBody {
            number,
            status: "free".into(),
            order_id: None,
            since: None,
        },
    }))
}

/// Each projection's version, state, lag (events and seconds, per raffle and overall) and
/// last error. Admin keys only.
#[utoipa::path(get, path = "/v1/admin/projections", tag = "admin",
    responses((status = 200, description = "Status of every projection"), (status = 403)),
    security(("api_key" = [])))]
pub async fn projections_status(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<tombola_projections::Status>, ApiError> {
    caller.require(&[Role::Admin])?;
    let read = state.read_side()?;
    Ok(axum::Json(read.runtime.status().await?))
}

/// Start rebuilding a projection (every raffle) in the server: shadow tables, then an atomic
/// swap; the live tables keep serving meanwhile. Progress shows in the projections status.
#[utoipa::path(post, path = "/v1/admin/projections/{name}/rebuild", tag = "admin",
    params(("name" = String, Path)),
    responses((status = 202, description = "Rebuild started"), (status = 403), (status = 404)),
    security(("api_key" = [])))]
pub async fn rebuild(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    caller.require(&[Role::Admin])?;
    let read = state.read_side()?;
    if !read.runtime.projections().iter().any(|p| p.name() == name) {
        return Err(ApiError::NotFound("projection"));
    }
    let runtime = read.runtime.clone();
    tokio::spawn(async move {
        match runtime.rebuild(&name, None, |_| {}).await {
            Ok(()) => tracing::info!(projection = %name, "rebuild swapped in"),
            Err(error) => tracing::error!(projection = %name, %error, "rebuild failed"),
        }
    });
    Ok(axum::http::StatusCode::ACCEPTED)
}
