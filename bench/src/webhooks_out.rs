//! `tombola-bench webhooks-out`: outbound webhooks under a steady stream of paid orders.
//!
//! Two runs on fresh databases (named `webhooks_bench_…`), same load: first with no
//! endpoints (the baseline), then with `--fast` endpoints answering at once, `--slow` ones
//! answering after `--slow-ms`, and one dead one (nothing listens on its port), all on
//! loopback. Each run offers `--rate` orders per second for `--seconds` (open loop; each
//! order is a reservation then a manual payment over HTTP, so three messages: order.reserved,
//! order.paid, tickets.issued). It reports messages delivered per second to the fast
//! endpoints, the lag from commit (the message's `timestamp`) to a fast endpoint's 2xx, the
//! messages a fast endpoint never received (`lost`, must be 0), and the reservation's p99
//! with and without webhooks (`command_p99_ratio`, goal ≤ 1.1). `--rounds N` alternates N
//! baseline and N loaded runs and reports medians (each round's figures under `per_round`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Args as ClapArgs;
use serde_json::json;
use tombola::api::auth::{Keys, Role};
use tombola::clock::SystemClock;
use tombola::config::Settings;
use tombola::startup::Application;
use tombola::store::Store;
use uuid::Uuid;

use crate::api_client::post;
use crate::report::{ms, per_sec, ratio, round3, BenchResult, Report};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Orders per second offered (each: a reservation, then its payment).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Raffles the orders are spread over.
    #[arg(long, default_value_t = 4)]
    raffles: usize,
    /// Endpoints answering 200 at once.
    #[arg(long, default_value_t = 2)]
    fast: usize,
    /// Endpoints answering 200 after --slow-ms.
    #[arg(long, default_value_t = 2)]
    slow: usize,
    #[arg(long, default_value_t = 1000)]
    slow_ms: u64,
    /// Longest wait, after the load, for the fast endpoints to receive every message.
    #[arg(long, default_value_t = 120)]
    drain_seconds: u64,
    /// Baseline and loaded runs, alternated (baseline, loaded, baseline, …), so that a
    /// neighbour's noise falls on both sides; the ratio is of the medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Niceness of the server's outbound webhooks threads (decision 0030; 0: the
    /// requests' priority, for comparison).
    #[arg(long, default_value_t = tombola::webhooks::DEFAULT_NICE)]
    webhook_nice: i32,
}

pub fn run(args: &Args) -> BenchResult<Report> {
    crate::alloc::stop_counting();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = runtime.block_on(run_async(args))?;
    let mut failures = Vec::new();
    if figures["lost"] != 0 {
        failures.push(format!(
            "{} messages never reached a fast endpoint",
            figures["lost"]
        ));
    }
    Report::new(&figures, failures)
}

/// What a fast receiver saw: message id and lag from the event's commit, per request.
type Seen = Arc<Mutex<Vec<(String, f64)>>>;

async fn receiver(delay: Duration) -> Result<(String, Seen), String> {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let log = log.clone();
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let committed = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|b| b["timestamp"].as_str().map(str::to_owned))
                    .and_then(|t| t.parse::<DateTime<Utc>>().ok());
                let lag = committed.map_or(f64::NAN, |at| {
                    (Utc::now() - at).num_microseconds().unwrap_or(0) as f64 / 1e3
                });
                log.lock().unwrap().push((id, lag));
                "ok"
            }
        }),
    );
    let listener = bind().await?;
    let url = format!(
        "http://{}/hook",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, seen))
}

/// A port of this bench's range (18200–18299).
async fn bind() -> Result<tokio::net::TcpListener, String> {
    for port in 18200..18300 {
        if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return Ok(listener);
        }
    }
    Err("no free port in 18200-18299".into())
}

async fn fresh_database() -> Result<(Store, String), String> {
    let server = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL".to_owned())?;
    let name = format!("webhooks_bench_{}", Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&server)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .map_err(|e| e.to_string())?;
    admin.close().await;
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(b, _)| b)
        .to_owned();
    let url = format!("{base}/{name}");
    let store = Store::connect(&url, 32).await.map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    Ok((store, url))
}

struct RunFigures {
    reserve_latencies: Vec<Duration>,
    /// Every message the subscriber made.
    messages: Vec<String>,
    /// From the start of the load until every fast endpoint had every message.
    delivered_in: Duration,
}

/// One run: a server on a fresh database, `endpoints` registered, the load, then a wait
/// (while the server still runs) until every message is made and each `fast` receiver has
/// all of them, or `--drain-seconds` pass.
async fn one_run(args: &Args, endpoints: &[String], fast: &[Seen]) -> Result<RunFigures, String> {
    let (store, url) = fresh_database().await?;
    let outcome = load(args, &store, endpoints, fast).await;
    store.pool().close().await;
    let _ = tombola::testing::drop_database(&url).await;
    outcome
}

async fn load(
    args: &Args,
    store: &Store,
    endpoints: &[String],
    fast: &[Seen],
) -> Result<RunFigures, String> {
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().expect("address"),
        rate_limit_per_key: 1_000_000,
        rate_limit_per_ip: 1_000_000,
        request_timeout: Duration::from_secs(30),
        ..Settings::default()
    };
    settings.webhooks.allow_private_targets = true;
    settings.webhooks.nice = args.webhook_nice;
    let app = Application::build(&settings, store.clone(), Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let key = Keys::create(store, Role::Admin, None, Some("bench"))
        .await
        .map_err(|e| e.to_string())?;
    let client = reqwest::Client::new();
    for url in endpoints {
        post(
            &client,
            &format!("{base}/v1/webhook-endpoints"),
            &key,
            &json!({"url": url}),
        )
        .await?;
    }
    let mut raffles = Vec::new();
    for i in 0..args.raffles {
        let raffle = post(
            &client,
            &format!("{base}/v1/raffles"),
            &key,
            &json!({
            "title": format!("Bench raffle {i}"), "ticket_count": 1_000_000, "price_minor": 500,
            "currency": "USD", "hold_minutes": 60, "prizes": [{"name": "Prize"}],
            "draw_commitment": "19b25856e1c150ca834cffc8b59b23adbd0ec0389e58eb22b3b64768098d002b",
            "organizer_id": "bench"}),
        )
        .await?;
        let id = raffle["id"].as_str().ok_or("no raffle id")?.to_owned();
        post(
            &client,
            &format!("{base}/v1/raffles/{id}/open"),
            &key,
            &json!({}),
        )
        .await?;
        raffles.push(id);
    }
    crate::database::checkpoint(store, "webhooks-out").await;
    let total = u64::from(args.rate) * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let (client, base, key, latencies) =
            (client.clone(), base.clone(), key.clone(), latencies.clone());
        let raffle = raffles[i as usize % raffles.len()].clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"buyer": {"name": "Bench", "email": format!("b{i}@example.com")}, "quantity": 1});
            let sent = Instant::now();
            let order = post(&client, &format!("{base}/v1/raffles/{raffle}/reservations"), &key, &body).await?;
            latencies.lock().unwrap().push(sent.elapsed());
            let order_id = order["order_id"].as_str().ok_or("no order id")?;
            post(&client, &format!("{base}/v1/raffles/{raffle}/orders/{order_id}/manual-payment"), &key,
                &json!({"method": "cash", "reference": "bench"})).await?;
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    eprintln!(
        "webhooks-out bench: load done in {:.1} s; draining",
        started.elapsed().as_secs_f64()
    );
    // Three messages per order, and raffle.opened per raffle (when there are endpoints).
    let expected = if endpoints.is_empty() {
        0
    } else {
        total as usize * 3 + args.raffles
    };
    let deadline = Instant::now() + Duration::from_secs(args.drain_seconds);
    let mut messages: Vec<String>;
    loop {
        messages = sqlx::query_scalar("SELECT msg_id FROM webhook_messages")
            .fetch_all(store.pool())
            .await
            .map_err(|e| e.to_string())?;
        let all_made = messages.len() >= expected;
        let all_received = fast.iter().all(|seen| {
            let seen = seen.lock().unwrap();
            seen.iter().map(|(id, _)| id).collect::<HashSet<_>>().len() >= expected
        });
        if (all_made && all_received) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered_in = started.elapsed();
    let _ = stop.send(());
    let _ = server.await;
    let reserve_latencies = std::mem::take(&mut *latencies.lock().unwrap());
    Ok(RunFigures {
        reserve_latencies,
        messages,
        delivered_in,
    })
}

fn p(latencies: &mut [Duration], q: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.sort();
    latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
}

async fn run_async(args: &Args) -> Result<serde_json::Value, String> {
    let (mut baseline_p99s, mut baseline_p50s, mut rounds) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        eprintln!(
            "webhooks-out bench, round {round}: baseline, no endpoints: {} orders/s for {} s",
            args.rate, args.seconds
        );
        let mut baseline = one_run(args, &[], &[]).await?;
        baseline_p99s.push(p(&mut baseline.reserve_latencies, 0.99));
        baseline_p50s.push(p(&mut baseline.reserve_latencies, 0.50));
        rounds.push(loaded_round(args, round).await?);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let field = |name: &str| {
        rounds
            .iter()
            .map(|r| r[name].as_f64().unwrap_or(0.0))
            .collect::<Vec<_>>()
    };
    let baseline_p99 = median(&mut baseline_p99s.iter().map(|d| ms(*d)).collect());
    let baseline_p50 = median(&mut baseline_p50s.iter().map(|d| ms(*d)).collect());
    let reserve_p99 = median(&mut field("reserve_p99_ms"));
    let lost: u64 = rounds.iter().map(|r| r["lost"].as_u64().unwrap_or(0)).sum();
    let mut figures = rounds.last().cloned().unwrap_or_default();
    figures["rounds"] = json!(args.rounds);
    figures["per_round"] = json!(rounds);
    figures["lost"] = json!(lost);
    figures["messages_per_sec"] = json!(median(&mut field("messages_per_sec")));
    figures["delivery_lag_p50_ms"] = json!(median(&mut field("delivery_lag_p50_ms")));
    figures["delivery_lag_p99_ms"] = json!(median(&mut field("delivery_lag_p99_ms")));
    figures["reserve_p50_ms"] = json!(median(&mut field("reserve_p50_ms")));
    figures["reserve_p99_ms"] = json!(reserve_p99);
    figures["baseline_reserve_p50_ms"] = json!(baseline_p50);
    figures["baseline_reserve_p99_ms"] = json!(baseline_p99);
    figures["baseline_reserve_p99_ms_per_round"] =
        json!(baseline_p99s.iter().map(|d| ms(*d)).collect::<Vec<_>>());
    figures["command_p99_ratio"] = json!(ratio(reserve_p99, baseline_p99));
    Ok(figures)
}

/// One run with endpoints: fast, slow and dead ones, new for the round.
async fn loaded_round(args: &Args, round: u32) -> Result<serde_json::Value, String> {
    let mut fast = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..args.fast {
        let (url, seen) = receiver(Duration::ZERO).await?;
        urls.push(url);
        fast.push(seen);
    }
    let mut slow = Vec::new();
    for _ in 0..args.slow {
        let (url, seen) = receiver(Duration::from_millis(args.slow_ms)).await?;
        urls.push(url);
        slow.push(seen);
    }
    // Dead: a port bound, then closed; connections to it are refused.
    let dead = bind().await?;
    urls.push(format!(
        "http://{}/hook",
        dead.local_addr().map_err(|e| e.to_string())?
    ));
    drop(dead);
    eprintln!(
        "webhooks-out bench, round {round}: {} fast, {} slow ({} ms), 1 dead endpoint: {} orders/s for {} s",
        args.fast, args.slow, args.slow_ms, args.rate, args.seconds
    );
    let mut loaded = one_run(args, &urls, &fast).await?;
    let loaded_p99 = p(&mut loaded.reserve_latencies, 0.99);
    let loaded_p50 = p(&mut loaded.reserve_latencies, 0.50);

    let made: HashSet<&String> = loaded.messages.iter().collect();
    let (mut lost, mut delivered, mut lags) = (0usize, 0usize, Vec::new());
    for seen in &fast {
        let seen = seen.lock().unwrap();
        let ids: HashSet<&String> = seen.iter().map(|(id, _)| id).collect();
        lost += made.difference(&ids).count();
        delivered += ids.len();
        lags.extend(
            seen.iter()
                .map(|(_, lag)| Duration::from_micros((lag * 1e3).max(0.0) as u64)),
        );
    }
    let slow_requests: usize = slow.iter().map(|s| s.lock().unwrap().len()).sum();
    Ok(json!({
        "bench": "webhooks-out",
        "rate_orders_per_sec": args.rate,
        "seconds": args.seconds,
        "endpoints": {"fast": args.fast, "slow": args.slow, "slow_ms": args.slow_ms, "dead": 1},
        "messages_made": loaded.messages.len(),
        "messages_delivered_fast": delivered,
        "messages_per_sec": per_sec(delivered as u64, loaded.delivered_in),
        "delivery_lag_p50_ms": ms(p(&mut lags, 0.50)),
        "delivery_lag_p99_ms": ms(p(&mut lags, 0.99)),
        "slow_endpoint_requests": slow_requests,
        "lost": lost,
        "reserve_p50_ms": ms(loaded_p50),
        "reserve_p99_ms": ms(loaded_p99),
        "delivered_in_seconds": round3(loaded.delivered_in.as_secs_f64()),
    }))
}
