//! A raffle's single writer: its loop, its state, and how it decides. The loop takes
//! commands, reads and catch-ups from the queue, fires the hold timer ([`expiry`]) and
//! leaves memory when idle (eviction); [`pipeline`] commits, [`failures`] handles an
//! append that failed, and [`snapshots`] decides when to save a snapshot.
//!
//! Commands are decided as they arrive, on top of everything decided before, and wait in
//! the pending batch. At most one append runs at a time; when it commits, its callers are
//! answered and the pending batch's append starts at once, so the database never waits for
//! the writer to decide. An append that fails voids everything decided after it: the state
//! is reloaded and those commands are decided again. Reads, catch-ups and snapshots first
//! let everything decided commit, so they only ever see committed state.

mod expiry;
mod failures;
mod pipeline;
mod snapshots;

use chrono::{DateTime, Utc};
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tombola_domain::{
    Need, Raffle, RaffleCommand, RaffleEvent, RaffleServices, RaffleStatus, Supplied,
};
use uuid::Uuid;

use super::decide::{Decided, Decider, KnownKeys, Position};
use super::{Applied, CommandMeta, Committed, Engine, EngineError};
use crate::clock::Clock;
use crate::store::StoredEvent;
use expiry::hold_timer;
use futures::StreamExt;
use pipeline::{Batch, InFlight};

/// Most messages taken from the queue per turn of the loop: a finished append is noticed
/// (and the next one started) between turns, so a turn must stay short.
const TURN: usize = 64;

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
    /// The caller's span (`engine.execute`): the group commit that carries the command
    /// becomes its child, or is linked to it.
    pub span: tracing::Span,
    /// Set once the command is handed to an append: from then on, a caller left without
    /// an answer cannot be told it did not commit.
    pub appended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CommandRequest {
    pub(super) fn mark_appended(&self) {
        self.appended
            .store(true, std::sync::atomic::Ordering::Release);
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
    snapshot_bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
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
    /// A compact raffle's events decided but not yet committed, by sequence: with the
    /// committed log they answer what a decision needs (decision 0022).
    journal: Vec<(u64, RaffleEvent)>,
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
            engine.revive_later(raffle_id);
            while let Some(message) = receiver.recv().await {
                if let Message::Command(request) = message {
                    let _ = request.reply.send(Err(EngineError::unavailable(&error)));
                }
            }
            return;
        }
    };
    let config = engine.inner.config.clone();
    // Idleness is measured on the engine's clock, like the holds: a test moves both.
    let idle_for = chrono::Duration::from_std(config.evict_after).unwrap_or(chrono::Duration::MAX);
    let idle_from = || {
        let now = config.clock.now();
        now.checked_add_signed(idle_for)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    };
    let mut idle_deadline = idle_from();
    // Expiries decided, waiting for their batch to commit (outside the writer: the loop
    // polls them beside the append in flight).
    let mut expiries = expiry::Expiries::new();
    loop {
        let expiry_due = writer.expiry_due_at(expiries.len());
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
                writer.expire_due_holds(&mut expiries).await;
            }
            outcome = expiries.next(), if !expiries.is_empty() => {
                writer.expiry_answered(outcome);
            }
            message = receiver.recv(), if room > 0 => {
                let Some(first) = message else { break };
                metrics::histogram!("tombola_engine_queue_depth").record((receiver.len() + 1) as f64);
                let mut batch = vec![first];
                while batch.len() < room.min(TURN) {
                    match receiver.try_recv() {
                        Ok(message) => batch.push(message),
                        Err(_) => break,
                    }
                }
                writer.process(batch).await;
                idle_deadline = idle_from();
            }
            () = idle_timer(&*config.clock, idle_deadline), if evictable => {
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
    // It leaves because it could not reload: its holds' timer must not leave with it.
    if writer.poisoned {
        writer.engine.revive_later(raffle_id);
    }
}

/// A raffle off sale loaded without holds clears its registry mark, so that start-ups stop
/// loading it (migration 0110 marks every raffle closed before the mark existed). Off the
/// load's path: it only saves later start-ups a load.
fn forget_holds_if_none(engine: &Engine, raffle_id: Uuid, state: &Raffle, sequence: u64) {
    let ended = matches!(
        state.status(),
        RaffleStatus::Closed | RaffleStatus::Drawn | RaffleStatus::Cancelled
    );
    if ended && state.next_expiry().is_none() {
        let store = engine.inner.store.clone();
        tokio::spawn(async move {
            if let Err(error) = store.forget_holds(raffle_id, sequence).await {
                tracing::debug!(%raffle_id, %error, "registry's hold mark not cleared");
            }
        });
    }
}

/// Fires when the clock reaches `deadline`; only polled while the raffle may be evicted.
async fn idle_timer(clock: &dyn Clock, deadline: DateTime<Utc>) {
    clock.sleep_until(deadline).await;
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
        let mut state = loaded.raffle;
        compact_if_large(&mut state, engine.inner.config.compact_after_orders);
        forget_holds_if_none(&engine, raffle_id, &state, committed.sequence);
        Ok(Self {
            raffle_id,
            aggregate_id: raffle_id.to_string(),
            state,
            tip: committed.clone(),
            snapshot_sequence: committed.sequence,
            snapshot_bytes: std::sync::Arc::new(loaded.snapshot_bytes.into()),
            committed,
            services,
            poisoned: false,
            expiry_retry_at: None,
            in_flight: None,
            pending: None,
            uncommitted_keys: KnownKeys::new(),
            journal: Vec::new(),
            engine,
        })
    }

    /// Discards in-memory state and reads the committed stream again. Whatever was decided
    /// and not committed is void; the caller owns deciding it again.
    async fn reload(&mut self) -> Result<(), crate::store::StoreError> {
        self.uncommitted_keys.clear();
        self.journal.clear();
        match self.engine.inner.store.load_raffle(self.raffle_id).await {
            Ok(loaded) => {
                self.state = loaded.raffle;
                compact_if_large(
                    &mut self.state,
                    self.engine.inner.config.compact_after_orders,
                );
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
        let (state, committed) = (&mut self.state, &mut self.committed);
        let replayed = self
            .engine
            .inner
            .store
            .replay_after(self.raffle_id, committed.sequence, |stored| {
                state.apply_event(&stored.event);
                *committed = Position {
                    sequence: stored.sequence,
                    hash: stored.metadata.hash,
                };
            })
            .await;
        // Whatever was applied is committed: the state stays consistent either way.
        self.tip = self.committed.clone();
        self.journal.clear();
        replayed
    }

    /// After a failed append: the state becomes the committed stream again. When nothing
    /// decided since the last commit touched the state (a batch of refusals only), reading
    /// the events after it is enough; otherwise the raffle is loaded again.
    async fn refresh(&mut self) -> Result<(), crate::store::StoreError> {
        if self.tip != self.committed || self.poisoned {
            return self.reload().await;
        }
        self.uncommitted_keys.clear();
        if let Err(error) = self.catch_up().await {
            self.poisoned = true;
            return Err(error);
        }
        Ok(())
    }

    /// Decides `requests` from the tip and adds them to the pending batch.
    /// If looking up their idempotency keys fails, each command is tried alone, so that a
    /// key the database cannot read fails its own command only.
    async fn decide_pending(&mut self, requests: Vec<CommandRequest>) {
        match self.decide(&requests).await {
            Ok(decided) => self.add_pending(requests, decided),
            Err(_) if requests.len() > 1 => {
                for request in requests {
                    match self.decide(std::slice::from_ref(&request)).await {
                        Ok(decided) => self.add_pending(vec![request], decided),
                        Err(error) => answer_all(vec![request], &EngineError::unavailable(&error)),
                    }
                }
            }
            Err(error) => answer_all(requests, &EngineError::unavailable(&error)),
        }
    }

    fn add_pending(&mut self, requests: Vec<CommandRequest>, decided: Decided) {
        match &mut self.pending {
            Some(pending) => pending.extend(requests, decided),
            None => self.pending = Some(Batch::new(requests, decided)),
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
        let mut total: Option<Decided> = None;
        let mut supplied = Supplied::default();
        let mut start = 0;
        while start < requests.len() {
            let decider = Decider {
                raffle_id: self.raffle_id,
                aggregate_id: &self.aggregate_id,
                services: &self.services,
                publishing: self.engine.inner.published.receiver_count() > 0,
            };
            let journal = self.state.is_compact().then_some(&mut self.journal);
            let decided = decider.decide(
                &mut self.state,
                &self.tip,
                &requests[start..],
                &mut known,
                &supplied,
                journal,
            );
            for record in &decided.batch.idempotency {
                let id = (record.scope.clone(), record.key.clone());
                self.uncommitted_keys.insert(id, record.clone());
            }
            self.tip = decided.end.clone();
            if decided.consumed > 0 {
                supplied = Supplied::default();
            }
            start += decided.consumed;
            let need = decided.need.clone();
            match &mut total {
                Some(total) => total.extend(decided),
                None => total = Some(decided),
            }
            let Some(need) = need else { break };
            // A compact raffle's rare path: the events it needs, read from the log up to what
            // is committed and from the journal after it. The commands before it stay
            // decided; if the log cannot be read, this one and those after it fail alone.
            let resolved = if supplied.has(&need) {
                Err(format!("a decision asked again for {need:?}"))
            } else {
                self.resolve(need, &mut supplied)
                    .await
                    .map_err(|error| error.to_string())
            };
            if let Err(error) = resolved {
                tracing::warn!(raffle_id = %self.raffle_id, %error, "a decision's log read failed");
                let total = total.as_mut().expect("decided above");
                let undecided = requests.len() - start;
                total
                    .results
                    .extend((0..undecided).map(|_| Err(EngineError::unavailable(&error))));
                total.consumed += undecided;
                total.need = None;
                break;
            }
        }
        Ok(total.unwrap_or_else(|| Decided::empty(self.tip.clone())))
    }

    /// Reads what a compact raffle's decision needs: the log up to the committed position,
    /// then this writer's own uncommitted events.
    async fn resolve(
        &self,
        need: Need,
        supplied: &mut Supplied,
    ) -> Result<(), crate::store::StoreError> {
        let store = &self.engine.inner.store;
        let up_to = self.committed.sequence;
        let uncommitted = self
            .journal
            .iter()
            .filter(|(sequence, _)| *sequence > up_to);
        metrics::counter!("tombola_engine_log_reads_total").increment(1);
        if need == Need::Log {
            let mut full = store.fold_log(self.raffle_id, up_to).await?;
            uncommitted.for_each(|(_, event)| full.apply_event(event));
            supplied.supply_log(full);
            return Ok(());
        }
        let mut events = store.events_for(self.raffle_id, &need, up_to).await?;
        events.extend(
            uncommitted
                .filter(|(_, event)| need.matches(event))
                .map(|(_, event)| event.clone()),
        );
        supplied.supply(need, events);
        Ok(())
    }

    /// A batch committed: move the committed position and tell listeners.
    fn commit_done(
        &mut self,
        end: Position,
        published: Vec<StoredEvent>,
        commands: usize,
        events: usize,
    ) {
        self.journal
            .retain(|(sequence, _)| *sequence > end.sequence);
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
}

/// Makes `state` compact once it has `threshold` orders (decision 0022); a compact one drops
/// the records of orders settled since. Only while nothing decided is uncommitted.
pub(super) fn compact_if_large(state: &mut Raffle, threshold: usize) {
    if state.is_compact() || state.order_count() >= threshold {
        state.compact();
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
