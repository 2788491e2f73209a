//! `tombola-bench many`: 500 raffles × 50,000 tickets on one server, buyers spread over them
//! with a Zipf skew (raffle k drawn with weight 1/k^s). In the same run and on the same
//! server, the `hot` workload on one 10M raffle at the same concurrency (`vs_hot`), and the
//! row-lock approach with as many raffles (`vs_rowlock`).

use std::sync::Arc;

use clap::Args as ClapArgs;
use serde_json::json;

use super::hot::{create_raffle, log_failures, rowlock_phase, tombola_phase, verify_log};
use super::rowlock::RowlockServer;
use super::server::Server;
use super::workload::Raffles;
use super::{load_now, Window};
use crate::report::{BenchResult, Report};

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    #[arg(long, default_value_t = 500)]
    pub raffles: u32,
    #[arg(long, default_value_t = 50_000)]
    pub tickets: u32,
    /// Zipf exponent of the buyers' choice of raffle (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Tickets of the hot raffle measured in the same run for `vs_hot`.
    #[arg(long, default_value_t = 10_000_000)]
    pub hot_tickets: u32,
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    #[command(flatten)]
    pub window: Window,
    /// Skip the row-lock baseline (it fills raffles × tickets rows first).
    #[arg(long)]
    pub no_rowlock: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub fn run(args: &Args) -> BenchResult<Report> {
    crate::alloc::stop_counting();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = runtime.block_on(crate::database::discarding_leftovers(run_async(args)))?;
    let mut failures = log_failures(&figures);
    if figures["reservations_per_sec"] == 0.0 {
        failures.push("no reservation succeeded".to_owned());
    }
    Report::new(&figures, failures)
}

async fn run_async(args: &Args) -> Result<serde_json::Value, String> {
    let load_before = load_now();
    let mut server = Server::start(&[]).await?;
    crate::report::phase(format!(
        "many: creating {} raffles of {} tickets",
        args.raffles, args.tickets
    ));
    let mut ids = Vec::with_capacity(args.raffles as usize);
    for i in 0..args.raffles {
        ids.push(create_raffle(&server, args.tickets, &format!("Raffle {i}")).await?);
    }
    let hot = create_raffle(&server, args.hot_tickets, "Hot raffle").await?;
    crate::database::checkpoint(&server.store, "many").await;
    let hot_raffles = Arc::new(Raffles::uniform(vec![hot], args.hot_tickets));
    let hot_phase = tombola_phase(
        &server,
        &hot_raffles,
        args.concurrency,
        &args.window,
        args.seed,
    )
    .await?;
    let raffles = Arc::new(Raffles::zipf(ids.clone(), args.tickets, args.zipf));
    let phase = tombola_phase(&server, &raffles, args.concurrency, &args.window, args.seed).await?;
    let rss = server.rss_bytes();
    server.stop_process().await;
    let mut logs = vec![(hot, args.hot_tickets)];
    logs.extend(ids.iter().map(|id| (*id, args.tickets)));
    let (log, log_failures) = verify_log(&server, &logs, &[&hot_phase, &phase], 0).await?;
    server.stop().await?;

    let rowlock = if args.no_rowlock {
        None
    } else {
        let rowlock_server = RowlockServer::start(args.raffles, args.tickets).await?;
        crate::database::checkpoint(&rowlock_server.store, "many").await;
        let indexes = Arc::new(Raffles::zipf(ids, args.tickets, args.zipf));
        let phase = rowlock_phase(
            &rowlock_server,
            &indexes,
            args.concurrency,
            &args.window,
            args.seed,
        )
        .await?;
        rowlock_server.stop().await?;
        Some(phase)
    };
    Ok(json!({
        "bench": "many",
        "raffles": args.raffles,
        "tickets": args.tickets,
        "zipf": args.zipf,
        "concurrency": args.concurrency,
        "seconds": args.window.seconds,
        "reservations_per_sec": phase.reservations_per_sec,
        "p50_ms": phase.p50_ms,
        "p99_ms": phase.p99_ms,
        "errors": phase.errors,
        "hot_reservations_per_sec": hot_phase.reservations_per_sec,
        "hot_p99_ms": hot_phase.p99_ms,
        "vs_hot": crate::report::ratio(phase.reservations_per_sec, hot_phase.reservations_per_sec),
        "rowlock_reservations_per_sec": rowlock.as_ref().map_or(0.0, |r| r.reservations_per_sec),
        "rowlock_p99_ms": rowlock.as_ref().map_or(0.0, |r| r.p99_ms),
        "vs_rowlock": rowlock.as_ref().map_or(0.0, |r| crate::report::ratio(phase.reservations_per_sec, r.reservations_per_sec)),
        "server_rss_bytes": rss,
        "oversold": log.oversold,
        "log": log,
        "log_failures": log_failures,
        "load_average_before": load_before,
        "load_average_after": load_now(),
        "detail": {"tombola": phase, "hot": hot_phase, "rowlock": rowlock},
    }))
}
