//! Inbox workers. New deliveries come from the intake in memory, on rows leased to this
//! node: each is turned into a raffle command and its row settled, in batches. Pollers take
//! everything else that is due (`FOR UPDATE SKIP LOCKED`): retries, deliveries whose lease
//! ran out because a node died, and those stored while no worker ran; they settle each row
//! in the transaction that locked it. Failures retry with exponential backoff and
//! proportional jitter and end up visible to operators.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tombola_domain::{
    ProviderPayment, RaffleCommand, RaffleError, RaffleEvent, RecordPaymentFailure, RefundOrder,
};

use super::inbox::{self, DueDelivery, Settled, Settlement};
use super::intake::{self, Delivery, Intake, LEASE};
use super::provider::{PaymentAction, PaymentProvider, ProviderEvent};
use crate::engine::{CommandMeta, Engine, EngineError};
use crate::store::{Source, Store};

/// Attempts before a delivery is marked failed (about a day and a half of backoff).
pub const MAX_ATTEMPTS: i32 = 12;
/// New deliveries waiting for a worker, beyond which they wait out their lease instead.
const HANDOFF_CAPACITY: usize = 65_536;
/// Deliveries per worker batch; applied concurrently, so they share group commits.
const BATCH: i64 = 128;
/// How long a worker lets deliveries gather after a partial batch: adds at most this to the
/// issue lag, and saves a transaction per delivery under load.
const LINGER: Duration = Duration::from_millis(10);

#[derive(Clone)]
pub struct PaymentsIn {
    pub engine: Engine,
    /// The workers' own connections. What they write is redone if a crash loses it: a
    /// settle lost leaves its row pending, and applying it again is a recorded duplicate.
    /// So their commits do not wait for a WAL flush (the appends they follow already did),
    /// and leave the disk to the acknowledgements that must.
    inbox: Store,
    pub providers: Arc<HashMap<&'static str, Arc<dyn PaymentProvider>>>,
    pub wake: Arc<Notify>,
    pub intake: Intake,
}

impl PaymentsIn {
    pub fn new(engine: Engine, providers: Vec<Arc<dyn PaymentProvider>>) -> std::io::Result<Self> {
        let wake = Arc::new(Notify::new());
        Ok(Self {
            providers: Arc::new(providers.into_iter().map(|p| (p.name(), p)).collect()),
            intake: Intake::start(engine.store().clone(), 65_536, wake.clone())?,
            inbox: engine.store().sibling_without_flush_wait("tombola-inbox"),
            wake,
            engine,
        })
    }

    /// Closes the workers' own connections, once they have stopped.
    pub async fn close(&self) {
        self.inbox.pool().close().await;
    }

    pub fn provider(&self, name: &str) -> Option<Arc<dyn PaymentProvider>> {
        self.providers.get(name).cloned()
    }

    /// Starts `workers` loops for new deliveries and as many pollers, all running until
    /// `stop` is cancelled. With 0, new deliveries stay in the inbox for whoever polls it.
    pub fn spawn_workers(
        &self,
        workers: usize,
        stop: CancellationToken,
    ) -> tokio_util::task::TaskTracker {
        let tracker = tokio_util::task::TaskTracker::new();
        if workers > 0 {
            let (handoff, fresh) = mpsc::channel(HANDOFF_CAPACITY);
            self.intake.hand_off_to(handoff);
            let fresh = Arc::new(tokio::sync::Mutex::new(fresh));
            for _ in 0..workers {
                let (this, stop, fresh) = (self.clone(), stop.clone(), fresh.clone());
                tracker.spawn(async move { this.work_fresh(&fresh, stop).await });
            }
            let this = self.clone();
            let stop = stop.clone();
            tracker.spawn(async move {
                stop.cancelled().await;
                this.release_unapplied(&fresh).await;
            });
        }
        for _ in 0..workers {
            let this = self.clone();
            let stop = stop.clone();
            tracker.spawn(async move { this.work(stop).await });
        }
        tracker.close();
        tracker
    }

    async fn work(&self, stop: CancellationToken) {
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
                        () = tokio::time::sleep(crate::engine::backoff(failures.min(10))) => {}
                        () = stop.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Once the workers stop: what is still in the hand-off channel goes to the pollers (of
    /// any node) at once, instead of waiting out its lease.
    async fn release_unapplied(&self, fresh: &tokio::sync::Mutex<mpsc::Receiver<Delivery>>) {
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
    async fn leave_to_pollers(&self, deliveries: &[Delivery], why: &str) {
        if intake::leave_to_pollers(&self.inbox, deliveries, why).await {
            self.wake.notify_one();
        }
    }

    /// Applies new deliveries handed over by the intake, a batch at a time, and settles their
    /// rows with one statement. No transaction: the rows are leased to this node, not locked.
    /// If settling fails, the lease runs out and a poller applies them again, harmlessly.
    async fn work_fresh(
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
    /// have committed on their raffles, then drops the transaction that locks the inbox rows
    /// instead of settling them, exactly as a worker crashing there would. The rows stay
    /// `pending` and due; the next `process_due` must find the commands already applied.
    /// Returns how many deliveries were applied.
    #[doc(hidden)]
    pub async fn process_due_then_crash(&self) -> Result<usize, crate::store::StoreError> {
        let (tx, due, _) = self.take_and_apply().await?;
        drop(tx);
        Ok(due.len())
    }

    /// Locks one batch of due deliveries and applies each; the rows are still to be settled
    /// in the returned transaction.
    async fn take_and_apply(&self) -> Result<AppliedBatch, crate::store::StoreError> {
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
    fn read(&self, delivery: &DueDelivery) -> Result<ProviderEvent, Failure> {
        let provider = self.provider(&delivery.provider).ok_or_else(|| {
            Failure::Retry(format!("provider {} is not configured", delivery.provider))
        })?;
        provider
            .parse(delivery.payload.as_bytes())
            .map_err(|e| Failure::Rejected(e.to_string()))
    }

    /// Applies each event, in order per payment and concurrently across payments, so that
    /// commands for one raffle share its writer's group commit. Results match `events`.
    async fn apply_all(
        &self,
        events: &[(&str, Result<&ProviderEvent, Failure>)],
    ) -> Vec<Result<String, Failure>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        for (index, (_, event)) in events.iter().enumerate() {
            let payment = event.as_ref().ok().and_then(|e| e.action.payment_id());
            match payment.and_then(|p| group_of.get(p)) {
                Some(&group) => groups[group].push(index),
                None => {
                    if let Some(payment) = payment {
                        group_of.insert(payment, groups.len());
                    }
                    groups.push(vec![index]);
                }
            }
        }
        let mut results: Vec<Option<Result<String, Failure>>> =
            events.iter().map(|_| None).collect();
        let applied = futures::future::join_all(groups.iter().map(|group| async move {
            let mut out = Vec::with_capacity(group.len());
            for &index in group {
                let (provider, event) = &events[index];
                let result = match event {
                    Ok(event) => self.apply(provider, event).await,
                    Err(failure) => Err(failure.clone()),
                };
                out.push((index, result));
            }
            out
        }))
        .await;
        for (index, result) in applied.into_iter().flatten() {
            results[index] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.expect("every delivery applied"))
            .collect()
    }

    async fn apply(&self, provider: &str, event: &ProviderEvent) -> Result<String, Failure> {
        let Some(payment_id) = event.action.payment_id().map(str::to_owned) else {
            return Ok("ignored".into());
        };
        let (raffle_id, order_id) = match (event.raffle_id, event.order_id) {
            (Some(raffle), Some(order)) => (raffle, order),
            _ => inbox::find_order_of_payment(&self.inbox, provider, &payment_id)
                .await
                .map_err(|e| Failure::Retry(e.to_string()))?
                // Deliveries arrive in any order: the one naming the order may be next.
                .ok_or_else(|| {
                    Failure::Retry(format!(
                        "no raffle and order known for payment {payment_id}"
                    ))
                })?,
        };
        let command = command_for(provider, event, order_id);
        let meta = CommandMeta {
            actor: provider.to_owned(),
            source: Source::Webhook,
            request_id: event.event_id.clone(),
            correlation_id: Some(payment_id),
            causation_id: Some(event.event_id.clone()),
            idempotency: None,
        };
        match self.engine.execute(raffle_id, command, meta).await {
            Ok(applied) => Ok(summarize(applied.events.iter().map(|e| &e.event))),
            // A refund can overtake the payment it refunds (deliveries come in any order and
            // workers take them concurrently): until that payment is applied the order is
            // not refundable, so wait for it rather than drop the refund for good.
            Err(EngineError::Rejected(rejection))
                if matches!(event.action, PaymentAction::Refunded { .. })
                    && matches!(rejection.error, RaffleError::InvalidOrderState { .. }) =>
            {
                Err(Failure::Retry(rejection.message()))
            }
            Err(EngineError::Rejected(rejection)) => {
                Err(Failure::Rejected(rejection.code().to_owned()))
            }
            Err(other) => Err(Failure::Retry(other.to_string())),
        }
    }
}

/// How to settle each row, given what applying its delivery led to; `attempts` is how many
/// times the row had been tried before.
fn settlements<'a>(
    rows: impl Iterator<Item = (&'a str, &'a str, i32)>,
    results: &'a [Result<String, Failure>],
) -> Vec<Settled<'a>> {
    rows.zip(results)
        .map(|((provider, event_id, attempts), result)| {
            let settlement = match result {
                Ok(outcome) => Settlement::Done { outcome },
                Err(Failure::Rejected(error)) => Settlement::Rejected { error },
                Err(Failure::Retry(error)) => {
                    let attempt = attempts + 1;
                    Settlement::Retry {
                        error,
                        next_attempt_at: Utc::now()
                            + chrono::Duration::from_std(retry_delay(attempt)).unwrap_or_default(),
                        give_up: attempt >= MAX_ATTEMPTS,
                    }
                }
            };
            Settled {
                provider,
                event_id,
                attempts,
                settlement,
            }
        })
        .collect()
}

/// Locked rows (in their transaction) and what applying each one led to.
type AppliedBatch = (
    sqlx::Transaction<'static, sqlx::Postgres>,
    Vec<DueDelivery>,
    Vec<Result<String, Failure>>,
);

#[derive(Clone)]
enum Failure {
    Rejected(String),
    Retry(String),
}

fn command_for(provider: &str, event: &ProviderEvent, order_id: uuid::Uuid) -> RaffleCommand {
    match &event.action {
        PaymentAction::Succeeded {
            payment_id,
            amount_minor,
            currency,
            method,
        } => RaffleCommand::RecordPayment(ProviderPayment {
            order_id,
            provider: provider.to_owned(),
            payment_id: payment_id.clone(),
            provider_event_id: event.event_id.clone(),
            amount_minor: *amount_minor,
            currency: *currency,
            method: method.clone(),
        }),
        PaymentAction::Failed { payment_id, reason } => {
            RaffleCommand::RecordPaymentFailure(RecordPaymentFailure {
                order_id,
                provider: provider.to_owned(),
                payment_id: payment_id.clone(),
                provider_event_id: event.event_id.clone(),
                reason: reason.clone(),
            })
        }
        PaymentAction::Pending { until, .. } => RaffleCommand::ExtendHold {
            order_id,
            until: *until,
        },
        PaymentAction::Refunded {
            refund_id,
            amount_refunded_minor,
            ..
        } => RaffleCommand::Refund(RefundOrder {
            order_id,
            amount_refunded_minor: Some(*amount_refunded_minor),
            reason: format!("{provider} refund"),
            refund_id: Some(refund_id.clone()),
        }),
        PaymentAction::Ignored => unreachable!("ignored deliveries carry no payment id"),
    }
}

/// One word for the inbox row: what the command led to.
fn summarize<'a>(events: impl Iterator<Item = &'a RaffleEvent>) -> String {
    let mut outcome = "duplicate";
    for event in events {
        outcome = match event {
            RaffleEvent::TicketsIssued { late: true, .. } => "tickets_issued_late",
            RaffleEvent::TicketsIssued { .. } => "tickets_issued",
            RaffleEvent::PaymentFlagged { .. } => "payment_flagged",
            RaffleEvent::RefundRequired { .. } => "refund_required",
            RaffleEvent::PaymentFailed { .. } => "failure_recorded",
            RaffleEvent::HoldExtended { .. } => "hold_extended",
            RaffleEvent::OrderRefunded { .. } => "refunded",
            RaffleEvent::PaymentPartiallyRefunded { .. } => "partially_refunded",
            _ => outcome,
        };
    }
    outcome.to_owned()
}

/// 1 s doubling per attempt, capped at an hour, with 50–150% jitter.
fn retry_delay(attempt: i32) -> Duration {
    use rand::Rng;
    let base =
        Duration::from_secs(1u64 << attempt.clamp(0, 12) as u32).min(Duration::from_secs(3600));
    base.mul_f64(rand::rng().random_range(0.5..1.5))
}
