//! The `tombola` command line: the server and the operator's tools.

use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::api::auth::{Keys, Role};
use crate::audit::chain::{Anchor, Expectations};
use crate::config::{DatabaseArgs, ServeArgs};
use crate::pgcluster::PrivateCluster;
use crate::startup::{shutdown_signal, Application};
use crate::store::Store;

#[derive(Debug, Parser)]
#[command(
    name = "tombola",
    version,
    about = "Event-sourced raffle ticketing engine"
)]
pub struct Cli {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (applies pending migrations first).
    Serve(ServeArgs),
    /// Apply pending database migrations.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Inspect raffles.
    #[command(subcommand)]
    Raffles(RafflesCommand),
    /// The inbox of payment provider deliveries.
    #[command(subcommand)]
    Inbox(InboxCommand),
    /// Prove the log was not edited: verify hash chains, heads and receipts.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Prove a draw was fair: recompute its winners from the log.
    #[command(subcommand)]
    Draw(DrawCommand),
    /// Stream a raffle's data to a file or stdout, with progress on stderr.
    Export(ExportArgs),
    /// The read models: status and rebuilds.
    Projections(ProjectionsArgs),
    /// Delete expired idempotency records, old settled deliveries and idle rate-limit
    /// buckets now (the server does it every TOMBOLA_RETENTION_INTERVAL_SECS); prints the
    /// counts as JSON.
    Retention(RetentionArgs),
}

#[derive(Debug, clap::Args)]
pub struct RetentionArgs {
    /// Hours an Idempotency-Key record is kept.
    #[arg(long, env = "TOMBOLA_IDEMPOTENCY_TTL_HOURS", default_value_t = 24)]
    pub idempotency_ttl_hours: u64,
    /// Days a settled delivery is kept.
    #[arg(long, env = "TOMBOLA_INBOX_RETENTION_DAYS", default_value_t = 30)]
    pub inbox_retention_days: u64,
}

#[derive(Debug, clap::Args)]
pub struct ProjectionsArgs {
    /// The read database, when it is not the write database.
    #[arg(long, env = "TOMBOLA_READ_DATABASE_URL", hide_env_values = true)]
    pub read_database_url: Option<String>,
    #[command(subcommand)]
    pub command: ProjectionsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Each projection's version, state, lag (events and seconds) and last error, as JSON.
    Status,
    /// Rebuild a projection from the log into shadow tables and swap them in; the live
    /// tables keep serving meanwhile. Interrupted, it resumes where it stopped.
    Rebuild {
        /// orders, tickets, raffle_stats, platform_stats or audit_index.
        name: String,
        /// Only this raffle (not for platform_stats, which sums across raffles).
        #[arg(long)]
        raffle: Option<uuid::Uuid>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute hash chains and report the first broken link, or the head when all is
    /// intact. Exits non-zero when any check fails.
    Verify {
        /// The raffle to verify.
        #[arg(required_unless_present = "all")]
        raffle: Option<uuid::Uuid>,
        /// Every raffle.
        #[arg(long, conflicts_with = "raffle")]
        all: bool,
        /// A head printed by an earlier verify (SEQUENCE:HASH): the log must still hold it
        /// unchanged, which catches a truncated or rewritten tail. Repeatable.
        #[arg(long = "expect-head", requires = "raffle")]
        expect_head: Vec<Anchor>,
        /// A paid order's receipt (SEQUENCE:HASH of its TicketsIssued event). Repeatable.
        #[arg(long, requires = "raffle")]
        receipt: Vec<Anchor>,
        /// One JSON report per raffle on stdout instead of a line of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DrawCommand {
    /// Recompute a drawn raffle's winners from its log alone and compare them with the
    /// recorded ones; prints the JSON report and exits non-zero unless they match.
    Verify { raffle: uuid::Uuid },
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    pub raffle: uuid::Uuid,
    /// What to export.
    #[arg(long, value_enum, default_value_t = ExportWhat::Events)]
    pub what: ExportWhat,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
    pub format: ExportFormat,
    /// Write here instead of stdout.
    #[arg(short, long)]
    pub output: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportWhat {
    /// The whole event log with metadata and chain hashes.
    Events,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Ndjson,
}

#[derive(Debug, Subcommand)]
pub enum InboxCommand {
    /// Recent deliveries, newest first (one JSON object per line).
    List {
        /// Only deliveries that failed or were rejected.
        #[arg(long, conflicts_with = "needs_action")]
        failed: bool,
        /// Everything an operator must act on: failed or rejected deliveries, and payments
        /// that must be refunded (`refund_required`) or matched nothing (`payment_flagged`).
        #[arg(long)]
        needs_action: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Queue a failed or rejected delivery again, now.
    Retry {
        /// The provider's event id (e.g. evt_…).
        event_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key and print it once, on stdout.
    Create {
        #[arg(long, value_enum)]
        role: Role,
        /// The organizer an organizer or client key is scoped to.
        #[arg(long)]
        organizer: Option<String>,
        /// A note for operators (who holds the key).
        #[arg(long)]
        label: Option<String>,
    },
    /// Keys with their role, organizer, label, creation, last use and revocation (one JSON
    /// object per line; never a secret).
    List {
        #[arg(long)]
        organizer: Option<String>,
        /// Include revoked keys.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a key now: every node refuses it within 30 s (its key cache).
    Revoke { key_id: uuid::Uuid },
    /// Issue a replacement (same role, organizer, label; printed once on stdout) and keep
    /// the old key working for a grace period, then refuse it.
    Rotate {
        key_id: uuid::Uuid,
        /// Hours the old key keeps working.
        #[arg(long, default_value_t = 24)]
        grace_hours: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum RafflesCommand {
    /// List raffles, oldest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        organizer: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

/// A database connection, and the private cluster behind it when there is one (stopped
/// when this is dropped, if this process started it).
pub struct Database {
    pub store: Store,
    _cluster: Option<PrivateCluster>,
}

pub async fn connect(args: &DatabaseArgs) -> anyhow::Result<Database> {
    let (url, cluster) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let dir = args.data_dir.clone();
            let cluster =
                tokio::task::spawn_blocking(move || PrivateCluster::ensure(&dir)).await??;
            eprintln!(
                "tombola: no DATABASE_URL; using the private PostgreSQL cluster in {}",
                cluster.data_dir().display()
            );
            (cluster.url(), Some(cluster))
        }
    };
    let store = Store::connect(&url, args.db_connections).await?;
    store.migrate().await?;
    Ok(Database {
        store,
        _cluster: cluster,
    })
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let database = connect(&cli.database).await?;
    let outcome = execute(cli.command, &database).await;
    // Close the connections rather than drop them (PostgreSQL logs every dropped one), but
    // never let a stuck connection hold up the exit.
    let _ =
        tokio::time::timeout(crate::startup::CLOSE_TIMEOUT, database.store.pool().close()).await;
    outcome
}

async fn execute(command: Command, database: &Database) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let app = Application::build(
                &args.into(),
                database.store.clone(),
                Arc::new(crate::clock::SystemClock),
            )
            .await?;
            eprintln!("tombola: listening on http://{}", app.local_addr());
            app.run_until_stopped(shutdown_signal()).await?;
        }
        Command::Migrate => eprintln!("tombola: migrations applied"),
        Command::Retention(args) => {
            let retention = crate::retention::Retention {
                idempotency_ttl: std::time::Duration::from_secs(args.idempotency_ttl_hours * 3600),
                settled_inbox_ttl: std::time::Duration::from_secs(
                    args.inbox_retention_days * 86_400,
                ),
                ..crate::retention::Retention::default()
            };
            let removed = retention
                .run_once(database.store.pool(), chrono::Utc::now())
                .await?;
            println!("{}", serde_json::to_string(&removed)?);
        }
        Command::Keys(KeysCommand::Create {
            role,
            organizer,
            label,
        }) => {
            let key = Keys::create(
                &database.store,
                role,
                organizer.as_deref(),
                label.as_deref(),
            )
            .await
            .map_err(|e| anyhow::anyhow!(e.to_string()))?;
            println!("{key}");
        }
        Command::Keys(KeysCommand::List { organizer, all }) => {
            for key in Keys::list(&database.store, organizer.as_deref(), all).await? {
                println!("{}", serde_json::to_string(&key)?);
            }
        }
        Command::Keys(KeysCommand::Revoke { key_id }) => {
            if !Keys::revoke(&database.store, key_id).await? {
                anyhow::bail!("no valid key {key_id}");
            }
            eprintln!(
                "tombola: {key_id} revoked; every node refuses it within {} s",
                crate::api::auth::CACHE_TTL.as_secs()
            );
        }
        Command::Keys(KeysCommand::Rotate {
            key_id,
            grace_hours,
        }) => {
            let grace = std::time::Duration::from_secs(grace_hours.saturating_mul(3600));
            let Some(key) = Keys::rotate(&database.store, key_id, grace).await? else {
                anyhow::bail!("no valid key {key_id}");
            };
            println!("{key}");
            eprintln!("tombola: {key_id} keeps working for {grace_hours} h, then is refused");
        }
        Command::Raffles(RafflesCommand::List {
            status,
            organizer,
            limit,
        }) => {
            let raffles = crate::store::list_raffles(
                &database.store,
                organizer.as_deref(),
                status.as_deref(),
                None,
                limit,
            )
            .await?;
            for (id, title, organizer, status) in raffles {
                println!("{id}\t{status}\t{organizer}\t{title}");
            }
        }
        Command::Inbox(InboxCommand::List {
            failed,
            needs_action,
            limit,
        }) => {
            use crate::payments::inbox::{list, InboxFilter};
            let filter = match (failed, needs_action) {
                (_, true) => InboxFilter::NeedsAction,
                (true, false) => InboxFilter::Failed,
                (false, false) => InboxFilter::All,
            };
            for entry in list(&database.store, filter, limit).await? {
                println!("{}", serde_json::to_string(&entry)?);
            }
        }
        Command::Projections(args) => projections(args, database).await?,
        Command::Inbox(InboxCommand::Retry { event_id }) => {
            if !crate::payments::inbox::retry(&database.store, &event_id).await? {
                anyhow::bail!("no failed or rejected delivery with event id {event_id}");
            }
            eprintln!("tombola: {event_id} queued again");
        }
        Command::Audit(AuditCommand::Verify {
            raffle,
            all: _,
            expect_head,
            receipt,
            json,
        }) => {
            let expectations = Expectations {
                heads: expect_head,
                receipts: receipt,
            };
            audit_verify(&database.store, raffle, &expectations, json).await?;
        }
        Command::Draw(DrawCommand::Verify { raffle }) => {
            let report = crate::audit::draw::verify_draw(database.store.pool(), raffle).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.verified {
                anyhow::bail!("the draw of {raffle} does not verify");
            }
        }
        Command::Export(args) => export(&database.store, args).await?,
    }
    Ok(())
}

/// Verifies one raffle, or every raffle; fails if any chain or expectation does not hold.
async fn audit_verify(
    store: &Store,
    raffle: Option<uuid::Uuid>,
    expectations: &Expectations,
    json: bool,
) -> anyhow::Result<()> {
    let raffles = match raffle {
        Some(raffle) => vec![raffle],
        None => {
            sqlx::query_scalar("SELECT raffle_id FROM raffles ORDER BY created_at, raffle_id")
                .fetch_all(store.pool())
                .await?
        }
    };
    let mut broken = 0;
    for raffle in raffles {
        let total = crate::audit::log::stream_length(store.pool(), raffle).await?;
        let bar = crate::progress::bar(total, "events");
        let report =
            crate::audit::chain::verify_raffle(store.pool(), raffle, expectations, |sequence| {
                bar.set_position(sequence)
            })
            .await?;
        bar.finish_and_clear();
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            match (&report.broken, &report.head) {
                (Some(why), _) => println!("{raffle}\tBROKEN\t{why}"),
                (None, Some(head)) => println!(
                    "{raffle}\tintact\t{} events\thead {head}",
                    report.events_verified
                ),
                (None, None) => println!("{raffle}\tintact\tno events"),
            }
        }
        broken += usize::from(!report.intact);
    }
    if broken > 0 {
        anyhow::bail!("{broken} raffle(s) failed verification");
    }
    Ok(())
}

/// Streams an export to a file or stdout; progress (rows/s, ETA) goes to stderr.
async fn export(store: &Store, args: ExportArgs) -> anyhow::Result<()> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let ExportArgs {
        raffle,
        what: ExportWhat::Events,
        format: ExportFormat::Ndjson,
        output,
    } = args;
    let total = crate::audit::log::stream_length(store.pool(), raffle).await?;
    let options = store.pool().connect_options();
    let mut chunks = crate::export::events::events_ndjson(&options, raffle).await?;
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &output {
        Some(path) => Box::new(tokio::fs::File::create(path).await?),
        None => Box::new(tokio::io::stdout()),
    };
    let bar = crate::progress::bar(total, "rows");
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        bar.inc(chunk.iter().filter(|&&b| b == b'\n').count() as u64);
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    bar.finish_and_clear();
    if let Some(path) = output {
        eprintln!(
            "tombola: {} rows written to {}",
            bar.position(),
            path.display()
        );
    }
    Ok(())
}

async fn projections(args: ProjectionsArgs, database: &Database) -> anyhow::Result<()> {
    use tombola_projections::{models, EventSource, Runtime, RuntimeConfig};
    let read_pool = match &args.read_database_url {
        Some(url) => sqlx::PgPool::connect(url).await?,
        None => database.store.pool().clone(),
    };
    let projections = models::all();
    tombola_projections::migrate(&read_pool, &projections).await?;
    let handle = Runtime::new(
        EventSource::new(database.store.pool().clone()),
        read_pool.clone(),
        projections,
        RuntimeConfig {
            batch_size: 10_000,
            ..RuntimeConfig::default()
        },
    )
    .handle();
    match args.command {
        ProjectionsCommand::Status => {
            println!("{}", serde_json::to_string_pretty(&handle.status().await?)?);
        }
        ProjectionsCommand::Rebuild { name, raffle } => {
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:40}] {pos}/{len} events, {per_sec}, ETA {eta}",
                )?
                .progress_chars("=> "),
            );
            bar.set_message(name.clone());
            let ticker = {
                let (bar, handle) = (bar.clone(), handle.clone());
                tokio::spawn(async move {
                    loop {
                        bar.set_position(handle.rebuilt_events());
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                })
            };
            let outcome = handle
                .rebuild(&name, raffle, |total| bar.set_length(total))
                .await;
            ticker.abort();
            bar.set_position(handle.rebuilt_events());
            outcome?;
            bar.finish_with_message(format!("{name} rebuilt and swapped in"));
        }
    }
    if args.read_database_url.is_some() {
        read_pool.close().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
