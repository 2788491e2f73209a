//! `tombola-bench mega`: many big raffles, mostly sold, resident in one server: its RSS, cold
//! start to ready and to every raffle answering, one raffle's cold load, and reservations
//! across them. The goal is 30 × 10M in ≤ 2 GiB (`--raffles 30 --tickets 10000000`: 1.5 GB
//! of compact snapshots and 1.85 GB of RSS, decision 0022; the default is a quicker 4).
//!
//! Filling 10M tickets through the API would take hours, so each raffle is created and
//! opened through Tombola's engine (real events 1 and 2), then sold in memory by the domain
//! itself (`Raffle::decide` + `apply_event`, 3 random numbers per order, each paid by a
//! provider payment: the `domain` bench's workload), and stored as a snapshot at sequence 2.
//! The server loads exactly what it would load after a real sale; only the log behind the
//! snapshot is missing (so audit verification of these raffles would fail, by design).

use std::sync::Arc;
use std::time::Instant;

use clap::Args as ClapArgs;
use serde_json::json;
use tombola::engine::{CommandMeta, Engine, EngineConfig};
use tombola::store::{Source, Store};
use tombola_domain::{Buyer, CreateRaffle, FixedClock, RaffleCommand, RaffleServices};
use uuid::Uuid;

use super::hot::tombola_phase;
use super::server::Server;
use super::workload::Raffles;
use super::{load_now, Window};
use crate::domain::workload::{Aggregate, Workload};
use crate::report::{BenchResult, Report};

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    #[arg(long, default_value_t = 4)]
    pub raffles: u32,
    #[arg(long, default_value_t = 10_000_000)]
    pub tickets: u32,
    /// Share of each raffle's tickets sold before the server starts.
    #[arg(long, default_value_t = 0.9)]
    pub sold: f64,
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Store full (version 1) snapshots, as before decision 0022: the server compacts each
    /// raffle after loading it. By default the fill stores compact (version 2) ones.
    #[arg(long)]
    pub full_snapshots: bool,
}

/// The goal: 30 raffles × 10M tickets in this much RSS.
const GOAL_BYTES: f64 = 2.0 * 1024.0 * 1024.0 * 1024.0;
const GOAL_TICKETS: f64 = 30.0 * 10_000_000.0;

pub fn run(args: &Args) -> BenchResult<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = runtime.block_on(crate::database::discarding_leftovers(run_async(args)))?;
    let mut failures = Vec::new();
    if figures["raffles_answering"] != args.raffles {
        failures.push("not every raffle answered after the cold start".to_owned());
    }
    Report::new(&figures, failures)
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

/// Creates the raffles, sells `sold` of each in memory and stores the snapshots. Returns the
/// ids and the snapshots' total size.
async fn fill(store: &Store, args: &Args) -> Result<(Vec<Uuid>, u64), String> {
    let engine = Engine::new(store.clone(), EngineConfig::default());
    let mut ids = Vec::new();
    for _ in 0..args.raffles {
        let id = Uuid::now_v7();
        let mut create = CreateRaffle::example(id, args.tickets);
        create.organizer_id = "bench".into();
        create.price_minor = 500;
        create.max_tickets_per_order = 10;
        create.max_tickets_per_buyer = None;
        for command in [RaffleCommand::Create(create), RaffleCommand::OpenSales] {
            engine
                .execute(id, command, meta())
                .await
                .map_err(|e| format!("creating a raffle: {e}"))?;
        }
        ids.push(id);
    }
    engine.shutdown().await;
    let buyers: Vec<Buyer> = (0..10_000)
        .map(|i| Buyer::parse("Mega Buyer", &format!("m{i}@example.com"), None))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let sold = ((f64::from(args.tickets) * args.sold) as u32 / 3) * 3;
    let mut snapshot_bytes = 0u64;
    for (k, id) in ids.iter().enumerate() {
        let t = Instant::now();
        let loaded = store.load_raffle(*id).await.map_err(|e| e.to_string())?;
        let (seed, buyers) = (args.seed + k as u64, buyers.clone());
        let full_snapshots = args.full_snapshots;
        let raffle = loaded.raffle;
        let payload = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
            let clock = Arc::new(FixedClock::new(chrono::Utc::now()));
            let services = RaffleServices::deterministic(seed, clock.clone());
            let mut model = Aggregate {
                raffle,
                services: &services,
            };
            Workload {
                tickets: sold,
                per_order: 3,
                buyers: &buyers,
                seed,
            }
            .run(&mut model, &clock, "mega fill")
            .map_err(|e| e.to_string())?;
            if !full_snapshots {
                model.raffle.compact();
            }
            Ok(model.raffle.encode_snapshot())
        })
        .await
        .map_err(|e| e.to_string())??;
        snapshot_bytes += payload.len() as u64;
        store
            .save_snapshot(*id, loaded.last_sequence, &loaded.last_hash, &payload)
            .await
            .map_err(|e| e.to_string())?;
        crate::report::phase(format!(
            "mega: raffle {}/{} sold {sold} of {} in {:.1} s, snapshot {} MB",
            k + 1,
            args.raffles,
            args.tickets,
            t.elapsed().as_secs_f64(),
            payload.len() >> 20
        ));
    }
    Ok((ids, snapshot_bytes))
}

async fn run_async(args: &Args) -> Result<serde_json::Value, String> {
    let load_before = load_now();
    let (store, url) = crate::database::fresh(8).await?;
    let (ids, snapshot_bytes) = fill(&store, args).await?;
    crate::database::checkpoint(&store, "mega").await;

    // One raffle's cold load, by the code the server's writer runs (snapshot + events after
    // it), in this process: its time and the bytes it keeps (the counting allocator).
    let before = crate::alloc::allocated();
    let t = Instant::now();
    let loaded = store.load_raffle(ids[0]).await.map_err(|e| e.to_string())?;
    let cold_load_ms = crate::report::ms(t.elapsed());
    let resident_bytes = crate::alloc::allocated().saturating_sub(before) as f64;
    drop(loaded);
    crate::alloc::stop_counting();
    let bytes_per_ticket = resident_bytes / f64::from(args.tickets);

    // The server's cold start: it resumes every raffle on sale.
    let spawned = Instant::now();
    let server = Server::start_on(store, url, &[]).await?;
    let ready_ms = crate::report::ms(server.ready_after);
    let client = reqwest::Client::new();
    let mut answering = 0u32;
    for id in &ids {
        let answered = client
            .get(format!("{}/v1/raffles/{id}", server.base))
            .bearer_auth(&server.key)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        answering += u32::from(answered);
    }
    let all_resident_ms = crate::report::ms(spawned.elapsed());
    let rss = server.rss_bytes().unwrap_or(0);
    crate::report::phase(format!(
        "mega: ready after {ready_ms:.0} ms, all {answering} raffles answering after {all_resident_ms:.0} ms, RSS {} MB",
        rss >> 20
    ));
    let raffles = Arc::new(Raffles::uniform(ids.clone(), args.tickets));
    let window = Window {
        seconds: args.seconds,
        warmup_seconds: 1,
    };
    let phase = tombola_phase(&server, &raffles, args.concurrency, &window, args.seed).await?;
    let rss_after = server.rss_bytes().unwrap_or(0);
    server.stop().await?;

    let tickets_total = f64::from(args.raffles) * f64::from(args.tickets);
    let rss_per_ticket = rss as f64 / tickets_total;
    Ok(json!({
        "bench": "mega",
        "raffles": args.raffles,
        "tickets": args.tickets,
        "sold_share": args.sold,
        "snapshot_format": if args.full_snapshots { 1 } else { 2 },
        "snapshot_bytes": snapshot_bytes,
        "cold_start_ready_ms": ready_ms,
        "cold_start_all_answering_ms": all_resident_ms,
        "raffles_answering": answering,
        "one_raffle_cold_load_ms": cold_load_ms,
        "resident_bytes_per_raffle": resident_bytes.round(),
        "resident_bytes_per_ticket": crate::report::round3(bytes_per_ticket),
        "server_rss_bytes": rss,
        "server_rss_bytes_after_sale": rss_after,
        "server_rss_bytes_per_raffle": (rss as f64 / f64::from(args.raffles)).round(),
        "server_rss_bytes_per_ticket": crate::report::round3(rss_per_ticket),
        "goal_bytes_per_ticket": crate::report::round3(GOAL_BYTES / GOAL_TICKETS),
        "projected_rss_30x10m_bytes": (rss_per_ticket * GOAL_TICKETS).round(),
        "vs_goal": crate::report::ratio(rss_per_ticket * GOAL_TICKETS, GOAL_BYTES),
        "reservations_per_sec": phase.reservations_per_sec,
        "p50_ms": phase.p50_ms,
        "p99_ms": phase.p99_ms,
        "errors": phase.errors,
        "load_average_before": load_before,
        "load_average_after": load_now(),
    }))
}
