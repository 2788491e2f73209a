//! Endpoints: where an organizer wants messages, which ones, and the secret that signs them.
//! An organizer's key sees and manages its own; an admin's sees all and may register
//! endpoints for every organizer's raffles (no organizer). The secret is shown once, when
//! made; a rotation keeps the previous one signing for a grace period.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::PgPool;
use tombola_domain::{parse_text, TextKind};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{messages, signature, targets, Config};

pub const MAX_DESCRIPTION: usize = 500;
pub const MAX_RATE_LIMIT: u32 = 10_000;

/// An endpoint as its owner sees it (never its secret).
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Endpoint {
    #[sqlx(rename = "endpoint_id")]
    pub id: Uuid,
    /// The organizer whose raffles it hears about; none: every organizer's (admins only).
    pub organizer_id: Option<String>,
    pub url: String,
    pub description: String,
    /// The message types it receives; empty: all of them.
    pub event_types: Vec<String>,
    /// Only this raffle's messages, if set.
    pub raffle_id: Option<Uuid>,
    pub enabled: bool,
    /// Why it was disabled: `gone` (it answered 410), `failing` (five days without a
    /// success), `manual`.
    pub disabled_reason: Option<String>,
    /// Most messages sent to it per second, all nodes together; none: no limit.
    pub rate_limit_per_sec: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Failed attempts since its last success.
    pub consecutive_failures: i32,
    /// Failing without a success since then.
    pub failing_since: Option<DateTime<Utc>>,
    /// Its circuit is open (no attempts) until then; after it, one probe at a time.
    pub circuit_open_until: Option<DateTime<Utc>>,
    /// A rotated secret still signs (beside the new one) until then.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "endpoint_id, organizer_id, url, description, event_types, raffle_id, \
    enabled, disabled_reason, rate_limit_per_sec, created_at, updated_at, consecutive_failures, \
    failing_since, circuit_open_until, previous_secret_expires_at";

/// `POST /v1/webhook-endpoints`
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct NewEndpoint {
    /// Where to POST messages: https (plain http and private addresses only where the
    /// server allows them).
    #[schema(max_length = 2000)]
    pub url: String,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// Message types to receive (`GET /v1/webhook-event-types`); empty or absent: all.
    #[schema(max_items = 10)]
    pub event_types: Option<Vec<String>>,
    /// Only this raffle's messages.
    pub raffle_id: Option<Uuid>,
    /// Default true.
    pub enabled: Option<bool>,
    #[schema(minimum = 1, maximum = 10000)]
    pub rate_limit_per_sec: Option<u32>,
    /// Admins only: the organizer whose raffles it hears about (default: every organizer).
    #[schema(max_length = 100)]
    pub organizer_id: Option<String>,
}

/// `PATCH /v1/webhook-endpoints/{id}`: the fields given change; `null` clears
/// `raffle_id` and `rate_limit_per_sec`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct PatchEndpoint {
    #[schema(max_length = 2000)]
    pub url: Option<String>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[schema(max_items = 10)]
    pub event_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>, nullable)]
    pub raffle_id: Option<Option<Uuid>>,
    /// Enabling an endpoint also closes its circuit and forgets its failures.
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, nullable, minimum = 1, maximum = 10000)]
    pub rate_limit_per_sec: Option<Option<u32>>,
}

/// A field that is present, even as `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("webhook endpoint not found")]
    NotFound,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> EndpointError {
    EndpointError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Whose endpoints a caller manages: one organizer's, or (admins) everyone's.
#[derive(Debug, Clone)]
pub enum Scope {
    All,
    Organizer(String),
}

impl Scope {
    fn organizer(&self) -> Option<&str> {
        match self {
            Self::All => None,
            Self::Organizer(o) => Some(o),
        }
    }
}

async fn check_url(url: &str, config: &Config) -> Result<String, EndpointError> {
    targets::check(url, config.allow_private_targets)
        .await
        .map(|u| u.to_string())
        .map_err(|refused| invalid("url", refused.0))
}

fn check_types(types: &[String]) -> Result<Vec<String>, EndpointError> {
    if types.len() > messages::TYPES.len() {
        return Err(invalid("event_types", "lists more types than there are"));
    }
    let mut out: Vec<String> = Vec::new();
    for t in types {
        if !messages::is_type(t) {
            return Err(invalid(
                "event_types",
                format!("unknown type {t:?} (see GET /v1/webhook-event-types)"),
            ));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

fn check_rate(rate: Option<u32>) -> Result<Option<i32>, EndpointError> {
    match rate {
        Some(r) if !(1..=MAX_RATE_LIMIT).contains(&r) => Err(invalid(
            "rate_limit_per_sec",
            format!("must be 1 to {MAX_RATE_LIMIT}"),
        )),
        other => Ok(other.map(|r| r as i32)),
    }
}

fn check_description(text: Option<&str>) -> Result<String, EndpointError> {
    text.map(|d| parse_text("description", d, TextKind::Note, MAX_DESCRIPTION))
        .transpose()
        .map_err(|e| invalid("description", e.reason))
        .map(Option::unwrap_or_default)
}

/// Creates an endpoint; returns it with its secret, which is never shown again.
pub async fn create(
    pool: &PgPool,
    config: &Config,
    organizer_id: Option<String>,
    new: NewEndpoint,
    now: DateTime<Utc>,
) -> Result<(Endpoint, String), EndpointError> {
    let description = check_description(new.description.as_deref())?;
    let event_types = check_types(new.event_types.as_deref().unwrap_or_default())?;
    let rate = check_rate(new.rate_limit_per_sec)?;
    let url = check_url(&new.url, config).await?;
    let secret = signature::new_secret();
    let endpoint = sqlx::query_as(&format!(
        "INSERT INTO webhook_endpoints (endpoint_id, organizer_id, url, description, event_types, \
           raffle_id, enabled, disabled_reason, rate_limit_per_sec, secret, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $7 THEN NULL ELSE 'manual' END, $8, $9, $10, $10) \
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(organizer_id)
    .bind(url)
    .bind(description)
    .bind(&event_types)
    .bind(new.raffle_id)
    .bind(new.enabled.unwrap_or(true))
    .bind(rate)
    .bind(&secret)
    .bind(now)
    .fetch_one(pool)
    .await?;
    Ok((endpoint, secret))
}

pub async fn list(pool: &PgPool, scope: &Scope) -> Result<Vec<Endpoint>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE ($1::text IS NULL OR organizer_id = $1) \
         ORDER BY created_at, endpoint_id"
    ))
    .bind(scope.organizer())
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, scope: &Scope, id: Uuid) -> Result<Endpoint, EndpointError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhook_endpoints \
         WHERE endpoint_id = $1 AND ($2::text IS NULL OR organizer_id = $2)"
    ))
    .bind(id)
    .bind(scope.organizer())
    .fetch_optional(pool)
    .await?
    .ok_or(EndpointError::NotFound)
}

pub async fn update(
    pool: &PgPool,
    config: &Config,
    scope: &Scope,
    id: Uuid,
    patch: PatchEndpoint,
    now: DateTime<Utc>,
) -> Result<Endpoint, EndpointError> {
    get(pool, scope, id).await?;
    let description = patch
        .description
        .as_deref()
        .map(|d| check_description(Some(d)))
        .transpose()?;
    let event_types = patch.event_types.as_deref().map(check_types).transpose()?;
    let rate = patch.rate_limit_per_sec.map(check_rate).transpose()?;
    let url = match &patch.url {
        Some(url) => Some(check_url(url, config).await?),
        None => None,
    };
    sqlx::query_as(&format!(
        "UPDATE webhook_endpoints SET url = coalesce($3, url), \
           description = coalesce($4, description), event_types = coalesce($5, event_types), \
           raffle_id = CASE WHEN $6 THEN $7 ELSE raffle_id END, \
           rate_limit_per_sec = CASE WHEN $8 THEN $9 ELSE rate_limit_per_sec END, \
           enabled = coalesce($10, enabled), \
           disabled_reason = CASE WHEN $10 IS NULL THEN disabled_reason \
                                  WHEN $10 THEN NULL ELSE 'manual' END, \
           consecutive_failures = CASE WHEN $10 THEN 0 ELSE consecutive_failures END, \
           failing_since = CASE WHEN $10 THEN NULL ELSE failing_since END, \
           circuit_open_until = CASE WHEN $10 THEN NULL ELSE circuit_open_until END, \
           circuit_opened = CASE WHEN $10 THEN 0 ELSE circuit_opened END, \
           updated_at = $11 \
         WHERE endpoint_id = $1 AND ($2::text IS NULL OR organizer_id = $2) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(scope.organizer())
    .bind(url)
    .bind(description)
    .bind(event_types)
    .bind(patch.raffle_id.is_some())
    .bind(patch.raffle_id.flatten())
    .bind(rate.is_some())
    .bind(rate.flatten())
    .bind(patch.enabled)
    .bind(now)
    .fetch_optional(pool)
    .await?
    .ok_or(EndpointError::NotFound)
}

/// Deletes an endpoint and its pending deliveries (their messages and the delivery streams
/// stay: the log is never edited).
pub async fn delete(pool: &PgPool, scope: &Scope, id: Uuid) -> Result<(), EndpointError> {
    let deleted = sqlx::query(
        "DELETE FROM webhook_endpoints WHERE endpoint_id = $1 AND ($2::text IS NULL OR organizer_id = $2)",
    )
    .bind(id)
    .bind(scope.organizer())
    .execute(pool)
    .await?;
    if deleted.rows_affected() == 0 {
        return Err(EndpointError::NotFound);
    }
    Ok(())
}

/// A new secret, shown once; the current one keeps signing until `now + grace`.
pub async fn rotate_secret(
    pool: &PgPool,
    scope: &Scope,
    id: Uuid,
    grace: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<(String, DateTime<Utc>), EndpointError> {
    let secret = signature::new_secret();
    let until = chrono::Duration::from_std(grace)
        .ok()
        .and_then(|grace| now.checked_add_signed(grace))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let rotated = sqlx::query(
        "UPDATE webhook_endpoints SET previous_secret = secret, secret = $3, \
           previous_secret_expires_at = $4, updated_at = $5 \
         WHERE endpoint_id = $1 AND ($2::text IS NULL OR organizer_id = $2)",
    )
    .bind(id)
    .bind(scope.organizer())
    .bind(&secret)
    .bind(until)
    .bind(now)
    .execute(pool)
    .await?;
    if rotated.rows_affected() == 0 {
        return Err(EndpointError::NotFound);
    }
    Ok((secret, until))
}
