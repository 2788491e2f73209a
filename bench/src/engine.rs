//! `tombola-bench engine`: one hot raffle under reserve + pay commands from many concurrent
//! in-process callers, through Tombola's engine (group commit) and, in the same run, through
//! cqrs-es's own `CqrsFramework` + postgres-es with the same aggregate and workload.
//!
//! Workload per caller, until time is up: reserve 3 random numbers, then pay for them (a
//! provider payment with the exact amount). When the raffle has no numbers left, the caller
//! refunds one of its paid orders (numbers return to the pool) so small raffles stay hot.
//! Every successful command counts; conflicts and back-pressure are retried with backoff
//! and counted apart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{AggregateError, CqrsFramework, EventStore};
use postgres_es::PostgresEventRepository;
use serde_json::json;
use tombola::backoff::Backoff;
use tombola::engine::{CommandMeta, Engine, EngineConfig, EngineError};
use tombola::store::{Source, Store};
use tombola_domain::{
    Buyer, CreateRaffle, Currency, ProviderPayment, Raffle, RaffleCommand, RaffleError,
    RaffleEvent, RaffleServices, RefundOrder, Reserve, Selection,
};
use uuid::Uuid;

use crate::report::{BenchResult, Report};

mod read_side;

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Tickets in the hot raffle.
    #[arg(long, default_value_t = 10_000_000)]
    tickets: u32,
    /// Concurrent in-process callers.
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    /// Seconds each system is driven.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections for each system's pool.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Also drive the engine with the projection runtime on (its own fresh database):
    /// `read_side_cost_ratio` (commands/s with it / without it) and `projection_lag_p99_ms`.
    #[arg(long)]
    projections: bool,
    /// Most events the projection runtime applies per transaction (`--projections`; the
    /// server's default is 1,000).
    #[arg(long, default_value_t = 1_000)]
    projection_batch: usize,
    /// Live batches apply each projection in its own transaction, all at once
    /// (`RuntimeConfig::parallel`, decision 0029).
    #[arg(long)]
    projection_parallel: bool,
}

const PRICE: i64 = 500;
/// Clients retrying a busy or conflicting raffle: 10 ms, 20 ms, … at most 320 ms.
const RETRY: Backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(5 << 6));

pub fn run(args: &Args) -> BenchResult<Report> {
    crate::alloc::stop_counting();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = runtime.block_on(crate::database::discarding_leftovers(run_async(args)))?;
    let mut failures = Vec::new();
    if figures["oversold"] != 0 {
        failures.push(format!("{} numbers issued twice", figures["oversold"]));
    }
    Report::new(&figures, failures)
}

async fn run_async(args: &Args) -> Result<serde_json::Value, String> {
    let (store, url) = crate::database::fresh(args.connections).await?;
    let synchronous_commit: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(store.pool())
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "engine bench: {} tickets, {} callers, {} s each; synchronous_commit={synchronous_commit}",
        args.tickets, args.concurrency, args.seconds
    );

    let target = Arc::new(EngineTarget::new(store.clone(), args.tickets).await?);
    crate::database::checkpoint(&store, "engine").await;
    let tombola = drive(target, args).await;
    eprintln!(
        "tombola engine: {:.0} commands/s, p99 {:.1} ms",
        tombola.per_sec(),
        tombola.p99_ms()
    );
    let oversold = check_log(&store, tombola.raffle_id, args.tickets).await?;

    let snapshot_sound = cqrs_snapshots_are_sound(&store).await?;
    // Gone before the baseline starts, so that its pages are not written out in that window.
    crate::database::discard(store, &url).await?;
    let read_side = if args.projections {
        Some(read_side::run(args).await?)
    } else {
        None
    };
    let (baseline_store, baseline_url) = crate::database::fresh(args.connections).await?;
    let baseline_target =
        CqrsTarget::new(baseline_store.clone(), args.tickets, snapshot_sound).await?;
    crate::database::checkpoint(&baseline_store, "engine").await;
    let baseline = drive(Arc::new(baseline_target), args).await;
    eprintln!(
        "cqrs-es baseline: {:.0} commands/s, p99 {:.1} ms",
        baseline.per_sec(),
        baseline.p99_ms()
    );
    let baseline_oversold = check_log(&baseline_store, baseline.raffle_id, args.tickets).await?;
    crate::database::discard(baseline_store, &baseline_url).await?;

    Ok(json!({
        "bench": "engine",
        "tickets": args.tickets,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "synchronous_commit": synchronous_commit,
        "commands": tombola.commands,
        "commands_per_sec": tombola.per_sec().round(),
        "p50_ms": tombola.percentile_ms(0.50),
        "p99_ms": tombola.p99_ms(),
        "retries": tombola.retries,
        "baseline": "cqrs-es 0.5 CqrsFramework + postgres-es PersistedEventStore",
        "baseline_mode": if snapshot_sound { "snapshot" } else { "event_replay (cqrs-es snapshot mode applies events twice)" },
        "baseline_commands": baseline.commands,
        "baseline_commands_per_sec": baseline.per_sec().round(),
        "baseline_p99_ms": baseline.p99_ms(),
        "baseline_retries": baseline.retries,
        "ratio": if baseline.per_sec() > 0.0 { (tombola.per_sec() / baseline.per_sec() * 10.0).round() / 10.0 } else { f64::INFINITY },
        "oversold": oversold,
        "baseline_oversold": baseline_oversold,
        "read_side": read_side.as_ref().map(|r| r.figures(tombola.per_sec())),
        "read_side_cost_ratio": read_side.as_ref().map(|r| crate::report::ratio(r.outcome.per_sec(), tombola.per_sec())),
        "projection_lag_p99_ms": read_side.as_ref().map(|r| r.lag_ms(0.99)),
    }))
}

enum Failure {
    /// Numbers ran out: refund something.
    SoldOut,
    /// Contention or back-pressure: retry.
    Retry,
    Fatal(String),
}

trait Target: Send + Sync + 'static {
    fn raffle_id(&self) -> Uuid;
    fn execute(
        &self,
        command: RaffleCommand,
    ) -> impl std::future::Future<Output = Result<(), Failure>> + Send;
}

fn classify(error: &RaffleError) -> Failure {
    match error {
        RaffleError::NotEnoughTickets { .. } => Failure::SoldOut,
        other => Failure::Fatal(other.to_string()),
    }
}

struct Outcome {
    raffle_id: Uuid,
    commands: u64,
    retries: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Outcome {
    fn per_sec(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let index =
            ((self.latencies_us.len() as f64 * p) as usize).min(self.latencies_us.len() - 1);
        (f64::from(self.latencies_us[index]) / 100.0).round() / 10.0
    }
    fn p99_ms(&self) -> f64 {
        self.percentile_ms(0.99)
    }
}

async fn drive<T: Target>(target: Arc<T>, args: &Args) -> Outcome {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let retries = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(args.concurrency);
    for caller in 0..args.concurrency {
        let target = target.clone();
        let retries = retries.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut paid: Vec<Uuid> = Vec::new();
            let buyer = Buyer::parse("Bench Buyer", &format!("buyer{caller}@example.com"), None)
                .expect("valid");
            let mut attempt = 0;
            while Instant::now() < deadline {
                let order_id = Uuid::new_v4();
                let reserve = RaffleCommand::Reserve(Reserve {
                    order_id,
                    buyer: buyer.clone(),
                    selection: Selection::Random(3),
                });
                let command_started = Instant::now();
                match target.execute(reserve).await {
                    Ok(()) => latencies.push(command_started.elapsed().as_micros() as u32),
                    Err(Failure::SoldOut) => {
                        if let Some(order_id) = paid.pop() {
                            let refund = RaffleCommand::Refund(RefundOrder {
                                order_id,
                                amount_refunded_minor: None,
                                reason: "bench".into(),
                                refund_id: None,
                            });
                            let started = Instant::now();
                            if target.execute(refund).await.is_ok() {
                                latencies.push(started.elapsed().as_micros() as u32);
                            }
                        } else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        continue;
                    }
                    Err(Failure::Retry) => {
                        attempt += 1;
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(RETRY.delay(attempt)).await;
                        continue;
                    }
                    Err(Failure::Fatal(error)) => panic!("reserve failed: {error}"),
                }
                attempt = 0;
                let pay = RaffleCommand::RecordPayment(ProviderPayment {
                    order_id,
                    provider: "bench".into(),
                    payment_id: format!("pi_{}", order_id.simple()),
                    provider_event_id: format!("evt_{}", order_id.simple()),
                    amount_minor: 3 * PRICE,
                    currency: Currency::parse("USD").expect("valid"),
                    method: "card".into(),
                });
                loop {
                    let started = Instant::now();
                    match target.execute(pay.clone()).await {
                        Ok(()) => {
                            latencies.push(started.elapsed().as_micros() as u32);
                            paid.push(order_id);
                            break;
                        }
                        Err(Failure::Retry) if Instant::now() < deadline => {
                            attempt += 1;
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(RETRY.delay(attempt)).await;
                        }
                        Err(Failure::Retry) => break,
                        Err(Failure::SoldOut) | Err(Failure::Fatal(_)) => break,
                    }
                }
                attempt = 0;
            }
            latencies
        }));
    }
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await.expect("caller task"));
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    Outcome {
        raffle_id: target.raffle_id(),
        commands: latencies_us.len() as u64,
        retries: retries.load(Ordering::Relaxed),
        elapsed,
        latencies_us,
    }
}

fn create_command(raffle_id: Uuid, tickets: u32) -> RaffleCommand {
    let mut create = CreateRaffle::example(raffle_id, tickets);
    create.price_minor = PRICE;
    create.max_tickets_per_order = 10;
    RaffleCommand::Create(create)
}

struct EngineTarget {
    engine: Engine,
    raffle_id: Uuid,
}

impl EngineTarget {
    async fn new(store: Store, tickets: u32) -> Result<Self, String> {
        let engine = Engine::new(
            store,
            EngineConfig {
                queue_capacity: 8192,
                ..EngineConfig::default()
            },
        );
        let raffle_id = Uuid::now_v7();
        let this = Self { engine, raffle_id };
        for command in [create_command(raffle_id, tickets), RaffleCommand::OpenSales] {
            this.execute(command)
                .await
                .map_err(|_| "could not set up the raffle".to_owned())?;
        }
        Ok(this)
    }
}

impl Target for EngineTarget {
    fn raffle_id(&self) -> Uuid {
        self.raffle_id
    }

    async fn execute(&self, command: RaffleCommand) -> Result<(), Failure> {
        let meta = CommandMeta {
            actor: "bench".into(),
            source: Source::Api,
            request_id: Uuid::now_v7().to_string(),
            correlation_id: None,
            causation_id: None,
            idempotency: None,
        };
        match self.engine.execute(self.raffle_id, command, meta).await {
            Ok(_) => Ok(()),
            Err(EngineError::Rejected(rejection))
                if matches!(rejection.error, RaffleError::NotEnoughTickets { .. }) =>
            {
                Err(Failure::SoldOut)
            }
            Err(EngineError::Overloaded { .. } | EngineError::Unavailable { .. }) => {
                Err(Failure::Retry)
            }
            Err(other) => Err(Failure::Fatal(other.to_string())),
        }
    }
}

type PostgresCqrs = CqrsFramework<Raffle, PersistedEventStore<PostgresEventRepository, Raffle>>;

struct CqrsTarget {
    cqrs: PostgresCqrs,
    raffle_id: Uuid,
}

impl CqrsTarget {
    async fn new(store: Store, tickets: u32, snapshots: bool) -> Result<Self, String> {
        let repo = PostgresEventRepository::new(store.pool().clone());
        let event_store = if snapshots {
            PersistedEventStore::new_snapshot_store(repo, 100)
        } else {
            PersistedEventStore::new_event_store(repo)
        };
        let cqrs = CqrsFramework::new(event_store, vec![], RaffleServices::system());
        let this = Self {
            cqrs,
            raffle_id: Uuid::now_v7(),
        };
        for command in [
            create_command(this.raffle_id, tickets),
            RaffleCommand::OpenSales,
        ] {
            this.execute(command)
                .await
                .map_err(|_| "could not set up the baseline raffle".to_owned())?;
        }
        Ok(this)
    }
}

impl Target for CqrsTarget {
    fn raffle_id(&self) -> Uuid {
        self.raffle_id
    }

    async fn execute(&self, command: RaffleCommand) -> Result<(), Failure> {
        match self
            .cqrs
            .execute(&self.raffle_id.to_string(), command)
            .await
        {
            Ok(()) => Ok(()),
            Err(AggregateError::UserError(error)) => Err(classify(&error)),
            Err(AggregateError::AggregateConflict) => Err(Failure::Retry),
            Err(AggregateError::DatabaseConnectionError(_)) => Err(Failure::Retry),
            Err(other) => Err(Failure::Fatal(other.to_string())),
        }
    }
}

/// cqrs-es 0.5's snapshot mode, checked before it is trusted: a few commands through a
/// snapshotting store, then the snapshot-loaded aggregate must equal a full replay.
async fn cqrs_snapshots_are_sound(store: &Store) -> Result<bool, String> {
    let raffle_id = Uuid::now_v7();
    let repo = PostgresEventRepository::new(store.pool().clone());
    let snapshotting = PersistedEventStore::<_, Raffle>::new_snapshot_store(repo, 2);
    let cqrs = CqrsFramework::new(snapshotting, vec![], RaffleServices::system());
    let id = raffle_id.to_string();
    let buyer = Buyer::parse("Check", "check@example.com", None).expect("valid");
    let mut commands = vec![create_command(raffle_id, 100), RaffleCommand::OpenSales];
    for _ in 0..5 {
        commands.push(RaffleCommand::Reserve(Reserve {
            order_id: Uuid::new_v4(),
            buyer: buyer.clone(),
            selection: Selection::Random(2),
        }));
    }
    for command in commands {
        cqrs.execute(&id, command)
            .await
            .map_err(|e| e.to_string())?;
    }
    let snapshot_loaded = PersistedEventStore::<_, Raffle>::new_snapshot_store(
        PostgresEventRepository::new(store.pool().clone()),
        2,
    )
    .load_aggregate(&id)
    .await
    .map_err(|e| e.to_string())?;
    let replayed = PersistedEventStore::<_, Raffle>::new_event_store(PostgresEventRepository::new(
        store.pool().clone(),
    ))
    .load_aggregate(&id)
    .await
    .map_err(|e| e.to_string())?;
    let sound = snapshot_loaded.aggregate == replayed.aggregate;
    eprintln!(
        "cqrs-es snapshot mode {}",
        if sound {
            "agrees with a full replay"
        } else {
            "DISAGREES with a full replay (events applied twice): baseline uses full replay"
        }
    );
    Ok(sound)
}

/// Replays the committed log: numbers issued to two live orders at once (must be 0), and
/// the count invariant.
pub(crate) async fn check_log(store: &Store, raffle_id: Uuid, tickets: u32) -> Result<u64, String> {
    // Read the payloads directly: the baseline's events carry cqrs-es's (empty) metadata.
    let payloads: Vec<String> = sqlx::query_scalar(
        "SELECT payload::text FROM events WHERE aggregate_type = 'raffle' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(raffle_id.to_string())
    .fetch_all(store.pool())
    .await
    .map_err(|e| e.to_string())?;
    let events: Vec<RaffleEvent> = payloads
        .iter()
        .map(|p| serde_json::from_str(p).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut owner: std::collections::HashMap<u32, Uuid> = std::collections::HashMap::new();
    let mut oversold = 0;
    let mut raffle = Raffle::default();
    for event in &events {
        raffle.apply_event(event);
        match event {
            RaffleEvent::TicketsIssued {
                order_id, numbers, ..
            } => {
                for n in numbers {
                    if owner.insert(*n, *order_id).is_some() {
                        oversold += 1;
                    }
                }
            }
            RaffleEvent::OrderRefunded { numbers, .. } => {
                for n in numbers {
                    owner.remove(n);
                }
            }
            _ => {}
        }
    }
    let total = raffle.available_count() + raffle.reserved_count() + raffle.sold_count();
    if total != u64::from(tickets) {
        return Err(format!("counts do not add up: {total} != {tickets}"));
    }
    Ok(oversold)
}
