//! Rate limits that hold across nodes and restarts, with PostgreSQL as the only server.
//!
//! Each limited subject (an API key or a client IP, per route class) has a GCRA bucket in
//! the `rate_limit_buckets` table. A node does not ask the table for every request: it
//! leases a few tokens at a time (`config::LimitsConfig::lease_size`) and spends them from
//! memory, so a busy bucket costs one upsert per lease, not per request. Every token spent
//! anywhere was leased from the table, so the shared limit cannot be exceeded by more than
//! the tokens leased and not yet spent: at most one lease per node in any window
//! (decision 0017 has the numbers). A restart loses only its unspent lease, which makes it
//! stricter, never looser.
//!
//! Each node also runs a local GCRA with the same limit: a cheap first check, and the only
//! one while PostgreSQL is unreachable. Then the limiter fails open on that local limit (N
//! nodes then allow up to N times the limit), logs it and counts it in
//! `tombola_rate_limit_fail_open_total`, and tries the table again after a second.

pub mod config;
pub mod gcra;
mod lease;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::PgPool;

use crate::clock::Clock;
pub use config::{Limit, LimitRule, LimitsConfig, RouteClass, Scope};

/// How long a lease may take before the limiter fails open for this request.
const LEASE_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed lease, how long the limiter leaves the table alone (local limits only).
const RETRY_TABLE_AFTER: f64 = 1.0;
/// Buckets idle this long are dropped from memory (with any unspent lease).
const IDLE_BUCKET_SECS: f64 = 120.0;
/// At most one "failing open" warning per this many seconds.
const WARN_EVERY_SECS: f64 = 10.0;

/// The verdict on one request, and what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub allowed: bool,
    /// The bucket's size (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests left before a refusal, as far as this node knows (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Seconds until the bucket is full again (`RateLimit-Reset`).
    pub reset: Duration,
    /// For a refusal: when a request will be allowed again (`Retry-After`).
    pub retry_after: Duration,
}

impl Outcome {
    /// Of two verdicts on one request, the one the client must heed: a refusal, else the
    /// bucket closest to empty.
    pub fn stricter(self, other: Self) -> Self {
        match (self.allowed, other.allowed) {
            (false, true) => self,
            (true, false) => other,
            _ if other.remaining < self.remaining => other,
            _ => self,
        }
    }
}

/// One subject's bucket on this node.
struct Bucket {
    state: Mutex<Local>,
    /// Held while leasing, so that concurrent requests wait for one lease, not start many.
    leasing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Local {
    /// The local GCRA's arrival time, on the steady clock.
    local_tat: f64,
    /// Leased from the table and not spent yet.
    tokens: u32,
    /// The shared bucket's tokens after this node's last lease.
    shared_left: u32,
    /// The shared bucket's arrival time after that lease (wall clock, epoch seconds).
    shared_tat: f64,
    /// The shared bucket was empty: refuse without asking it again until then (wall clock).
    refused_until: f64,
    /// Steady time of the last request.
    last_used: f64,
}

/// Whether the table answers, as this node last found out.
#[derive(Default)]
struct Health {
    /// Steady time before which the table is not tried (after a failure).
    down_until: Option<f64>,
    last_warned: Option<f64>,
}

pub struct RateLimits {
    config: LimitsConfig,
    pool: PgPool,
    clock: Arc<dyn Clock>,
    buckets: Mutex<HashMap<String, Arc<Bucket>>>,
    health: Mutex<Health>,
}

impl RateLimits {
    /// Limits leased from the `rate_limit_buckets` table through `pool`.
    pub fn new(config: LimitsConfig, pool: PgPool, clock: Arc<dyn Clock>) -> Self {
        Self {
            config,
            pool,
            clock,
            buckets: Mutex::new(HashMap::new()),
            health: Mutex::new(Health::default()),
        }
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Takes one request from `subject`'s bucket for `class`; `None` if no limit applies.
    pub async fn check(&self, scope: Scope, class: RouteClass, subject: &str) -> Option<Outcome> {
        let limit = self.config.get(scope, class)?;
        let name = format!("{}:{}:{subject}", scope.as_str(), class.as_str());
        let bucket = self.bucket(&name);
        let outcome = loop {
            let wall = wall_seconds(self.clock.as_ref());
            let steady = self.clock.steady().as_secs_f64();
            let table_down = self.table_down(steady);
            {
                let mut local = lock(&bucket.state);
                local.last_used = steady;
                if let Some(refusal) = self.refuse_locally(&local, &limit, wall, steady) {
                    break refusal;
                }
                if local.tokens > 0 || table_down {
                    if local.tokens > 0 {
                        local.tokens -= 1;
                    } else {
                        metrics::counter!("tombola_rate_limit_fail_open_total").increment(1);
                    }
                    local.local_tat = local.local_tat.max(steady) + limit.interval();
                    break Outcome {
                        allowed: true,
                        limit: limit.burst,
                        remaining: local.tokens.saturating_add(local.shared_left),
                        reset: seconds(if table_down {
                            gcra::until_full(local.local_tat, steady)
                        } else {
                            gcra::until_full(local.shared_tat, wall)
                        }),
                        retry_after: Duration::ZERO,
                    };
                }
            }
            let _leasing = bucket.leasing.lock().await;
            if lock(&bucket.state).tokens > 0 || self.table_down(steady) {
                continue; // another request leased meanwhile, or the table just failed
            }
            let wanted = self.config.lease_size(&limit);
            let leased = tokio::time::timeout(
                LEASE_TIMEOUT,
                lease::lease(&self.pool, &name, wall, &limit, wanted),
            )
            .await;
            match leased {
                Ok(Ok(lease)) => {
                    self.table_answered();
                    metrics::counter!("tombola_rate_limit_leases_total").increment(1);
                    let mut local = lock(&bucket.state);
                    local.tokens += lease.granted;
                    local.shared_tat = lease.tat;
                    local.shared_left = gcra::available(lease.tat, wall, &limit);
                    // Empty: come back when a whole lease is there, not one token. Asking
                    // again after every token would make a client over its limit cost one
                    // write per token, the limit's whole rate; this way a node asks at most
                    // once per lease window, and refuses for at most that much too long.
                    if lease.granted == 0 {
                        local.refused_until =
                            wall + gcra::wait_for(lease.tat, wall, &limit, wanted);
                    }
                }
                Ok(Err(error)) => self.table_failed(steady, &error.to_string()),
                Err(_) => self.table_failed(steady, "no answer within 1 s"),
            }
        };
        if !outcome.allowed {
            let labels = [("scope", scope.as_str()), ("class", class.as_str())];
            metrics::counter!("tombola_rate_limited_total", &labels).increment(1);
        }
        Some(outcome)
    }

    /// A refusal by the local GCRA, or by the shared bucket's last answer.
    fn refuse_locally(
        &self,
        local: &Local,
        limit: &Limit,
        wall: f64,
        steady: f64,
    ) -> Option<Outcome> {
        let local_wait = gcra::wait_for_one(local.local_tat, steady, limit);
        let shared_wait = (local.refused_until - wall).max(0.0);
        let wait = local_wait.max(shared_wait);
        if wait <= 0.0 {
            return None;
        }
        let reset =
            gcra::until_full(local.local_tat, steady).max(gcra::until_full(local.shared_tat, wall));
        Some(Outcome {
            allowed: false,
            limit: limit.burst,
            remaining: 0,
            reset: seconds(reset),
            retry_after: seconds(wait),
        })
    }

    fn bucket(&self, name: &str) -> Arc<Bucket> {
        let mut buckets = lock(&self.buckets);
        if let Some(bucket) = buckets.get(name) {
            return bucket.clone();
        }
        let bucket = Arc::new(Bucket {
            state: Mutex::new(Local::default()),
            leasing: tokio::sync::Mutex::new(()),
        });
        buckets.insert(name.to_owned(), bucket.clone());
        bucket
    }

    fn table_down(&self, steady: f64) -> bool {
        lock(&self.health)
            .down_until
            .is_some_and(|until| steady < until)
    }

    fn table_answered(&self) {
        let mut health = lock(&self.health);
        if health.down_until.take().is_some() {
            tracing::info!("rate limits shared again: the rate_limit_buckets table answers");
        }
    }

    fn table_failed(&self, steady: f64, error: &str) {
        metrics::counter!("tombola_rate_limit_lease_failures_total").increment(1);
        let mut health = lock(&self.health);
        health.down_until = Some(steady + RETRY_TABLE_AFTER);
        if health
            .last_warned
            .is_none_or(|at| steady - at >= WARN_EVERY_SECS || steady < at)
        {
            health.last_warned = Some(steady);
            tracing::warn!(
                %error,
                "rate limits fail open on this node's local limits: PostgreSQL does not answer"
            );
        }
    }

    /// Forgets buckets idle for two minutes so the map does not grow without bound; their
    /// unspent leases are lost, which only makes the shared limit stricter.
    pub fn forget_idle(&self) {
        let steady = self.clock.steady().as_secs_f64();
        lock(&self.buckets).retain(|_, bucket| {
            Arc::strong_count(bucket) > 1
                || steady - lock(&bucket.state).last_used < IDLE_BUCKET_SECS
        });
    }

    /// Runs [`Self::forget_idle`] every minute while the limits live.
    pub fn spawn_cleanup(self: &Arc<Self>) {
        let limits: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(limits) = limits.upgrade() else {
                    return;
                };
                limits.forget_idle();
            }
        });
    }
}

fn wall_seconds(clock: &dyn Clock) -> f64 {
    let now = tombola_domain::Clock::now(clock);
    now.timestamp() as f64 + f64::from(now.timestamp_subsec_nanos()) / 1e9
}

fn seconds(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
