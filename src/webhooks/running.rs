//! Starting and stopping the outbound side on a node: the outbox subscriber (a projection
//! runtime of its own over the write database) and the delivery worker, woken after each
//! outbox batch commits.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tombola_projections::{EventSource, Projection, Runtime, RuntimeConfig, RuntimeHandle};

use super::runtime::NicedRuntime;
use super::{Config, Outbox, Worker};
use crate::clock::Clock;
use crate::engine::Engine;

/// What the API and the CLI use: the database, the settings, the clock, and a way to wake
/// this node's worker (after a redelivery, say).
#[derive(Clone)]
pub struct Webhooks {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    pub wake: Arc<Notify>,
}

impl Webhooks {
    pub fn new(pool: PgPool, config: Config, clock: Arc<dyn Clock>) -> Self {
        Self {
            pool,
            config: Arc::new(config),
            clock,
            wake: Arc::new(Notify::new()),
        }
    }
}

/// The running subscriber and worker, on a runtime of their own.
pub struct Running {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    outbox: Option<RuntimeHandle>,
    runtime: Option<NicedRuntime>,
}

impl Running {
    /// The outbox runtime (tests catch it up by hand).
    pub fn outbox(&self) -> Option<&RuntimeHandle> {
        self.outbox.as_ref()
    }

    /// Stops both; a delivery in flight is left to its lease (sent again later).
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        drop(self.runtime);
    }
}

/// Creates the outbox's bookkeeping and starts the subscriber and the worker (unless the
/// node has them switched off), on a runtime whose threads yield to the requests'.
pub async fn start(webhooks: &Webhooks, engine: &Engine) -> anyhow::Result<Running> {
    let stop = CancellationToken::new();
    if !webhooks.config.enabled {
        return Ok(Running {
            stop,
            tasks: Vec::new(),
            outbox: None,
            runtime: None,
        });
    }
    let threads = NicedRuntime::start(webhooks.config.nice)?;
    let niced = threads.handle().clone();
    let outbox: Vec<Arc<dyn Projection>> = vec![Arc::new(Outbox {
        clock: webhooks.clock.clone(),
    })];
    tombola_projections::migrate(&webhooks.pool, &outbox).await?;
    let runtime = Runtime::new(
        EventSource::new(webhooks.pool.clone()),
        webhooks.pool.clone(),
        outbox,
        RuntimeConfig::default(),
    );
    let handle = runtime.handle();
    let mut tasks = Vec::new();
    let stopped = stop.clone();
    tasks.push(niced.spawn(runtime.run(async move { stopped.cancelled().await })));
    // Commits wake the subscriber; each batch it commits wakes the worker.
    let mut commits = engine.subscribe();
    let woken = handle.clone();
    let stopped = stop.clone();
    tasks.push(niced.spawn(async move {
        loop {
            tokio::select! {
                () = stopped.cancelled() => break,
                received = commits.recv() => match received {
                    Ok(committed) => woken.wake(committed.raffle_id),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    }));
    let mut progress = handle.progress();
    let wake = webhooks.wake.clone();
    let stopped = stop.clone();
    tasks.push(niced.spawn(async move {
        loop {
            tokio::select! {
                () = stopped.cancelled() => break,
                changed = progress.changed() => {
                    if changed.is_err() { break; }
                    wake.notify_one();
                }
            }
        }
    }));
    let worker = Worker::new(
        webhooks.pool.clone(),
        webhooks.config.clone(),
        webhooks.clock.clone(),
        webhooks.wake.clone(),
    );
    tasks.push(niced.spawn(worker.run(stop.clone())));
    Ok(Running {
        stop,
        tasks,
        outbox: Some(handle),
        runtime: Some(threads),
    })
}
