//! `tombola-bench expiry`: `--holds` holds falling due in the same second while buyers keep
//! reserving over HTTP.
//!
//! Holds last at least a minute, and reserving 50,000 over HTTP takes longer than a second,
//! so they cannot be made to fall due together through the API. They are planted instead
//! through Tombola's own engine in this process, with its clock stopped `hold` − `--due-in`
//! seconds in the past: every hold then ends at the same instant T0, `--due-in` seconds
//! from now; the events are the ones the server would have written. The engine is shut
//! down, the real server starts on the database (it resumes the raffle on sale and sets its
//! hold timer), and buyers reserve from before T0 until after the last hold is released.
//! Figures: when the last hold's release was committed, after T0 (from the log), and the
//! reservations' p99 in a window before T0 and in the window from T0 on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Args as ClapArgs;
use serde_json::json;
use tombola::clock::ManualClock;
use tombola::engine::{CommandMeta, Engine, EngineConfig};
use tombola::store::Source;
use tombola_domain::{Buyer, CreateRaffle, RaffleCommand, Reserve, Selection};
use uuid::Uuid;

use super::hot::{log_failures, tombola_phase, verify_log};
use super::server::Server;
use super::workload::Raffles;
use super::{load_now, Window};
use crate::report::{BenchResult, Report};

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Holds that fall due in the same second.
    #[arg(long, default_value_t = 50_000)]
    pub holds: u32,
    /// Tickets in the raffle.
    #[arg(long, default_value_t = 1_000_000)]
    pub tickets: u32,
    /// Seconds from planting the holds until they fall due (planting and the server's
    /// start must fit in it).
    #[arg(long, default_value_t = 40)]
    pub due_in: u64,
    /// Buyers reserving meanwhile.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds of the window measured before T0 (the baseline) and from T0 on.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

const HOLD_SECONDS: u32 = 60;

pub fn run(args: &Args) -> BenchResult<Report> {
    crate::alloc::stop_counting();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = runtime.block_on(crate::database::discarding_leftovers(run_async(args)))?;
    let mut failures = log_failures(&figures);
    if figures["holds_released"] != u64::from(args.holds) {
        failures.push(format!(
            "{} of {} holds released",
            figures["holds_released"], args.holds
        ));
    }
    Report::new(&figures, failures)
}

/// Plants the holds; returns the raffle and T0.
async fn plant(
    store: &tombola::store::Store,
    args: &Args,
) -> Result<(Uuid, DateTime<Utc>), String> {
    let due_at = Utc::now() + chrono::Duration::seconds(args.due_in as i64);
    let clock = Arc::new(ManualClock::new(
        due_at - chrono::Duration::seconds(i64::from(HOLD_SECONDS)),
    ));
    let engine = Engine::new(
        store.clone(),
        EngineConfig {
            queue_capacity: 65_536,
            clock,
            ..EngineConfig::default()
        },
    );
    let raffle_id = Uuid::now_v7();
    let mut create = CreateRaffle::example(raffle_id, args.tickets);
    create.organizer_id = "bench".into();
    create.price_minor = 500;
    create.max_tickets_per_order = 10;
    create.hold_seconds = Some(HOLD_SECONDS);
    for command in [RaffleCommand::Create(create), RaffleCommand::OpenSales] {
        engine
            .execute(raffle_id, command, meta())
            .await
            .map_err(|e| format!("setting up the raffle: {e}"))?;
    }
    let t = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..256 {
        let (engine, next, holds) = (engine.clone(), next.clone(), args.holds);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= holds {
                    return Ok::<(), String>(());
                }
                let buyer = Buyer::parse("Bench Buyer", &format!("h{i}@example.com"), None)
                    .map_err(|e| e.to_string())?;
                let command = RaffleCommand::Reserve(Reserve {
                    order_id: Uuid::now_v7(),
                    buyer,
                    selection: Selection::Random(1),
                });
                engine
                    .execute(raffle_id, command, meta())
                    .await
                    .map_err(|e| format!("planting a hold: {e}"))?;
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    engine.shutdown().await;
    crate::report::phase(format!(
        "expiry: {} holds planted in {:.1} s, all due at {due_at}",
        args.holds,
        t.elapsed().as_secs_f64()
    ));
    Ok((raffle_id, due_at))
}

fn meta() -> CommandMeta {
    CommandMeta {
        actor: "bench".into(),
        source: Source::Api,
        request_id: Uuid::now_v7().to_string(),
        correlation_id: None,
        causation_id: None,
        idempotency: None,
    }
}

/// Holds released so far by `HoldsExpired`, and when the last of those events was recorded.
async fn released(
    store: &tombola::store::Store,
    raffle: Uuid,
) -> Result<(u64, Option<DateTime<Utc>>, i64), String> {
    let (holds, last, events): (Option<i64>, Option<String>, i64) = sqlx::query_as(
        "SELECT sum(jsonb_array_length(payload::jsonb->'HoldsExpired'->'holds'))::bigint, \
         max(metadata->>'recorded_at'), count(*) FROM events \
         WHERE aggregate_id = $1 AND event_type = 'HoldsExpired'",
    )
    .bind(raffle.to_string())
    .fetch_one(store.pool())
    .await
    .map_err(|e| e.to_string())?;
    let last = last
        .map(|at| DateTime::parse_from_rfc3339(&at).map(|t| t.with_timezone(&Utc)))
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok((holds.unwrap_or(0) as u64, last, events))
}

async fn run_async(args: &Args) -> Result<serde_json::Value, String> {
    let load_before = load_now();
    let (store, url) = crate::database::fresh(16).await?;
    let (raffle, due_at) = plant(&store, args).await?;
    let mut server = Server::start_on(store, url, &[]).await?;
    let raffles = Arc::new(Raffles::uniform(vec![raffle], args.tickets));
    let until_due = (due_at - Utc::now()).to_std().unwrap_or_default();
    let before_secs = args
        .seconds
        .min(until_due.as_secs().saturating_sub(1))
        .max(1);
    if until_due < Duration::from_secs(2) {
        return Err(format!(
            "planting took too long: T0 is {:.1} s away; raise --due-in",
            until_due.as_secs_f64()
        ));
    }
    // Buyers start warming up early enough that the baseline window ends at T0.
    let warmup = until_due.saturating_sub(Duration::from_secs(before_secs));
    let baseline_window = Window {
        seconds: before_secs,
        warmup_seconds: 0,
    };
    tokio::time::sleep(warmup).await;
    let baseline = tombola_phase(
        &server,
        &raffles,
        args.concurrency,
        &baseline_window,
        args.seed,
    )
    .await?;
    let during_window = Window {
        seconds: args.seconds,
        warmup_seconds: 0,
    };
    let during = tombola_phase(
        &server,
        &raffles,
        args.concurrency,
        &during_window,
        args.seed + 1,
    )
    .await?;
    // The log says when the last release was committed; wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (holds_released, last, events) = loop {
        let state = released(&server.store, raffle).await?;
        if state.0 >= u64::from(args.holds) || Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let released_after_ms = last.map_or(-1, |at| (at - due_at).num_milliseconds());
    crate::report::phase(format!(
        "expiry: {holds_released} holds released in {events} events, the last {released_after_ms} ms after they fell due"
    ));
    server.stop_process().await;
    let (log, log_failures) = verify_log(
        &server,
        &[(raffle, args.tickets)],
        &[&baseline, &during],
        u64::from(args.holds),
    )
    .await?;
    server.stop().await?;
    Ok(json!({
        "bench": "expiry",
        "holds": args.holds,
        "tickets": args.tickets,
        "concurrency": args.concurrency,
        "holds_released": holds_released,
        "release_events": events,
        "released_after_due_ms": released_after_ms,
        "reservations_per_sec": during.reservations_per_sec,
        "p50_ms": during.p50_ms,
        "p99_ms": during.p99_ms,
        "errors": during.errors,
        "baseline_reservations_per_sec": baseline.reservations_per_sec,
        "baseline_p99_ms": baseline.p99_ms,
        "p99_vs_baseline": crate::report::ratio(during.p99_ms, baseline.p99_ms),
        "oversold": log.oversold,
        "log": log,
        "log_failures": log_failures,
        "load_average_before": load_before,
        "load_average_after": load_now(),
    }))
}
