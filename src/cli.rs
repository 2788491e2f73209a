//! The `tombola` command line: the server and the operator's tools.

use clap::{Parser, Subcommand};

use crate::api::auth::{Keys, Role};
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
    /// The read models: status and rebuilds.
    Projections(ProjectionsArgs),
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
pub enum InboxCommand {
    /// Recent deliveries, newest first (one JSON object per line).
    List {
        /// Only deliveries that failed or were rejected: those an operator must look at.
        #[arg(long)]
        failed: bool,
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
                args.data_dir.display()
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
            let app = Application::build(&args, database.store.clone()).await?;
            eprintln!("tombola: listening on http://{}", app.local_addr());
            app.run_until_stopped(shutdown_signal()).await?;
        }
        Command::Migrate => eprintln!("tombola: migrations applied"),
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
        Command::Inbox(InboxCommand::List { failed, limit }) => {
            for entry in crate::payments::inbox::list(&database.store, failed, limit).await? {
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
