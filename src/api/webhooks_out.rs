//! Outbound webhooks over HTTP: endpoints (organizers manage their own, admins all), secret
//! rotation, deliveries and their attempts, redelivery and recovery, and the message types.
//! The work is in `crate::webhooks`; these handlers check the caller and the input.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, PartialSchema, ToSchema};
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::{optional_json, ApiJson, AppState, Path, Query};
use crate::webhooks::deliveries::{self, AttemptRecord, Delivery};
use crate::webhooks::endpoints::{
    self, Endpoint, EndpointError, NewEndpoint, PatchEndpoint, Scope,
};
use crate::webhooks::{messages, Webhooks};

const MANAGERS: &[Role] = &[Role::Admin, Role::Organizer];
/// Longest grace period a rotation may give the old secret.
const MAX_GRACE_SECS: u64 = 30 * 24 * 3600;

impl From<EndpointError> for ApiError {
    fn from(error: EndpointError) -> Self {
        match error {
            EndpointError::Invalid { field, reason } => ApiError::invalid(field, reason),
            EndpointError::NotFound => ApiError::NotFound("webhook endpoint"),
            EndpointError::Database(e) => e.into(),
        }
    }
}

fn webhooks(state: &AppState) -> Result<&Webhooks, ApiError> {
    state
        .webhooks
        .as_ref()
        .ok_or(ApiError::NotConfigured("outbound webhooks"))
}

fn scope(caller: &Caller) -> Result<Scope, ApiError> {
    caller.require(MANAGERS)?;
    Ok(match (&caller.role, &caller.organizer_id) {
        (Role::Admin, _) => Scope::All,
        (_, Some(organizer)) => Scope::Organizer(organizer.clone()),
        (_, None) => return Err(ApiError::Forbidden),
    })
}

/// An endpoint as created: with its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// `whsec_…`: verify the `webhook-signature` of every message with it. Not shown again.
    pub secret: String,
}

/// Register an endpoint for outbound webhooks; the answer holds its secret, once.
#[utoipa::path(post, path = "/v1/webhook-endpoints", tag = "webhooks-out", request_body = NewEndpoint,
    responses((status = 201, body = CreatedEndpoint), (status = 422, description = "Invalid endpoint: refused URL, unknown type, no such raffle")),
    security(("api_key" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewEndpoint>,
) -> Result<(StatusCode, axum::Json<CreatedEndpoint>), ApiError> {
    let scope = scope(&caller)?;
    let webhooks = webhooks(&state)?;
    let organizer_id = match (&scope, &body.organizer_id) {
        (Scope::Organizer(own), None) => Some(own.clone()),
        (Scope::Organizer(own), Some(given)) if given == own => Some(own.clone()),
        (Scope::Organizer(_), Some(_)) => {
            return Err(ApiError::invalid(
                "organizer_id",
                "only admins choose the organizer",
            ))
        }
        (Scope::All, given) => given
            .as_deref()
            .map(|o| {
                tombola_domain::parse_text("organizer_id", o, tombola_domain::TextKind::Name, 100)
            })
            .transpose()?,
    };
    if let Some(raffle_id) = body.raffle_id {
        check_raffle(&state, &caller, raffle_id).await?;
    }
    let (endpoint, secret) = endpoints::create(
        &webhooks.pool,
        &webhooks.config,
        organizer_id,
        body,
        webhooks.clock.now(),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedEndpoint { endpoint, secret }),
    ))
}

/// A raffle filter must name a raffle the caller may see.
async fn check_raffle(state: &AppState, caller: &Caller, raffle_id: Uuid) -> Result<(), ApiError> {
    match state.authorize(caller, raffle_id).await {
        Ok(()) => Ok(()),
        Err(ApiError::NotFound(_)) => Err(ApiError::invalid("raffle_id", "no such raffle")),
        Err(other) => Err(other),
    }
}

/// The caller's endpoints (an admin's: all).
#[utoipa::path(get, path = "/v1/webhook-endpoints", tag = "webhooks-out",
    responses((status = 200, body = Vec<Endpoint>)),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<Vec<Endpoint>>, ApiError> {
    let scope = scope(&caller)?;
    let webhooks = webhooks(&state)?;
    Ok(axum::Json(endpoints::list(&webhooks.pool, &scope).await?))
}

#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}", tag = "webhooks-out",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Endpoint)),
    security(("api_key" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Endpoint>, ApiError> {
    let scope = scope(&caller)?;
    let webhooks = webhooks(&state)?;
    Ok(axum::Json(
        endpoints::get(&webhooks.pool, &scope, id).await?,
    ))
}

/// Change an endpoint: the fields given. Enabling it closes its circuit.
#[utoipa::path(patch, path = "/v1/webhook-endpoints/{id}", tag = "webhooks-out",
    params(("id" = Uuid, Path)), request_body = PatchEndpoint,
    responses((status = 200, body = Endpoint)),
    security(("api_key" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    ApiJson(body): ApiJson<PatchEndpoint>,
) -> Result<axum::Json<Endpoint>, ApiError> {
    let scope = scope(&caller)?;
    let webhooks = webhooks(&state)?;
    endpoints::get(&webhooks.pool, &scope, id).await?;
    if let Some(Some(raffle_id)) = body.raffle_id {
        check_raffle(&state, &caller, raffle_id).await?;
    }
    let now = webhooks.clock.now();
    Ok(axum::Json(
        endpoints::update(&webhooks.pool, &webhooks.config, &scope, id, body, now).await?,
    ))
}

/// Delete an endpoint and its pending deliveries (their record stays in the log).
#[utoipa::path(delete, path = "/v1/webhook-endpoints/{id}", tag = "webhooks-out",
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted")),
    security(("api_key" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let scope = scope(&caller)?;
    let webhooks = webhooks(&state)?;
    endpoints::delete(&webhooks.pool, &scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct RotateRequest {
    /// How long the current secret keeps signing beside the new one (default 24 h).
    #[schema(minimum = 0, maximum = 2592000)]
    pub grace_seconds: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    /// The new secret, shown this once.
    pub secret: String,
    /// Until then messages carry two signatures, one per secret.
    pub previous_secret_expires_at: DateTime<Utc>,
}

/// A new signing secret; the current one keeps signing for a grace period.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/rotate-secret", tag = "webhooks-out",
    params(("id" = Uuid, Path)), request_body = RotateRequest,
    responses((status = 200, body = RotatedSecret)),
    security(("api_key" = [])))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    body: axum::body::Bytes,
) -> Result<axum::Json<RotatedSecret>, ApiError> {
    let scope = scope(&caller)?;
    let webhooks = webhooks(&state)?;
    let request: RotateRequest = optional_json(&body)?;
    let grace = match request.grace_seconds {
        Some(s) if s > MAX_GRACE_SECS => {
            return Err(ApiError::invalid(
                "grace_seconds",
                format!("at most {MAX_GRACE_SECS}"),
            ))
        }
        Some(s) => std::time::Duration::from_secs(s),
        None => webhooks.config.rotation_grace,
    };
    let (secret, until) =
        endpoints::rotate_secret(&webhooks.pool, &scope, id, grace, webhooks.clock.now()).await?;
    Ok(axum::Json(RotatedSecret {
        secret,
        previous_secret_expires_at: until,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesParams {
    /// Only deliveries in this state.
    #[param(inline, value_type = Option<String>, pattern = "^(pending|succeeded|dead)$")]
    pub status: Option<DeliveryStatus>,
    /// At most this many, newest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Dead,
}

/// The endpoint's deliveries, newest first.
#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}/deliveries", tag = "webhooks-out",
    params(("id" = Uuid, Path), DeliveriesParams),
    responses((status = 200, body = Vec<Delivery>)),
    security(("api_key" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(params): Query<DeliveriesParams>,
) -> Result<axum::Json<Vec<Delivery>>, ApiError> {
    let scope = scope(&caller)?;
    let webhooks = webhooks(&state)?;
    endpoints::get(&webhooks.pool, &scope, id).await?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1 to 1000"));
    }
    let status = params.status.map(|s| match s {
        DeliveryStatus::Pending => "pending",
        DeliveryStatus::Succeeded => "succeeded",
        DeliveryStatus::Dead => "dead",
    });
    Ok(axum::Json(
        deliveries::list(&webhooks.pool, id, status, i64::from(limit)).await?,
    ))
}

fn check_msg_id(msg_id: &str) -> Result<(), ApiError> {
    let ok = msg_id.len() == 36
        && msg_id.starts_with("msg_")
        && msg_id[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::NotFound("webhook message"))
    }
}

/// Every recorded attempt of one message to the endpoint, from the raffle's delivery stream.
#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}/messages/{msg_id}/attempts", tag = "webhooks-out",
    params(("id" = Uuid, Path), ("msg_id" = String, Path, description = "The `webhook-id` header of the message")),
    responses((status = 200, body = Vec<AttemptRecord>)),
    security(("api_key" = [])))]
pub async fn attempts(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, msg_id)): Path<(Uuid, String)>,
) -> Result<axum::Json<Vec<AttemptRecord>>, ApiError> {
    let scope = scope(&caller)?;
    let webhooks = webhooks(&state)?;
    endpoints::get(&webhooks.pool, &scope, id).await?;
    check_msg_id(&msg_id)?;
    let records = deliveries::attempts(&webhooks.pool, id, &msg_id)
        .await?
        .ok_or(ApiError::NotFound("webhook message"))?;
    Ok(axum::Json(records))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Requeued {
    /// Deliveries queued to be sent again.
    pub requeued: u64,
}

/// Send one message to the endpoint again (with a fresh retry schedule), whatever became of it.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/messages/{msg_id}/redeliver", tag = "webhooks-out",
    params(("id" = Uuid, Path), ("msg_id" = String, Path)),
    responses((status = 202, body = Requeued)),
    security(("api_key" = [])))]
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, msg_id)): Path<(Uuid, String)>,
) -> Result<(StatusCode, axum::Json<Requeued>), ApiError> {
    let scope = scope(&caller)?;
    let webhooks = webhooks(&state)?;
    endpoints::get(&webhooks.pool, &scope, id).await?;
    check_msg_id(&msg_id)?;
    if !deliveries::redeliver(
        &webhooks.pool,
        id,
        &msg_id,
        &caller.actor(),
        webhooks.clock.now(),
    )
    .await?
    {
        return Err(ApiError::NotFound("webhook message"));
    }
    webhooks.wake.notify_one();
    Ok((StatusCode::ACCEPTED, axum::Json(Requeued { requeued: 1 })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecoverParams {
    /// RFC 3339 time: every message to the endpoint since then that it has not received
    /// (failed, or made while it was disabled) is sent.
    #[param(value_type = String, format = DateTime)]
    pub since: DateTime<Utc>,
}

/// Send every message since `since` that the endpoint has not received.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/recover", tag = "webhooks-out",
    params(("id" = Uuid, Path), RecoverParams),
    responses((status = 202, body = Requeued)),
    security(("api_key" = [])))]
pub async fn recover(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(params): Query<RecoverParams>,
) -> Result<(StatusCode, axum::Json<Requeued>), ApiError> {
    let scope = scope(&caller)?;
    let webhooks = webhooks(&state)?;
    endpoints::get(&webhooks.pool, &scope, id).await?;
    let requeued =
        deliveries::recover(&webhooks.pool, id, params.since, webhooks.clock.now()).await?;
    webhooks.wake.notify_one();
    Ok((StatusCode::ACCEPTED, axum::Json(Requeued { requeued })))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventType {
    /// As in the message's `type` and an endpoint's `event_types`.
    pub r#type: &'static str,
    pub description: &'static str,
    /// The schema of the message's `data` in this document's components.
    pub schema: String,
}

/// The message types outbound webhooks carry; each message's body is
/// `{"type", "timestamp", "data"}` with `data` as the type's schema (see `webhooks` in
/// this document).
#[utoipa::path(get, path = "/v1/webhook-event-types", tag = "webhooks-out",
    responses((status = 200, body = Vec<EventType>)),
    security(("api_key" = [])))]
pub async fn event_types(_caller: Caller) -> axum::Json<Vec<EventType>> {
    axum::Json(
        messages::TYPES
            .iter()
            .map(|(name, description)| EventType {
                r#type: name,
                description,
                schema: format!("#/components/schemas/{}", messages::schema_name(name)),
            })
            .collect(),
    )
}

/// Adds the messages to the OpenAPI document: each type's data schema in the components,
/// and one entry per type under `webhooks` (OpenAPI 3.1) with the signed headers.
pub fn document(doc: &mut Value) {
    let schemas = [
        ("Numbers", messages::Numbers::schema()),
        ("OrderReserved", messages::OrderReserved::schema()),
        ("OrderPaid", messages::OrderPaid::schema()),
        ("TicketsIssued", messages::TicketsIssued::schema()),
        ("OrderEnded", messages::OrderEnded::schema()),
        ("OrderRefunded", messages::OrderRefunded::schema()),
        ("RefundRequired", messages::RefundRequired::schema()),
        ("RaffleChanged", messages::RaffleChanged::schema()),
        ("RaffleDrawn", messages::RaffleDrawn::schema()),
        ("DrawnWinner", messages::DrawnWinner::schema()),
    ];
    for (name, schema) in schemas {
        doc["components"]["schemas"][name] = serde_json::to_value(schema).unwrap_or_default();
    }
    let mut hooks = serde_json::Map::new();
    for (name, description) in messages::TYPES {
        hooks.insert((*name).to_owned(), json!({"post": {
            "summary": description,
            "description": "Signed per Standard Webhooks. Retried on any answer but 2xx; 410 disables the endpoint.",
            "parameters": [
                {"name": "webhook-id", "in": "header", "required": true, "schema": {"type": "string"},
                 "description": "The message's stable id: the same on every retry and redelivery"},
                {"name": "webhook-timestamp", "in": "header", "required": true, "schema": {"type": "string"},
                 "description": "Unix seconds when this attempt was signed"},
                {"name": "webhook-signature", "in": "header", "required": true, "schema": {"type": "string"},
                 "description": "`v1,<base64 HMAC-SHA256>` entries, space-separated (two during a secret rotation)"},
            ],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "required": ["type", "timestamp", "data"],
                "properties": {
                    "type": {"type": "string", "const": name},
                    "timestamp": {"type": "string", "format": "date-time"},
                    "data": {"$ref": format!("#/components/schemas/{}", messages::schema_name(name))}
                }}}}},
            "responses": {"2XX": {"description": "Received"}, "410": {"description": "Gone: the endpoint is disabled"}}
        }}));
    }
    doc["webhooks"] = Value::Object(hooks);
}
