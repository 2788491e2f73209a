//! `tombola-bench rebuild`: every projection rebuilt from a log of `--events` events, against
//! a plain ordered read of the same events in the same run (the limit a rebuild can reach:
//! it has to read them all, in order).
//!
//! The log (`rebuild/fill.rs`) has many raffles, one of them with at least a million
//! numbers, and the mix a sale makes: reservations, payments, releases, expiries, refunds.
//! The scan reads every raffle's stream in the runtime's own batches (`EventSource::
//! read_after`, the query a rebuild reads with) and counts the rows. The rebuild runs
//! `RuntimeHandle::rebuild_all`, as `tombola projections rebuild --all` does: shadow tables
//! filled from one read of the log, their secondary indexes built once they are full, then
//! swapped in. `--separately` rebuilds one projection after the other instead (each reads
//! the log itself), as the previous implementation did.

mod fill;

use std::time::Instant;

use clap::Args as ClapArgs;
use serde_json::json;
use tombola_projections::{models, EventSource, Runtime, RuntimeConfig};

use crate::report::{per_sec, phase, ratio, round3, BenchResult, Report};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Events in the log.
    #[arg(long, default_value_t = 5_000_000)]
    events: u64,
    /// Numbers in the big raffle.
    #[arg(long, default_value_t = 1_000_000)]
    big_tickets: u32,
    /// Numbers in each of the other raffles.
    #[arg(long, default_value_t = 5_000)]
    small_tickets: u32,
    /// Events per rebuild batch (the CLI's rebuild uses 10,000).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Rebuild the projections one after the other, each reading the log itself.
    #[arg(long)]
    separately: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub fn run(args: &Args) -> BenchResult<Report> {
    crate::alloc::stop_counting();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (figures, failures) =
        runtime.block_on(crate::database::discarding_leftovers(run_async(args)))?;
    Report::new(&figures, failures)
}

async fn run_async(args: &Args) -> Result<(serde_json::Value, Vec<String>), String> {
    let (store, url) = crate::database::fresh(8).await?;
    let pool = store.pool().clone();
    let projections = models::all();
    tombola_projections::migrate(&pool, &projections)
        .await
        .map_err(|e| e.to_string())?;
    phase(format_args!(
        "rebuild bench: filling a log of {} events",
        args.events
    ));
    let started = Instant::now();
    let filled = fill::fill(
        &pool,
        fill::Plan {
            events: args.events,
            big_tickets: args.big_tickets,
            small_tickets: args.small_tickets,
            seed: args.seed,
        },
    )
    .await?;
    let fill_time = started.elapsed();
    phase(format_args!(
        "filled {} events, {} raffles, {} orders in {:.1} s",
        filled.events,
        filled.raffles.len(),
        filled.orders,
        fill_time.as_secs_f64()
    ));
    crate::database::checkpoint(&store, "rebuild").await;
    let load_before = crate::sys::load_average();

    // The limit: the same events, read in order in the rebuild's batches, nothing done.
    let source = EventSource::new(pool.clone());
    let started = Instant::now();
    let mut scanned = 0u64;
    for raffle_id in &filled.raffles {
        let mut after = 0u64;
        loop {
            let rows = source
                .read_after(*raffle_id, after, args.batch)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = rows.last() else { break };
            after = last.0 as u64;
            scanned += rows.len() as u64;
        }
    }
    let scan_time = started.elapsed();
    phase(format_args!(
        "scan: {scanned} events in {:.1} s ({:.0}/s)",
        scan_time.as_secs_f64(),
        scanned as f64 / scan_time.as_secs_f64()
    ));
    crate::database::checkpoint(&store, "rebuild").await;

    let runtime = Runtime::new(
        source,
        pool.clone(),
        projections.clone(),
        RuntimeConfig {
            batch_size: args.batch,
            ..RuntimeConfig::default()
        },
    );
    let handle = runtime.handle();
    let started = Instant::now();
    let mut per_projection = serde_json::Map::new();
    if args.separately {
        for projection in &projections {
            let one = Instant::now();
            handle
                .rebuild(projection.name(), None, |_| {})
                .await
                .map_err(|e| format!("rebuilding {}: {e}", projection.name()))?;
            let took = one.elapsed();
            phase(format_args!(
                "rebuilt {} in {:.1} s",
                projection.name(),
                took.as_secs_f64()
            ));
            per_projection.insert(
                projection.name().to_owned(),
                json!(round3(took.as_secs_f64())),
            );
        }
    } else {
        let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
        handle
            .rebuild_all(&names, |_| {})
            .await
            .map_err(|e| format!("rebuilding: {e}"))?;
    }
    let rebuild_time = started.elapsed();
    let phases = phases_json(&handle.rebuild_timings());
    phase(format_args!("rebuild phases (s): {phases}"));
    let events_per_sec = per_sec(filled.events, rebuild_time);
    let scan_per_sec = per_sec(scanned, scan_time);
    phase(format_args!(
        "rebuild: {} events in {:.1} s ({events_per_sec:.0}/s)",
        filled.events,
        rebuild_time.as_secs_f64()
    ));

    let failures = check(&pool, &filled, scanned).await?;
    let rss_peak_mb = peak_rss_mb();
    crate::database::discard(store, &url).await?;
    Ok((
        json!({
            "bench": "rebuild",
            "mode": if args.separately { "separately" } else { "all_in_one_pass" },
            "events": filled.events,
            "raffles": filled.raffles.len(),
            "orders": filled.orders,
            "big_raffle_tickets": args.big_tickets,
            "batch": args.batch,
            "fill_s": round3(fill_time.as_secs_f64()),
            "scan_s": round3(scan_time.as_secs_f64()),
            "rebuild_s": round3(rebuild_time.as_secs_f64()),
            "per_projection_s": per_projection,
            "phases_s": phases,
            "load_average_before": load_before,
            "load_average_after": crate::sys::load_average(),
            "verified": failures.is_empty(),
            "events_per_sec": events_per_sec,
            "scan_events_per_sec": scan_per_sec,
            "ratio": ratio(events_per_sec, scan_per_sec),
            "rss_peak_mb": rss_peak_mb,
        }),
        failures,
    ))
}

/// Where the rebuild's time went, in seconds: the fill's phases summed over its workers
/// (`fill` is their wall time), then per projection the index builds and the swaps.
fn phases_json(t: &tombola_projections::RebuildTimings) -> serde_json::Value {
    let secs = |d: std::time::Duration| json!(round3(d.as_secs_f64()));
    let by_name = |list: &[(&'static str, std::time::Duration)]| {
        list.iter()
            .map(|(name, took)| ((*name).to_owned(), secs(*took)))
            .collect::<serde_json::Map<_, _>>()
    };
    json!({
        "fill": secs(t.fill),
        "read": secs(t.read),
        "decode": secs(t.decode),
        "apply": by_name(&t.apply),
        "commit": secs(t.commit),
        "index": by_name(&t.index),
        "swap": by_name(&t.swap),
    })
}

/// The rebuilt models against what the generator's aggregates say.
async fn check(
    pool: &sqlx::PgPool,
    filled: &fill::Filled,
    scanned: u64,
) -> Result<Vec<String>, String> {
    let mut failures = Vec::new();
    if scanned != filled.events {
        failures.push(format!(
            "the scan read {scanned} events of {}",
            filled.events
        ));
    }
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .map_err(|e| e.to_string())
    };
    let orders = count("SELECT count(*) FROM read_orders").await?;
    if orders as u64 != filled.orders {
        failures.push(format!(
            "read_orders: {orders} rows, {} orders",
            filled.orders
        ));
    }
    let tickets = count("SELECT count(*) FROM read_tickets").await?;
    if tickets as u64 != filled.held_or_sold {
        failures.push(format!(
            "read_tickets: {tickets} rows, {} numbers held or sold",
            filled.held_or_sold
        ));
    }
    let checkpoints = count(
        "SELECT count(*) FROM projection_checkpoints c \
         JOIN (SELECT aggregate_id::uuid AS raffle_id, max(sequence) AS head FROM events \
               GROUP BY aggregate_id) h ON h.raffle_id = c.raffle_id AND h.head = c.sequence \
         WHERE c.slot = 'live'",
    )
    .await?;
    let expected = (filled.raffles.len() * models::all().len()) as i64;
    if checkpoints != expected {
        failures.push(format!(
            "{checkpoints} live checkpoints at their stream's head, {expected} expected"
        ));
    }
    if let Some((raffle_id, sold, reserved)) = filled.big {
        let tally: Option<(i64, i64)> = sqlx::query_as(
            "SELECT (tally->>'sold')::bigint, (tally->>'reserved')::bigint \
             FROM read_raffle_stats WHERE raffle_id = $1",
        )
        .bind(raffle_id)
        .fetch_optional(pool)
        .await
        .map_err(|e| e.to_string())?;
        if tally != Some((sold as i64, reserved as i64)) {
            failures.push(format!(
                "raffle_stats of the big raffle: {tally:?}, the aggregate says sold {sold}, reserved {reserved}"
            ));
        }
    }
    let shadows =
        count("SELECT count(*) FROM pg_tables WHERE tablename LIKE '%\\_\\_shadow'").await?;
    if shadows != 0 {
        failures.push(format!("{shadows} shadow tables left behind"));
    }
    Ok(failures)
}

/// The process's peak resident set (`VmHWM`), in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    (kib / 1024.0 * 10.0).round() / 10.0
}
