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
        Command::Inbox(InboxCommand::Retry { event_id }) => {
            if !crate::payments::inbox::retry(&database.store, &event_id).await? {
                anyhow::bail!("no failed or rejected delivery with event id {event_id}");
            }
            eprintln!("tombola: {event_id} queued again");
        }
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
