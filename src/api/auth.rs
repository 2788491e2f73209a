//! API keys: `Authorization: Bearer tmb_<key id>_<secret>`. Only SHA-256 of the secret is
//! stored; lookups are cached briefly so a hot key costs no query per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Operators: everything.
    Admin,
    /// An organizer: its own raffles, created and run.
    Organizer,
    /// A sales front end: reserve, release and read.
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Organizer => "organizer",
            Self::Client => "client",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Self::Admin),
            "organizer" => Some(Self::Organizer),
            "client" => Some(Self::Client),
            _ => None,
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: Uuid,
    pub role: Role,
    pub organizer_id: Option<String>,
}

impl Caller {
    pub fn require(&self, allowed: &[Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// Whether this caller may act on a raffle of `organizer_id`.
    pub fn may_access(&self, organizer_id: &str) -> bool {
        self.role == Role::Admin || self.organizer_id.as_deref() == Some(organizer_id)
    }

    pub fn actor(&self) -> String {
        format!("key:{}", self.key_id)
    }
}

const CACHE_TTL: Duration = Duration::from_secs(30);

/// A key's secret hash and caller, or `None` for an unknown or revoked key.
type KeyRecord = Option<(Vec<u8>, Caller)>;
type KeyCache = HashMap<Uuid, (Instant, KeyRecord)>;

pub struct Keys {
    store: Store,
    cache: Mutex<KeyCache>,
}

impl Keys {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Creates a key and returns it in full; it is never shown again.
    pub async fn create(
        store: &Store,
        role: Role,
        organizer_id: Option<&str>,
        label: Option<&str>,
    ) -> Result<String, ApiError> {
        if role != Role::Admin && organizer_id.is_none_or(|o| o.trim().is_empty()) {
            return Err(ApiError::invalid(
                "organizer",
                "required for organizer and client keys",
            ));
        }
        let organizer_id = organizer_id
            .map(|o| {
                tombola_domain::parse_text("organizer", o, tombola_domain::TextKind::Name, 100)
            })
            .transpose()?;
        let key_id = Uuid::new_v4();
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        sqlx::query(
            "INSERT INTO api_keys (key_id, secret_hash, role, organizer_id, label) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key_id)
        .bind(Sha256::digest(secret.as_bytes()).to_vec())
        .bind(role.as_str())
        .bind(organizer_id)
        .bind(label)
        .execute(store.pool())
        .await?;
        Ok(format!("tmb_{}_{secret}", key_id.simple()))
    }

    pub async fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let (key_id, secret) = token
            .strip_prefix("tmb_")
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(id, secret)| Some((Uuid::try_parse(id).ok()?, secret)))
            .ok_or(ApiError::Unauthorized)?;
        let record = self.lookup(key_id).await?;
        let (hash, caller) = record.ok_or(ApiError::Unauthorized)?;
        let presented = Sha256::digest(secret.as_bytes());
        if constant_time_eq(&hash, presented.as_slice()) {
            Ok(caller)
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    async fn lookup(&self, key_id: Uuid) -> Result<KeyRecord, ApiError> {
        if let Some((at, record)) = self.lock().get(&key_id) {
            if at.elapsed() < CACHE_TTL {
                return Ok(record.clone());
            }
        }
        let row: Option<(Vec<u8>, String, Option<String>)> = sqlx::query_as(
            "SELECT secret_hash, role, organizer_id FROM api_keys \
             WHERE key_id = $1 AND revoked_at IS NULL",
        )
        .bind(key_id)
        .fetch_optional(self.store.pool())
        .await?;
        let record = row.and_then(|(hash, role, organizer_id)| {
            Some((
                hash,
                Caller {
                    key_id,
                    role: Role::parse(&role)?,
                    organizer_id,
                },
            ))
        });
        let mut cache = self.lock();
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(key_id, (Instant::now(), record.clone()));
        Ok(record)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of a `Bearer` credential; the scheme is case-insensitive (RFC 9110 §11.1).
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token)
            .ok_or(ApiError::Unauthorized)?;
        let caller = state.keys.verify(token.trim()).await?;
        state.limits.check_key(caller.key_id)?;
        Ok(caller)
    }
}
