//! Rate limits at the HTTP edge: per client IP before anything else is done (this
//! middleware), per API key once the key is verified (the `Caller` extractor calls
//! [`check_key`]), each per route class, shared by every node (`crate::limits`). A refusal is
//! 429 with `Retry-After`; every limited answer carries the IETF draft's `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset` of the bucket closest to empty.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::limits::{Outcome, RouteClass, Scope};

pub use crate::limits::RateLimits;

const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// A request's route class, and the verdicts on it so far: the key check runs in an
/// extractor, which cannot touch the response, so it leaves its verdict here.
#[derive(Clone)]
struct Verdicts {
    class: RouteClass,
    stricter: Arc<Mutex<Option<Outcome>>>,
}

impl Verdicts {
    fn record(&self, outcome: Outcome) {
        let mut stricter = self.stricter.lock().unwrap_or_else(|e| e.into_inner());
        *stricter = Some(match *stricter {
            Some(earlier) => earlier.stricter(outcome),
            None => outcome,
        });
    }

    fn get(&self) -> Option<Outcome> {
        *self.stricter.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Middleware: the client IP's limit for the route's class, before any work is done; then
/// the `RateLimit-*` headers on the answer.
pub async fn limit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let class = RouteClass::of(
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let verdicts = Verdicts {
        class,
        stricter: Arc::default(),
    };
    request.extensions_mut().insert(verdicts.clone());
    let peer = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if let Some(peer) = peer {
        let client = state.trusted_proxies.client_ip(peer, request.headers());
        if let Some(outcome) = state
            .limits
            .check(Scope::Ip, class, &client.to_string())
            .await
        {
            verdicts.record(outcome);
            if !outcome.allowed {
                return with_headers(refusal(&outcome).into_response(), &outcome);
            }
        }
    }
    let response = next.run(request).await;
    match verdicts.get() {
        Some(outcome) => with_headers(response, &outcome),
        None => response,
    }
}

/// The verified key's limit for the request's class.
pub async fn check_key(state: &AppState, parts: &Parts, key_id: Uuid) -> Result<(), ApiError> {
    let verdicts = parts.extensions.get::<Verdicts>();
    let class = verdicts.map_or(RouteClass::General, |v| v.class);
    let Some(outcome) = state
        .limits
        .check(Scope::Key, class, &key_id.to_string())
        .await
    else {
        return Ok(());
    };
    if let Some(verdicts) = verdicts {
        verdicts.record(outcome);
    }
    if outcome.allowed {
        Ok(())
    } else {
        Err(refusal(&outcome))
    }
}

fn refusal(outcome: &Outcome) -> ApiError {
    ApiError::RateLimited {
        retry_after: Duration::from_secs(whole_seconds(outcome.retry_after).max(1)),
    }
}

/// Seconds, rounded up: a client that waits what it is told must not be refused again.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

fn with_headers(mut response: Response, outcome: &Outcome) -> Response {
    let headers = response.headers_mut();
    headers.insert(LIMIT, HeaderValue::from(outcome.limit));
    headers.insert(REMAINING, HeaderValue::from(outcome.remaining));
    headers.insert(RESET, HeaderValue::from(whole_seconds(outcome.reset)));
    response
}
