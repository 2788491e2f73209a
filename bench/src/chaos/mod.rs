//! `tombola-bench chaos`: Jepsen-style proof that Tombola keeps its promises under faults.
//!
//! It starts a PostgreSQL cluster of its own (so that it can crash it), N `tombola serve`
//! processes on it, random clients against random nodes, and faults at random moments; it
//! records every request's outcome on the client side, lets the system settle, stops the
//! nodes and checks the log against the record (`check.rs`). docs/RELIABILITY.md says what
//! each check proves.

pub mod check;
pub mod faults;
pub mod nodes;
pub mod observe;
pub mod record;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Mutex;
use tombola::api::auth::{Keys, Role};
use tombola::pgcluster::PrivateCluster;
use tombola::store::Store;

use self::check::Bounds;
use self::faults::Injector;
use self::nodes::Node;
use self::record::{Record, Recorder};
use self::workload::{WorkloadConfig, World};

/// Ports the harness may use (the chaos helper's range).
pub const PORTS: std::ops::RangeInclusive<u16> = 18400..=18499;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// `tombola serve` processes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// How long the clients and faults run (the settling and the check come after).
    #[arg(long, default_value_t = 300)]
    pub seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Raffles on sale at once (few, so that buyers collide).
    #[arg(long, default_value_t = 4)]
    pub raffles: usize,
    /// Seconds a raffle stays on sale before it is closed and drawn.
    #[arg(long, default_value_t = 90)]
    pub raffle_life_secs: u64,
    /// Mean seconds between two faults.
    #[arg(long, default_value_t = 6.0)]
    pub fault_every_secs: f64,
    /// Share of requests a client abandons mid-flight.
    #[arg(long, default_value_t = 0.03)]
    pub disconnect_rate: f64,
    /// Seconds a hold may outlive its expiry outside fault windows.
    #[arg(long, default_value_t = 10)]
    pub hold_grace_secs: u64,
    /// Each node's request time limit (`TOMBOLA_REQUEST_TIMEOUT_SECS`): short, so that
    /// requests outlast it while PostgreSQL restarts.
    #[arg(long, default_value_t = 3)]
    pub request_timeout_secs: u64,
    /// First node's port; node i listens on PORT + i (18400–18499 is this harness's range).
    #[arg(long, default_value_t = 18400)]
    pub port: u16,
    /// Random seed (printed; give it back to replay the same choices).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The `tombola` binary. Default: built now with cargo, same profile as this one.
    #[arg(long)]
    pub tombola_bin: Option<PathBuf>,
    /// Where each run gets its directory (cluster, node logs, the record).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../scratch"))]
    pub scratch: PathBuf,
    /// Keep the run's directory (it is kept anyway when a check fails).
    #[arg(long)]
    pub keep: bool,
}

/// The closing JSON line.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub operations: u64,
    pub acknowledged: u64,
    pub refused: u64,
    pub unknown: u64,
    pub faults_injected: BTreeMap<String, u64>,
    pub violations: usize,
    pub duration_s: f64,
    pub nodes: usize,
    pub clients: usize,
    pub raffles: usize,
    pub events: usize,
    /// What the log holds, by event type: shows which paths the run exercised.
    pub events_by_type: BTreeMap<String, usize>,
    pub deliveries: usize,
    pub seed: u64,
    pub record: String,
}

pub struct Outcome {
    pub summary: Summary,
    pub violations: Vec<String>,
}

pub async fn run(args: &Args) -> Result<Outcome, Box<dyn std::error::Error>> {
    let started = std::time::Instant::now();
    if args.nodes == 0
        || !PORTS.contains(&args.port)
        || !PORTS.contains(&(args.port + args.nodes as u16 - 1))
    {
        return Err(format!("nodes must listen within {PORTS:?}").into());
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("chaos: seed {seed}");
    let bin = match &args.tombola_bin {
        Some(bin) => bin.clone(),
        None => build_tombola()?,
    };
    let dir = args.scratch.join(format!(
        "chaos-{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let base = dir.clone();
    let cluster = tokio::task::spawn_blocking(move || PrivateCluster::ensure(&base)).await??;
    let url = cluster.url();
    let data_dir = cluster.data_dir().to_owned();
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let outcome = run_on_cluster(args, seed, &bin, &dir, &url, cluster.clone(), started).await;
    cluster.lock().expect("cluster").stop();
    let failed = outcome.as_ref().map_or(true, |o| !o.violations.is_empty());
    if !args.keep && !failed {
        let _ = std::fs::remove_dir_all(&data_dir);
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("chaos: kept {}", dir.display());
    }
    outcome
}

async fn run_on_cluster(
    args: &Args,
    seed: u64,
    bin: &std::path::Path,
    dir: &std::path::Path,
    url: &str,
    cluster: Arc<std::sync::Mutex<PrivateCluster>>,
    started: std::time::Instant,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let store = Store::connect(url, 4).await?;
    store.migrate().await?;
    let admin_key = Keys::create(&store, Role::Admin, None, Some("chaos"))
        .await
        .map_err(|e| e.to_string())?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let mut node = Node::new(
            i,
            args.port + i as u16,
            bin,
            url,
            dir,
            args.request_timeout_secs,
        );
        node.start(&http).await?;
        nodes.push(Mutex::new(node));
    }
    let nodes = Arc::new(nodes);
    let mut urls = Vec::new();
    for node in nodes.iter() {
        urls.push(node.lock().await.base_url());
    }
    let record_path = dir.join("record.jsonl");
    let recorder = Arc::new(Recorder::create(&record_path)?);
    let world = Arc::new(World::new(
        urls,
        admin_key,
        recorder.clone(),
        WorkloadConfig {
            raffles: args.raffles,
            raffle_life: Duration::from_secs(args.raffle_life_secs),
            disconnect_rate: args.disconnect_rate,
            late_max: Duration::from_secs(75),
        },
    ));
    eprintln!(
        "chaos: {} nodes up, {} clients for {} s",
        args.nodes, args.clients, args.seconds
    );
    let until = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    let clients: Vec<_> = (0..args.clients)
        .map(|i| tokio::spawn(world.clone().client(seed.wrapping_add(i as u64 + 1))))
        .collect();
    let injector = Injector {
        nodes: nodes.clone(),
        cluster,
        admin_pool: store.pool().clone(),
        recorder: recorder.clone(),
        http: http.clone(),
        every: Duration::from_secs_f64(args.fault_every_secs),
    };
    let progress = {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                eprintln!(
                    "chaos: {} requests, {} acknowledged, {} unknown",
                    recorder.operations.load(Ordering::Relaxed),
                    recorder.acknowledged.load(Ordering::Relaxed),
                    recorder.unknown.load(Ordering::Relaxed)
                );
            }
        })
    };
    let faults = injector.run(seed, until).await;
    tokio::time::sleep_until(until).await;
    world.stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    progress.abort();
    faults?;
    for node in nodes.iter() {
        let mut node = node.lock().await;
        node.resume();
        if !node.is_running() {
            node.start(&http).await?;
        }
    }
    eprintln!("chaos: settling (inbox drained, projections at the heads)");
    let unsettled = observe::settle(store.pool(), Duration::from_secs(120)).await?;
    // Holds that fall due after this have nobody to expire them: the checker's "still live"
    // is measured to here, not to when it looks (a soak flagged 22 holds due in the
    // seconds after the nodes stopped as 10.0-10.9 s late).
    let stopping_at = chrono::Utc::now();
    for node in nodes.iter() {
        node.lock().await.stop(Duration::from_secs(20)).await;
    }
    // Holds kept expiring until the nodes stopped, and a stopping node leaves its
    // projections where they are: apply what came after the settling.
    let tail = observe::finish_projections(store.pool()).await?;
    if tail > 0 {
        eprintln!("chaos: {tail} (projection, raffle) pairs caught up after the nodes stopped");
    }
    recorder.flush()?;
    eprintln!("chaos: checking");
    let record = Record::read(&record_path)?;
    let mut observed = observe::observe(store.pool()).await?;
    observed.unsettled = unsettled;
    observed.observed_at = stopping_at;
    let violations = check::check(
        &record,
        &observed,
        &Bounds {
            hold_grace: chrono::Duration::seconds(args.hold_grace_secs as i64),
        },
    );
    store.pool().close().await;
    let summary = Summary {
        operations: recorder.operations.load(Ordering::Relaxed),
        acknowledged: recorder.acknowledged.load(Ordering::Relaxed),
        refused: recorder.refused.load(Ordering::Relaxed),
        unknown: recorder.unknown.load(Ordering::Relaxed),
        faults_injected: recorder.faults(),
        violations: violations.len(),
        duration_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        nodes: args.nodes,
        clients: args.clients,
        raffles: observed.streams.len(),
        events: observed.streams.values().map(Vec::len).sum(),
        events_by_type: observed.streams.values().flatten().fold(
            BTreeMap::new(),
            |mut counts, logged| {
                *counts.entry(logged.event.name().to_owned()).or_default() += 1;
                counts
            },
        ),
        deliveries: observed.inbox.len(),
        seed,
        record: record_path.display().to_string(),
    };
    Ok(Outcome {
        summary,
        violations,
    })
}

/// `cargo build --bin tombola` in this binary's profile; returns the binary's path.
fn build_tombola() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(&root)
        .args(["build", "--bin", "tombola"]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    eprintln!("chaos: building the tombola binary");
    if !command.status()?.success() {
        return Err("cargo build --bin tombola failed".into());
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().ok_or("no directory for this binary")?;
    Ok(profile_dir.join("tombola"))
}
