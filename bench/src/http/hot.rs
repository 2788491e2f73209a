//! `tombola-bench hot`: one raffle of 10M tickets over HTTP, against the real `tombola serve`.
//!
//! In the same run and at each `--concurrency`: the no-op ceiling (`GET /v1/whoami` on the
//! same server, client and connections) and the row-lock approach (`bench/sql/rowlock.sql`
//! behind a thin axum handler in this process, same PostgreSQL, same buyers). Afterwards the
//! raffle's log is replayed to prove that no number was issued twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Args as ClapArgs;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::check::LogCheck;
use super::load::{drive, Outcome};
use super::rowlock::RowlockServer;
use super::server::Server;
use super::workload::{NoopBuyer, Raffles, RowlockBuyer, TombolaBuyer};
use super::{load_now, percentile_ms, Window};
use crate::report::{BenchResult, Report};

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Tickets in the hot raffle.
    #[arg(long, default_value_t = 10_000_000)]
    pub tickets: u32,
    /// Connections (= concurrent buyers); several (`--concurrency 16,64,256,1024`) sweep.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    pub concurrency: Vec<usize>,
    #[command(flatten)]
    pub window: Window,
    /// Skip the row-lock baseline.
    #[arg(long)]
    pub no_rowlock: bool,
    /// Write an SVG of reservations/s and p99 against concurrency here (a sweep).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// One measured window of reservations.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub concurrency: usize,
    pub reservations_per_sec: f64,
    pub attempts_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: BTreeMap<String, u64>,
    pub payments: u64,
    pub payment_errors: BTreeMap<String, u64>,
    pub releases: u64,
    pub release_errors: BTreeMap<String, u64>,
    pub seconds: f64,
    pub load_average: f64,
    /// 201s to reservations, warm-up included (held against the log).
    pub created_total: u64,
    /// Reservation answers lost (transport errors, 5xx), warm-up included.
    pub lost_total: u64,
}

impl Phase {
    pub fn from_outcome(concurrency: usize, mut outcome: Outcome) -> Self {
        let secs = outcome.measured.as_secs_f64();
        let tally = &mut outcome.tally;
        let reserved = tally.ok("reserve");
        let latencies = tally.sorted("reserve");
        let attempts = latencies.len();
        let (p50_ms, p99_ms) = (
            percentile_ms(latencies, 0.5),
            percentile_ms(latencies, 0.99),
        );
        Self {
            concurrency,
            reservations_per_sec: (reserved as f64 / secs).round(),
            attempts_per_sec: (attempts as f64 / secs).round(),
            p50_ms,
            p99_ms,
            errors: tally.errors("reserve"),
            payments: tally.ok("pay"),
            payment_errors: tally.errors("pay"),
            releases: tally.ok("release"),
            release_errors: tally.errors("release"),
            seconds: crate::report::round3(secs),
            load_average: load_now(),
            created_total: tally.all_with("reserve", 201),
            lost_total: tally.all_lost("reserve"),
        }
    }
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

/// What [`verify_log`] found wrong, as the figures carry it.
pub fn log_failures(figures: &serde_json::Value) -> Vec<String> {
    figures["log_failures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect()
}

/// Creates and opens a raffle through the API.
pub async fn create_raffle(server: &Server, tickets: u32, title: &str) -> Result<Uuid, String> {
    let client = reqwest::Client::new();
    let body = json!({
        "title": title,
        "ticket_count": tickets,
        "price_minor": 500,
        "currency": "USD",
        "prizes": [{"name": "Prize"}],
        "max_tickets_per_order": 10,
        "draw_commitment": "19b25856e1c150ca834cffc8b59b23adbd0ec0389e58eb22b3b64768098d002b",
        "organizer_id": "bench",
    });
    let created: serde_json::Value = post(&client, server, "/v1/raffles", &body).await?;
    let id = created["id"].as_str().ok_or("no raffle id")?.to_owned();
    post(
        &client,
        server,
        &format!("/v1/raffles/{id}/open"),
        &json!({}),
    )
    .await?;
    Uuid::parse_str(&id).map_err(|e| e.to_string())
}

async fn post(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let url = format!("{}{path}", server.base);
    crate::api_client::post(client, &url, &server.key, body).await
}

pub async fn tombola_phase(
    server: &Server,
    raffles: &Arc<Raffles>,
    concurrency: usize,
    window: &Window,
    seed: u64,
) -> Result<Phase, String> {
    let buyers = (0..concurrency)
        .map(|i| TombolaBuyer::new(raffles.clone(), i, seed))
        .collect();
    let outcome = drive(
        &server.authority,
        Some(&server.key),
        buyers,
        window.warmup(),
        window.measured(),
    )
    .await?;
    let phase = Phase::from_outcome(concurrency, outcome);
    crate::report::phase(format!(
        "tombola @{concurrency}: {:.0} reservations/s, p50 {:.1} ms, p99 {:.1} ms, errors {:?}",
        phase.reservations_per_sec, phase.p50_ms, phase.p99_ms, phase.errors
    ));
    Ok(phase)
}

/// Requests per second of `GET /v1/whoami`, and its p99.
pub async fn noop_phase(
    server: &Server,
    concurrency: usize,
    window: &Window,
) -> Result<(f64, f64), String> {
    let buyers = (0..concurrency).map(|_| NoopBuyer).collect();
    let mut outcome = drive(
        &server.authority,
        Some(&server.key),
        buyers,
        window.warmup(),
        window.measured(),
    )
    .await?;
    let per_sec = (outcome.tally.ok("noop") as f64 / outcome.measured.as_secs_f64()).round();
    let p99 = percentile_ms(outcome.tally.sorted("noop"), 0.99);
    crate::report::phase(format!(
        "no-op @{concurrency}: {per_sec:.0} requests/s, p99 {p99:.1} ms"
    ));
    Ok((per_sec, p99))
}

pub async fn rowlock_phase(
    rowlock: &RowlockServer,
    raffles: &Arc<Raffles>,
    concurrency: usize,
    window: &Window,
    seed: u64,
) -> Result<Phase, String> {
    let buyers = (0..concurrency)
        .map(|i| RowlockBuyer::new(raffles.clone(), i, seed))
        .collect();
    let outcome = drive(
        &rowlock.authority,
        None,
        buyers,
        window.warmup(),
        window.measured(),
    )
    .await?;
    let phase = Phase::from_outcome(concurrency, outcome);
    crate::report::phase(format!(
        "row-lock @{concurrency}: {:.0} reservations/s, p50 {:.1} ms, p99 {:.1} ms, errors {:?}",
        phase.reservations_per_sec, phase.p50_ms, phase.p99_ms, phase.errors
    ));
    Ok(phase)
}

/// The raffles' logs replayed ([`super::check`]), summed, and held against the 201s the
/// `phases` counted (`planted`: holds written to the logs other than through the API).
/// Returns the sum and what disagrees (empty: all is well).
pub async fn verify_log(
    server: &Server,
    raffles: &[(Uuid, u32)],
    phases: &[&Phase],
    planted: u64,
) -> Result<(LogCheck, Vec<String>), String> {
    let mut total = LogCheck::default();
    for &(raffle, tickets) in raffles {
        let check = super::check::replay(&server.store, raffle, tickets).await?;
        total.oversold += check.oversold;
        total.reserved_events += check.reserved_events;
        total.issued_events += check.issued_events;
        total.released_numbers += check.released_numbers;
        total.expired_numbers += check.expired_numbers;
    }
    let created: u64 = phases.iter().map(|p| p.created_total).sum();
    let lost: u64 = phases.iter().map(|p| p.lost_total).sum();
    let mut failures = Vec::new();
    if total.oversold != 0 {
        failures.push(format!("{} numbers held or issued twice", total.oversold));
    }
    let from_api = LogCheck {
        reserved_events: total.reserved_events.saturating_sub(planted),
        ..total
    };
    if let Err(mismatch) = super::check::answers_agree(&from_api, created, lost) {
        failures.push(mismatch);
    }
    crate::report::phase(format!(
        "log: {} holds ({created} answered 201, {lost} lost), {} issued, oversold {}",
        from_api.reserved_events, total.issued_events, total.oversold
    ));
    Ok((total, failures))
}

async fn run_async(args: &Args) -> Result<serde_json::Value, String> {
    let load_before = load_now();
    let mut server = Server::start(&[]).await?;
    let raffle = create_raffle(&server, args.tickets, "Hot raffle").await?;
    let raffles = Arc::new(Raffles::uniform(vec![raffle], args.tickets));
    crate::database::checkpoint(&server.store, "hot").await;
    let mut tombola = Vec::new();
    let mut noop = Vec::new();
    for &concurrency in &args.concurrency {
        noop.push(noop_phase(&server, concurrency, &args.window).await?);
        let cpu_before = server.cpu_seconds();
        let phase = tombola_phase(&server, &raffles, concurrency, &args.window, args.seed).await?;
        let cpu = server.cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
        tombola.push((phase, cpu));
    }
    let rss = server.rss_bytes();
    server.stop_process().await;
    let phases: Vec<&Phase> = tombola.iter().map(|(p, _)| p).collect();
    let (log, log_failures) = verify_log(&server, &[(raffle, args.tickets)], &phases, 0).await?;
    let postgres = crate::database::settings(&server.store).await?;
    server.stop().await?;

    let mut rowlock = Vec::new();
    if !args.no_rowlock {
        let rowlock_server = RowlockServer::start(1, args.tickets).await?;
        crate::database::checkpoint(&rowlock_server.store, "hot").await;
        let raffles = Arc::new(Raffles::uniform(vec![Uuid::nil()], args.tickets));
        for &concurrency in &args.concurrency {
            rowlock.push(
                rowlock_phase(
                    &rowlock_server,
                    &raffles,
                    concurrency,
                    &args.window,
                    args.seed,
                )
                .await?,
            );
        }
        rowlock_server.stop().await?;
    }

    let sweep: Vec<serde_json::Value> = tombola
        .iter()
        .enumerate()
        .map(|(i, (phase, cpu))| {
            let (noop_rps, noop_p99) = noop[i];
            let row = rowlock.get(i);
            let reserve_requests = phase.attempts_per_sec * phase.seconds;
            json!({
                "concurrency": phase.concurrency,
                "reservations_per_sec": phase.reservations_per_sec,
                "p50_ms": phase.p50_ms,
                "p99_ms": phase.p99_ms,
                "noop_requests_per_sec": noop_rps,
                "noop_p99_ms": noop_p99,
                "vs_noop": crate::report::ratio(phase.reservations_per_sec, noop_rps),
                "rowlock_reservations_per_sec": row.map_or(0.0, |r| r.reservations_per_sec),
                "rowlock_p50_ms": row.map_or(0.0, |r| r.p50_ms),
                "rowlock_p99_ms": row.map_or(0.0, |r| r.p99_ms),
                "vs_rowlock": row.map_or(0.0, |r| crate::report::ratio(phase.reservations_per_sec, r.reservations_per_sec)),
                "server_cpu_ms_per_reserve_request": cpu.map_or(0.0, |c| crate::report::round3(c * 1e3 / reserve_requests.max(1.0))),
                "tombola": phase,
                "rowlock": row,
            })
        })
        .collect();
    if let Some(path) = &args.plot {
        super::plot::write(path, &sweep)?;
        crate::report::phase(format!("plot written to {}", path.display()));
    }
    // The headline figures are those of the first concurrency given.
    let first = sweep.first().cloned().unwrap_or_default();
    let mut figures = json!({
        "bench": "hot",
        "tickets": args.tickets,
        "seconds": args.window.seconds,
        "concurrency": args.concurrency[0],
        "reservations_per_sec": first["reservations_per_sec"],
        "p50_ms": first["p50_ms"],
        "p99_ms": first["p99_ms"],
        "errors": first["tombola"]["errors"],
        "noop_requests_per_sec": first["noop_requests_per_sec"],
        "vs_noop": first["vs_noop"],
        "rowlock_reservations_per_sec": first["rowlock_reservations_per_sec"],
        "rowlock_p99_ms": first["rowlock_p99_ms"],
        "vs_rowlock": first["vs_rowlock"],
        "server_cpu_ms_per_reserve_request": first["server_cpu_ms_per_reserve_request"],
        "server_rss_bytes": rss,
        "oversold": log.oversold,
        "log": log,
        "log_failures": log_failures,
        "load_average_before": load_before,
        "load_average_after": load_now(),
        "postgres": postgres,
    });
    if sweep.len() > 1 {
        figures["sweep"] = serde_json::Value::Array(sweep);
    } else {
        figures["detail"] = first;
    }
    Ok(figures)
}
