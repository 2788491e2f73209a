//! Rate limits per API key and per client IP (GCRA via `governor`). A refusal says when to
//! come back, so clients need not guess.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;

/// The server's clock as the limiters read it, so that a test moving it refills budgets.
#[derive(Clone)]
struct LimiterClock(Arc<dyn crate::clock::Clock>);

impl governor::clock::Clock for LimiterClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        self.0.steady().into()
    }
}

type Limiter<K> = RateLimiter<K, DefaultKeyedStateStore<K>, LimiterClock, NoOpMiddleware<Nanos>>;

pub struct RateLimits {
    per_key: Limiter<Uuid>,
    per_ip: Limiter<IpAddr>,
    clock: LimiterClock,
}

impl RateLimits {
    /// `per_key` and `per_ip` requests per second, with a burst of twice that, measured on
    /// `clock`.
    pub fn new(per_key: u32, per_ip: u32, clock: Arc<dyn crate::clock::Clock>) -> Self {
        let quota = |rate: u32| {
            let rate = NonZeroU32::new(rate.max(1)).expect("non-zero");
            Quota::per_second(rate).allow_burst(rate.saturating_mul(NonZeroU32::new(2).expect("2")))
        };
        let clock = LimiterClock(clock);
        Self {
            per_key: RateLimiter::new(quota(per_key), Default::default(), clock.clone()),
            per_ip: RateLimiter::new(quota(per_ip), Default::default(), clock.clone()),
            clock,
        }
    }

    pub fn check_key(&self, key_id: Uuid) -> Result<(), ApiError> {
        self.per_key
            .check_key(&key_id)
            .map_err(|not_until| ApiError::RateLimited {
                retry_after: not_until.wait_time_from(governor::clock::Clock::now(&self.clock)),
            })
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.per_ip
            .check_key(&ip)
            .map_err(|not_until| ApiError::RateLimited {
                retry_after: not_until.wait_time_from(governor::clock::Clock::now(&self.clock)),
            })
    }

    /// Forgets idle keys so the maps do not grow without bound.
    pub fn spawn_cleanup(self: &Arc<Self>) {
        let limits = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(limits) = limits.upgrade() else {
                    return;
                };
                limits.per_key.retain_recent();
                limits.per_ip.retain_recent();
            }
        });
    }
}

/// Middleware: refuses a client IP over its limit before any work is done. Provider
/// webhooks are exempt: their signature is checked first and a provider's retries must
/// never be turned away.
pub async fn limit_by_ip(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if request.uri().path().starts_with("/v1/webhooks/") {
        return Ok(next.run(request).await);
    }
    if let Some(ConnectInfo(addr)) = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
    {
        state.limits.check_ip(addr.ip())?;
    }
    Ok(next.run(request).await)
}
