//! Another node appended first: decide again on its events and retry, with backoff.

use super::{CommandRequest, Writer};
use crate::backoff::Backoff;
use crate::engine::{Applied, EngineError};
use crate::store::AppendError;

/// Retries after a conflict: 10 ms, 20 ms, … at most ~5 s.
const CONFLICT_BACKOFF: Backoff = Backoff::new(
    std::time::Duration::from_millis(5),
    std::time::Duration::from_millis(5 << 10),
);

pub(super) struct AppendFailure {
    pub conflict: bool,
    pub reason: String,
}

impl AppendFailure {
    /// What a finished append came to.
    pub(super) fn check(
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

impl Writer {
    /// Another node appended first: decide again on its events and append (on the commit
    /// thread, like every append) without a pipeline, with backoff, until it commits or the
    /// retries run out.
    pub(super) async fn commit_in_place(
        &mut self,
        requests: &[CommandRequest],
    ) -> Vec<Result<Applied, EngineError>> {
        let max_retries = self.engine.inner.config.max_conflict_retries;
        let mut attempt = 1;
        loop {
            tokio::time::sleep(CONFLICT_BACKOFF.delay(attempt)).await;
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
}
