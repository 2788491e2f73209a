//! The one HTTP error type. Every failure becomes RFC 9457 problem+json with a stable
//! `type` (`/problems/<code>`), the same `code`, a human `detail`, and the fields a client
//! can act on. 500s are logged and never leak their text.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use tombola_domain::{RaffleError, RejectionKind};

use crate::engine::{EngineError, Rejection};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", .0.error)]
    Rejected(Rejection),
    #[error("{detail}")]
    InvalidJson { detail: String },
    #[error("{field}: {reason}")]
    InvalidRequest { field: String, reason: String },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("this API key may not do that")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this path does not take that method")]
    MethodNotAllowed,
    #[error("the request body is larger than this server accepts")]
    PayloadTooLarge,
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyConflict,
    #[error("too many requests")]
    RateLimited { retry_after: Duration },
    #[error("the raffle is busy")]
    Overloaded { retry_after: Duration },
    #[error("temporarily unavailable")]
    Unavailable { retry_after: Duration },
    #[error("the command may or may not have been applied; retry with the same Idempotency-Key or look it up")]
    OutcomeUnknown,
    #[error("invalid webhook: {0}")]
    InvalidWebhook(String),
    #[error("{0} are not configured on this server")]
    NotConfigured(&'static str),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::Internal(error.to_string())
    }

    pub fn code(&self) -> &str {
        match self {
            Self::Rejected(rejection) => rejection.code(),
            Self::InvalidJson { .. } => "invalid_json",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::IdempotencyConflict => "idempotency_key_reused",
            Self::RateLimited { .. } => "rate_limited",
            Self::Overloaded { .. } => "overloaded",
            Self::Unavailable { .. } => "unavailable",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::InvalidWebhook(_) => "invalid_webhook",
            Self::NotConfigured(_) => "not_configured",
            Self::Internal(_) => "internal_error",
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Rejected(rejection) => rejection_status(&rejection.error),
            Self::InvalidJson { .. } | Self::InvalidWebhook(_) => StatusCode::BAD_REQUEST,
            Self::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::InvalidRequest { .. } | Self::IdempotencyConflict => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded { .. } | Self::Unavailable { .. } | Self::OutcomeUnknown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after }
            | Self::Overloaded { retry_after }
            | Self::Unavailable { retry_after } => Some(*retry_after),
            Self::OutcomeUnknown => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

/// 404 for what does not exist, 409 for state and contention, 422 for invalid commands.
fn rejection_status(error: &RaffleError) -> StatusCode {
    match error.kind() {
        RejectionKind::NotFound => StatusCode::NOT_FOUND,
        RejectionKind::Conflict => StatusCode::CONFLICT,
        RejectionKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl From<tombola_domain::InvalidValue> for ApiError {
    fn from(error: tombola_domain::InvalidValue) -> Self {
        Self::invalid(error.field, error.reason)
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Rejected(rejection) => Self::Rejected(rejection),
            EngineError::IdempotencyConflict => Self::IdempotencyConflict,
            EngineError::Overloaded { retry_after } => Self::Overloaded { retry_after },
            EngineError::Unavailable { reason } => {
                tracing::warn!(%reason, "engine unavailable");
                Self::Unavailable {
                    retry_after: Duration::from_secs(1),
                }
            }
            EngineError::OutcomeUnknown { reason } => {
                tracing::warn!(%reason, "command outcome unknown");
                Self::OutcomeUnknown
            }
            EngineError::ShuttingDown => Self::Unavailable {
                retry_after: Duration::from_secs(5),
            },
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::internal(error)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        Self::internal(error)
    }
}

/// Broken JSON is a 400; well-formed JSON of the wrong shape (unknown field, wrong type,
/// missing field) is an invalid request, 422.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::UNPROCESSABLE_ENTITY => Self::invalid("body", rejection.body_text()),
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            _ => Self::InvalidJson {
                detail: rejection.body_text(),
            },
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            _ => Self::InvalidJson {
                detail: rejection.body_text(),
            },
        }
    }
}

impl ApiError {
    /// A body that `serde_json` refused: broken JSON is 400, the wrong shape 422.
    pub fn body(error: serde_json::Error) -> Self {
        match error.classify() {
            serde_json::error::Category::Data => Self::invalid("body", error.to_string()),
            _ => Self::InvalidJson {
                detail: error.to_string(),
            },
        }
    }
}

/// A path that names nothing (an id that is no UUID) is a 404, exactly like a well-formed
/// id that names nothing: no resource lives there.
impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(_: axum::extract::rejection::PathRejection) -> Self {
        Self::NotFound("resource")
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        Self::invalid("query", rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let detail = match &self {
            Self::Internal(message) => {
                tracing::error!(%message, "internal error");
                "an internal error occurred; it has been logged".to_owned()
            }
            other => other.to_string(),
        };
        let mut body = Map::new();
        body.insert("type".into(), json!(format!("/problems/{}", self.code())));
        body.insert(
            "title".into(),
            json!(status.canonical_reason().unwrap_or("Error")),
        );
        body.insert("status".into(), json!(status.as_u16()));
        body.insert("code".into(), json!(self.code()));
        body.insert("detail".into(), json!(detail));
        match &self {
            Self::Rejected(rejection) => {
                for (key, value) in rejection.data() {
                    body.entry(key).or_insert(value);
                }
            }
            Self::InvalidRequest { field, .. } => {
                body.insert("field".into(), json!(field));
            }
            _ => {}
        }
        if let Some(retry_after) = self.retry_after() {
            body.insert(
                "retry_after_seconds".into(),
                json!(retry_after.as_secs().max(1)),
            );
        }
        let mut response = (status, axum::Json(Value::Object(body))).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(retry_after) = self.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
        }
        response
    }
}
