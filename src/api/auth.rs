//! API keys: `Authorization: Bearer tmb_<key id>_<secret>`. Only SHA-256 of the secret is
//! stored; lookups are cached briefly so a hot key costs no query per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::store::Store;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema,
)]
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

/// How long a node trusts what it read about a key: a revoked key is refused on every
/// node at most this long after `tombola keys revoke`.
pub const CACHE_TTL: Duration = Duration::from_secs(30);

/// `last_used_at` is written at most this often per key and node.
const LAST_USED_RESOLUTION: Duration = Duration::from_secs(60);

/// A usable key's secret hash, caller and end of validity (a rotated key's grace period).
#[derive(Clone)]
struct KeyRecord {
    hash: Vec<u8>,
    caller: Caller,
    valid_until: Option<DateTime<Utc>>,
}

/// `secret_hash, role, organizer_id, revoked_at` as read.
type KeyRow = (Vec<u8>, String, Option<String>, Option<DateTime<Utc>>);

struct Cached {
    read_at: Instant,
    /// `None`: unknown or revoked.
    record: Option<KeyRecord>,
    /// When this node last recorded the key's use.
    marked_at: Option<Instant>,
}

type KeyCache = HashMap<Uuid, Cached>;

/// What operators see of a key (never its secret or hash).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct KeyInfo {
    pub key_id: Uuid,
    pub role: String,
    pub organizer_id: Option<String>,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub replaced_by: Option<Uuid>,
}

pub struct Keys {
    store: Store,
    cache: Mutex<KeyCache>,
    cache_ttl: Duration,
}

impl Keys {
    pub fn new(store: Store) -> Self {
        Self::with_cache_ttl(store, CACHE_TTL)
    }

    /// A node that trusts what it read about a key for `cache_ttl` (tests: zero).
    pub fn with_cache_ttl(store: Store, cache_ttl: Duration) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
            cache_ttl,
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
        let (key_id, secret) = new_secret();
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

    /// Every key, newest first, optionally one organizer's; revoked ones only if asked.
    pub async fn list(
        store: &Store,
        organizer_id: Option<&str>,
        include_revoked: bool,
    ) -> Result<Vec<KeyInfo>, sqlx::Error> {
        sqlx::query_as(
            "SELECT key_id, role, organizer_id, label, created_at, last_used_at, revoked_at, \
             replaced_by FROM api_keys \
             WHERE ($1::text IS NULL OR organizer_id = $1) \
             AND ($2 OR revoked_at IS NULL OR revoked_at > now()) \
             ORDER BY created_at DESC, key_id",
        )
        .bind(organizer_id)
        .bind(include_revoked)
        .fetch_all(store.pool())
        .await
    }

    /// Revokes a key now. Every node refuses it within [`CACHE_TTL`]. Returns false if no
    /// such key is still valid.
    pub async fn revoke(store: &Store, key_id: Uuid) -> Result<bool, sqlx::Error> {
        let revoked = sqlx::query(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 \
             AND (revoked_at IS NULL OR revoked_at > now())",
        )
        .bind(key_id)
        .execute(store.pool())
        .await?;
        Ok(revoked.rows_affected() == 1)
    }

    /// Issues a replacement with the same role, organizer and label, and lets the old key
    /// work for `grace` more (zero: revoked now), so clients can switch without downtime.
    /// Returns the new key in full, once; `None` if the old key is not valid.
    pub async fn rotate(
        store: &Store,
        key_id: Uuid,
        grace: Duration,
    ) -> Result<Option<String>, sqlx::Error> {
        let (new_id, secret) = new_secret();
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let rotated = sqlx::query(
            "WITH old AS ( \
                 SELECT role, organizer_id, label FROM api_keys WHERE key_id = $1 \
                 AND (revoked_at IS NULL OR revoked_at > now()) FOR UPDATE), \
             fresh AS ( \
                 INSERT INTO api_keys (key_id, secret_hash, role, organizer_id, label) \
                 SELECT $2, $3, role, organizer_id, label FROM old RETURNING key_id) \
             UPDATE api_keys SET revoked_at = now() + $4, replaced_by = fresh.key_id \
             FROM fresh WHERE api_keys.key_id = $1",
        )
        .bind(key_id)
        .bind(new_id)
        .bind(Sha256::digest(secret.as_bytes()).to_vec())
        .bind(grace)
        .execute(store.pool())
        .await?;
        Ok((rotated.rows_affected() == 1).then(|| format!("tmb_{}_{secret}", new_id.simple())))
    }

    pub async fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let (key_id, secret) = token
            .strip_prefix("tmb_")
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(id, secret)| Some((Uuid::try_parse(id).ok()?, secret)))
            .ok_or(ApiError::Unauthorized)?;
        let record = self.lookup(key_id).await?.ok_or(ApiError::Unauthorized)?;
        let presented = Sha256::digest(secret.as_bytes());
        let expired = record.valid_until.is_some_and(|until| until <= Utc::now());
        if expired || !bool::from(record.hash.as_slice().ct_eq(presented.as_slice())) {
            return Err(ApiError::Unauthorized);
        }
        self.mark_used(key_id);
        Ok(record.caller)
    }

    /// Records the key's use, at most once per [`LAST_USED_RESOLUTION`], off the request's
    /// path: a lost write only makes `last_used_at` a minute older.
    fn mark_used(&self, key_id: Uuid) {
        let due = match self.lock().get_mut(&key_id) {
            Some(cached)
                if cached
                    .marked_at
                    .is_none_or(|at| at.elapsed() >= LAST_USED_RESOLUTION) =>
            {
                cached.marked_at = Some(Instant::now());
                true
            }
            _ => false,
        };
        if due {
            let pool = self.store.pool().clone();
            tokio::spawn(async move {
                let marked =
                    sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE key_id = $1")
                        .bind(key_id)
                        .execute(&pool)
                        .await;
                if let Err(error) = marked {
                    tracing::warn!(%key_id, %error, "key use not recorded");
                }
            });
        }
    }

    async fn lookup(&self, key_id: Uuid) -> Result<Option<KeyRecord>, ApiError> {
        if let Some(cached) = self.lock().get(&key_id) {
            if cached.read_at.elapsed() < self.cache_ttl {
                return Ok(cached.record.clone());
            }
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT secret_hash, role, organizer_id, revoked_at FROM api_keys \
                 WHERE key_id = $1 AND (revoked_at IS NULL OR revoked_at > now())",
        )
        .bind(key_id)
        .fetch_optional(self.store.pool())
        .await?;
        let record = row.and_then(|(hash, role, organizer_id, valid_until)| {
            Some(KeyRecord {
                hash,
                caller: Caller {
                    key_id,
                    role: Role::parse(&role)?,
                    organizer_id,
                },
                valid_until,
            })
        });
        let mut cache = self.lock();
        if cache.len() > 100_000 {
            cache.clear();
        }
        let marked_at = cache.get(&key_id).and_then(|cached| cached.marked_at);
        cache.insert(
            key_id,
            Cached {
                read_at: Instant::now(),
                record: record.clone(),
                marked_at,
            },
        );
        Ok(record)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new key id and its secret: 256 random bits, base64url.
fn new_secret() -> (Uuid, String) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    (
        Uuid::new_v4(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    )
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
        super::rate_limit::check_key(state, parts, caller.key_id).await?;
        Ok(caller)
    }
}

/// Who the key is: its id, role and organizer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub key_id: Uuid,
    pub role: Role,
    pub organizer_id: Option<String>,
}

/// The calling key's id, role and organizer. It passes the same authentication and rate
/// limits as every other call and touches no raffle, so it is also the cheapest
/// authenticated route: `tombola-bench hot` measures the HTTP ceiling with it (`vs_noop`).
#[utoipa::path(get, path = "/v1/whoami", tag = "operations",
    responses((status = 200, body = WhoAmI)), security(("api_key" = [])))]
pub async fn whoami(caller: Caller) -> axum::Json<WhoAmI> {
    axum::Json(WhoAmI {
        key_id: caller.key_id,
        role: caller.role,
        organizer_id: caller.organizer_id,
    })
}
