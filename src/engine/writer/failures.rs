//! An append that failed. A conflict (another node appended first) is decided again on the
//! new events, with backoff; a lost reply is confirmed against the stream before anyone is
//! answered; a batch the database refused is split, so that the command it refused fails
//! alone instead of taking its neighbours down with it.

use super::{CommandRequest, Writer};
use crate::backoff::Backoff;
use crate::engine::decide::Position;
use crate::engine::{Applied, EngineError};
use crate::store::AppendError;

/// What the stream says about a batch whose append reply was lost.
pub(super) enum Confirmation {
    /// The batch is in the stream.
    Committed,
    /// Other events took the batch's place: it did not commit.
    NotCommitted,
    /// The stream still ends where the batch would start: it may yet commit.
    Unknown,
}

/// Retries after a conflict: 10 ms, 20 ms, … at most ~5 s.
const CONFLICT_BACKOFF: Backoff = Backoff::new(
    std::time::Duration::from_millis(5),
    std::time::Duration::from_millis(5 << 10),
);

pub(super) struct AppendFailure {
    pub conflict: bool,
    /// The database did not say it stored nothing (a lost connection): it may have.
    pub maybe_stored: bool,
    pub reason: String,
}

impl AppendFailure {
    /// What a finished append came to.
    pub(super) fn check(
        outcome: Result<Result<(), AppendError>, tokio::sync::oneshot::error::RecvError>,
    ) -> Result<(), Self> {
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                let conflict = matches!(error, AppendError::Conflict);
                if conflict {
                    // Another node wrote first: what wrong routing costs (OPERATIONS.md).
                    metrics::counter!("tombola_engine_conflicts_total").increment(1);
                }
                Err(Self {
                    conflict,
                    maybe_stored: !error.stored_nothing(),
                    reason: error.to_string(),
                })
            }
            Err(error) => Err(Self {
                conflict: false,
                maybe_stored: true,
                reason: format!("the commit thread dropped the append: {error}"),
            }),
        }
    }
}

impl Writer {
    /// Decides `requests` again on the current stream and appends them (on the commit thread,
    /// like every append) without a pipeline, retrying with backoff while another node keeps
    /// appending first, until they commit or the retries run out. `wait` first when another
    /// node just appended (its burst may not be over).
    pub(super) async fn commit_in_place(
        &mut self,
        requests: &[CommandRequest],
        wait: bool,
    ) -> Vec<Result<Applied, EngineError>> {
        let max_retries = self.engine.inner.config.max_conflict_retries;
        let mut attempt = 1;
        loop {
            if wait || attempt > 1 {
                tokio::time::sleep(CONFLICT_BACKOFF.delay(attempt)).await;
            }
            let start = self.tip.sequence;
            let decided = match self.decide(requests).await {
                Ok(decided) => decided,
                Err(error) => return fail_all(requests, &EngineError::unavailable(&error)),
            };
            let events = decided.batch.events.len();
            let outcome = if decided.batch.is_empty() {
                Ok(())
            } else {
                requests.iter().for_each(CommandRequest::mark_appended);
                let span = super::pipeline::batch_span(self.raffle_id, requests, events);
                let task = self
                    .engine
                    .inner
                    .commits
                    .append(self.raffle_id, decided.batch, span);
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
            let confirmation = if failure.maybe_stored && events > 0 {
                self.confirm(start, &decided.end).await
            } else {
                Confirmation::NotCommitted
            };
            let reloaded = self.refresh().await;
            match confirmation {
                Confirmation::Committed if reloaded.is_ok() => {
                    self.commit_done(decided.end, decided.published, requests.len(), events);
                    return decided.results;
                }
                Confirmation::Committed | Confirmation::Unknown => {
                    return fail_all(requests, &outcome_unknown(&failure.reason));
                }
                Confirmation::NotCommitted => {}
            }
            let retry = (failure.conflict || failure.maybe_stored) && attempt < max_retries;
            if !(retry && reloaded.is_ok()) {
                let reason = &failure.reason;
                tracing::warn!(raffle_id = %self.raffle_id, %reason, attempt, "append failed");
                return fail_all(requests, &EngineError::unavailable(reason));
            }
            attempt += 1;
        }
    }

    /// The database refused a batch of several commands (not a conflict: e.g. a value it
    /// cannot store). Each command is decided and appended alone, so that only the one it
    /// refuses fails. The state has been reloaded.
    pub(super) async fn commit_one_by_one(
        &mut self,
        requests: &[CommandRequest],
    ) -> Vec<Result<Applied, EngineError>> {
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            results.extend(
                self.commit_in_place(std::slice::from_ref(request), false)
                    .await,
            );
        }
        results
    }

    /// Whether a batch that would take the stream from `start` to `end` is in the stream,
    /// when its append's reply was lost. The chain hash at `end` covers everything before
    /// it: if it matches, the whole batch is there. A stream still at `start` is asked once
    /// more after a moment, as the commit may not be visible yet.
    pub(super) async fn confirm(&self, start: u64, end: &Position) -> Confirmation {
        for look in 0..2 {
            if look > 0 {
                tokio::time::sleep(CONFLICT_BACKOFF.delay(1)).await;
            }
            match self
                .engine
                .inner
                .store
                .hash_at(self.raffle_id, end.sequence)
                .await
            {
                Ok((Some(hash), _)) if hash == end.hash => return Confirmation::Committed,
                Ok((Some(_), _)) => return Confirmation::NotCommitted,
                Ok((None, last)) if last != start => return Confirmation::NotCommitted,
                Ok((None, _)) => {}
                Err(error) => {
                    tracing::warn!(raffle_id = %self.raffle_id, %error, "could not confirm an append");
                    return Confirmation::Unknown;
                }
            }
        }
        Confirmation::Unknown
    }
}

pub(super) fn fail_all(
    requests: &[CommandRequest],
    error: &EngineError,
) -> Vec<Result<Applied, EngineError>> {
    requests.iter().map(|_| Err(error.clone())).collect()
}

pub(super) fn outcome_unknown(reason: &str) -> EngineError {
    EngineError::OutcomeUnknown {
        reason: reason.to_owned(),
    }
}
