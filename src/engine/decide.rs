//! Turning a batch of commands into what one group commit stores: each command decided in
//! order against live state, its events sequenced, given metadata and chained, and its
//! idempotency record prepared. Nothing here touches the database.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tombola_domain::{Need, Raffle, RaffleCommand, RaffleServices, RaffleStatus, Supplied};
use uuid::Uuid;

use super::writer::CommandRequest;
use super::{Applied, EngineError, Rejection, SequencedEvent};
use crate::store::chain::{self, ChainInput};
use crate::store::{
    AppendBatch, EventMetadata, IdempotencyRecord, NewEvent, RegistryRow, StoredEvent,
    RAFFLE_STREAM,
};

/// What an idempotency record keeps: the first answer, replayed to every retry.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredResponse {
    Applied(Applied),
    Rejected(Rejection),
}

/// Idempotency records by (scope, key).
pub(super) type KnownKeys = HashMap<(String, String), IdempotencyRecord>;

/// Where a stream stands: its last sequence and that event's chain hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Position {
    pub sequence: u64,
    pub hash: String,
}

/// A decided batch: the answers it will give once committed and what to store for them.
pub(super) struct Decided {
    pub results: Vec<Result<Applied, EngineError>>,
    pub batch: AppendBatch,
    /// The committed events as published in-process (empty when nobody listens).
    pub published: Vec<StoredEvent>,
    /// The stream's position once this batch is committed.
    pub end: Position,
    /// Commands decided, from the first: the rest wait for `need`.
    pub consumed: usize,
    /// What the first command not decided needs from the log (a compact raffle's settled
    /// order, decision 0022).
    pub need: Option<Need>,
}

impl Decided {
    /// Nothing decided, at `end`.
    pub fn empty(end: Position) -> Self {
        Self {
            results: Vec::new(),
            batch: AppendBatch {
                base_sequence: end.sequence,
                ..AppendBatch::default()
            },
            published: Vec::new(),
            end,
            consumed: 0,
            need: None,
        }
    }

    /// `later`, decided on top of this, joins it (one group commit).
    pub fn extend(&mut self, later: Decided) {
        self.results.extend(later.results);
        self.batch.extend(later.batch);
        self.published.extend(later.published);
        self.end = later.end;
        self.consumed += later.consumed;
        self.need = later.need;
    }
}

pub(super) struct Decider<'a> {
    pub raffle_id: Uuid,
    pub aggregate_id: &'a str,
    pub services: &'a RaffleServices,
    /// Copy events for in-process subscribers (skipped for a bare engine).
    pub publishing: bool,
}

impl Decider<'_> {
    /// Decides `requests` in order from `start`, applying their events to `state`. `known`
    /// holds the idempotency records already stored or decided; this batch's are added.
    /// `supplied` answers the first command's needs; a command that needs more stops the
    /// batch there (`Decided::need`), and it and those after it are left undecided.
    /// `journal` receives every event decided, when given (a compact raffle's writer keeps
    /// the uncommitted ones to answer needs with).
    pub fn decide(
        &self,
        state: &mut Raffle,
        start: &Position,
        requests: &[CommandRequest],
        known: &mut KnownKeys,
        supplied: &Supplied,
        mut journal: Option<&mut Vec<(u64, tombola_domain::RaffleEvent)>>,
    ) -> Decided {
        let now = self.services.now();
        let (status_before, created_before) = (state.status(), state.config().is_some());
        let held_before = state.next_expiry().is_some();
        let mut batch = AppendBatch {
            base_sequence: start.sequence,
            ..AppendBatch::default()
        };
        let mut published = Vec::new();
        let mut results = Vec::with_capacity(requests.len());
        let mut sequence = start.sequence;
        let mut hash = start.hash.clone();
        let mut consumed = 0;
        let mut need = None;
        let nothing = Supplied::default();
        for (index, request) in requests.iter().enumerate() {
            let meta = &request.meta;
            if let Some(idempotency) = &meta.idempotency {
                let id = (idempotency.scope.clone(), idempotency.key.clone());
                if let Some(record) = known.get(&id) {
                    results.push(if record.request_hash == idempotency.request_hash {
                        replay(&record.response)
                    } else {
                        Err(EngineError::IdempotencyConflict)
                    });
                    consumed += 1;
                    continue;
                }
            }
            let supplied = if index == 0 { supplied } else { &nothing };
            let decision = match state.decide_with(request.command.clone(), self.services, supplied)
            {
                Ok(decision) => decision,
                Err(needed) => {
                    need = Some(needed);
                    break;
                }
            };
            consumed += 1;
            let result = match decision {
                Ok(events) => {
                    let mut sequenced = Vec::with_capacity(events.len());
                    for event in events {
                        state.apply_event(&event);
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
                            aggregate_id: self.aggregate_id,
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
                        if self.publishing {
                            published.push(StoredEvent {
                                raffle_id: self.raffle_id,
                                sequence,
                                event: event.clone(),
                                metadata,
                            });
                        }
                        if let Some(journal) = journal.as_deref_mut() {
                            journal.push((sequence, event.clone()));
                        }
                        sequenced.push(SequencedEvent { sequence, event });
                    }
                    let view = answered_order(&request.command)
                        .and_then(|order_id| state.order_with(order_id, supplied).ok().flatten());
                    Ok(Applied {
                        events: sequenced,
                        replayed: false,
                        view,
                    })
                }
                Err(error) => {
                    batch.refusals = true;
                    Err(EngineError::Rejected(Rejection::from(&error)))
                }
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
        // The registry also learns when a raffle off sale lets its last hold go: start-up
        // then stops loading it for its expiry timer.
        let status_changed = (state.status(), created_before) != (status_before, true);
        let last_hold_left =
            held_before && state.next_expiry().is_none() && state.status() != RaffleStatus::OnSale;
        if !batch.events.is_empty() && (status_changed || last_hold_left) {
            batch.registry = registry_row(state, sequence, now);
        }
        Decided {
            results,
            batch,
            published,
            end: Position { sequence, hash },
            consumed,
            need,
        }
    }
}

/// The order whose state answers the command (the API shows it after the command).
fn answered_order(command: &RaffleCommand) -> Option<Uuid> {
    match command {
        RaffleCommand::Release { order_id } => Some(*order_id),
        RaffleCommand::ConfirmManualPayment(confirm) => Some(confirm.order_id),
        RaffleCommand::Refund(refund) => Some(refund.order_id),
        _ => None,
    }
}

/// The registry row for a batch that created the raffle, changed its status or let the
/// last hold of a raffle off sale go.
fn registry_row(state: &Raffle, sequence: u64, now: DateTime<Utc>) -> Option<RegistryRow> {
    state.config().map(|config| RegistryRow {
        organizer_id: config.organizer_id.clone(),
        title: config.title.clone(),
        status: state.status().as_str(),
        status_sequence: sequence,
        created_at: now,
        holds_until: state.last_expiry(),
    })
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
