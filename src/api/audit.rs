//! The audit trail's proofs over HTTP: hash-chain verification, the draw and its
//! verification, and the event log export. Each is a long read of the whole stream, so they
//! share the node's limit on heavy reads (429 + Retry-After beyond it).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tombola_domain::RaffleEvent;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::{AppState, Path, Query};
use crate::audit::chain::{verify_raffle_within, Anchor, ChainReport, Expectations};
use crate::audit::draw::{verify_draw, DrawVerification, DrawnWinner, ALGORITHM};
use crate::export::log::NewExport;
use crate::store::RAFFLE_STREAM;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyParams {
    /// Heads recorded earlier, `SEQUENCE:HASH`, comma-separated: proves the tail was not
    /// cut off or rewritten since.
    #[param(
        pattern = "^\\s*(\\+?0*[1-9][0-9]{0,18}:[0-9a-fA-F]{64})?\\s*(,\\s*(\\+?0*[1-9][0-9]{0,18}:[0-9a-fA-F]{64})?\\s*)*$"
    )]
    pub expect_head: Option<String>,
    /// Receipts of paid orders, `SEQUENCE:HASH`, comma-separated.
    #[param(
        pattern = "^\\s*(\\+?0*[1-9][0-9]{0,18}:[0-9a-fA-F]{64})?\\s*(,\\s*(\\+?0*[1-9][0-9]{0,18}:[0-9a-fA-F]{64})?\\s*)*$"
    )]
    pub receipt: Option<String>,
    /// A `head` printed by an earlier verification that ran out of time (`complete:
    /// false`): go on from there.
    #[param(pattern = "^\\s*\\+?0*[1-9][0-9]{0,18}:[0-9a-fA-F]{64}\\s*$")]
    pub resume: Option<String>,
    /// Time budget in milliseconds, 0 to 10000 (default 10000). The verification stops at
    /// the first page of 5,000 events after it and reports `complete: false` with the
    /// `head` to resume from; at least one page is always verified.
    #[param(minimum = 0, maximum = 10000)]
    pub budget_ms: Option<u64>,
}

/// The longest a verification over HTTP runs (below the server's request timeout).
const MAX_BUDGET_MS: u64 = 10_000;

fn anchors(field: &str, list: Option<&str>) -> Result<Vec<Anchor>, ApiError> {
    list.into_iter()
        .flat_map(|list| list.split(','))
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            part.parse()
                .map_err(|reason: &str| ApiError::invalid(field, reason))
        })
        .collect()
}

/// Recompute the raffle's hash chain; report the first broken link or the head. Bounded in
/// time: a log too long for one request is verified in several, each resuming from the
/// `head` the previous one reported.
#[utoipa::path(get, path = "/v1/raffles/{id}/audit/verify", tag = "audit",
    params(("id" = Uuid, Path), VerifyParams),
    responses((status = 200, body = ChainReport, description = "The verification ran: `intact` says how it ended"),
        (status = 404), (status = 422), (status = 429)),
    security(("api_key" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(params): Query<VerifyParams>,
) -> Result<axum::Json<ChainReport>, ApiError> {
    state.authorize(&caller, id).await?;
    let expectations = Expectations {
        heads: anchors("expect_head", params.expect_head.as_deref())?,
        receipts: anchors("receipt", params.receipt.as_deref())?,
    };
    let resume = params
        .resume
        .as_deref()
        .map(|text| {
            text.parse::<Anchor>()
                .map_err(|reason| ApiError::invalid("resume", reason))
        })
        .transpose()?;
    let budget = params.budget_ms.unwrap_or(MAX_BUDGET_MS);
    if budget > MAX_BUDGET_MS {
        return Err(ApiError::invalid("budget_ms", "must be 0 to 10000"));
    }
    let _permit = state.heavy_read()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(budget);
    let report = verify_raffle_within(
        state.engine.store().pool(),
        id,
        &expectations,
        resume.as_ref(),
        Some(deadline),
        |_| {},
    )
    .await?;
    Ok(axum::Json(report))
}

/// A raffle's draw: the commitment published at creation and, once drawn, what the draw
/// revealed. Everything needed to recompute the winners is in the event log
/// (`/exports/events.ndjson`); the algorithm is documented in docs/AUDIT.md.
#[derive(Debug, Serialize, ToSchema)]
pub struct DrawBody {
    pub raffle_id: Uuid,
    pub algorithm: &'static str,
    /// Hex SHA-256 of the organizer's secret seed, published before sales opened.
    pub commitment: String,
    pub status: String,
    pub drawn: bool,
    pub seed: Option<String>,
    pub public_entropy: Option<String>,
    pub winners: Vec<DrawnWinner>,
    /// Tickets issued now (the candidates, if the draw happened now or happened already).
    pub issued_tickets: u64,
    /// Where to get the inputs: the whole log, hash-chained.
    pub log: String,
}

/// The draw's commitment, and after the draw its revealed inputs and winners.
#[utoipa::path(get, path = "/v1/raffles/{id}/draw", tag = "audit",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = DrawBody), (status = 404)),
    security(("api_key" = [])))]
pub async fn draw(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<DrawBody>, ApiError> {
    state.authorize(&caller, id).await?;
    let (commitment, status, issued_tickets) = state
        .engine
        .read(id, |raffle| {
            let commitment = raffle.config().map(|c| c.draw_commitment.clone());
            (commitment, raffle.status(), raffle.sold_count())
        })
        .await?;
    let commitment = commitment.ok_or(ApiError::NotFound("raffle"))?;
    // The draw is the stream's one WinnersDrawn, near its end: scanned backwards.
    let drawn: Option<String> = sqlx::query_scalar(
        "SELECT payload::text FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
         AND event_type = 'WinnersDrawn' ORDER BY sequence DESC LIMIT 1",
    )
    .bind(RAFFLE_STREAM)
    .bind(id.to_string())
    .fetch_optional(state.engine.store().pool())
    .await?;
    let drawn = drawn
        .map(|payload| serde_json::from_str::<RaffleEvent>(&payload))
        .transpose()
        .map_err(ApiError::internal)?;
    let (seed, public_entropy, winners) = match drawn {
        Some(RaffleEvent::WinnersDrawn {
            seed,
            public_entropy,
            winners,
            ..
        }) => (
            Some(seed),
            Some(public_entropy),
            winners.iter().map(DrawnWinner::from).collect(),
        ),
        _ => (None, None, Vec::new()),
    };
    Ok(axum::Json(DrawBody {
        raffle_id: id,
        algorithm: ALGORITHM,
        commitment,
        status: status.as_str().to_owned(),
        drawn: seed.is_some(),
        seed,
        public_entropy,
        winners,
        issued_tickets,
        log: format!("/v1/raffles/{id}/exports/events.ndjson"),
    }))
}

/// Recompute the winners from the log alone and compare them with the recorded ones.
#[utoipa::path(get, path = "/v1/raffles/{id}/draw/verify", tag = "audit",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = DrawVerification, description = "The verification ran: `verified` says how it ended"),
        (status = 404), (status = 429)),
    security(("api_key" = [])))]
pub async fn draw_verify(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<DrawVerification>, ApiError> {
    state.authorize(&caller, id).await?;
    let _permit = state.heavy_read()?;
    Ok(axum::Json(
        verify_draw(state.engine.store().pool(), id).await?,
    ))
}

/// The raffle's whole event log, in order, one JSON object per line, with each event's
/// stored payload and metadata (hash chain included). Carries buyers' personal data:
/// organizers (their own raffles) and admins only.
#[utoipa::path(get, path = "/v1/raffles/{id}/exports/events.ndjson", tag = "exports",
    params(("id" = Uuid, Path)),
    responses((status = 200, content_type = "application/x-ndjson", description = "The log, streamed"),
        (status = 403), (status = 404), (status = 429)),
    security(("api_key" = [])))]
pub async fn events_ndjson(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin, Role::Organizer])?;
    state.authorize(&caller, id).await?;
    let permit = state.heavy_read()?;
    let options = state.engine.store().pool().connect_options();
    let actor = caller.actor();
    let export = NewExport {
        raffle_id: id,
        actor: &actor,
        source: "api",
        what: "events",
        format: "ndjson",
        filters: serde_json::json!({}),
        request_id: super::exports::request_id(&headers),
    };
    let stream = crate::export::events::events_ndjson(&options, id);
    super::exports::respond(
        &state,
        export,
        "application/x-ndjson",
        "events.ndjson",
        stream,
        permit,
    )
    .await
}
