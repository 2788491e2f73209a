//! Configuration: flags, each with an environment variable, each explained in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL to use. Without it, Tombola initializes and starts a private cluster under
    /// the data directory with the PostgreSQL binaries installed on this machine.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Where the private PostgreSQL cluster lives when no DATABASE_URL is given.
    #[arg(
        long,
        env = "TOMBOLA_DATA_DIR",
        default_value = ".tombola",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Connections in the pool.
    #[arg(
        long,
        env = "TOMBOLA_DB_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_connections: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TOMBOLA_LISTEN", default_value_t = defaults::LISTEN)]
    pub listen: SocketAddr,

    /// Requests per second allowed per API key (bursts of twice that).
    #[arg(long, env = "TOMBOLA_RATE_LIMIT_PER_KEY", default_value_t = defaults::RATE_LIMIT_PER_KEY)]
    pub rate_limit_per_key: u32,

    /// Requests per second allowed per client IP (bursts of twice that).
    #[arg(long, env = "TOMBOLA_RATE_LIMIT_PER_IP", default_value_t = defaults::RATE_LIMIT_PER_IP)]
    pub rate_limit_per_ip: u32,

    /// Longest a request may take before it is answered 503.
    #[arg(long, env = "TOMBOLA_REQUEST_TIMEOUT_SECS", default_value_t = defaults::REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "TOMBOLA_BODY_LIMIT_BYTES", default_value_t = defaults::BODY_LIMIT_BYTES)]
    pub body_limit_bytes: usize,

    /// Commands that may wait per raffle before callers get 503 + Retry-After.
    #[arg(long, env = "TOMBOLA_QUEUE_CAPACITY", default_value_t = defaults::QUEUE_CAPACITY)]
    pub queue_capacity: usize,

    /// Write a raffle snapshot at most every this many events (large raffles wait longer:
    /// until the events since the last snapshot add up to about its size). 0 = never.
    #[arg(long, env = "TOMBOLA_SNAPSHOT_EVERY", default_value_t = defaults::SNAPSHOT_EVERY)]
    pub snapshot_every: u64,

    /// Unload a raffle from memory after this many idle seconds (never while holds are live).
    #[arg(long, env = "TOMBOLA_EVICT_AFTER_SECS", default_value_t = defaults::EVICT_AFTER_SECS)]
    pub evict_after_secs: u64,

    /// Stripe webhook signing secrets (`whsec_…`), comma-separated; several during rotation.
    /// Without one, POST /v1/webhooks/stripe answers 503.
    #[arg(
        long,
        env = "TOMBOLA_STRIPE_WEBHOOK_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub stripe_webhook_secrets: Vec<String>,

    /// Accepted age (and clock skew) of a Stripe signature's timestamp, in seconds.
    #[arg(long, env = "TOMBOLA_STRIPE_TOLERANCE_SECS", default_value_t = defaults::STRIPE_TOLERANCE_SECS)]
    pub stripe_tolerance_secs: i64,

    /// Workers applying new inbox deliveries, and as many pollers for the rest. Each applies
    /// its batch concurrently across payments; more workers split the batches into more,
    /// smaller statements (at 5,000 deliveries/s, 2 answered faster than 4).
    #[arg(long, env = "TOMBOLA_PAYMENT_WORKERS", default_value_t = defaults::PAYMENT_WORKERS)]
    pub payment_workers: usize,

    /// PostgreSQL for the read models and their checkpoints, when they outgrow the write
    /// database. Default: the write database.
    #[arg(long, env = "TOMBOLA_READ_DATABASE_URL", hide_env_values = true)]
    pub read_database_url: Option<String>,

    /// Longest a read with `min_position` waits for the read model to reach it before it is
    /// answered 503 with Retry-After.
    #[arg(long, env = "TOMBOLA_MIN_POSITION_WAIT_MS", default_value_t = defaults::MIN_POSITION_WAIT_MS)]
    pub min_position_wait_ms: u64,

    /// Exports and log verifications that may run at once on this node; the next gets 429
    /// with Retry-After. Each holds one PostgreSQL connection of its own while it streams.
    #[arg(long, env = "TOMBOLA_MAX_EXPORTS", default_value_t = defaults::MAX_EXPORTS)]
    pub max_exports: usize,
    // Outbound webhooks (docs/WEBHOOKS.md).
    /// Delays before each retry of an outbound webhook (units ms, s, m, h); after the last
    /// one fails the message is dead-lettered.
    #[arg(long, env = "TOMBOLA_WEBHOOK_RETRY_SCHEDULE", default_value = crate::webhooks::DEFAULT_SCHEDULE)]
    pub webhook_retry_schedule: crate::webhooks::Schedule,
    /// Allow webhook endpoints on loopback, private and link-local addresses, and plain
    /// http (tests, on-premise installations).
    #[arg(
        long,
        env = "TOMBOLA_WEBHOOK_ALLOW_PRIVATE_TARGETS",
        default_value_t = false
    )]
    pub webhook_allow_private_targets: bool,
    /// Outbound webhook attempts in flight on this node.
    #[arg(long, env = "TOMBOLA_WEBHOOK_CONCURRENCY", default_value_t = 64)]
    pub webhook_concurrency: usize,
    /// Run the outbound webhook subscriber and delivery worker on this node.
    #[arg(long, env = "TOMBOLA_WEBHOOK_WORKER", default_value_t = true, action = clap::ArgAction::Set)]
    pub webhook_worker: bool,
    /// The OS niceness of the outbound webhooks' threads (0-19; Linux): on a busy node the
    /// scheduler serves the requests first, and deliveries take the time left (decision
    /// 0030). 0 runs them at the requests' priority.
    #[arg(long, env = "TOMBOLA_WEBHOOK_NICE", default_value_t = crate::webhooks::DEFAULT_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub webhook_nice: i32,
    #[command(flatten)]
    pub limits: LimitsArgs,
}

/// Rate limits shared by all nodes, the client IP behind proxies, and retention (issue 17).
#[derive(Debug, Clone, Args)]
pub struct LimitsArgs {
    /// Overrides of the per-key and per-IP limits by route class, comma-separated:
    /// `class.scope=N/unit[:burst]` or `class.scope=off`; classes reserve, checkout, general,
    /// webhooks or *; scopes key, ip; units s, min, h; the burst defaults to N. Example:
    /// `reserve.key=1200/min,reserve.ip=20/s:40,webhooks.ip=off`.
    #[arg(long, env = "TOMBOLA_RATE_LIMITS", value_delimiter = ',')]
    pub rate_limits: Vec<crate::limits::LimitRule>,

    /// A node leases this many milliseconds' worth of a limit's rate from PostgreSQL at a
    /// time (at least 1 request, at most a quarter of the burst). Larger: fewer writes, a
    /// looser shared limit (by at most one lease per node).
    #[arg(long, env = "TOMBOLA_RATE_LIMIT_LEASE_MS", default_value_t = defaults::RATE_LIMIT_LEASE_MS)]
    pub rate_limit_lease_ms: u64,

    /// Proxies (addresses or CIDR blocks, comma-separated) whose `Forwarded` or
    /// `X-Forwarded-For` header names the client for per-IP limits. From any other peer those
    /// headers are ignored.
    #[arg(long, env = "TOMBOLA_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<crate::api::client_ip::IpNet>,

    /// Idempotency-Key records are deleted this many hours after they were stored; a retry
    /// after that is a new request.
    #[arg(long, env = "TOMBOLA_IDEMPOTENCY_TTL_HOURS", default_value_t = defaults::IDEMPOTENCY_TTL_HOURS)]
    pub idempotency_ttl_hours: u64,

    /// Settled payment deliveries (applied or ignored) are deleted this many days after they
    /// were received and settled. Failed and rejected ones stay for an operator.
    #[arg(long, env = "TOMBOLA_INBOX_RETENTION_DAYS", default_value_t = defaults::INBOX_RETENTION_DAYS)]
    pub inbox_retention_days: u64,

    /// Seconds between retention passes on each node (0: none; `tombola retention run` then).
    #[arg(long, env = "TOMBOLA_RETENTION_INTERVAL_SECS", default_value_t = defaults::RETENTION_INTERVAL_SECS)]
    pub retention_interval_secs: u64,
}

/// What the server runs with, whoever chose it: `tombola serve`'s flags convert into it, tests
/// and benchmarks start from [`Settings::default`] (the flags' defaults) and change fields.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub rate_limit_per_key: u32,
    pub rate_limit_per_ip: u32,
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
    pub queue_capacity: usize,
    pub snapshot_every: u64,
    pub evict_after: Duration,
    /// Empty (or blank) entries are ignored; none at all leaves the Stripe endpoint off.
    pub stripe_webhook_secrets: Vec<String>,
    pub stripe_tolerance_secs: i64,
    pub payment_workers: usize,
    /// The read models' database; `None`: the write database.
    pub read_database_url: Option<String>,
    pub min_position_wait: Duration,
    /// Exports and verifications at once per node (at least 1).
    pub max_exports: usize,
    /// Outbound webhooks: delivery settings.
    pub webhooks: crate::webhooks::Config,
    /// Overrides of the per-class limits (`TOMBOLA_RATE_LIMITS`).
    pub rate_limits: Vec<crate::limits::LimitRule>,
    pub rate_limit_lease: Duration,
    pub trusted_proxies: Vec<crate::api::client_ip::IpNet>,
    pub retention: crate::retention::Retention,
    /// Time between retention passes; zero: none.
    pub retention_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        use defaults::*;
        Self {
            listen: LISTEN,
            rate_limit_per_key: RATE_LIMIT_PER_KEY,
            rate_limit_per_ip: RATE_LIMIT_PER_IP,
            request_timeout: Duration::from_secs(REQUEST_TIMEOUT_SECS),
            body_limit_bytes: BODY_LIMIT_BYTES,
            queue_capacity: QUEUE_CAPACITY,
            snapshot_every: SNAPSHOT_EVERY,
            evict_after: Duration::from_secs(EVICT_AFTER_SECS),
            stripe_webhook_secrets: Vec::new(),
            stripe_tolerance_secs: STRIPE_TOLERANCE_SECS,
            payment_workers: PAYMENT_WORKERS,
            read_database_url: None,
            min_position_wait: Duration::from_millis(MIN_POSITION_WAIT_MS),
            max_exports: MAX_EXPORTS,
            webhooks: crate::webhooks::Config::default(),
            rate_limits: Vec::new(),
            rate_limit_lease: Duration::from_millis(RATE_LIMIT_LEASE_MS),
            trusted_proxies: Vec::new(),
            retention: crate::retention::Retention::default(),
            retention_interval: Duration::from_secs(RETENTION_INTERVAL_SECS),
        }
    }
}

/// `tombola serve`'s defaults, shared by its flags and [`Settings::default`].
mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

    pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
    pub const RATE_LIMIT_PER_KEY: u32 = 2000;
    pub const RATE_LIMIT_PER_IP: u32 = 500;
    pub const REQUEST_TIMEOUT_SECS: u64 = 15;
    pub const BODY_LIMIT_BYTES: usize = 256 * 1024;
    pub const QUEUE_CAPACITY: usize = 4096;
    pub const SNAPSHOT_EVERY: u64 = 10_000;
    pub const EVICT_AFTER_SECS: u64 = 600;
    pub const STRIPE_TOLERANCE_SECS: i64 = 300;
    pub const PAYMENT_WORKERS: usize = 2;
    pub const MIN_POSITION_WAIT_MS: u64 = 2000;
    pub const MAX_EXPORTS: usize = crate::api::DEFAULT_HEAVY_READS;
    pub const RATE_LIMIT_LEASE_MS: u64 = 100;
    pub const IDEMPOTENCY_TTL_HOURS: u64 = 24;
    pub const INBOX_RETENTION_DAYS: u64 = 30;
    pub const RETENTION_INTERVAL_SECS: u64 = 300;
}

impl From<ServeArgs> for Settings {
    fn from(args: ServeArgs) -> Self {
        Self {
            listen: args.listen,
            rate_limit_per_key: args.rate_limit_per_key,
            rate_limit_per_ip: args.rate_limit_per_ip,
            request_timeout: Duration::from_secs(args.request_timeout_secs),
            body_limit_bytes: args.body_limit_bytes,
            queue_capacity: args.queue_capacity,
            snapshot_every: args.snapshot_every,
            evict_after: Duration::from_secs(args.evict_after_secs),
            stripe_webhook_secrets: args.stripe_webhook_secrets,
            stripe_tolerance_secs: args.stripe_tolerance_secs,
            payment_workers: args.payment_workers,
            read_database_url: args.read_database_url,
            min_position_wait: Duration::from_millis(args.min_position_wait_ms),
            max_exports: args.max_exports,
            webhooks: crate::webhooks::Config {
                retry_schedule: args.webhook_retry_schedule.0,
                allow_private_targets: args.webhook_allow_private_targets,
                concurrency: args.webhook_concurrency.max(1),
                enabled: args.webhook_worker,
                nice: args.webhook_nice,
                ..crate::webhooks::Config::default()
            },
            rate_limits: args.limits.rate_limits,
            rate_limit_lease: Duration::from_millis(args.limits.rate_limit_lease_ms),
            trusted_proxies: args.limits.trusted_proxies,
            retention: crate::retention::Retention {
                idempotency_ttl: Duration::from_secs(args.limits.idempotency_ttl_hours * 3600),
                settled_inbox_ttl: Duration::from_secs(args.limits.inbox_retention_days * 86_400),
                ..crate::retention::Retention::default()
            },
            retention_interval: Duration::from_secs(args.limits.retention_interval_secs),
        }
    }
}
