//! The engine: one writer task per active raffle, owning its aggregate in memory.
//!
//! Callers send commands over a bounded channel; the writer drains what is waiting, decides
//! each command in order against live state, appends every resulting event in one
//! transaction and only then answers (group commit). Optimistic concurrency on the stream's
//! sequence keeps several nodes correct: a conflict means another node wrote first, so the
//! writer reloads and decides again. The engine knows nothing of HTTP.

mod commit_thread;
mod decide;
mod errors;
mod registry;
pub mod remote_commits;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tombola_domain::backoff::Backoff;
use tombola_domain::{Raffle, RaffleCommand, RaffleEvent};

use crate::clock::{Clock, SystemClock};
use uuid::Uuid;

use crate::store::{IdempotencyRequest, Source, Store, StoredEvent};
use crate::testing::Faults;

pub use errors::{EngineError, Rejection};
use registry::Registry;
use writer::Message;

#[derive(Clone)]
pub struct EngineConfig {
    /// Commands waiting per raffle before callers are told to back off.
    pub queue_capacity: usize,
    /// Most commands decided in one group commit.
    pub max_batch: usize,
    /// Write a snapshot after this many events since the last one, at least (large raffles
    /// wait until those events add up to about the snapshot's size). 0 = never.
    pub snapshot_every: u64,
    /// Unload a raffle with no live holds after this long without commands (on `clock`).
    pub evict_after: Duration,
    /// Reload-and-retry rounds when another node keeps appending first.
    pub max_conflict_retries: u32,
    /// A raffle with at least this many orders is kept compact (decision 0022): settled
    /// orders as digests, read from the log when a decision needs one. 0 = every raffle.
    pub compact_after_orders: usize,
    /// The domain's "now" and the writers' timers (hold expiry, eviction): one clock, so
    /// tests move them all.
    pub clock: Arc<dyn Clock>,
}

/// Below this many orders a raffle's full records cost at most a few MB, and refunds and
/// repeated payments are decided without reading the log (decision 0022).
pub const COMPACT_AFTER_ORDERS: usize = 100_000;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            max_batch: 1024,
            snapshot_every: 10_000,
            evict_after: Duration::from_secs(600),
            max_conflict_retries: 8,
            compact_after_orders: COMPACT_AFTER_ORDERS,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Who asks, through what, and why: becomes every resulting event's metadata.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    pub actor: String,
    pub source: Source,
    pub request_id: String,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub idempotency: Option<IdempotencyRequest>,
}

impl CommandMeta {
    pub fn system(reason: &str) -> Self {
        Self {
            actor: "system".into(),
            source: Source::System,
            request_id: format!("{reason}-{}", Uuid::now_v7()),
            correlation_id: None,
            causation_id: None,
            idempotency: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequencedEvent {
    pub sequence: u64,
    pub event: RaffleEvent,
}

/// A command's committed result. No events means it was a duplicate of one already applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub events: Vec<SequencedEvent>,
    /// Answered from an idempotency record rather than decided now.
    #[serde(skip)]
    pub replayed: bool,
    /// The order a release, manual payment or refund acted on, as the decision left it (so
    /// as it is once the batch commits): its answer needs no read through the writer, which
    /// would wait for every append in flight (decision 0019) and could fail after the
    /// commit. None when replayed, or when a compact raffle would need the log to show it.
    #[serde(skip)]
    pub view: Option<tombola_domain::OrderView>,
}

impl Applied {
    pub fn is_duplicate(&self) -> bool {
        self.events.is_empty()
    }
}

/// A command's kind, for spans (never its data: a reservation holds the buyer).
fn command_name(command: &RaffleCommand) -> &'static str {
    match command {
        RaffleCommand::Create(_) => "create",
        RaffleCommand::OpenSales => "open_sales",
        RaffleCommand::Reserve(_) => "reserve",
        RaffleCommand::Release { .. } => "release",
        RaffleCommand::ExpireDueHolds => "expire_due_holds",
        RaffleCommand::ExtendHold { .. } => "extend_hold",
        RaffleCommand::RecordPayment(_) => "record_payment",
        RaffleCommand::RecordPaymentFailure(_) => "record_payment_failure",
        RaffleCommand::ConfirmManualPayment(_) => "confirm_manual_payment",
        RaffleCommand::Refund(_) => "refund",
        RaffleCommand::CloseSales => "close_sales",
        RaffleCommand::Draw { .. } => "draw",
        RaffleCommand::Cancel { .. } => "cancel",
    }
}

/// A batch of events committed to one raffle's stream, as published in-process.
#[derive(Debug, Clone)]
pub struct Committed {
    pub raffle_id: Uuid,
    pub events: Vec<StoredEvent>,
}

/// One more in `count` for as long as it lives (also when its future is dropped).
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    commits: Arc<commit_thread::CommitThread>,
    config: EngineConfig,
    registry: Registry,
    published: broadcast::Sender<Arc<Committed>>,
    tasks: TaskTracker,
    stopping: AtomicBool,
    /// Cancelled at shutdown: ends the tasks that wait to bring a raffle back.
    stopped: CancellationToken,
    /// Raffles whose writer could not load them, with a task trying again.
    reviving: std::sync::Mutex<std::collections::HashSet<Uuid>>,
    /// Commands callers wait on: queued, decided or being appended.
    commands_waiting: AtomicUsize,
    /// What a test injects; None outside tests.
    faults: Option<Arc<Faults>>,
}

impl Engine {
    pub fn new(store: Store, config: EngineConfig) -> Self {
        Self::start(store, config, None)
    }

    /// An engine whose appends suffer the `faults` a test injects.
    pub fn with_faults(store: Store, config: EngineConfig, faults: Arc<Faults>) -> Self {
        Self::start(store, config, Some(faults))
    }

    fn start(store: Store, config: EngineConfig, faults: Option<Arc<Faults>>) -> Self {
        let (published, _) = broadcast::channel(4096);
        // As tokio does for its own workers: a process that cannot start a thread is done.
        let commits = Arc::new(
            commit_thread::CommitThread::start(&store, faults.clone())
                .expect("the commit thread starts"),
        );
        Self {
            inner: Arc::new(Inner {
                store,
                commits,
                config,
                registry: Registry::default(),
                published,
                tasks: TaskTracker::new(),
                stopping: AtomicBool::new(false),
                stopped: CancellationToken::new(),
                reviving: Default::default(),
                commands_waiting: AtomicUsize::new(0),
                faults,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Committed batches, in commit order per raffle (projections, outbound webhooks).
    /// Free while nobody subscribes: writers copy events for publishing only when the
    /// channel has a receiver.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Committed>> {
        self.inner.published.subscribe()
    }

    /// Number of raffles resident in memory.
    pub fn active_raffles(&self) -> usize {
        self.inner.registry.len()
    }

    /// Commands whose callers wait for an answer: queued for a writer, decided, or in an
    /// append. Tests wait on it to know that requests have reached the engine.
    pub fn commands_waiting(&self) -> usize {
        self.inner.commands_waiting.load(Ordering::Relaxed)
    }

    /// Appends handed to the database and not answered yet (queued for a shared statement
    /// or in one). Tests wait on it to know that commands were decided and wait to commit.
    pub fn appends_waiting(&self) -> usize {
        self.inner.commits.waiting()
    }

    /// Loads every raffle that may have holds to expire (on sale, or closed with holds left),
    /// so their hold timers run without waiting for a command. Returns how many it loaded.
    pub async fn resume_holds(&self) -> Result<usize, EngineError> {
        self.load_raffles_with_holds(true).await
    }

    /// Every `every` on the engine's clock, loads the raffles off sale whose holds have not
    /// all gone and that no writer holds here: their only writer may have been on a node
    /// that is not coming back, and nobody sends a command to a drawn raffle. Raffles on
    /// sale are left to start-ups and to their buyers' requests (the registry does not know
    /// which of them hold anything, and loading them all would undo eviction).
    pub fn sweep_closed_holds(&self, every: Duration) {
        let engine = self.clone();
        let every = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX);
        self.inner.tasks.spawn(async move {
            let clock = engine.inner.config.clock.clone();
            loop {
                let next = clock
                    .now()
                    .checked_add_signed(every)
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
                tokio::select! {
                    () = engine.inner.stopped.cancelled() => break,
                    () = clock.sleep_until(next) => {}
                }
                match engine.load_raffles_with_holds(false).await {
                    Ok(0) => {}
                    Ok(loaded) => tracing::info!(loaded, "raffles off sale with holds loaded"),
                    Err(error) => tracing::warn!(%error, "raffles with holds not swept"),
                }
            }
        });
    }

    async fn load_raffles_with_holds(&self, on_sale: bool) -> Result<usize, EngineError> {
        let raffles = self
            .inner
            .store
            .raffles_with_holds(on_sale)
            .await
            .map_err(EngineError::unavailable)?;
        let mut loaded = 0;
        for raffle_id in raffles {
            if self.inner.registry.get(raffle_id).is_none() {
                self.send(raffle_id, Message::Refresh).await?;
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    #[tracing::instrument(name = "engine.execute", skip(self, command, meta), fields(raffle_id = %raffle_id, request_id = %meta.request_id, command = command_name(&command)))]
    pub async fn execute(
        &self,
        raffle_id: Uuid,
        command: RaffleCommand,
        meta: CommandMeta,
    ) -> Result<Applied, EngineError> {
        let _waiting = Counted::new(&self.inner.commands_waiting);
        let (reply, answer) = oneshot::channel();
        let appended = Arc::new(AtomicBool::new(false));
        self.send(
            raffle_id,
            Message::Command(Box::new(writer::CommandRequest {
                command,
                meta,
                reply,
                span: tracing::Span::current(),
                appended: appended.clone(),
            })),
        )
        .await?;
        // A writer that stops without answering (its task ended or panicked) after handing
        // the command to an append leaves its outcome in doubt: "unavailable" would tell
        // the client nothing happened, and a retry without a key would hold twice.
        answer.await.unwrap_or_else(|_| {
            let reason = "the raffle's writer stopped before answering".to_owned();
            Err(if appended.load(Ordering::Acquire) {
                EngineError::OutcomeUnknown { reason }
            } else {
                EngineError::Unavailable { reason }
            })
        })
    }

    /// Runs `read` against the raffle's committed state (never against undecided commands).
    pub async fn read<T: Send + 'static>(
        &self,
        raffle_id: Uuid,
        read: impl FnOnce(&Raffle) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        let read = Box::new(move |raffle: &Raffle| {
            let _ = reply.send(read(raffle));
        });
        self.send(raffle_id, Message::Read(read)).await?;
        answer.await.map_err(|_| EngineError::Unavailable {
            reason: "the raffle's writer stopped before answering".into(),
        })
    }

    /// An order as the raffle shows it. A compact raffle's settled order (decision 0022) is
    /// read from its events, then shown by the raffle (which knows what they cannot say:
    /// whether the hold expired or a cancellation released it).
    pub async fn order_view(
        &self,
        raffle_id: Uuid,
        order_id: Uuid,
    ) -> Result<Option<tombola_domain::OrderView>, EngineError> {
        let mut supplied = tombola_domain::Supplied::default();
        loop {
            let (answer, back) = self
                .read(raffle_id, move |raffle| {
                    (raffle.order_with(order_id, &supplied), supplied)
                })
                .await?;
            supplied = back;
            let need = match answer {
                Ok(view) => return Ok(view),
                Err(need) if supplied.has(&need) => {
                    return Err(EngineError::unavailable(format!("{need:?} asked again")))
                }
                Err(need) => need,
            };
            let events = self
                .inner
                .store
                .events_for(raffle_id, &need, i64::MAX as u64)
                .await
                .map_err(EngineError::unavailable)?;
            supplied.supply(need, events);
        }
    }

    /// Another node committed to `raffle_id` up to `sequence`: catch up if it is resident.
    pub fn notify_remote_commit(&self, raffle_id: Uuid, sequence: u64) {
        if let Some(sender) = self.inner.registry.get(raffle_id) {
            let _ = sender.try_send(Message::CatchUp(sequence));
        }
    }

    /// Notices from other nodes may have been missed (the listener was not connected):
    /// every resident raffle reads what was committed since its last event.
    pub fn catch_up_all(&self) {
        for sender in self.inner.registry.all() {
            let _ = sender.try_send(Message::CatchUp(u64::MAX));
        }
    }

    async fn send(&self, raffle_id: Uuid, mut message: Message) -> Result<(), EngineError> {
        for _ in 0..3 {
            if self.inner.stopping.load(Ordering::Acquire) {
                return Err(EngineError::ShuttingDown);
            }
            let sender = self.inner.registry.get_or_spawn(raffle_id, |generation| {
                self.spawn_writer(raffle_id, generation)
            });
            // Only commands are shed when the queue is full. A read waits for room: the one
            // that answers a committed command must not turn it into "busy, retry", which a
            // client takes to mean nothing happened.
            let sent = match message {
                Message::Read(_) => sender
                    .send(message)
                    .await
                    .map_err(|returned| tokio::sync::mpsc::error::TrySendError::Closed(returned.0)),
                _ => sender.try_send(message),
            };
            match sent {
                Ok(()) => return Ok(()),
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!("tombola_engine_overloaded_total").increment(1);
                    return Err(EngineError::Overloaded {
                        retry_after: Duration::from_secs(1),
                    });
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(returned)) => {
                    // The writer was evicted or died between lookup and send: start another.
                    self.inner.registry.remove_if_closed(raffle_id);
                    message = returned;
                }
            }
        }
        Err(EngineError::Unavailable {
            reason: "could not reach the raffle's writer".into(),
        })
    }

    fn spawn_writer(&self, raffle_id: Uuid, generation: u64) -> tokio::sync::mpsc::Sender<Message> {
        let (sender, receiver) = tokio::sync::mpsc::channel(self.inner.config.queue_capacity);
        let engine = self.clone();
        self.inner
            .tasks
            .spawn(writer::run(engine, raffle_id, generation, receiver));
        sender
    }

    /// A raffle whose writer could not load it (the database was away) has nobody running
    /// its hold timer, and nothing else would load it before a command comes: one task per
    /// raffle tries again, with backoff, until a writer holds it.
    fn revive_later(&self, raffle_id: Uuid) {
        // Capped low: the holds of such a raffle are late by up to one step after the outage.
        const BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        if self.inner.stopping.load(Ordering::Acquire) || !self.reviving().insert(raffle_id) {
            return;
        }
        let engine = self.clone();
        self.inner.tasks.spawn(async move {
            for attempt in 1.. {
                tokio::select! {
                    () = engine.inner.stopped.cancelled() => break,
                    () = tokio::time::sleep(BACKOFF.delay(attempt)) => {}
                }
                // A read is answered only by a writer that loaded the raffle.
                if engine.read(raffle_id, |_| ()).await.is_ok() {
                    tracing::info!(%raffle_id, attempt, "raffle loaded again");
                    break;
                }
            }
            engine.reviving().remove(&raffle_id);
        });
    }

    fn reviving(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Uuid>> {
        self.inner
            .reviving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Stops taking commands, lets every writer finish what is queued, and waits for them.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.stopped.cancel();
        self.inner.registry.clear();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        // Every append has settled: the commit thread's connections can say goodbye.
        self.inner.commits.close().await;
    }
}
