//! Appends run on a thread of their own, with their own connections.
//!
//! A group commit is five round trips to PostgreSQL. On the runtime that serves requests,
//! each reply waits in the run queue behind every caller the last commit woke (hundreds
//! under load), and the database sits idle meanwhile: measured, that queueing took half of
//! every append. Here nothing else competes, so replies are read as they arrive.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::store::{AppendBatch, AppendError, Store};

pub(super) struct CommitThread {
    handle: tokio::runtime::Handle,
    store: Store,
    /// Committed stream tips, for the announcer.
    committed: mpsc::UnboundedSender<(Uuid, u64)>,
    /// Dropped with the engine: the thread's runtime then stops.
    _stop: oneshot::Sender<()>,
}

impl CommitThread {
    pub fn start(store: &Store) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, own_store) = std::sync::mpsc::channel();
        let (committed, tips) = mpsc::unbounded_channel();
        let store = store.clone();
        std::thread::Builder::new()
            .name("tombola-commit".into())
            .spawn(move || {
                // Connections belong to the runtime that opens them: this pool's open here.
                let own = {
                    let _entered = runtime.enter();
                    let own = store.sibling("tombola-commit");
                    tokio::spawn(announce(own.clone(), tips));
                    own
                };
                let _ = ready.send(own);
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let store = own_store
            .recv()
            .map_err(|_| std::io::Error::other("the commit thread did not start"))?;
        Ok(Self {
            handle,
            store,
            committed,
            _stop: stop,
        })
    }

    /// Closes the thread's connections (the thread itself stops with the engine).
    pub async fn close(&self) {
        let pool = self.store.pool().clone();
        // Closing talks to the server over sockets owned by the commit thread's runtime.
        let _ = self.handle.spawn(async move { pool.close().await }).await;
    }

    /// Appends `batch` to the raffle's stream on the commit thread.
    pub fn append(
        self: &Arc<Self>,
        raffle_id: Uuid,
        batch: AppendBatch,
    ) -> JoinHandle<Result<(), AppendError>> {
        let store = self.store.clone();
        let committed = self.committed.clone();
        self.handle.spawn(async move {
            let started = std::time::Instant::now();
            let outcome = store.append(raffle_id, &batch).await;
            metrics::histogram!("tombola_engine_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            if let (Ok(()), Some(last)) = (&outcome, batch.events.last()) {
                let _ = committed.send((raffle_id, last.sequence));
            }
            outcome
        })
    }
}

/// Announces committed stream tips to other nodes, one statement for everything that
/// committed while the previous one was in flight (only each raffle's newest tip matters).
/// Best effort: a lost notice leaves another node's reads stale until its next catch-up,
/// and its appends are still conditional on the stream's sequence.
async fn announce(store: Store, mut tips: mpsc::UnboundedReceiver<(Uuid, u64)>) {
    let mut newest: HashMap<Uuid, u64> = HashMap::new();
    while let Some((raffle, sequence)) = tips.recv().await {
        newest.insert(raffle, sequence);
        while let Ok((raffle, sequence)) = tips.try_recv() {
            let tip = newest.entry(raffle).or_default();
            *tip = (*tip).max(sequence);
        }
        let notices: Vec<String> = newest
            .drain()
            .map(|(raffle, sequence)| format!("{raffle}:{sequence}"))
            .collect();
        if let Err(error) = store.announce(&notices).await {
            tracing::warn!(%error, "commit notices not sent");
        }
    }
}
