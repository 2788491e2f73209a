//! Inbound provider webhooks: verify, store in the inbox, answer. Nothing heavy happens
//! before the answer; the inbox workers apply the delivery.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::AppState;
use crate::payments::intake::{Delivery, IntakeError};

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAck {
    pub received: bool,
    /// This provider event was already in the inbox.
    pub duplicate: bool,
}

/// Stripe events (`Stripe-Signature` verified). Answered once the delivery is stored.
#[utoipa::path(post, path = "/v1/webhooks/stripe", tag = "webhooks",
    params(("Stripe-Signature" = String, Header, description = "`t=<unix time>,v1=<hex HMAC-SHA256>`")),
    request_body(content = String, content_type = "application/json", description = "A Stripe Event object"),
    responses((status = 200, body = WebhookAck), (status = 400, description = "Bad or missing signature")))]
pub async fn stripe(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<WebhookAck>, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::InvalidWebhook(rejection.body_text()),
    })?;
    let payments = state
        .payments
        .as_ref()
        .ok_or(ApiError::NotConfigured("stripe webhooks"))?;
    let provider = payments
        .provider("stripe")
        .ok_or(ApiError::NotConfigured("stripe webhooks"))?;
    provider
        .verify(&headers, &body, Utc::now())
        .map_err(|e| ApiError::InvalidWebhook(e.to_string()))?;
    let event = match provider.parse(&body) {
        Ok(event) => event,
        Err(error) => {
            let reason = error.to_string();
            keep_unreadable(payments, provider.name(), &body, &reason).await?;
            return Err(ApiError::InvalidWebhook(reason));
        }
    };
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::InvalidWebhook("body is not UTF-8".into()))?;
    let new = payments
        .intake
        .submit(Delivery::new(provider.name(), event, body))
        .await
        .map_err(|error| match error {
            IntakeError::NotStored(reason) => {
                tracing::warn!(%reason, "delivery not stored");
                ApiError::Unavailable {
                    retry_after: std::time::Duration::from_secs(1),
                }
            }
            // "unavailable" promises nothing was stored; the redelivery tells.
            IntakeError::InDoubt(reason) => {
                tracing::warn!(%reason, "delivery may be stored; its insert's reply was lost");
                ApiError::OutcomeUnknown
            }
        })?;
    Ok(axum::Json(WebhookAck {
        received: true,
        duplicate: !new,
    }))
}

/// A verified delivery that cannot be read is still a payment provider telling something:
/// it is kept in the inbox as `rejected` for operators, under its event id when the body
/// has one, else under a digest of the body (so a redelivery lands on the same row).
async fn keep_unreadable(
    payments: &crate::payments::worker::PaymentsIn,
    provider: &str,
    body: &[u8],
    reason: &str,
) -> Result<(), ApiError> {
    let text = String::from_utf8_lossy(body).replace('\0', "\u{fffd}");
    let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|v| v.get(name))
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty() && !s.contains('\0'))
            .map(str::to_owned)
    };
    let event_id = field("id").unwrap_or_else(|| {
        use sha2::Digest;
        format!(
            "unreadable_{}",
            hex::encode(&sha2::Sha256::digest(body)[..16])
        )
    });
    let event_type = field("type").unwrap_or_else(|| "unknown".into());
    let payload = match json {
        Some(_) => text,
        None => serde_json::Value::String(text).to_string(),
    };
    crate::payments::inbox::store_unreadable(
        payments.engine.store(),
        provider,
        &event_id,
        &event_type,
        &payload,
        reason,
    )
    .await
    .map_err(|error| {
        tracing::warn!(%error, "unreadable delivery not stored");
        if error.in_doubt() {
            ApiError::OutcomeUnknown
        } else {
            ApiError::Unavailable {
                retry_after: std::time::Duration::from_secs(1),
            }
        }
    })
}
