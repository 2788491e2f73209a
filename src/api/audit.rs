//! The audit trail's proofs over HTTP: hash-chain verification, the draw and its
//! verification, and the event log export. Each is a long read of the whole stream, so they
//! share the node's limit on heavy reads (429 + Retry-After beyond it).

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tombola_domain::RaffleEvent;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::{AppState, Path, Query};
use crate::audit::chain::{verify_raffle, Anchor, ChainReport, Expectations};
use crate::audit::draw::{verify_draw, DrawVerification, DrawnWinner, ALGORITHM};
use crate::store::RAFFLE_STREAM;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyParams {
    /// Heads recorded earlier, `SEQUENCE:HASH`, comma-separated: proves the tail was not
    /// cut off or rewritten since.
    pub expect_head: Option<String>,
    /// Receipts of paid orders, `SEQUENCE:HASH`, comma-separated.
    pub receipt: Option<String>,
}

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

/// Recompute the raffle's hash chain; report the first broken link or the head.
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
    let _permit = state.heavy_read()?;
    let report = verify_raffle(state.engine.store().pool(), id, &expectations, |_| {}).await?;
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
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin, Role::Organizer])?;
    state.authorize(&caller, id).await?;
    let permit = state.heavy_read()?;
    let options = state.engine.store().pool().connect_options();
    let stream = crate::export::events::events_ndjson(&options, id).await?;
    // The permit lives as long as the body: the export counts until its last byte.
    let body = stream.map(move |chunk| {
        let _ = &permit;
        chunk
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"events.ndjson\"",
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
