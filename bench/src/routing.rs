//! `tombola-bench routing`: what wrong routing costs. Two nodes (two servers in this
//! process, each with its own connection pools) on one fresh database; closed-loop
//! reservations on a few raffles, first each raffle's requests all to one node (routed by
//! raffle id, as `deploy/nginx.conf` does), then every request to either node at random
//! (misrouted), on fresh raffles, same run. Reports throughput, latency, the append
//! conflicts counted, and checks that every 201 is in the log exactly once.
//!
//! Servers listen on ports 18330-18331 (the `limits` helper's range).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use rand::Rng;
use serde_json::json;
use tombola::api::auth::{Keys, Role};
use tombola::clock::SystemClock;
use tombola::config::Settings;
use tombola::startup::Application;
use tombola::store::Store;
use uuid::Uuid;

use crate::limits::open_raffle;
use crate::report::{phase, ratio, round3, BenchResult, Report};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Concurrent connections reserving.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Raffles the reservations go to.
    #[arg(long, default_value_t = 4)]
    raffles: usize,
    /// Seconds per variant.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

pub fn run(args: &Args) -> BenchResult<Report> {
    crate::alloc::stop_counting();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = runtime.block_on(crate::database::discarding_leftovers(run_async(args)))?;
    let mut failures = Vec::new();
    for variant in ["routed", "misrouted"] {
        if figures[variant]["logged"] != figures[variant]["reservations"] {
            failures.push(format!("{variant}: the log and the 201s disagree"));
        }
    }
    Report::new(&figures, failures)
}

async fn run_async(args: &Args) -> Result<serde_json::Value, String> {
    let (store, url) = crate::database::fresh_named("limits_routing", 32).await?;
    let mut bases = Vec::new();
    let mut servers = Vec::new();
    for port in [18330, 18331] {
        let node = Store::connect(&url, 32).await.map_err(|e| e.to_string())?;
        let settings = Settings {
            listen: format!("127.0.0.1:{port}").parse().expect("address"),
            rate_limits: ["*.key=off", "*.ip=off"]
                .iter()
                .map(|r| r.parse().expect("a rule"))
                .collect(),
            request_timeout: Duration::from_secs(30),
            queue_capacity: 65_536,
            retention_interval: Duration::ZERO,
            ..Settings::default()
        };
        let app = Application::build(&settings, node, Arc::new(SystemClock))
            .await
            .map_err(|e| e.to_string())?;
        bases.push(format!("http://127.0.0.1:{}", app.port()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        servers.push((stop, server));
    }
    let key = Keys::create(&store, Role::Admin, None, Some("bench"))
        .await
        .map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .map_err(|e| e.to_string())?;

    let mut figures = serde_json::Map::new();
    let mut baseline = 0.0;
    for misrouted in [false, true] {
        let name = if misrouted { "misrouted" } else { "routed" };
        phase(format!("{name}: {} s", args.seconds));
        let mut raffles = Vec::new();
        for i in 0..args.raffles {
            raffles.push(open_raffle(&client, &bases[i % 2], &key, i).await?);
        }
        let conflicts_before = conflicts();
        let (count, elapsed, mut latencies) =
            reserve(&client, &bases, &key, &raffles, misrouted, args).await?;
        let conflicts = conflicts() - conflicts_before;
        latencies.sort_unstable();
        let logged: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE event_type = 'TicketsReserved' \
             AND aggregate_id = ANY($1)",
        )
        .bind(raffles.iter().map(Uuid::to_string).collect::<Vec<_>>())
        .fetch_one(store.pool())
        .await
        .map_err(|e| e.to_string())?;
        let per_sec = count as f64 / elapsed.as_secs_f64();
        if !misrouted {
            baseline = per_sec;
        }
        figures.insert(
            name.to_owned(),
            json!({
                "reservations": count,
                "logged": logged,
                "per_sec": per_sec.round(),
                "ratio_to_routed": ratio(per_sec, baseline),
                "p50_ms": round3(f64::from(percentile(&latencies, 0.50)) / 1e3),
                "p99_ms": round3(f64::from(percentile(&latencies, 0.99)) / 1e3),
                "append_conflicts": conflicts,
            }),
        );
    }
    for (stop, server) in servers {
        let _ = stop.send(());
        let _ = server.await;
    }
    crate::database::discard(store, &url).await?;
    figures.insert("concurrency".into(), json!(args.concurrency));
    figures.insert("raffles".into(), json!(args.raffles));
    figures.insert("seconds".into(), json!(args.seconds));
    Ok(serde_json::Value::Object(figures))
}

/// `tombola_engine_conflicts_total` of this process (both nodes).
fn conflicts() -> u64 {
    tombola::telemetry::init_metrics()
        .map(|handle| handle.render())
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("tombola_engine_conflicts_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

async fn reserve(
    client: &reqwest::Client,
    bases: &[String],
    key: &str,
    raffles: &[Uuid],
    misrouted: bool,
    args: &Args,
) -> Result<(u64, Duration, Vec<u32>), String> {
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    let started = Instant::now();
    for worker in 0..args.concurrency {
        let (client, bases, key, done, count) = (
            client.clone(),
            bases.to_vec(),
            key.to_owned(),
            done.clone(),
            count.clone(),
        );
        let (raffle_index, raffle) = (worker % raffles.len(), raffles[worker % raffles.len()]);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                let node = if misrouted {
                    rand::rng().random_range(0..bases.len())
                } else {
                    raffle_index % bases.len()
                };
                let body = json!({"buyer": {"name": "Bench", "email": format!("w{worker}-{i}@example.com")}, "quantity": 1});
                i += 1;
                let sent = Instant::now();
                let response = client
                    .post(format!("{}/v1/raffles/{raffle}/reservations", bases[node]))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if response.status() != reqwest::StatusCode::CREATED {
                    return Err(format!("reservation answered {}", response.status()));
                }
                latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    done.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.map_err(|e| e.to_string())??);
    }
    Ok((count.load(Ordering::Relaxed), elapsed, latencies))
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    let index = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or(0)
}
