//! Pollers: take every due delivery from the inbox (`FOR UPDATE SKIP LOCKED`): retries,
//! deliveries whose lease ran out because a node died, and those stored while no worker
//! ran. Each row is settled in the transaction that locked it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::retry::{settlements, Failure, UNAVAILABLE_BACKOFF};
use super::{PaymentsIn, BATCH, LINGER};
use crate::payments::inbox::{self, DueDelivery};
use crate::payments::provider::ProviderEvent;

impl PaymentsIn {
    pub(super) async fn work(&self, stop: CancellationToken) {
        let mut failures = 0;
        while !stop.is_cancelled() {
            match self.process_due().await {
                Ok(0) => {
                    failures = 0;
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = stop.cancelled() => {}
                    }
                }
                Ok(processed) => {
                    failures = 0;
                    // A partial batch means the inbox is drained: let deliveries gather a
                    // moment, so each batch (and each raffle's group commit) carries many.
                    if processed < BATCH as usize {
                        tokio::select! {
                            () = tokio::time::sleep(LINGER) => {}
                            () = stop.cancelled() => {}
                        }
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, "payment inbox unavailable");
                    tokio::select! {
                        () = tokio::time::sleep(UNAVAILABLE_BACKOFF.delay(failures)) => {}
                        () = stop.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Processes one batch of due deliveries; returns how many.
    pub async fn process_due(&self) -> Result<usize, crate::store::StoreError> {
        let (mut tx, due, results) = self.take_and_apply().await?;
        let settled = settlements(
            due.iter()
                .map(|d| (d.provider.as_str(), d.event_id.as_str(), d.attempts)),
            &results,
        );
        if !settled.is_empty() {
            inbox::settle(&mut *tx, &settled).await?;
        }
        tx.commit().await?;
        Ok(due.len())
    }

    /// Test seam: does what [`Self::process_due`] does up to the point where the commands
    /// have committed on their raffles, then abandons the transaction that locks the inbox
    /// rows instead of settling them, as a worker crashing there would. The rows stay
    /// `pending` and due; the next `process_due` must find the commands already applied.
    /// Returns how many deliveries were applied.
    ///
    /// The rollback is awaited: a dropped sqlx transaction only queues its ROLLBACK, and a
    /// poller that ran meanwhile would skip the still-locked rows (SKIP LOCKED), which is
    /// not the state a dead worker leaves (its server-side session ends, unlocking them).
    #[doc(hidden)]
    pub async fn process_due_then_crash(&self) -> Result<usize, crate::store::StoreError> {
        let (tx, due, _) = self.take_and_apply().await?;
        tx.rollback().await?;
        Ok(due.len())
    }

    /// Locks one batch of due deliveries and applies each; the rows are still to be settled
    /// in the returned transaction.
    pub(super) async fn take_and_apply(&self) -> Result<AppliedBatch, crate::store::StoreError> {
        let mut tx = self.inbox.pool().begin().await?;
        let due = inbox::take_due(&mut tx, BATCH).await?;
        let parsed: Vec<Result<ProviderEvent, Failure>> =
            due.iter().map(|delivery| self.read(delivery)).collect();
        let events: Vec<_> = due
            .iter()
            .zip(&parsed)
            .map(|(delivery, event)| {
                (
                    delivery.provider.as_str(),
                    event.as_ref().map_err(Failure::clone),
                )
            })
            .collect();
        let results = self.apply_all(&events).await;
        Ok((tx, due, results))
    }

    /// A stored delivery's event, read again from its body.
    pub(super) fn read(&self, delivery: &DueDelivery) -> Result<ProviderEvent, Failure> {
        let provider = self.provider(&delivery.provider).ok_or_else(|| {
            Failure::Retry(format!("provider {} is not configured", delivery.provider))
        })?;
        provider
            .parse(delivery.payload.as_bytes())
            .map_err(|e| Failure::Rejected(e.to_string()))
    }
}

/// Locked rows (in their transaction) and what applying each one led to.
type AppliedBatch = (
    sqlx::Transaction<'static, sqlx::Postgres>,
    Vec<DueDelivery>,
    Vec<Result<String, Failure>>,
);
