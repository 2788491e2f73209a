//! `tombola-bench limits`: what the shared rate limits cost and how well they hold.
//!
//! 1. Cost on the reservation path: closed-loop reservations over HTTP against an in-process
//!    server on one fresh database, with the limits off (the same-run baseline), on (limits
//!    that never refuse, leases of the default 100 ms), and on with a lease per request (every
//!    request asks PostgreSQL: what leasing saves). The variants alternate over `--rounds`.
//! 2. The shared limit: two `tombola serve` processes on that database share one key's limit
//!    (`--shared-limit`, default 60/min with a burst of 100); requests at `--shared-rate` per second, spread
//!    over both, for `--shared-seconds`; accepted vs the stated bound (burst, plus rate ×
//!    window, plus one lease per node). Then both are killed and restarted, and the key is
//!    tried again at once: what a restart gave back.
//!
//! Servers listen on ports 18310-18329 (the `limits` helper's range).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use serde_json::json;
use tombola::api::auth::{Keys, Role};
use tombola::clock::SystemClock;
use tombola::config::Settings;
use tombola::limits::{LimitRule, LimitsConfig};
use tombola::startup::Application;
use tombola::store::Store;
use uuid::Uuid;

use crate::api_client::post;
use crate::report::{phase, ratio, round3, BenchResult, Report};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Concurrent connections reserving.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds each variant runs per round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of (off, on, a lease per request), interleaved against drift.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The `tombola` binary for the two-process part (default: beside this one).
    #[arg(long)]
    tombola_bin: Option<PathBuf>,
    /// The key's limit the two processes share (`N/unit[:burst]`). A slow refill, so that
    /// what a restart would give back stands out from what refills during it.
    #[arg(long, default_value = "60/min:100")]
    shared_limit: String,
    /// Requests per second sent to the two processes.
    #[arg(long, default_value_t = 400)]
    shared_rate: u32,
    /// Seconds of sending to the two processes.
    #[arg(long, default_value_t = 10)]
    shared_seconds: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Off,
    On,
    LeasePerRequest,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::On => "on",
            Self::LeasePerRequest => "lease_per_request",
        }
    }

    fn settings(self, port: u16) -> Settings {
        let mut settings = Settings {
            listen: format!("127.0.0.1:{port}").parse().expect("address"),
            // Limits that never refuse at this load: the cost is the checks and leases.
            rate_limit_per_key: 1_000_000,
            rate_limit_per_ip: 1_000_000,
            request_timeout: Duration::from_secs(30),
            queue_capacity: 65_536,
            retention_interval: Duration::ZERO,
            ..Settings::default()
        };
        match self {
            Self::Off => {
                settings.rate_limits = ["*.key=off", "*.ip=off"]
                    .iter()
                    .map(|r| r.parse().expect("a rule"))
                    .collect();
            }
            Self::On => {}
            Self::LeasePerRequest => settings.rate_limit_lease = Duration::ZERO,
        }
        settings
    }
}

pub fn run(args: &Args) -> BenchResult<Report> {
    crate::alloc::stop_counting();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = runtime.block_on(crate::database::discarding_leftovers(run_async(args)))?;
    let mut failures = Vec::new();
    if figures["shared"]["accepted"].as_u64() > figures["shared"]["bound"].as_u64() {
        failures.push("the two processes accepted more than the stated bound".to_owned());
    }
    if figures["shared"]["accepted_after_restart"].as_u64()
        > figures["shared"]["bound_after_restart"].as_u64()
    {
        failures.push("a restart gave budget back".to_owned());
    }
    Report::new(&figures, failures)
}

async fn run_async(args: &Args) -> Result<serde_json::Value, String> {
    let (store, url) = crate::database::fresh_named("limits_bench", 32).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .map_err(|e| e.to_string())?;

    let variants = [Variant::Off, Variant::On, Variant::LeasePerRequest];
    let mut totals: [(u64, Duration, Vec<u32>); 3] = Default::default();
    for round in 0..args.rounds {
        for (i, variant) in variants.iter().enumerate() {
            phase(format!("round {round}: limits {}", variant.name()));
            let (count, elapsed, latencies) = reserve_for(&store, &client, *variant, args).await?;
            totals[i].0 += count;
            totals[i].1 += elapsed;
            totals[i].2.extend(latencies);
        }
    }
    let mut cost = serde_json::Map::new();
    let baseline = totals[0].0 as f64 / totals[0].1.as_secs_f64();
    for (variant, (count, elapsed, mut latencies)) in variants.iter().zip(totals) {
        latencies.sort_unstable();
        let per_sec = count as f64 / elapsed.as_secs_f64();
        cost.insert(
            variant.name().to_owned(),
            json!({
                "reservations": count,
                "per_sec": per_sec.round(),
                "ratio_to_off": ratio(per_sec, baseline),
                "p50_ms": round3(f64::from(percentile(&latencies, 0.50)) / 1e3),
                "p99_ms": round3(f64::from(percentile(&latencies, 0.99)) / 1e3),
            }),
        );
    }

    let shared = shared_limit(&store, &url, &client, args).await?;
    crate::database::discard(store, &url).await?;
    Ok(json!({
        "concurrency": args.concurrency,
        "seconds_per_variant": args.seconds * args.rounds as u64,
        "cost": cost,
        "shared": shared,
    }))
}

/// One variant: a server of its own (fresh key, fresh raffles) on the shared database,
/// reserved from for `args.seconds`; the count, the time and each latency in µs.
async fn reserve_for(
    store: &Store,
    client: &reqwest::Client,
    variant: Variant,
    args: &Args,
) -> Result<(u64, Duration, Vec<u32>), String> {
    let app = Application::build(
        &variant.settings(18310),
        store.clone(),
        Arc::new(SystemClock),
    )
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
    let mut raffles = Vec::new();
    for i in 0..8 {
        raffles.push(open_raffle(client, &base, &key, i).await?);
    }
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    let started = Instant::now();
    for worker in 0..args.concurrency {
        let (client, base, key, done, count) = (
            client.clone(),
            base.clone(),
            key.clone(),
            done.clone(),
            count.clone(),
        );
        let raffle = raffles[worker % raffles.len()];
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                let body = json!({"buyer": {"name": "Bench", "email": format!("w{worker}-{i}@example.com")}, "quantity": 1});
                i += 1;
                let sent = Instant::now();
                let response = client
                    .post(format!("{base}/v1/raffles/{raffle}/reservations"))
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
    let _ = stop.send(());
    server
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((count.load(Ordering::Relaxed), elapsed, latencies))
}

pub async fn open_raffle(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    i: usize,
) -> Result<Uuid, String> {
    let body = json!({
        "title": format!("Limits bench raffle {i}"),
        "ticket_count": 1_000_000,
        "price_minor": 500,
        "currency": "USD",
        "hold_minutes": 60,
        "max_tickets_per_order": 10,
        "prizes": [{"name": "Prize"}],
        "draw_commitment": "19b25856e1c150ca834cffc8b59b23adbd0ec0389e58eb22b3b64768098d002b",
        "organizer_id": "bench",
    });
    let raffle = post(client, &format!("{base}/v1/raffles"), key, &body).await?;
    let id = raffle["id"].as_str().ok_or("no raffle id")?.to_owned();
    post(
        client,
        &format!("{base}/v1/raffles/{id}/open"),
        key,
        &json!({}),
    )
    .await?;
    Uuid::parse_str(&id).map_err(|e| e.to_string())
}

/// Two `tombola serve` processes on `url` sharing one key's limit.
async fn shared_limit(
    store: &Store,
    url: &str,
    client: &reqwest::Client,
    args: &Args,
) -> Result<serde_json::Value, String> {
    let rule: LimitRule = format!("general.key={}", args.shared_limit).parse()?;
    let limit = rule.limit.ok_or("--shared-limit must be a limit")?;
    let lease = LimitsConfig::new(1, 1, &[], Duration::from_millis(100)).lease_size(&limit);
    let bin = match &args.tombola_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("tombola"),
    };
    let key = Keys::create(store, Role::Admin, None, Some("bench-shared"))
        .await
        .map_err(|e| e.to_string())?;
    let ports = [18320, 18321];
    let spawn = || -> Result<Nodes, String> {
        ports
            .iter()
            .map(|port| {
                Command::new(&bin)
                    .arg("serve")
                    .env("DATABASE_URL", url)
                    .env("TOMBOLA_LISTEN", format!("127.0.0.1:{port}"))
                    .env(
                        "TOMBOLA_RATE_LIMITS",
                        format!("general.key={}", args.shared_limit),
                    )
                    .env("TOMBOLA_RATE_LIMIT_PER_IP", "1000000")
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(
                        std::fs::File::create(format!("/tmp/limits-bench-{port}.log"))
                            .map(Stdio::from)
                            .unwrap_or_else(|_| Stdio::null()),
                    )
                    .spawn()
                    .map_err(|e| format!("{}: {e}", bin.display()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Nodes)
    };
    let mut nodes = spawn()?;
    wait_ready(client, &ports).await?;

    phase(format!(
        "two processes share {}: {} requests/s for {} s",
        args.shared_limit, args.shared_rate, args.shared_seconds
    ));
    let total = u64::from(args.shared_rate) * args.shared_seconds;
    let (accepted, sent, window) =
        send_paced(client, &ports, &key, total, args.shared_rate).await?;
    let bound =
        f64::from(limit.burst) + limit.rate() * window.as_secs_f64() + 2.0 * f64::from(lease);

    phase("both processes killed and restarted");
    let killed_at = Instant::now();
    nodes.kill();
    let mut nodes = spawn()?;
    wait_ready(client, &ports).await?;
    let gap = killed_at.elapsed();
    // A new client: the old one's connections died with the processes.
    let client = reqwest::Client::new();
    let (after_restart, sent_after, _) = send_paced(&client, &ports, &key, 200, 1000).await?;
    nodes.kill();
    let refill = (limit.rate() * killed_at.elapsed().as_secs_f64()).min(f64::from(limit.burst));
    Ok(json!({
        "limit": args.shared_limit,
        "lease": lease,
        "sent": sent,
        "window_seconds": round3(window.as_secs_f64()),
        "accepted": accepted,
        "bound": bound.floor() as u64,
        "ideal": (f64::from(limit.burst) + limit.rate() * window.as_secs_f64()).floor() as u64,
        "restart_gap_seconds": round3(gap.as_secs_f64()),
        "sent_after_restart": sent_after,
        "accepted_after_restart": after_restart,
        // What refilled since the kill, plus a lease per node: a restart gives back nothing.
        "bound_after_restart": (refill + 2.0 * f64::from(lease)).ceil() as u64,
    }))
}

/// The server processes, killed when dropped (also when the run fails).
struct Nodes(Vec<Child>);

impl Nodes {
    fn kill(&mut self) {
        for node in &mut self.0 {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_ready(client: &reqwest::Client, ports: &[u16]) -> Result<(), String> {
    for port in ports {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let ready = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the server on port {port} did not start"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Sends `total` authenticated requests at `rate` per second, alternating between `ports`:
/// `POST /v1/raffles` with an empty object, which the key's limit admits or refuses and the
/// handler then answers 422 without touching the database, so that what is measured is the
/// limiter, not how fast a loaded node reads;
/// returns the accepted count, the sent count and the time from the first send to the last
/// answer (every decision falls in it).
async fn send_paced(
    client: &reqwest::Client,
    ports: &[u16],
    key: &str,
    total: u64,
    rate: u32,
) -> Result<(u64, u64, Duration), String> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let started = tokio::time::Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    let mut last_answer = started;
    for i in 0..total {
        let at = started + interval * i as u32;
        tokio::time::sleep_until(at).await;
        let request = client
            .post(format!(
                "http://127.0.0.1:{}/v1/raffles",
                ports[i as usize % ports.len()]
            ))
            .bearer_auth(key)
            .json(&json!({}));
        requests.spawn(async move {
            let status = request.send().await.map(|r| r.status());
            (status, tokio::time::Instant::now())
        });
    }
    let (mut accepted, mut sent) = (0, 0);
    while let Some(answer) = requests.join_next().await {
        let (status, at) = answer.map_err(|e| e.to_string())?;
        let status = status.map_err(|e| e.to_string())?;
        last_answer = last_answer.max(at);
        sent += 1;
        match status.as_u16() {
            422 => accepted += 1,
            429 => {}
            // Neither admitted nor refused by a limit (e.g. 503 from an overloaded node):
            // counted as sent, not as accepted.
            other => eprintln!("[tombola-bench] status {other}"),
        }
    }
    Ok((accepted, sent, last_answer - started))
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    let index = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or(0)
}
