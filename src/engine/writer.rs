//! A raffle's single writer: the pipelined group-commit loop, hold timers and eviction.
//!
//! Commands are decided as they arrive, on top of everything decided before, and wait in
//! the pending batch. At most one append runs at a time; when it commits, its callers are
//! answered and the pending batch's append starts at once, so the database never waits for
//! the writer to decide. An append that fails voids everything decided after it: the state
//! is reloaded and those commands are decided again. Reads, catch-ups and snapshots first
//! let everything decided commit, so they only ever see committed state.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tombola_domain::{Raffle, RaffleCommand, RaffleServices};
use uuid::Uuid;

use super::commit_thread::AppendOutcome;
use super::decide::{Decided, Decider, KnownKeys, Position};
use super::{Applied, CommandMeta, Committed, Engine, EngineError};
use crate::clock::Clock;
use crate::store::{AppendBatch, AppendError, StoredEvent};

/// Most messages taken from the queue per turn of the loop: a finished append is noticed
/// (and the next one started) between turns, so a turn must stay short.
const TURN: usize = 64;

/// A large raffle's next snapshot (after one of [`LARGE_SNAPSHOT`] or more) waits for one
/// event per this many bytes of its last one.
/// An event costs ~1 KB to store, so snapshots add at most ~1/8 to what the database
/// writes (at 512 the engine bench's 10M raffle stalled on them: p99 175–375 ms, against
/// 82–85 ms at 128). The price is replay on load: a sold-out 10M raffle (218 MB) may replay
/// up to 1.7M events after its snapshot.
const SNAPSHOT_BYTES_PER_EVENT: usize = 128;
/// Below this a snapshot is cheap whatever the raffle does: `snapshot_every` alone rules.
const LARGE_SNAPSHOT: usize = 1 << 20;

pub(crate) enum Message {
    Command(Box<CommandRequest>),
    Read(Box<dyn FnOnce(&Raffle) + Send>),
    /// Another node committed up to this sequence.
    CatchUp(u64),
    /// Just be loaded (arms the hold timer).
    Refresh,
}

pub(crate) struct CommandRequest {
    pub command: RaffleCommand,
    pub meta: CommandMeta,
    pub reply: oneshot::Sender<Result<Applied, EngineError>>,
}

/// Decided commands and what committing them stores: the pending batch, then in flight.
struct Batch {
    requests: Vec<CommandRequest>,
    results: Vec<Result<Applied, EngineError>>,
    append: AppendBatch,
    published: Vec<StoredEvent>,
    end: Position,
}

impl Batch {
    fn new(requests: Vec<CommandRequest>, decided: Decided) -> Self {
        Self {
            requests,
            results: decided.results,
            append: decided.batch,
            published: decided.published,
            end: decided.end,
        }
    }

    fn extend(&mut self, requests: Vec<CommandRequest>, decided: Decided) {
        self.requests.extend(requests);
        self.results.extend(decided.results);
        self.append.events.extend(decided.batch.events);
        self.append.idempotency.extend(decided.batch.idempotency);
        if decided.batch.registry.is_some() {
            self.append.registry = decided.batch.registry;
        }
        self.published.extend(decided.published);
        self.end = decided.end;
    }
}

/// A batch whose append is running (or ran). Its callers are answered once it commits.
struct InFlight {
    requests: Vec<CommandRequest>,
    results: Vec<Result<Applied, EngineError>>,
    published: Vec<StoredEvent>,
    end: Position,
    keys: Vec<(String, String)>,
    events: usize,
    /// None once finished, or from the start when there is nothing to store (every
    /// command refused or replayed).
    task: Option<AppendOutcome>,
    outcome: Option<Result<(), AppendFailure>>,
}

struct AppendFailure {
    conflict: bool,
    reason: String,
}

impl AppendFailure {
    /// What a finished append came to.
    fn check(
        outcome: Result<Result<(), AppendError>, tokio::sync::oneshot::error::RecvError>,
    ) -> Result<(), Self> {
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Self {
                conflict: matches!(error, AppendError::Conflict),
                reason: error.to_string(),
            }),
            Err(error) => Err(Self {
                conflict: false,
                reason: format!("the commit thread dropped the append: {error}"),
            }),
        }
    }
}

struct Writer {
    engine: Engine,
    raffle_id: Uuid,
    aggregate_id: String,
    state: Raffle,
    /// The stream's last committed event.
    committed: Position,
    /// The last event decided: `committed` plus the batches in flight and pending.
    tip: Position,
    snapshot_sequence: u64,
    /// Size of the last snapshot written: large raffles snapshot less often.
    snapshot_bytes: usize,
    services: RaffleServices,
    /// In-memory state may hold uncommitted events and could not be reloaded: stop.
    poisoned: bool,
    /// After a failed expiry, due holds wait a moment rather than retry in a tight loop.
    expiry_retry_at: Option<Instant>,
    in_flight: Option<InFlight>,
    pending: Option<Batch>,
    /// Idempotency records decided but not yet committed: a retry in a later batch must
    /// find them.
    uncommitted_keys: KnownKeys,
}

pub(crate) async fn run(
    engine: Engine,
    raffle_id: Uuid,
    generation: u64,
    mut receiver: mpsc::Receiver<Message>,
) {
    let registry = &engine.inner.registry;
    let mut writer = match Writer::load(engine.clone(), raffle_id).await {
        Ok(writer) => writer,
        Err(error) => {
            tracing::error!(%raffle_id, %error, "could not load raffle");
            registry.retire(raffle_id, generation, &mut receiver, true);
            while let Some(message) = receiver.recv().await {
                if let Message::Command(request) = message {
                    let _ = request.reply.send(Err(EngineError::unavailable(&error)));
                }
            }
            return;
        }
    };
    let config = engine.inner.config.clone();
    let mut idle_deadline = Instant::now() + config.evict_after;
    loop {
        let expiry_due = writer.expiry_due_at();
        let in_flight = writer.in_flight.is_some();
        // A full pending batch takes nothing more until the append ahead of it commits.
        let room = config.max_batch.max(1).saturating_sub(writer.pending_len());
        let evictable =
            !in_flight && (writer.state.next_expiry().is_none() || writer.state.config().is_none());
        tokio::select! {
            biased;
            // A finished append goes first: its callers wait, and so does the next batch.
            () = writer.append_finished(), if in_flight => {
                writer.advance().await;
                writer.maybe_snapshot();
            }
            // Due holds before queued commands, without a timer round-trip: under sustained
            // load the queue is never empty, and a timer polled after it would never fire.
            () = hold_timer(&*config.clock, expiry_due), if expiry_due.is_some() && room > 0 => {
                writer.expire_due_holds().await;
            }
            message = receiver.recv(), if room > 0 => {
                let Some(first) = message else { break };
                let mut batch = vec![first];
                while batch.len() < room.min(TURN) {
                    match receiver.try_recv() {
                        Ok(message) => batch.push(message),
                        Err(_) => break,
                    }
                }
                writer.process(batch).await;
                idle_deadline = Instant::now() + config.evict_after;
            }
            _ = tokio::time::sleep_until(idle_deadline), if evictable => {
                if registry.retire(raffle_id, generation, &mut receiver, false) {
                    break;
                }
            }
        }
        // A raffle that does not exist, or a writer whose state is suspect, does not stay.
        let leave = writer.poisoned || (writer.state.config().is_none() && receiver.is_empty());
        if leave {
            writer.flush().await;
            if registry.retire(raffle_id, generation, &mut receiver, writer.poisoned) {
                break;
            }
        }
    }
    // Retired: the receiver is closed, but what was queued before still gets decided.
    while let Ok(message) = receiver.try_recv() {
        writer.process(vec![message]).await;
    }
    writer.flush().await;
}

/// Ready at once when a hold is due, otherwise when the clock reaches it. After a failed
/// expiry, the retry also waits out its backoff (real time: it waits on the database).
async fn hold_timer(clock: &dyn Clock, due: Option<(DateTime<Utc>, Option<Instant>)>) {
    let Some((at, retry_at)) = due else { return };
    if let Some(retry_at) = retry_at.filter(|at| *at > Instant::now()) {
        tokio::time::sleep_until(retry_at).await;
    }
    clock.sleep_until(at).await;
}

impl Writer {
    async fn load(engine: Engine, raffle_id: Uuid) -> Result<Self, crate::store::StoreError> {
        let loaded = engine.inner.store.load_raffle(raffle_id).await?;
        let services = RaffleServices::new(
            engine.inner.config.clock.clone(),
            Box::new(rand_chacha::ChaCha12Rng::from_os_rng()),
        );
        let committed = Position {
            sequence: loaded.last_sequence,
            hash: loaded.last_hash,
        };
        Ok(Self {
            raffle_id,
            aggregate_id: raffle_id.to_string(),
            state: loaded.raffle,
            tip: committed.clone(),
            snapshot_sequence: committed.sequence,
            snapshot_bytes: loaded.snapshot_bytes,
            committed,
            services,
            poisoned: false,
            expiry_retry_at: None,
            in_flight: None,
            pending: None,
            uncommitted_keys: KnownKeys::new(),
            engine,
        })
    }

    /// Discards in-memory state and reads the committed stream again. Whatever was decided
    /// and not committed is void; the caller owns deciding it again.
    async fn reload(&mut self) -> Result<(), crate::store::StoreError> {
        self.uncommitted_keys.clear();
        match self.engine.inner.store.load_raffle(self.raffle_id).await {
            Ok(loaded) => {
                self.state = loaded.raffle;
                self.committed = Position {
                    sequence: loaded.last_sequence,
                    hash: loaded.last_hash,
                };
                self.tip = self.committed.clone();
                self.poisoned = false;
                Ok(())
            }
            Err(error) => {
                self.poisoned = true;
                Err(error)
            }
        }
    }

    fn pending_len(&self) -> usize {
        self.pending
            .as_ref()
            .map_or(0, |batch| batch.requests.len())
    }

    /// When the next hold is due, and when a failed expiry may be retried.
    fn expiry_due_at(&self) -> Option<(DateTime<Utc>, Option<Instant>)> {
        let next = self.state.next_expiry()?;
        Some((next, self.expiry_retry_at))
    }

    /// Expires due holds in a batch of their own, so that an expiry that keeps failing
    /// backs off on its own outcome and takes no caller's command down with it.
    async fn expire_due_holds(&mut self) {
        self.flush().await;
        let (reply, answer) = oneshot::channel();
        let request = CommandRequest {
            command: RaffleCommand::ExpireDueHolds,
            meta: CommandMeta::system("expiry"),
            reply,
        };
        self.process(vec![Message::Command(Box::new(request))])
            .await;
        self.flush().await;
        self.expiry_retry_at = match answer.await {
            Ok(Ok(_)) => None,
            _ => Some(Instant::now() + Duration::from_secs(1)),
        };
    }

    async fn process(&mut self, batch: Vec<Message>) {
        let mut commands = Vec::new();
        let mut reads = Vec::new();
        let mut catch_up = 0;
        for message in batch {
            match message {
                Message::Command(request) => commands.push(*request),
                Message::Read(read) => reads.push(read),
                Message::CatchUp(sequence) => catch_up = catch_up.max(sequence),
                Message::Refresh => {}
            }
        }
        // A notification at or below the tip is this node's own commit, or another node's
        // that the batch in flight will collide with (and reload on): not worth a flush.
        let behind = catch_up > self.tip.sequence;
        if self.poisoned || behind || self.snapshot_due() {
            self.flush().await;
            self.maybe_snapshot();
        }
        // A poisoned writer's state may hold events that never committed (its reload after
        // a failed append failed too): nothing may be decided or read against it. This
        // happens to the commands that were queued when the writer retired.
        if self.poisoned {
            if let Err(error) = self.reload().await {
                answer_all(commands, &EngineError::unavailable(&error));
                return;
            }
        }
        if behind && catch_up > self.committed.sequence {
            if let Err(error) = self.catch_up().await {
                tracing::warn!(raffle_id = %self.raffle_id, %error, "catch-up failed");
            }
        }
        if !commands.is_empty() {
            self.decide_pending(commands).await;
            if self.in_flight.is_none() {
                self.start_pending();
            }
        }
        if !reads.is_empty() {
            self.flush().await;
            // A failed append whose reload failed too leaves uncommitted events in the
            // state: read only after a reload; dropped reads answer "unavailable".
            if self.poisoned && self.reload().await.is_err() {
                return;
            }
            for read in reads {
                read(&self.state);
            }
        }
    }

    async fn catch_up(&mut self) -> Result<(), crate::store::StoreError> {
        let events = self
            .engine
            .inner
            .store
            .events_after(self.raffle_id, self.committed.sequence)
            .await?;
        for stored in events {
            self.state.apply_event(&stored.event);
            self.committed = Position {
                sequence: stored.sequence,
                hash: stored.metadata.hash,
            };
        }
        self.tip = self.committed.clone();
        Ok(())
    }

    /// Decides `requests` from the tip and adds them to the pending batch.
    async fn decide_pending(&mut self, requests: Vec<CommandRequest>) {
        match self.decide(&requests).await {
            Ok(decided) => match &mut self.pending {
                Some(pending) => pending.extend(requests, decided),
                None => self.pending = Some(Batch::new(requests, decided)),
            },
            Err(error) => answer_all(requests, &EngineError::unavailable(&error)),
        }
    }

    /// Decides `requests` from the tip, after looking up their idempotency keys.
    async fn decide(
        &mut self,
        requests: &[CommandRequest],
    ) -> Result<Decided, crate::store::StoreError> {
        let mut known = KnownKeys::new();
        let mut lookups = Vec::new();
        for idempotency in requests.iter().filter_map(|r| r.meta.idempotency.as_ref()) {
            let id = (idempotency.scope.clone(), idempotency.key.clone());
            match self.uncommitted_keys.get(&id) {
                Some(record) => {
                    known.insert(id, record.clone());
                }
                None => lookups.push(idempotency),
            }
        }
        for record in self.engine.inner.store.find_idempotency(&lookups).await? {
            known.insert((record.scope.clone(), record.key.clone()), record);
        }
        let decider = Decider {
            raffle_id: self.raffle_id,
            aggregate_id: &self.aggregate_id,
            services: &self.services,
            publishing: self.engine.inner.published.receiver_count() > 0,
        };
        let decided = decider.decide(&mut self.state, &self.tip, requests, &mut known);
        for record in &decided.batch.idempotency {
            let id = (record.scope.clone(), record.key.clone());
            self.uncommitted_keys.insert(id, record.clone());
        }
        self.tip = decided.end.clone();
        Ok(decided)
    }

    /// Starts the pending batch's append. Only with nothing in flight: a batch commits
    /// after the one before it, never alongside.
    fn start_pending(&mut self) {
        debug_assert!(self.in_flight.is_none());
        let Some(batch) = self.pending.take() else {
            return;
        };
        let keys = batch
            .append
            .idempotency
            .iter()
            .map(|record| (record.scope.clone(), record.key.clone()))
            .collect();
        let events = batch.append.events.len();
        let task = (!batch.append.is_empty()).then(|| {
            self.engine
                .inner
                .commits
                .append(self.raffle_id, batch.append)
        });
        self.in_flight = Some(InFlight {
            requests: batch.requests,
            results: batch.results,
            published: batch.published,
            end: batch.end,
            keys,
            events,
            outcome: task.is_none().then_some(Ok(())),
            task,
        });
    }

    /// Resolves once the append in flight has finished. Cancel-safe: the outcome is kept
    /// for [`Self::settle`].
    async fn append_finished(&mut self) {
        let Some(flight) = self.in_flight.as_mut() else {
            return;
        };
        if let Some(task) = flight.task.as_mut() {
            let outcome = task.await;
            flight.task = None;
            flight.outcome = Some(AppendFailure::check(outcome));
        }
    }

    /// Settles the batch in flight, then starts the pending one.
    async fn advance(&mut self) {
        self.settle().await;
        if self.in_flight.is_none() {
            self.start_pending();
        }
    }

    /// Lets everything decided commit (or fail): afterwards the state is the committed
    /// stream.
    async fn flush(&mut self) {
        while self.in_flight.is_some() || self.pending.is_some() {
            if self.in_flight.is_none() {
                self.start_pending();
            }
            self.settle().await;
        }
    }

    /// Waits for the batch in flight and answers its callers: with its results once it
    /// committed (after starting the pending batch's append). Otherwise the state is reloaded, the batch is decided again and appended
    /// in place (a conflict: another node wrote first) or refused as retryable, and the
    /// pending batch, decided on top of it, is decided again.
    async fn settle(&mut self) {
        self.append_finished().await;
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        let failure = match flight.outcome {
            Some(Err(failure)) => failure,
            None => unreachable!("append_finished ran to completion"),
            Some(Ok(())) => {
                for key in &flight.keys {
                    self.uncommitted_keys.remove(key);
                }
                let commands = flight.requests.len();
                self.commit_done(flight.end, flight.published, commands, flight.events);
                // The next append first: the database should not wait while callers wake.
                self.start_pending();
                answer(flight.requests, flight.results);
                return;
            }
        };
        let void = self.pending.take().map(|batch| batch.requests);
        let reloaded = self.reload().await;
        // A failure the database did not report (a lost connection) may hide a commit: if
        // the stream now ends exactly where this batch would have (sequence and chain hash),
        // it did commit, and its callers get their answers.
        let committed_after_all = !failure.conflict
            && reloaded.is_ok()
            && flight.events > 0
            && self.committed == flight.end;
        let results = if committed_after_all {
            tracing::warn!(raffle_id = %self.raffle_id, reason = %failure.reason, "append reply lost; it committed");
            let commands = flight.requests.len();
            self.commit_done(flight.end, flight.published, commands, flight.events);
            flight.results
        } else if failure.conflict && reloaded.is_ok() {
            self.commit_in_place(&flight.requests).await
        } else {
            tracing::warn!(raffle_id = %self.raffle_id, reason = %failure.reason, "append failed");
            let error = EngineError::unavailable(&failure.reason);
            flight.requests.iter().map(|_| Err(error.clone())).collect()
        };
        answer(flight.requests, results);
        if let Some(requests) = void {
            if self.poisoned {
                answer_all(requests, &EngineError::unavailable(&failure.reason));
            } else {
                self.decide_pending(requests).await;
            }
        }
    }

    /// Another node appended first: decide again on its events and append (on the commit
    /// thread, like every append) without a pipeline, with backoff, until it commits or the
    /// retries run out.
    async fn commit_in_place(
        &mut self,
        requests: &[CommandRequest],
    ) -> Vec<Result<Applied, EngineError>> {
        let max_retries = self.engine.inner.config.max_conflict_retries;
        let mut attempt = 1;
        loop {
            tokio::time::sleep(backoff(attempt)).await;
            let decided = match self.decide(requests).await {
                Ok(decided) => decided,
                Err(error) => {
                    let error = EngineError::unavailable(&error);
                    return requests.iter().map(|_| Err(error.clone())).collect();
                }
            };
            let events = decided.batch.events.len();
            let outcome = if decided.batch.is_empty() {
                Ok(())
            } else {
                let task = self
                    .engine
                    .inner
                    .commits
                    .append(self.raffle_id, decided.batch);
                AppendFailure::check(task.await)
            };
            let failure = match outcome {
                Ok(()) => {
                    self.uncommitted_keys.clear();
                    self.commit_done(decided.end, decided.published, requests.len(), events);
                    return decided.results;
                }
                Err(failure) => failure,
            };
            let reloaded = self.reload().await;
            if !(failure.conflict && attempt < max_retries && reloaded.is_ok()) {
                let reason = &failure.reason;
                tracing::warn!(raffle_id = %self.raffle_id, %reason, attempt, "append failed");
                let error = EngineError::unavailable(reason);
                return requests.iter().map(|_| Err(error.clone())).collect();
            }
            attempt += 1;
        }
    }

    /// A batch committed: move the committed position and tell listeners.
    fn commit_done(
        &mut self,
        end: Position,
        published: Vec<StoredEvent>,
        commands: usize,
        events: usize,
    ) {
        self.committed = end;
        metrics::histogram!("tombola_engine_batch_commands").record(commands as f64);
        metrics::histogram!("tombola_engine_batch_events").record(events as f64);
        if !published.is_empty() {
            let _ = self
                .engine
                .inner
                .published
                .send(std::sync::Arc::new(Committed {
                    raffle_id: self.raffle_id,
                    events: published,
                }));
        }
    }

    /// After `snapshot_every` events, and for a large raffle not before the events since its
    /// last snapshot outweigh it ([`SNAPSHOT_BYTES_PER_EVENT`]): a 10M-ticket raffle's
    /// snapshot is megabytes.
    fn snapshot_due(&self) -> bool {
        let every = self.engine.inner.config.snapshot_every;
        let by_size = if self.snapshot_bytes >= LARGE_SNAPSHOT {
            (self.snapshot_bytes / SNAPSHOT_BYTES_PER_EVENT) as u64
        } else {
            0
        };
        every != 0 && self.tip.sequence - self.snapshot_sequence >= every.max(by_size)
    }

    /// Saves a snapshot off the hot path when one is due and the state is exactly the
    /// committed stream (nothing in flight or pending).
    fn maybe_snapshot(&mut self) {
        if !self.snapshot_due() || self.tip != self.committed {
            return;
        }
        self.snapshot_sequence = self.committed.sequence;
        let bytes = self.state.encode_snapshot();
        self.snapshot_bytes = bytes.len();
        let store = self.engine.inner.store.clone();
        let (raffle_id, sequence, hash) = (
            self.raffle_id,
            self.committed.sequence,
            self.committed.hash.clone(),
        );
        // Tracked with the writers, so shutdown waits for the save.
        self.engine.inner.tasks.spawn(async move {
            if let Err(error) = store
                .save_snapshot(raffle_id, sequence, &hash, &bytes)
                .await
            {
                tracing::warn!(%raffle_id, %error, "snapshot not saved");
            }
        });
    }
}

fn answer(requests: Vec<CommandRequest>, results: Vec<Result<Applied, EngineError>>) {
    for (request, result) in requests.into_iter().zip(results) {
        let _ = request.reply.send(result);
    }
}

fn answer_all(requests: Vec<CommandRequest>, error: &EngineError) {
    for request in requests {
        let _ = request.reply.send(Err(error.clone()));
    }
}

/// Exponential backoff with proportional jitter (50–150% of the delay), as every retry
/// loop in Tombola.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(5) * 2u32.saturating_pow(attempt.min(10));
    base.mul_f64(rand::rng().random_range(0.5..1.5))
}
