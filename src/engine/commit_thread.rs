//! Appends run on a thread of their own, with their own connections, and the appends of
//! different raffles that wait at the same moment share one statement.
//!
//! Own thread: on the runtime that serves requests, each reply waited in the run queue
//! behind every caller the last commit woke (hundreds under load), and the database sat idle
//! meanwhile: measured, that queueing took half of every append.
//!
//! Shared statements: each raffle's writer already groups its commands into one batch per
//! append, but with many raffles on sale each batch was small, and a statement's fixed cost
//! (round trip, executor start, commit and WAL flush, wake-ups) was most of the database's
//! work per event. So batches queue here, and each group of them, one per raffle, is one
//! statement: all or none. When the database refuses a group (another node appended to one
//! of its raffles first, or one batch is bad), its raffles append alone, so that each gets
//! its own answer. A lost connection fails every member: the group may have committed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use uuid::Uuid;

use crate::store::{AppendBatch, AppendError, Store};
use crate::testing::Faults;

/// Raffles per group; more wait for the next one.
const MAX_GROUP: usize = 256;

/// An append's outcome, once its group has committed (or failed).
pub(super) type AppendOutcome = oneshot::Receiver<Result<(), AppendError>>;

struct Append {
    raffle_id: Uuid,
    batch: AppendBatch,
    done: oneshot::Sender<Result<(), AppendError>>,
    /// The writer's `engine.batch` span.
    span: tracing::Span,
    _waiting: Waiting,
}

/// Counts an append as waiting from the moment it is queued until it is answered (or lost
/// with the thread): the append is dropped then.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) struct CommitThread {
    handle: tokio::runtime::Handle,
    store: Store,
    queue: mpsc::UnboundedSender<Append>,
    /// Dropped with the engine: the thread's runtime then stops.
    _stop: oneshot::Sender<()>,
    faults: Option<Arc<Faults>>,
    waiting: Arc<AtomicUsize>,
}

impl CommitThread {
    pub fn start(store: &Store, faults: Option<Arc<Faults>>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, own_store) = std::sync::mpsc::channel();
        let (queue, queued) = mpsc::unbounded_channel();
        let store = store.clone();
        std::thread::Builder::new()
            .name("tombola-commit".into())
            .spawn(move || {
                // Connections belong to the runtime that opens them: this pool's open here.
                let own = {
                    let _entered = runtime.enter();
                    let own = store.sibling("tombola-commit");
                    let (committed, tips) = mpsc::unbounded_channel();
                    tokio::spawn(announce(own.clone(), tips));
                    tokio::spawn(commit_groups(own.clone(), queued, committed));
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
            queue,
            _stop: stop,
            faults,
            waiting: Arc::default(),
        })
    }

    /// Closes the thread's connections (the thread itself stops with the engine).
    pub async fn close(&self) {
        let pool = self.store.pool().clone();
        // Closing talks to the server over sockets owned by the commit thread's runtime.
        let _ = self.handle.spawn(async move { pool.close().await }).await;
    }

    /// Appends queued or in a statement, not answered yet.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Appends `batch` to the raffle's stream on the commit thread. A raffle has at most one
    /// append queued or in flight: its writer waits for each before the next.
    pub fn append(
        &self,
        raffle_id: Uuid,
        batch: AppendBatch,
        span: tracing::Span,
    ) -> AppendOutcome {
        let (done, outcome) = oneshot::channel();
        if self.faults.as_ref().is_some_and(|f| f.take_lost_append()) {
            let _ = done.send(Err(AppendError::Shared(
                "connection lost before the reply (injected)".into(),
            )));
            return outcome;
        }
        // If the thread is gone, `done` is dropped with the message and the caller sees it.
        let _ = self.queue.send(Append {
            raffle_id,
            batch,
            done,
            span,
            _waiting: Waiting::new(&self.waiting),
        });
        match &self.faults {
            None => outcome,
            Some(faults) => lose_reply(outcome, faults.clone()),
        }
    }
}

/// Takes what is queued as groups, one batch per raffle, and commits one group at a time:
/// while it commits, what arrives waits in the queue for the next. Two groups in flight made
/// groups smaller and acknowledgements slower (figures: docs/decisions/0011).
async fn commit_groups(
    store: Store,
    mut queue: mpsc::UnboundedReceiver<Append>,
    committed: mpsc::UnboundedSender<(Uuid, u64)>,
) {
    // Connect now: the first appends should not wait for a handshake.
    drop(store.pool().acquire().await);
    let mut next: Option<Append> = None;
    loop {
        let first = match next.take() {
            Some(append) => append,
            None => match queue.recv().await {
                Some(append) => append,
                None => return,
            },
        };
        let mut raffles = HashSet::from([first.raffle_id]);
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            let Ok(append) = queue.try_recv() else { break };
            // Never two batches of one raffle in a statement: the later one waits its turn.
            if !raffles.insert(append.raffle_id) {
                next = Some(append);
                break;
            }
            group.push(append);
        }
        let span = group_span(&group);
        commit_group(&store, group, &committed)
            .instrument(span)
            .await;
    }
}

/// The span of one statement: a child of its first batch's span, linked to the others'.
fn group_span(group: &[Append]) -> tracing::Span {
    let span = tracing::info_span!(
        parent: group.first().and_then(|append| append.span.id()),
        "commit.group",
        raffles = group.len(),
        events = group.iter().map(|a| a.batch.events.len()).sum::<usize>(),
    );
    crate::telemetry::otel::link_all(&span, group.iter().skip(1).map(|a| &a.span));
    span
}

async fn commit_group(
    store: &Store,
    group: Vec<Append>,
    committed: &mpsc::UnboundedSender<(Uuid, u64)>,
) {
    let started = std::time::Instant::now();
    let (with_events, answers_only): (Vec<Append>, Vec<Append>) =
        group.into_iter().partition(|a| !a.batch.events.is_empty());
    let shared = async {
        match with_events.len() {
            0 => Vec::new(),
            1 => vec![
                store
                    .append(with_events[0].raffle_id, &with_events[0].batch)
                    .await,
            ],
            _ => {
                let batches: Vec<(Uuid, &AppendBatch)> = with_events
                    .iter()
                    .map(|a| (a.raffle_id, &a.batch))
                    .collect();
                match store.append_all(&batches).await {
                    Ok(()) => with_events.iter().map(|_| Ok(())).collect(),
                    // Nothing was stored: each raffle appends alone, so that the one that
                    // moved on (or whose batch the database refused) fails alone.
                    Err(error) if error.stored_nothing() => {
                        each(store, with_events.iter().map(|a| (a.raffle_id, &a.batch))).await
                    }
                    // Maybe stored: retrying could store a batch twice over.
                    Err(error) => {
                        let reason = error.to_string();
                        with_events
                            .iter()
                            .map(|_| Err(AppendError::Shared(reason.clone())))
                            .collect()
                    }
                }
            }
        }
    };
    // Answers without events check the stream's tip in a transaction of their own.
    let alone = each(store, answers_only.iter().map(|a| (a.raffle_id, &a.batch)));
    let (shared, alone) = tokio::join!(shared, alone);
    metrics::histogram!("tombola_engine_commit_seconds").record(started.elapsed().as_secs_f64());
    let outcomes = with_events.into_iter().zip(shared);
    for (append, outcome) in outcomes.chain(answers_only.into_iter().zip(alone)) {
        if let (Ok(()), Some(last)) = (&outcome, append.batch.events.last()) {
            let _ = committed.send((append.raffle_id, last.sequence));
        }
        let _ = append.done.send(outcome);
    }
}

/// Test seam ([`Faults::lose_commit_replies`]): a committed append's reply turned into the
/// error a connection lost between the commit and its reply gives.
fn lose_reply(outcome: AppendOutcome, faults: Arc<Faults>) -> AppendOutcome {
    let (done, lost) = oneshot::channel();
    tokio::spawn(async move {
        let Ok(result) = outcome.await else { return };
        let result = match result {
            Ok(()) if faults.take_lost_commit_reply() => Err(AppendError::Shared(
                "connection lost after the commit (injected)".into(),
            )),
            result => result,
        };
        let _ = done.send(result);
    });
    lost
}

/// Appends each batch on its own, concurrently.
async fn each<'a>(
    store: &Store,
    batches: impl Iterator<Item = (Uuid, &'a AppendBatch)>,
) -> Vec<Result<(), AppendError>> {
    futures::future::join_all(batches.map(|(raffle_id, batch)| store.append(raffle_id, batch)))
        .await
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
