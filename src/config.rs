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
    #[arg(long, env = "TOMBOLA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Requests per second allowed per API key (bursts of twice that).
    #[arg(long, env = "TOMBOLA_RATE_LIMIT_PER_KEY", default_value_t = 2000)]
    pub rate_limit_per_key: u32,

    /// Requests per second allowed per client IP (bursts of twice that).
    #[arg(long, env = "TOMBOLA_RATE_LIMIT_PER_IP", default_value_t = 500)]
    pub rate_limit_per_ip: u32,

    /// Longest a request may take before it is answered 503.
    #[arg(long, env = "TOMBOLA_REQUEST_TIMEOUT_SECS", default_value_t = 15)]
    pub request_timeout_secs: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "TOMBOLA_BODY_LIMIT_BYTES", default_value_t = 256 * 1024)]
    pub body_limit_bytes: usize,

    /// Commands that may wait per raffle before callers get 503 + Retry-After.
    #[arg(long, env = "TOMBOLA_QUEUE_CAPACITY", default_value_t = 4096)]
    pub queue_capacity: usize,

    /// Write a raffle snapshot at most every this many events (large raffles wait longer:
    /// until the events since the last snapshot add up to about its size). 0 = never.
    #[arg(long, env = "TOMBOLA_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,

    /// Unload a raffle from memory after this many idle seconds (never while holds are live).
    #[arg(long, env = "TOMBOLA_EVICT_AFTER_SECS", default_value_t = 600)]
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
    #[arg(long, env = "TOMBOLA_STRIPE_TOLERANCE_SECS", default_value_t = 300)]
    pub stripe_tolerance_secs: i64,

    /// Workers applying new inbox deliveries, and as many pollers for the rest. Each applies
    /// its batch concurrently across payments; more workers split the batches into more,
    /// smaller statements (at 5,000 deliveries/s, 2 answered faster than 4).
    #[arg(long, env = "TOMBOLA_PAYMENT_WORKERS", default_value_t = 2)]
    pub payment_workers: usize,

    /// PostgreSQL for the read models and their checkpoints, when they outgrow the write
    /// database. Default: the write database.
    #[arg(long, env = "TOMBOLA_READ_DATABASE_URL", hide_env_values = true)]
    pub read_database_url: Option<String>,

    /// Longest a read with `min_position` waits for the read model to reach it before it is
    /// answered 503 with Retry-After.
    #[arg(long, env = "TOMBOLA_MIN_POSITION_WAIT_MS", default_value_t = 2000)]
    pub min_position_wait_ms: u64,
}

impl ServeArgs {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}
