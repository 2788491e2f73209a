//! `/v1/raffles`: create, read, list, run the sale, draw; availability for number pickers.

use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use tombola_domain::{
    parse_text, Bundle, CreateRaffle, Currency, LatePaymentPolicy, PlusAddressing, Prize,
    RaffleCommand, RaffleEvent, RaffleStatus, TextKind, TicketState,
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::views::{BundleBody, PrizeBody, RaffleBody, WinnerBody};
use super::{command_meta, ApiJson, AppState, Path, Query};

const ORGANIZERS: &[Role] = &[Role::Admin, Role::Organizer];

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRaffleRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub title: String,
    /// 1 to 10,000,000.
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub ticket_count: u32,
    /// 0 or 1 (default 1).
    #[serde(default = "one")]
    #[schema(minimum = 0, maximum = 1)]
    pub first_number: u32,
    /// Zero-padding width for display; default: the digits of the largest number.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10)]
    pub number_width: Option<u8>,
    /// Integer minor units, at most 99,999,999 (what a payment provider accepts).
    #[schema(minimum = 1, maximum = 99_999_999)]
    pub price_minor: i64,
    /// ISO 4217, e.g. `USD`.
    #[schema(pattern = "^[A-Za-z]{3}$")]
    pub currency: String,
    /// E.g. 5 for 40: an order pays the cheapest combination.
    #[serde(default)]
    pub bundles: Vec<BundleBody>,
    /// Default 15.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10_080)]
    pub hold_minutes: Option<u32>,
    /// Longest a hold may be extended to while a payment is pending. Default 72 hours.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 43_200)]
    pub max_hold_minutes: Option<u32>,
    /// Default 100.
    #[serde(default = "hundred")]
    #[schema(minimum = 1, maximum = 100_000)]
    pub max_tickets_per_order: u32,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_tickets_per_buyer: Option<u32>,
    #[serde(default)]
    pub prizes: Vec<PrizeBody>,
    /// Hex SHA-256 of the organizer's secret draw seed.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub draw_commitment: String,
    /// `refund` (default) or `substitute`.
    #[serde(default)]
    #[schema(pattern = "^(refund|substitute)$")]
    pub late_payment_policy: Option<String>,
    /// Required for admin keys; organizer keys create for their own organizer.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    pub organizer_id: Option<String>,
    /// Whether `ana+1@example.com` and `ana@example.com` are one buyer for
    /// `max_tickets_per_buyer`: `separate_buyers` (default) or `same_buyer`.
    #[serde(default)]
    #[schema(pattern = "^(separate_buyers|same_buyer)$")]
    pub plus_addressing: Option<String>,
    /// IANA time zone the raffle's exports show times in, e.g. `America/Mexico_City`.
    /// Default `UTC`.
    #[serde(default)]
    #[schema(max_length = 64, pattern = "^[A-Za-z][A-Za-z0-9/_+-]*$")]
    pub time_zone: Option<String>,
}

fn one() -> u32 {
    1
}

fn hundred() -> u32 {
    100
}

impl CreateRaffleRequest {
    fn into_command(self, raffle_id: Uuid, caller: &Caller) -> Result<CreateRaffle, ApiError> {
        let organizer_id = match (caller.role, &caller.organizer_id, self.organizer_id) {
            (Role::Admin, _, Some(organizer)) => organizer,
            (Role::Admin, _, None) => {
                return Err(ApiError::invalid(
                    "organizer_id",
                    "admin keys must name the organizer",
                ))
            }
            (_, Some(own), None) => own.clone(),
            (_, Some(own), Some(given)) if *own == given => given,
            _ => return Err(ApiError::Forbidden),
        };
        let late_payment_policy = match self.late_payment_policy.as_deref() {
            None | Some("refund") => LatePaymentPolicy::Refund,
            Some("substitute") => LatePaymentPolicy::Substitute,
            Some(_) => {
                return Err(ApiError::invalid(
                    "late_payment_policy",
                    "must be refund or substitute",
                ))
            }
        };
        let plus_addressing = match self.plus_addressing.as_deref() {
            None | Some("separate_buyers") => PlusAddressing::SeparateBuyers,
            Some("same_buyer") => PlusAddressing::SameBuyer,
            Some(_) => {
                return Err(ApiError::invalid(
                    "plus_addressing",
                    "must be separate_buyers or same_buyer",
                ))
            }
        };
        let minutes = |m: Option<u32>, field: &str| {
            m.map(|m| {
                m.checked_mul(60)
                    .ok_or_else(|| ApiError::invalid(field, "too large"))
            })
            .transpose()
        };
        Ok(CreateRaffle {
            raffle_id,
            title: self.title,
            organizer_id,
            ticket_count: self.ticket_count,
            first_number: self.first_number,
            number_width: self.number_width,
            price_minor: self.price_minor,
            currency: Currency::parse(&self.currency)?,
            bundles: self
                .bundles
                .into_iter()
                .map(|b| Bundle {
                    quantity: b.quantity,
                    price_minor: b.price_minor,
                })
                .collect(),
            hold_seconds: minutes(self.hold_minutes, "hold_minutes")?,
            max_hold_seconds: minutes(self.max_hold_minutes, "max_hold_minutes")?,
            max_tickets_per_order: self.max_tickets_per_order,
            max_tickets_per_buyer: self.max_tickets_per_buyer,
            prizes: self
                .prizes
                .into_iter()
                .map(|p| Prize {
                    name: p.name,
                    early_bird_cutoff: p.early_bird_cutoff,
                })
                .collect(),
            draw_commitment: self.draw_commitment,
            late_payment_policy,
            plus_addressing,
            time_zone: self.time_zone,
        })
    }
}

/// Create a raffle (draft). Admin or organizer.
#[utoipa::path(post, path = "/v1/raffles", tag = "raffles", request_body = CreateRaffleRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: 1 to 255 visible ASCII characters",
        pattern = "^[!-~]([ !-~]{0,253}[!-~])?$")),
    responses((status = 201, body = RaffleBody, headers(("Tombola-Position" = String, description = "<raffle id>:<sequence> the command committed at"))), (status = 422, description = "Invalid raffle")),
    security(("api_key" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateRaffleRequest>,
) -> Result<(StatusCode, HeaderMap, axum::Json<RaffleBody>), ApiError> {
    caller.require(ORGANIZERS)?;
    let meta = command_meta(&caller, &headers, Method::POST, "/v1/raffles", &body)?;
    if let Some(zone) = &body.time_zone {
        known_time_zone(&state, zone.trim()).await?;
    }
    let raffle_id = Uuid::now_v7();
    let command = RaffleCommand::Create(body.into_command(raffle_id, &caller)?);
    let applied = state.engine.execute(raffle_id, command, meta).await?;
    // A replayed creation names the raffle the first attempt created.
    let raffle_id = applied
        .events
        .iter()
        .find_map(|e| match &e.event {
            RaffleEvent::RaffleCreated { config, .. } => Some(config.raffle_id),
            _ => None,
        })
        .unwrap_or(raffle_id);
    Ok((
        StatusCode::CREATED,
        super::read::position_headers(raffle_id, &applied),
        axum::Json(read_raffle(&state, raffle_id).await?),
    ))
}

/// Refuses a time zone PostgreSQL does not know: exports convert times with its zone
/// database, so that is the one that must have it (the domain only checks the name's shape).
async fn known_time_zone(state: &AppState, zone: &str) -> Result<(), ApiError> {
    let known: bool = tombola_domain::is_time_zone_name(zone)
        && sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1)")
            .bind(zone)
            .fetch_one(state.engine.store().pool())
            .await?;
    if known {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "time_zone",
            "must be an IANA time zone name such as America/Mexico_City",
        ))
    }
}

/// A page size: `default` when absent, refused outside `1..=max`.
pub(super) fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(default),
        Some(limit) if (1..=max).contains(&limit) => Ok(limit),
        Some(_) => Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {max}"),
        )),
    }
}

async fn read_raffle(state: &AppState, raffle_id: Uuid) -> Result<RaffleBody, ApiError> {
    state
        .engine
        .read(raffle_id, RaffleBody::from_raffle)
        .await?
        .ok_or(ApiError::NotFound("raffle"))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only raffles in this status.
    #[param(pattern = "^(draft|on_sale|closed|drawn|cancelled)$")]
    pub status: Option<String>,
    /// Page size, at most 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// Raffles created after this id (ids are time-ordered): the next page.
    pub after: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RaffleSummary {
    pub id: Uuid,
    pub title: String,
    pub organizer_id: String,
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RaffleList {
    pub raffles: Vec<RaffleSummary>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<Uuid>,
}

/// List raffles (an organizer's own, or all for admins).
#[utoipa::path(get, path = "/v1/raffles", tag = "raffles", params(ListQuery),
    responses((status = 200, body = RaffleList)), security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<RaffleList>, ApiError> {
    let limit = page_limit(query.limit, 100, 500)?;
    let status = query
        .status
        .as_deref()
        .map(|name| {
            RaffleStatus::parse(name).ok_or_else(|| {
                ApiError::invalid(
                    "status",
                    "must be draft, on_sale, closed, drawn or cancelled",
                )
            })
        })
        .transpose()?;
    let organizer = if caller.role == Role::Admin {
        None
    } else {
        caller.organizer_id.clone()
    };
    let raffles = crate::store::list_raffles(
        state.engine.store(),
        organizer.as_deref(),
        status.map(RaffleStatus::as_str),
        query.after,
        i64::from(limit),
    )
    .await?;
    let next = (raffles.len() == limit as usize)
        .then(|| raffles.last().map(|r| r.0))
        .flatten();
    Ok(axum::Json(RaffleList {
        raffles: raffles
            .into_iter()
            .map(|(id, title, organizer_id, status)| RaffleSummary {
                id,
                title,
                organizer_id,
                status,
            })
            .collect(),
        next,
    }))
}

/// A raffle with its live counts.
#[utoipa::path(get, path = "/v1/raffles/{id}", tag = "raffles", params(("id" = Uuid, Path)),
    responses((status = 200, body = RaffleBody), (status = 404)), security(("api_key" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<RaffleBody>, ApiError> {
    state.authorize(&caller, id).await?;
    Ok(axum::Json(read_raffle(&state, id).await?))
}

async fn run_command(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    id: Uuid,
    path: &str,
    body: &impl Serialize,
    command: RaffleCommand,
) -> Result<(HeaderMap, axum::Json<RaffleBody>), ApiError> {
    caller.require(ORGANIZERS)?;
    state.authorize(caller, id).await?;
    let meta = command_meta(caller, headers, Method::POST, path, body)?;
    let applied = state.engine.execute(id, command, meta).await?;
    let position = super::read::position_headers(id, &applied);
    Ok((position, axum::Json(read_raffle(state, id).await?)))
}

/// Open sales.
#[utoipa::path(post, path = "/v1/raffles/{id}/open", tag = "raffles", params(("id" = Uuid, Path)),
    responses((status = 200, body = RaffleBody, headers(("Tombola-Position" = String, description = "<raffle id>:<sequence> the command committed at"))), (status = 409)), security(("api_key" = [])))]
pub async fn open(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<(HeaderMap, axum::Json<RaffleBody>), ApiError> {
    run_command(
        &state,
        &caller,
        &headers,
        id,
        &format!("/v1/raffles/{id}/open"),
        &(),
        RaffleCommand::OpenSales,
    )
    .await
}

/// Close sales.
#[utoipa::path(post, path = "/v1/raffles/{id}/close", tag = "raffles", params(("id" = Uuid, Path)),
    responses((status = 200, body = RaffleBody, headers(("Tombola-Position" = String, description = "<raffle id>:<sequence> the command committed at"))), (status = 409)), security(("api_key" = [])))]
pub async fn close(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<(HeaderMap, axum::Json<RaffleBody>), ApiError> {
    run_command(
        &state,
        &caller,
        &headers,
        id,
        &format!("/v1/raffles/{id}/close"),
        &(),
        RaffleCommand::CloseSales,
    )
    .await
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    #[serde(default)]
    #[schema(min_length = 1, max_length = 500)]
    pub reason: Option<String>,
}

/// Cancel the raffle: holds are released and paid orders become refund-required.
#[utoipa::path(post, path = "/v1/raffles/{id}/cancel", tag = "raffles", params(("id" = Uuid, Path)),
    request_body = CancelRequest,
    responses((status = 200, body = RaffleBody, headers(("Tombola-Position" = String, description = "<raffle id>:<sequence> the command committed at"))), (status = 409)), security(("api_key" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(HeaderMap, axum::Json<RaffleBody>), ApiError> {
    let body = super::optional_json::<CancelRequest>(&body?)?;
    let reason = match &body.reason {
        Some(reason) => parse_text("reason", reason, TextKind::Note, 500)?,
        None => "cancelled by the organizer".into(),
    };
    run_command(
        &state,
        &caller,
        &headers,
        id,
        &format!("/v1/raffles/{id}/cancel"),
        &body,
        RaffleCommand::Cancel { reason },
    )
    .await
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrawRequest {
    /// The secret seed whose SHA-256 is the raffle's draw commitment.
    #[schema(min_length = 1, max_length = 1000)]
    pub seed: String,
    /// Entropy published after sales closed (e.g. a lottery result).
    #[schema(min_length = 1, max_length = 1000)]
    pub public_entropy: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DrawResult {
    pub raffle_id: Uuid,
    pub seed: String,
    pub public_entropy: String,
    pub winners: Vec<WinnerBody>,
}

/// Draw the winners (once, after sales closed), verifiably.
#[utoipa::path(post, path = "/v1/raffles/{id}/draw", tag = "raffles", params(("id" = Uuid, Path)),
    request_body = DrawRequest,
    responses((status = 200, body = DrawResult, headers(("Tombola-Position" = String, description = "<raffle id>:<sequence> the command committed at"))), (status = 409), (status = 422)), security(("api_key" = [])))]
pub async fn draw(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    ApiJson(body): ApiJson<DrawRequest>,
) -> Result<(HeaderMap, axum::Json<DrawResult>), ApiError> {
    let (position, raffle) = run_command(
        &state,
        &caller,
        &headers,
        id,
        &format!("/v1/raffles/{id}/draw"),
        &body,
        RaffleCommand::Draw {
            seed: parse_text("seed", &body.seed, TextKind::Exact, 1000)?,
            public_entropy: parse_text(
                "public_entropy",
                &body.public_entropy,
                TextKind::Exact,
                1000,
            )?,
        },
    )
    .await?;
    let draw = DrawResult {
        raffle_id: id,
        seed: body.seed,
        public_entropy: body.public_entropy,
        winners: raffle.0.winners,
    };
    Ok((position, axum::Json(draw)))
}

const MAX_PAGE: u32 = 1_000;

#[derive(Debug, Deserialize, IntoParams)]
pub struct AvailabilityQuery {
    /// First number of the page (default: the raffle's first number).
    pub from: Option<u32>,
    /// Last number of the page, inclusive; a page holds at most 1,000 numbers.
    pub to: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NumberState {
    pub number: u32,
    /// `available`, `reserved` or `sold`.
    pub state: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AvailabilityPage {
    pub from: u32,
    pub to: u32,
    pub available: u64,
    pub numbers: Vec<NumberState>,
}

/// A page of number states, from the engine's live state.
#[utoipa::path(get, path = "/v1/raffles/{id}/availability", tag = "availability",
    params(("id" = Uuid, Path), AvailabilityQuery),
    responses((status = 200, body = AvailabilityPage)), security(("api_key" = [])))]
pub async fn availability(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(query): Query<AvailabilityQuery>,
) -> Result<axum::Json<AvailabilityPage>, ApiError> {
    state.authorize(&caller, id).await?;
    let page = state
        .engine
        .read(id, move |raffle| {
            let config = raffle.config()?;
            let from = query
                .from
                .unwrap_or(config.first_number)
                .max(config.first_number);
            let to = query
                .to
                .unwrap_or(u32::MAX)
                .min(from.saturating_add(MAX_PAGE - 1))
                .min(config.last_number());
            Some((
                from,
                to,
                raffle.available_count(),
                (from..=to)
                    .filter_map(|n| Some((n, raffle.ticket_state(n)?)))
                    .collect::<Vec<_>>(),
            ))
        })
        .await?
        .ok_or(ApiError::NotFound("raffle"))?;
    let (from, to, available, states) = page;
    Ok(axum::Json(AvailabilityPage {
        from,
        to,
        available,
        numbers: states
            .into_iter()
            .map(|(number, s)| NumberState {
                number,
                state: match s {
                    TicketState::Available => "available",
                    TicketState::Reserved => "reserved",
                    TicketState::Sold => "sold",
                }
                .to_owned(),
            })
            .collect(),
    }))
}

/// Every free number at once: a roaring bitmap in its portable serialization
/// (`application/vnd.roaring-bitmap`), readable by any Roaring library.
#[utoipa::path(get, path = "/v1/raffles/{id}/availability/bitmap", tag = "availability",
    params(("id" = Uuid, Path)),
    responses((status = 200, content_type = "application/vnd.roaring-bitmap", body = Vec<u8>)),
    security(("api_key" = [])))]
pub async fn availability_bitmap(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, ApiError> {
    state.authorize(&caller, id).await?;
    let bytes = state
        .engine
        .read(id, |raffle| {
            let mut bytes = Vec::with_capacity(raffle.free_numbers().serialized_size());
            raffle
                .free_numbers()
                .serialize_into(&mut bytes)
                .map(|_| bytes)
                .ok()
        })
        .await?
        .ok_or_else(|| ApiError::internal("bitmap serialization failed"))?;
    Ok((
        [(header::CONTENT_TYPE, "application/vnd.roaring-bitmap")],
        bytes,
    ))
}
