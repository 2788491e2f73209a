//! `engine --projections`: the same load with the projection runtime on, as the server runs
//! it (woken by the engine's commit broadcast, default configuration, every read model), in
//! a fresh database of its own.
//!
//! Lag is sampled end to end: a sampler takes the newest committed sequence and the instant
//! its commit was broadcast, waits (`RuntimeHandle::wait_for`, as a `min_position` read
//! does) until every projection has applied it, records the time since the commit, and
//! takes the newest one again. After the load stops, `drain_ms` is how long the read side
//! took to reach the log's head.

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
        })
    }
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
        RuntimeConfig::default(),
    );
    let handle = runtime.handle();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(runtime.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    // The newest commit: (last sequence, when it was broadcast).
    let newest: Arc<Mutex<(u64, Instant)>> = Arc::new(Mutex::new((0, Instant::now())));
    let mut commits = target.engine.subscribe();
    let forwarder = {
        let (handle, newest) = (handle.clone(), newest.clone());
        tokio::spawn(async move {
            loop {
                match commits.recv().await {
                    Ok(committed) => {
                        handle.wake(committed.raffle_id);
                        if let Some(last) = committed.events.last() {
                            *newest.lock().expect("newest") = (last.sequence, Instant::now());
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
        let (handle, newest, sampling, names) = (
            handle.clone(),
            newest.clone(),
            sampling.clone(),
            names.clone(),
        );
        tokio::spawn(async move {
            let mut lags_us = Vec::new();
            let mut sampled = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let (sequence, at) = *newest.lock().expect("newest");
                if sequence <= sampled {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                match handle
                    .wait_for(&names, raffle_id, sequence, Duration::from_secs(120))
                    .await
                {
                    Ok(true) => lags_us.push(at.elapsed().as_micros() as u64),
                    _ => break,
                }
                sampled = sequence;
            }
            lags_us
        })
    };
    crate::database::checkpoint(&store, "engine").await;
    let outcome = super::drive(target.clone(), args).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let stopped_at = Instant::now();
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
    let mut lags_us = sampler.await.map_err(|e| e.to_string())?;
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
    Ok(ReadSide {
        outcome,
        lags_us,
        drain,
        head: head as u64,
    })
}
