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
    /// The audit trail: a raffle's events by order, ticket, payment, actor, type and time
    /// (`tombola audit RAFFLE …`), its exports (`--exports`), or proofs that the log was not
    /// edited (`tombola audit verify`).
    Audit(AuditArgs),
    /// Prove a draw was fair: recompute its winners from the log.
    #[command(subcommand)]
    Draw(DrawCommand),
    /// Stream a raffle's data to a file or stdout, with progress on stderr.
    Export(ExportArgs),
    /// The read models: status and rebuilds.
    Projections(ProjectionsArgs),
    /// Outbound webhooks: endpoints, deliveries, redelivery and recovery.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Delete expired idempotency records, old settled deliveries and idle rate-limit
    /// buckets now (the server does it every TOMBOLA_RETENTION_INTERVAL_SECS); prints the
    /// counts as JSON.
    Retention(RetentionArgs),
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Every endpoint (one organizer's with --organizer), one JSON line each.
    List {
        #[arg(long)]
        organizer: Option<String>,
    },
    /// An endpoint's deliveries, newest first, one JSON line each.
    Deliveries {
        endpoint: uuid::Uuid,
        /// pending, succeeded or dead.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Send one message to an endpoint again, with a fresh retry schedule.
    Redeliver {
        endpoint: uuid::Uuid,
        msg_id: String,
    },
    /// Send every message since a time (RFC 3339) that an endpoint has not received: failed
    /// ones and those made while it was disabled.
    Recover {
        endpoint: uuid::Uuid,
        #[arg(long)]
        since: chrono::DateTime<chrono::Utc>,
    },
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
        /// orders, tickets, raffle_stats, platform_stats, audit_index, or all (every
        /// projection from one read of the log).
        name: String,
        /// Only this raffle (not for platform_stats, which sums across raffles).
        #[arg(long)]
        raffle: Option<uuid::Uuid>,
    },
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// The raffle whose trail to show.
    #[arg(required = true)]
    pub raffle: Option<uuid::Uuid>,
    /// Events about this order.
    #[arg(long)]
    pub order: Option<uuid::Uuid>,
    /// Events that touched this ticket number.
    #[arg(long)]
    pub ticket: Option<u32>,
    /// Events about this payment id or manual payment reference.
    #[arg(long)]
    pub payment: Option<String>,
    /// Events caused by this actor (`key:<id>`, `system`, …).
    #[arg(long)]
    pub actor: Option<String>,
    /// Events of this type, e.g. TicketsIssued.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// RFC 3339: events recorded from this instant on.
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// RFC 3339: events recorded before this instant.
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// The raffle's exports (who took its data, when, with which filters) instead of events.
    #[arg(long, conflicts_with_all = ["order", "ticket", "payment", "actor", "event_type"])]
    pub exports: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// The read database (the audit index), when it is not the write database.
    #[arg(long, env = "TOMBOLA_READ_DATABASE_URL", hide_env_values = true)]
    pub read_database_url: Option<String>,
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
    /// Output format: ndjson for events, csv for tickets and orders (default: the one that
    /// fits `--what`).
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
    /// Write here instead of stdout.
    #[arg(short, long)]
    pub output: Option<std::path::PathBuf>,
    /// CSV header language, es or en (default: es for MXN raffles, en otherwise).
    #[arg(long)]
    pub lang: Option<String>,
    /// CSV: comma-separated statuses (tickets: held, sold; orders: reserved, paid, …).
    #[arg(long)]
    pub status: Option<String>,
    /// CSV: RFC 3339, rows from this instant on.
    #[arg(long)]
    pub since: Option<String>,
    /// CSV: RFC 3339, rows before this instant.
    #[arg(long)]
    pub until: Option<String>,
    /// CSV: part of the buyer's name, e-mail or phone, or of the payment reference.
    #[arg(long)]
    pub q: Option<String>,
    /// The read database (the read models), when it is not the write database.
    #[arg(long, env = "TOMBOLA_READ_DATABASE_URL", hide_env_values = true)]
    pub read_database_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportWhat {
    /// The whole event log with metadata and chain hashes.
    Events,
    /// One row per held or sold ticket, with its buyer.
    Tickets,
    /// One row per order.
    Orders,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Ndjson,
    Csv,
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
        Command::Audit(AuditArgs {
            command: None,
            raffle,
            ..
        }) if raffle.is_none() => anyhow::bail!("name a raffle, or use `tombola audit verify`"),
        Command::Audit(args @ AuditArgs { command: None, .. }) => {
            audit_trail(args, database).await?
        }
        Command::Audit(AuditArgs {
            command:
                Some(AuditCommand::Verify {
                    raffle,
                    all: _,
                    expect_head,
                    receipt,
                    json,
                }),
            ..
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
        Command::Export(args) => export(database, args).await?,
        Command::Webhooks(command) => webhooks(command, &database.store).await?,
    }
    Ok(())
}

/// `tombola webhooks …`: the same operations as the API, as an operator (every organizer).
/// A running server's worker picks requeued deliveries up at its next poll.
async fn webhooks(command: WebhooksCommand, store: &Store) -> anyhow::Result<()> {
    use crate::webhooks::{deliveries, endpoints};
    let pool = store.pool();
    let now = chrono::Utc::now();
    match command {
        WebhooksCommand::List { organizer } => {
            let scope = organizer.map_or(endpoints::Scope::All, endpoints::Scope::Organizer);
            for endpoint in endpoints::list(pool, &scope).await? {
                println!("{}", serde_json::to_string(&endpoint)?);
            }
        }
        WebhooksCommand::Deliveries {
            endpoint,
            status,
            limit,
        } => {
            for delivery in deliveries::list(pool, endpoint, status.as_deref(), limit).await? {
                println!("{}", serde_json::to_string(&delivery)?);
            }
        }
        WebhooksCommand::Redeliver { endpoint, msg_id } => {
            if !deliveries::redeliver(pool, endpoint, &msg_id, "operator", now).await? {
                anyhow::bail!("endpoint {endpoint} has no message {msg_id}");
            }
            eprintln!("tombola: {msg_id} queued for {endpoint}");
        }
        WebhooksCommand::Recover { endpoint, since } => {
            let requeued = deliveries::recover(pool, endpoint, since, now).await?;
            eprintln!("tombola: {requeued} failed deliveries since {since} queued again");
        }
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

/// The read database a command reads the read models from: its own, or the write database.
async fn read_pool(url: Option<&str>, database: &Database) -> anyhow::Result<sqlx::PgPool> {
    Ok(match url {
        Some(url) => sqlx::PgPool::connect(url).await?,
        None => database.store.pool().clone(),
    })
}

/// Who runs an operator command, as the exports log records it.
fn operator() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("operator:{user}")
}

/// Streams an export to a file or stdout; progress (rows/s, ETA) goes to stderr. Recorded in
/// the exports log like an export over HTTP.
async fn export(database: &Database, args: ExportArgs) -> anyhow::Result<()> {
    use crate::export::csv::{CsvFilter, Dataset, Lang, Terms};
    use crate::export::log::{finish, start, NewExport, Outcome};
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let store = &database.store;
    let raffle = args.raffle;
    let format = args.format.unwrap_or(match args.what {
        ExportWhat::Events => ExportFormat::Ndjson,
        ExportWhat::Tickets | ExportWhat::Orders => ExportFormat::Csv,
    });
    let actor = operator();
    let (chunks, total, filters) = match (args.what, format) {
        (ExportWhat::Events, ExportFormat::Ndjson) => {
            let total = crate::audit::log::stream_length(store.pool(), raffle).await?;
            let options = store.pool().connect_options();
            let chunks = crate::export::events::events_ndjson(&options, raffle).await?;
            (chunks, total, serde_json::json!({}))
        }
        (ExportWhat::Tickets | ExportWhat::Orders, ExportFormat::Csv) => {
            let dataset = if args.what == ExportWhat::Tickets {
                Dataset::Tickets
            } else {
                Dataset::Orders
            };
            let config = crate::store::raffle_config(store, raffle)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no raffle {raffle}"))?;
            let lang = Lang::parse(args.lang.as_deref(), &config)
                .map_err(|reason| anyhow::anyhow!("--lang {reason}"))?;
            let filter = CsvFilter::parse(
                dataset,
                args.status.as_deref(),
                args.since.as_deref(),
                args.until.as_deref(),
                args.q.as_deref(),
            )
            .map_err(|(field, reason)| anyhow::anyhow!("--{field} {reason}"))?;
            let read = read_pool(args.read_database_url.as_deref(), database).await?;
            let total = crate::export::csv::row_estimate(&read, raffle, dataset).await?;
            let options = read.connect_options();
            let terms = Terms::from(&config);
            let chunks =
                crate::export::csv::csv(&options, raffle, dataset, &terms, lang, &filter).await?;
            let mut filters = serde_json::to_value(&filter)?;
            filters["lang"] = serde_json::to_value(lang)?;
            (chunks, total, filters)
        }
        (what, format) => anyhow::bail!("{what:?} cannot be exported as {format:?}"),
    };
    let what = match args.what {
        ExportWhat::Events => "events",
        ExportWhat::Tickets => "tickets",
        ExportWhat::Orders => "orders",
    };
    let format_name = match format {
        ExportFormat::Ndjson => "ndjson",
        ExportFormat::Csv => "csv",
    };
    let export_id = start(
        store.pool(),
        &NewExport {
            raffle_id: raffle,
            actor: &actor,
            source: "operator",
            what,
            format: format_name,
            filters,
            request_id: None,
        },
    )
    .await?;
    let mut chunks = chunks;
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &args.output {
        Some(path) => Box::new(tokio::fs::File::create(path).await?),
        None => Box::new(tokio::io::stdout()),
    };
    let bar = crate::progress::bar(total, "rows");
    let mut bytes = 0u64;
    // CSV fields may hold newlines inside quotes: the count is a progress estimate only.
    let written = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            bytes += chunk.len() as u64;
            bar.inc(chunk.iter().filter(|&&b| b == b'\n').count() as u64);
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    let outcome = if written.is_ok() {
        Outcome::Completed
    } else {
        Outcome::Failed
    };
    finish(store.pool(), export_id, outcome, bytes).await?;
    written?;
    bar.finish_and_clear();
    if let Some(path) = args.output {
        eprintln!(
            "tombola: {} rows written to {}",
            bar.position(),
            path.display()
        );
    }
    Ok(())
}

/// `tombola audit RAFFLE …`: the matching events (or the raffle's exports), every page.
async fn audit_trail(args: AuditArgs, database: &Database) -> anyhow::Result<()> {
    use crate::audit::trail::{query, TrailQuery};
    let raffle = args.raffle.expect("clap requires it without a subcommand");
    if args.exports {
        let mut after = None;
        loop {
            let page = crate::export::log::list(database.store.pool(), raffle, after, 500).await?;
            for entry in &page {
                if args.json {
                    println!("{}", serde_json::to_string(entry)?);
                } else {
                    println!(
                        "{}\t{}\t{}\t{}.{}\t{}\t{}",
                        entry.started_at.to_rfc3339(),
                        entry.export_id,
                        entry.actor,
                        entry.what,
                        entry.format,
                        entry.outcome,
                        entry.filters
                    );
                }
            }
            match page.last() {
                Some(last) if page.len() == 500 => after = Some(last.export_id),
                _ => break,
            }
        }
        return Ok(());
    }
    let read = read_pool(args.read_database_url.as_deref(), database).await?;
    let mut filter = TrailQuery {
        order_id: args.order,
        ticket: args.ticket,
        payment_id: args.payment,
        actor: args.actor,
        event_type: args.event_type,
        since: args.since.map(|t| t.to_utc()),
        until: args.until.map(|t| t.to_utc()),
        after_sequence: 0,
        limit: 1_000,
    };
    loop {
        let page = query(&read, database.store.pool(), raffle, &filter).await?;
        for event in &page.events {
            if args.json {
                println!("{}", serde_json::to_string(event)?);
            } else {
                let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    event.sequence,
                    text(&event.recorded_at),
                    event.event_type,
                    text(&event.actor),
                    text(&event.source),
                    text(&event.request_id)
                );
            }
        }
        match page.next_after_sequence {
            Some(next) => filter.after_sequence = next,
            None => break,
        }
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
            let outcome = if name == "all" && raffle.is_none() {
                let names: Vec<&str> = handle.projections().iter().map(|p| p.name()).collect();
                handle
                    .rebuild_all(&names, |total| bar.set_length(total))
                    .await
            } else {
                handle
                    .rebuild(&name, raffle, |total| bar.set_length(total))
                    .await
            };
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
