//! A raffle's single writer: the group-commit loop, hold timers and eviction.

use std::collections::HashMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tombola_domain::{Raffle, RaffleCommand, RaffleServices};
use uuid::Uuid;

use super::{Applied, CommandMeta, Committed, Engine, EngineError, Rejection, SequencedEvent};
use crate::store::chain::{self, ChainInput};
use crate::store::{
    AppendBatch, AppendError, EventMetadata, IdempotencyRecord, NewEvent, StoredEvent,
    RAFFLE_STREAM,
};

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

/// What an idempotency record keeps: the first answer, replayed to every retry.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredResponse {
    Applied(Applied),
    Rejected(Rejection),
}

struct Writer {
    engine: Engine,
    raffle_id: Uuid,
    aggregate_id: String,
    state: Raffle,
    last_sequence: u64,
    last_hash: String,
    snapshot_sequence: u64,
    services: RaffleServices,
    /// In-memory state may hold uncommitted events and could not be reloaded: stop.
    poisoned: bool,
    expiry_retry_at: Option<Instant>,
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
        let expiry_in = writer.expiry_due_in();
        let evictable = writer.state.next_expiry().is_none() || writer.state.config().is_none();
        tokio::select! {
            biased;
            // Due holds go first, and without a timer round-trip: under sustained load the
            // queue is never empty, and a timer polled after it would never fire.
            _ = hold_timer(expiry_in), if expiry_in.is_some() => {
                writer.expire_due_holds().await;
            }
            message = receiver.recv() => {
                let Some(first) = message else { break };
                let mut batch = vec![first];
                while batch.len() < config.max_batch {
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
        if leave && registry.retire(raffle_id, generation, &mut receiver, writer.poisoned) {
            break;
        }
    }
    // Retired: the receiver is closed, but what was queued before still gets decided.
    while let Ok(message) = receiver.try_recv() {
        writer.process(vec![message]).await;
    }
}

/// Ready at once when a hold is due, otherwise after `wait`.
async fn hold_timer(wait: Option<Duration>) {
    match wait {
        Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
        _ => {}
    }
}

impl Writer {
    async fn load(engine: Engine, raffle_id: Uuid) -> Result<Self, crate::store::StoreError> {
        let loaded = engine.inner.store.load_raffle(raffle_id).await?;
        let services = RaffleServices::new(
            engine.inner.config.clock.clone(),
            Box::new(rand_chacha::ChaCha12Rng::from_os_rng()),
        );
        Ok(Self {
            raffle_id,
            aggregate_id: raffle_id.to_string(),
            state: loaded.raffle,
            last_sequence: loaded.last_sequence,
            last_hash: loaded.last_hash,
            snapshot_sequence: loaded.last_sequence,
            services,
            poisoned: false,
            expiry_retry_at: None,
            engine,
        })
    }

    /// Discards in-memory state and reads the committed stream again.
    async fn reload(&mut self) -> Result<(), crate::store::StoreError> {
        match self.engine.inner.store.load_raffle(self.raffle_id).await {
            Ok(loaded) => {
                self.state = loaded.raffle;
                self.last_sequence = loaded.last_sequence;
                self.last_hash = loaded.last_hash;
                self.poisoned = false;
                Ok(())
            }
            Err(error) => {
                self.poisoned = true;
                Err(error)
            }
        }
    }

    fn expiry_due_in(&self) -> Option<Duration> {
        let next = self.state.next_expiry()?;
        let wait = (next - self.services.now()).to_std().unwrap_or_default();
        let backoff = self
            .expiry_retry_at
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        Some(wait.max(backoff))
    }

    async fn expire_due_holds(&mut self) {
        let (reply, answer) = oneshot::channel();
        let request = CommandRequest {
            command: RaffleCommand::ExpireDueHolds,
            meta: CommandMeta::system("expiry"),
            reply,
        };
        self.process(vec![Message::Command(Box::new(request))])
            .await;
        self.expiry_retry_at = match answer.await {
            Ok(Ok(_)) => None,
            _ => Some(Instant::now() + Duration::from_secs(1)),
        };
    }

    async fn process(&mut self, batch: Vec<Message>) {
        // A poisoned writer's state may hold events that never committed (its reload after
        // a failed append failed too): nothing may be decided or read against it. This
        // happens to the commands that were queued when the writer retired.
        if self.poisoned {
            if let Err(error) = self.reload().await {
                let error = EngineError::unavailable(&error);
                for message in batch {
                    if let Message::Command(request) = message {
                        let _ = request.reply.send(Err(error.clone()));
                    }
                }
                return;
            }
        }
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
        if catch_up > self.last_sequence {
            if let Err(error) = self.catch_up().await {
                tracing::warn!(raffle_id = %self.raffle_id, %error, "catch-up failed");
            }
        }
        if !commands.is_empty() {
            let results = self.commit_with_retries(&commands).await;
            for (request, result) in commands.into_iter().zip(results) {
                let _ = request.reply.send(result);
            }
        }
        for read in reads {
            read(&self.state);
        }
    }

    async fn catch_up(&mut self) -> Result<(), crate::store::StoreError> {
        let events = self
            .engine
            .inner
            .store
            .events_after(self.raffle_id, self.last_sequence)
            .await?;
        for stored in events {
            self.state.apply_event(&stored.event);
            self.last_sequence = stored.sequence;
            self.last_hash = stored.metadata.hash;
        }
        Ok(())
    }

    async fn commit_with_retries(
        &mut self,
        commands: &[CommandRequest],
    ) -> Vec<Result<Applied, EngineError>> {
        let max_retries = self.engine.inner.config.max_conflict_retries;
        let mut attempt = 0;
        loop {
            let error = match self.try_commit(commands).await {
                Ok(results) => return results,
                Err(error) => error,
            };
            // State holds events that did not commit: it must go, whatever happened.
            let reloaded = self.reload().await;
            match error {
                AppendError::Conflict if attempt < max_retries && reloaded.is_ok() => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                error => {
                    tracing::warn!(raffle_id = %self.raffle_id, %error, attempt, "append failed");
                    let error = EngineError::unavailable(&error);
                    return commands.iter().map(|_| Err(error.clone())).collect();
                }
            }
        }
    }

    /// Decides every command, appends all events in one transaction, and only then updates
    /// the writer's position. On `Err` the in-memory state must be reloaded.
    async fn try_commit(
        &mut self,
        commands: &[CommandRequest],
    ) -> Result<Vec<Result<Applied, EngineError>>, AppendError> {
        let store = self.engine.inner.store.clone();
        let keyed: Vec<_> = commands
            .iter()
            .filter_map(|c| c.meta.idempotency.as_ref())
            .collect();
        let mut known: HashMap<(String, String), IdempotencyRecord> = store
            .find_idempotency(&keyed)
            .await?
            .into_iter()
            .map(|record| ((record.scope.clone(), record.key.clone()), record))
            .collect();

        let now = self.services.now();
        // Nobody listening in-process (a bare engine): skip copying events for them.
        let publishing = self.engine.inner.published.receiver_count() > 0;
        let (status_before, created_before) = (self.state.status(), self.state.config().is_some());
        let mut batch = AppendBatch::default();
        let mut published = Vec::new();
        let mut results = Vec::with_capacity(commands.len());
        let mut sequence = self.last_sequence;
        let mut hash = self.last_hash.clone();
        for request in commands {
            let meta = &request.meta;
            if let Some(idempotency) = &meta.idempotency {
                let id = (idempotency.scope.clone(), idempotency.key.clone());
                if let Some(record) = known.get(&id) {
                    results.push(if record.request_hash == idempotency.request_hash {
                        replay(&record.response)
                    } else {
                        Err(EngineError::IdempotencyConflict)
                    });
                    continue;
                }
            }
            let result = match self.state.decide(request.command.clone(), &self.services) {
                Ok(events) => {
                    let mut sequenced = Vec::with_capacity(events.len());
                    for event in events {
                        self.state.apply_event(&event);
                        sequence += 1;
                        let payload = serde_json::to_string(&event).expect("events serialize");
                        let mut metadata = EventMetadata {
                            actor: meta.actor.clone(),
                            source: meta.source,
                            request_id: meta.request_id.clone(),
                            correlation_id: meta
                                .correlation_id
                                .clone()
                                .unwrap_or_else(|| meta.request_id.clone()),
                            causation_id: meta
                                .causation_id
                                .clone()
                                .unwrap_or_else(|| meta.request_id.clone()),
                            idempotency_key: meta.idempotency.as_ref().map(|i| i.key.clone()),
                            recorded_at: now,
                            prev_hash: hash,
                            hash: String::new(),
                        };
                        let input = ChainInput {
                            aggregate_type: RAFFLE_STREAM,
                            aggregate_id: &self.aggregate_id,
                            sequence,
                            event_type: event.name(),
                            event_version: "1",
                            payload: &payload,
                        };
                        metadata.hash = chain::event_hash(&input, &metadata);
                        hash = metadata.hash.clone();
                        batch.events.push(NewEvent {
                            sequence,
                            event_type: event.name(),
                            event_version: "1",
                            payload,
                            metadata: metadata.to_json(),
                            order_id: event.order_id(),
                        });
                        if publishing {
                            published.push(StoredEvent {
                                raffle_id: self.raffle_id,
                                sequence,
                                event: event.clone(),
                                metadata,
                            });
                        }
                        sequenced.push(SequencedEvent { sequence, event });
                    }
                    Ok(Applied {
                        events: sequenced,
                        replayed: false,
                    })
                }
                Err(error) => Err(EngineError::Rejected(Rejection::from(&error))),
            };
            if let Some(idempotency) = &meta.idempotency {
                let response = match &result {
                    Ok(applied) => StoredResponse::Applied(applied.clone()),
                    Err(EngineError::Rejected(rejection)) => {
                        StoredResponse::Rejected(rejection.clone())
                    }
                    Err(_) => unreachable!("decisions only reject"),
                };
                let record = IdempotencyRecord {
                    scope: idempotency.scope.clone(),
                    key: idempotency.key.clone(),
                    request_hash: idempotency.request_hash.clone(),
                    response: serde_json::to_value(response).expect("responses serialize"),
                };
                batch.idempotency.push(record.clone());
                known.insert((record.scope.clone(), record.key.clone()), record);
            }
            results.push(result);
        }
        if batch.is_empty() {
            return Ok(results);
        }
        if !batch.events.is_empty()
            && (self.state.status(), created_before) != (status_before, true)
        {
            batch.registry = self.state.config().map(|config| crate::store::RegistryRow {
                organizer_id: config.organizer_id.clone(),
                title: config.title.clone(),
                status: self.state.status().as_str(),
                status_sequence: sequence,
                created_at: now,
            });
        }
        let started = std::time::Instant::now();
        store.append(self.raffle_id, &batch).await?;
        metrics::histogram!("tombola_engine_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("tombola_engine_batch_commands").record(commands.len() as f64);
        metrics::histogram!("tombola_engine_batch_events").record(batch.events.len() as f64);
        self.last_sequence = sequence;
        self.last_hash = hash;
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
        self.maybe_snapshot();
        Ok(results)
    }

    fn maybe_snapshot(&mut self) {
        let every = self.engine.inner.config.snapshot_every;
        if every == 0 || self.last_sequence - self.snapshot_sequence < every {
            return;
        }
        self.snapshot_sequence = self.last_sequence;
        let bytes = self.state.encode_snapshot();
        let store = self.engine.inner.store.clone();
        let (raffle_id, sequence, hash) =
            (self.raffle_id, self.last_sequence, self.last_hash.clone());
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

fn replay(response: &serde_json::Value) -> Result<Applied, EngineError> {
    match serde_json::from_value(response.clone()) {
        Ok(StoredResponse::Applied(applied)) => Ok(Applied {
            replayed: true,
            ..applied
        }),
        Ok(StoredResponse::Rejected(rejection)) => Err(EngineError::Rejected(rejection)),
        Err(error) => Err(EngineError::unavailable(format!(
            "stored response unreadable: {error}"
        ))),
    }
}

/// Exponential backoff with proportional jitter (50–150% of the delay), as every retry
/// loop in Tombola.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(5) * 2u32.saturating_pow(attempt.min(10));
    base.mul_f64(rand::rng().random_range(0.5..1.5))
}
