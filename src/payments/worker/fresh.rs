//! The fresh path: new deliveries handed over in memory by the intake, on rows leased to
//! this node, applied in batches and settled with one statement.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::retry::settlements;
use super::{PaymentsIn, BATCH};
use crate::payments::inbox;
use crate::payments::intake::{self, Delivery, LEASE};

impl PaymentsIn {
    /// Once the workers stop: what is still in the hand-off channel goes to the pollers (of
    /// any node) at once, instead of waiting out its lease.
    pub(super) async fn release_unapplied(
        &self,
        fresh: &tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    ) {
        let mut fresh = fresh.lock().await;
        // From now on the intake stores new deliveries unleased, for the pollers.
        fresh.close();
        let mut unapplied = Vec::new();
        while let Ok(delivery) = fresh.try_recv() {
            unapplied.push(delivery);
        }
        self.leave_to_pollers(&unapplied, "unapplied at stop").await;
    }

    /// Ends the leases of deliveries these workers will not apply, and wakes a poller.
    pub(super) async fn leave_to_pollers(&self, deliveries: &[Delivery], why: &str) {
        if intake::leave_to_pollers(&self.inbox, deliveries, why).await {
            self.wake.notify_one();
        }
    }

    /// Applies new deliveries handed over by the intake, a batch at a time, and settles their
    /// rows with one statement. No transaction: the rows are leased to this node, not locked.
    /// If settling fails, the lease runs out and a poller applies them again, harmlessly.
    pub(super) async fn work_fresh(
        &self,
        fresh: &tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
        stop: CancellationToken,
    ) {
        loop {
            let batch = {
                // Stop first: once stopping, take nothing more (what waits is released).
                let mut fresh = tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    fresh = fresh.lock() => fresh,
                };
                let first = tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    first = fresh.recv() => first,
                };
                let Some(first) = first else { return };
                let mut batch = vec![first];
                while batch.len() < BATCH as usize {
                    match fresh.try_recv() {
                        Ok(delivery) => batch.push(delivery),
                        Err(_) => break,
                    }
                }
                batch
            };
            // Half its lease gone: a poller may take it any moment, so hand it to them now
            // rather than apply it twice (which only happens when the node is overloaded).
            let (batch, stale): (Vec<Delivery>, Vec<Delivery>) = batch
                .into_iter()
                .partition(|d| d.received.elapsed() < LEASE / 2);
            self.leave_to_pollers(&stale, "too late for their lease")
                .await;
            if batch.is_empty() {
                continue;
            }
            let events: Vec<_> = batch.iter().map(|d| (d.provider, Ok(&d.event))).collect();
            let results = self.apply_all(&events).await;
            let settled = settlements(
                batch.iter().map(|d| {
                    let (provider, event_id) = d.key();
                    (provider, event_id, 0)
                }),
                &results,
            );
            if let Err(error) = inbox::settle(self.inbox.pool(), &settled).await {
                tracing::warn!(%error, "new deliveries applied but not settled");
            }
        }
    }
}
