//! The pipeline: at most one append in flight while the next batch gathers behind it.
//! A batch's callers are answered once its append commits; an append that fails voids
//! everything decided after it, which is decided again on the reloaded state.

use super::failures::{fail_all, outcome_unknown, AppendFailure, Confirmation};
use super::{answer, answer_all, CommandRequest, Writer};
use crate::engine::commit_thread::AppendOutcome;
use crate::engine::decide::{Decided, Position};
use crate::engine::{Applied, EngineError};
use crate::store::{AppendBatch, StoredEvent};

/// Decided commands and what committing them stores: the pending batch, then in flight.
pub(super) struct Batch {
    pub requests: Vec<CommandRequest>,
    results: Vec<Result<Applied, EngineError>>,
    append: AppendBatch,
    published: Vec<StoredEvent>,
    end: Position,
}

impl Batch {
    pub(super) fn new(requests: Vec<CommandRequest>, decided: Decided) -> Self {
        Self {
            requests,
            results: decided.results,
            append: decided.batch,
            published: decided.published,
            end: decided.end,
        }
    }

    pub(super) fn extend(&mut self, requests: Vec<CommandRequest>, decided: Decided) {
        self.requests.extend(requests);
        self.results.extend(decided.results);
        self.append.extend(decided.batch);
        self.published.extend(decided.published);
        self.end = decided.end;
    }
}

/// A batch whose append is running (or ran). Its callers are answered once it commits.
pub(super) struct InFlight {
    requests: Vec<CommandRequest>,
    results: Vec<Result<Applied, EngineError>>,
    published: Vec<StoredEvent>,
    /// The stream's last sequence when the batch was decided.
    start: u64,
    end: Position,
    keys: Vec<(String, String)>,
    events: usize,
    /// None once finished, or from the start when there is nothing to store (every
    /// command refused or replayed).
    task: Option<AppendOutcome>,
    outcome: Option<Result<(), AppendFailure>>,
    /// `engine.batch`: open from the append's start until its callers are answered.
    _span: tracing::Span,
}

/// The span of one group commit: a child of its first command's span (the trace of that
/// request runs down to the append), linked to the others'.
pub(super) fn batch_span(
    raffle_id: uuid::Uuid,
    requests: &[CommandRequest],
    events: usize,
) -> tracing::Span {
    let parent = requests.first().and_then(|request| request.span.id());
    let span = tracing::info_span!(
        parent: parent,
        "engine.batch",
        %raffle_id,
        commands = requests.len(),
        events,
    );
    crate::telemetry::otel::link_all(&span, requests.iter().skip(1).map(|r| &r.span));
    span
}

impl Writer {
    /// Starts the pending batch's append. Only with nothing in flight: a batch commits
    /// after the one before it, never alongside.
    pub(super) fn start_pending(&mut self) {
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
        let start = batch.append.base_sequence;
        let span = batch_span(self.raffle_id, &batch.requests, events);
        let task = (!batch.append.is_empty()).then(|| {
            batch
                .requests
                .iter()
                .for_each(CommandRequest::mark_appended);
            self.engine
                .inner
                .commits
                .append(self.raffle_id, batch.append, span.clone())
        });
        self.in_flight = Some(InFlight {
            requests: batch.requests,
            results: batch.results,
            published: batch.published,
            start,
            end: batch.end,
            keys,
            events,
            outcome: task.is_none().then_some(Ok(())),
            task,
            _span: span,
        });
    }

    /// Resolves once the append in flight has finished. Cancel-safe: the outcome is kept
    /// for [`Self::settle`].
    pub(super) async fn append_finished(&mut self) {
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
    pub(super) async fn advance(&mut self) {
        self.settle().await;
        if self.in_flight.is_none() {
            self.start_pending();
        }
    }

    /// Lets everything decided commit (or fail): afterwards the state is the committed
    /// stream.
    pub(super) async fn flush(&mut self) {
        while self.in_flight.is_some() || self.pending.is_some() {
            if self.in_flight.is_none() {
                self.start_pending();
            }
            self.settle().await;
        }
    }

    /// Waits for the batch in flight and answers its callers: with its results once it
    /// committed (after starting the pending batch's append). Otherwise the state is
    /// reloaded and, by what the failure was: a conflict (another node wrote first) decides
    /// the batch again and appends it in place; a lost reply is confirmed against the stream
    /// (answered as committed, decided again, or `outcome_unknown`); a batch the database
    /// refused is appended one command at a time. The pending batch, decided on top of the
    /// failed one, is decided again.
    pub(super) async fn settle(&mut self) {
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
        // Test seam: the writer dies holding a batch in doubt (as a panic would).
        if failure.maybe_stored
            && flight.events > 0
            && self
                .engine
                .inner
                .faults
                .as_ref()
                .is_some_and(|faults| faults.take_writer_crash())
        {
            panic!("writer crash injected with an append in doubt");
        }
        let void = self.pending.take().map(|batch| batch.requests);
        let confirmation = if failure.maybe_stored && flight.events > 0 {
            Some(self.confirm(flight.start, &flight.end).await)
        } else {
            None
        };
        let reloaded = self.refresh().await;
        let reason = &failure.reason;
        let results = match (reloaded, confirmation) {
            (Ok(()), Some(Confirmation::Committed)) => {
                tracing::warn!(raffle_id = %self.raffle_id, %reason, "append reply lost; it committed");
                let commands = flight.requests.len();
                self.commit_done(flight.end, flight.published, commands, flight.events);
                flight.results
            }
            (_, Some(Confirmation::Committed | Confirmation::Unknown)) => {
                tracing::warn!(raffle_id = %self.raffle_id, %reason, "append reply lost; outcome unknown");
                fail_all(&flight.requests, &outcome_unknown(reason))
            }
            (Err(_), _) => {
                tracing::warn!(raffle_id = %self.raffle_id, %reason, "append failed");
                fail_all(&flight.requests, &EngineError::unavailable(reason))
            }
            // Certainly not stored: decide again on the stream as it is.
            (Ok(()), Some(Confirmation::NotCommitted)) => {
                self.commit_in_place(&flight.requests, false).await
            }
            (Ok(()), None) if failure.conflict || failure.maybe_stored => {
                self.commit_in_place(&flight.requests, failure.conflict)
                    .await
            }
            (Ok(()), None) if flight.requests.len() > 1 => {
                tracing::warn!(raffle_id = %self.raffle_id, %reason, commands = flight.requests.len(), "batch refused; appending its commands one by one");
                self.commit_one_by_one(&flight.requests).await
            }
            (Ok(()), None) => {
                tracing::warn!(raffle_id = %self.raffle_id, %reason, "append failed");
                fail_all(&flight.requests, &EngineError::unavailable(reason))
            }
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
}
