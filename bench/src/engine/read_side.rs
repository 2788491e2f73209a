//! `engine --projections`: the same load with the projection runtime on, as the server runs
//! it (woken by the engine's commit broadcast, default configuration, every read model), in
//! a fresh database of its own.
//!
//! Lag is measured for every commit, end to end: each commit's last sequence and the instant
//! it was broadcast are queued; a sampler re-reads the raffle's slowest live checkpoint after
//! every batch the runtime commits (and every few milliseconds), and each queued commit the
//! checkpoints have passed yields one sample, now minus its broadcast. The sampler before this
//! one (decision 0026) waited for the newest commit, took one sample when every projection
//! had it, then took the newest again: while the read side was behind, a whole run gave one
//! or two samples, and the p99 of those was the lag of the first commit it happened to
//! pick. After the load stops, `drain_ms` is how long the read side took to reach the log's
//! head.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tombola_projections::{models, EventSource, Runtime, RuntimeConfig};

use super::{Args, EngineTarget, Outcome, Target};

pub(super) struct ReadSide {
    pub(super) outcome: Outcome,
    lags_us: Vec<u64>,
    drain: Duration,
    head: u64,
    batch: usize,
    parallel: bool,
    /// The log's head when the load stopped, and how long the load ran.
    head_at_stop: u64,
    load: Duration,
    /// The live loop's joint batches: during the load, and in all (load and drain).
    during: tombola_projections::RebuildTimings,
    total: tombola_projections::RebuildTimings,
}

impl ReadSide {
    pub(super) fn lag_ms(&self, p: f64) -> f64 {
        if self.lags_us.is_empty() {
            return 0.0;
        }
        let index = ((self.lags_us.len() as f64 * p) as usize).min(self.lags_us.len() - 1);
        (self.lags_us[index] as f64 / 100.0).round() / 10.0
    }

    pub(super) fn figures(&self, without: f64) -> serde_json::Value {
        json!({
            "commands": self.outcome.commands,
            "commands_per_sec": self.outcome.per_sec().round(),
            "commands_per_sec_without": without.round(),
            "p99_ms": self.outcome.p99_ms(),
            "events": self.head,
            "lag_samples": self.lags_us.len(),
            "lag_p50_ms": self.lag_ms(0.50),
            "lag_p99_ms": self.lag_ms(0.99),
            "lag_max_ms": self.lag_ms(1.0),
            "drain_ms": self.drain.as_millis() as u64,
            "batch": self.batch,
            "parallel": self.parallel,
            "rates": self.rates(),
            "phases_s": phases_json(&self.total),
        })
    }

    /// Events/s the engine committed and the read side applied, during the load and while
    /// draining after it (decision 0029: whether the lag is a throughput or a latency
    /// problem), and how busy the live loop was.
    fn rates(&self) -> serde_json::Value {
        let per_sec =
            |events: u64, took: Duration| (events as f64 / took.as_secs_f64().max(1e-9)).round();
        let busy = |t: &tombola_projections::RebuildTimings| {
            t.read + t.decode + t.commit + t.apply.iter().map(|(_, d)| *d).sum::<Duration>()
        };
        let drained_events = self.total.events - self.during.events;
        let drained_busy = busy(&self.total).saturating_sub(busy(&self.during));
        json!({
            "committed_during_load": per_sec(self.head_at_stop, self.load),
            "applied_during_load": per_sec(self.during.events, self.load),
            "applied_while_draining": per_sec(drained_events, self.drain),
            "applied_per_busy_second": per_sec(self.total.events, busy(&self.total)),
            "busy_share_during_load": (busy(&self.during).as_secs_f64() / self.load.as_secs_f64() * 1000.0).round() / 1000.0,
            "busy_share_while_draining": (drained_busy.as_secs_f64() / self.drain.as_secs_f64().max(1e-9) * 1000.0).round() / 1000.0,
            "batches": self.total.batches,
            "events_per_batch": (self.total.events as f64 / self.total.batches.max(1) as f64).round(),
        })
    }
}

/// The live loop's time by phase, in seconds (summed over raffles caught up at once).
fn phases_json(t: &tombola_projections::RebuildTimings) -> serde_json::Value {
    let secs = |d: Duration| json!((d.as_secs_f64() * 1000.0).round() / 1000.0);
    json!({
        "read": secs(t.read),
        "decode": secs(t.decode),
        "apply": t.apply.iter().map(|(name, took)| ((*name).to_owned(), secs(*took))).collect::<serde_json::Map<_, _>>(),
        "commit": secs(t.commit),
    })
}

pub(super) async fn run(args: &Args) -> Result<ReadSide, String> {
    let (store, url) = crate::database::fresh(args.connections).await?;
    let pool = store.pool().clone();
    let projections = models::all();
    let names: Vec<&'static str> = projections.iter().map(|p| p.name()).collect();
    tombola_projections::migrate(&pool, &projections)
        .await
        .map_err(|e| e.to_string())?;
    let target = Arc::new(EngineTarget::new(store.clone(), args.tickets).await?);
    let raffle_id = target.raffle_id();
    let runtime = Runtime::new(
        EventSource::new(pool.clone()),
        pool.clone(),
        projections,
        RuntimeConfig {
            batch_size: args.projection_batch,
            parallel: args.projection_parallel,
            ..RuntimeConfig::default()
        },
    );
    let handle = runtime.handle();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(runtime.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    // Commits not yet seen applied: (last sequence, when it was broadcast), in order.
    let pending: Arc<Mutex<VecDeque<(u64, Instant)>>> = Arc::new(Mutex::new(VecDeque::new()));
    let mut commits = target.engine.subscribe();
    let forwarder = {
        let (handle, pending) = (handle.clone(), pending.clone());
        tokio::spawn(async move {
            loop {
                match commits.recv().await {
                    Ok(committed) => {
                        handle.wake(committed.raffle_id);
                        if let Some(last) = committed.events.last() {
                            pending
                                .lock()
                                .expect("pending")
                                .push_back((last.sequence, Instant::now()));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    };
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (handle, pending, sampling, names, pool) = (
            handle.clone(),
            pending.clone(),
            sampling.clone(),
            names.clone(),
            pool.clone(),
        );
        tokio::spawn(async move {
            let mut lags_us = Vec::new();
            let mut progress = handle.progress();
            loop {
                let applied = slowest_checkpoint(&pool, &names, raffle_id).await?;
                let now = Instant::now();
                {
                    let mut pending = pending.lock().expect("pending");
                    while let Some(&(sequence, at)) = pending.front() {
                        if sequence > applied {
                            break;
                        }
                        lags_us.push(now.duration_since(at).as_micros() as u64);
                        pending.pop_front();
                    }
                    if pending.is_empty() && !sampling.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                }
                // A batch committed, or a few milliseconds passed (a commit may have been
                // queued after the read above).
                progress.mark_unchanged();
                let _ = tokio::time::timeout(Duration::from_millis(5), progress.changed()).await;
            }
            Ok::<_, String>(lags_us)
        })
    };
    crate::database::checkpoint(&store, "engine").await;
    let outcome = super::drive(target.clone(), args).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let stopped_at = Instant::now();
    let during = handle.live_timings();
    let head: i64 = sqlx::query_scalar(
        "SELECT max(sequence) FROM events WHERE aggregate_type = 'raffle' AND aggregate_id = $1",
    )
    .bind(raffle_id.to_string())
    .fetch_one(&pool)
    .await
    .map_err(|e| e.to_string())?;
    let drained = handle
        .wait_for(&names, raffle_id, head as u64, Duration::from_secs(600))
        .await
        .map_err(|e| e.to_string())?;
    let drain = stopped_at.elapsed();
    let total = handle.live_timings();
    let mut lags_us = if drained {
        sampler.await.map_err(|e| e.to_string())??
    } else {
        // Commits the read side never reached would keep the sampler waiting.
        sampler.abort();
        Vec::new()
    };
    lags_us.sort_unstable();
    eprintln!(
        "tombola engine with projections: {:.0} commands/s, lag samples {}, drained in {} ms{}",
        outcome.per_sec(),
        lags_us.len(),
        drain.as_millis(),
        if drained { "" } else { " (NOT drained)" }
    );
    let _ = stop.send(true);
    let _ = running.await;
    forwarder.abort();
    drop(target);
    crate::database::discard(store, &url).await?;
    if !drained {
        return Err("the read side did not reach the log's head within 600 s".into());
    }
    let load = outcome.elapsed;
    Ok(ReadSide {
        outcome,
        lags_us,
        drain,
        head: head as u64,
        batch: args.projection_batch,
        parallel: args.projection_parallel,
        head_at_stop: head as u64,
        load,
        during,
        total,
    })
}

/// The lowest live checkpoint of `raffle_id` among `names` (0 while one has none).
async fn slowest_checkpoint(
    pool: &sqlx::PgPool,
    names: &[&'static str],
    raffle_id: uuid::Uuid,
) -> Result<u64, String> {
    let (count, lowest): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), min(sequence) FROM projection_checkpoints \
         WHERE slot = 'live' AND raffle_id = $1 AND projection = ANY($2)",
    )
    .bind(raffle_id)
    .bind(names)
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    Ok(if count as usize == names.len() {
        lowest.unwrap_or(0) as u64
    } else {
        0
    })
}
