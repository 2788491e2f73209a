//! Inbox workers: take due deliveries (`FOR UPDATE SKIP LOCKED`), turn each into a raffle
//! command, and settle the row in the same transaction that locked it. Failures retry with
//! exponential backoff and proportional jitter and end up visible to operators.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tombola_domain::{
    ProviderPayment, RaffleCommand, RaffleEvent, RecordPaymentFailure, RefundOrder,
};

use super::inbox::{self, DueDelivery, Settlement};
use super::provider::{PaymentAction, PaymentProvider, ProviderEvent};
use crate::engine::{CommandMeta, Engine, EngineError};
use crate::store::Source;

/// Attempts before a delivery is marked failed (about a day and a half of backoff).
pub const MAX_ATTEMPTS: i32 = 12;
/// Deliveries per worker transaction; applied concurrently, so they share group commits.
const BATCH: i64 = 128;
/// How long a worker lets deliveries gather after a partial batch: adds at most this to the
/// issue lag, and saves a transaction per delivery under load.
const LINGER: Duration = Duration::from_millis(10);

#[derive(Clone)]
pub struct PaymentsIn {
    pub engine: Engine,
    pub providers: Arc<HashMap<&'static str, Arc<dyn PaymentProvider>>>,
    pub wake: Arc<Notify>,
    pub intake: super::intake::Intake,
}

impl PaymentsIn {
    pub fn new(engine: Engine, providers: Vec<Arc<dyn PaymentProvider>>) -> Self {
        Self {
            providers: Arc::new(providers.into_iter().map(|p| (p.name(), p)).collect()),
            wake: Arc::new(Notify::new()),
            intake: super::intake::Intake::start(engine.store().clone(), 65_536),
            engine,
        }
    }

    pub fn provider(&self, name: &str) -> Option<Arc<dyn PaymentProvider>> {
        self.providers.get(name).cloned()
    }

    /// Starts `workers` loops that run until `stop` is cancelled.
    pub fn spawn_workers(
        &self,
        workers: usize,
        stop: CancellationToken,
    ) -> tokio_util::task::TaskTracker {
        let tracker = tokio_util::task::TaskTracker::new();
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

    /// Processes one batch of due deliveries; returns how many.
    pub async fn process_due(&self) -> Result<usize, crate::store::StoreError> {
        let (mut tx, applied) = self.take_and_apply().await?;
        let settled: Vec<_> = applied
            .iter()
            .map(|(delivery, result)| {
                let settlement = match result {
                    Ok(outcome) => Settlement::Done { outcome },
                    Err(Failure::Rejected(error)) => Settlement::Rejected { error },
                    Err(Failure::Retry(error)) => {
                        let attempt = delivery.attempts + 1;
                        Settlement::Retry {
                            error,
                            next_attempt_at: Utc::now()
                                + chrono::Duration::from_std(retry_delay(attempt))
                                    .unwrap_or_default(),
                            give_up: attempt >= MAX_ATTEMPTS,
                        }
                    }
                };
                (
                    delivery.provider.as_str(),
                    delivery.event_id.as_str(),
                    settlement,
                )
            })
            .collect();
        if !settled.is_empty() {
            inbox::settle(&mut tx, &settled).await?;
        }
        tx.commit().await?;
        Ok(applied.len())
    }

    /// Test seam: does what [`Self::process_due`] does up to the point where the commands
    /// have committed on their raffles, then drops the transaction that locks the inbox rows
    /// instead of settling them, exactly as a worker crashing there would. The rows stay
    /// `pending` and due; the next `process_due` must find the commands already applied.
    /// Returns how many deliveries were applied.
    #[doc(hidden)]
    pub async fn process_due_then_crash(&self) -> Result<usize, crate::store::StoreError> {
        let (tx, applied) = self.take_and_apply().await?;
        drop(tx);
        Ok(applied.len())
    }

    /// Locks one batch of due deliveries and applies each; the rows are still to be settled
    /// in the returned transaction.
    async fn take_and_apply(&self) -> Result<AppliedBatch, crate::store::StoreError> {
        let mut tx = self.engine.store().pool().begin().await?;
        let due = inbox::take_due(&mut tx, BATCH).await?;
        // Deliveries about one payment are applied in the order they are due; different
        // payments concurrently, so commands for one raffle share its writer's group commit.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        for (index, delivery) in due.iter().enumerate() {
            let payment = delivery.payment_id.as_deref();
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
        let mut results: Vec<Option<Result<String, Failure>>> = due.iter().map(|_| None).collect();
        let due_ref = &due;
        let applied = futures::future::join_all(groups.iter().map(|group| async move {
            let mut out = Vec::with_capacity(group.len());
            for &index in group {
                out.push((index, self.apply(&due_ref[index]).await));
            }
            out
        }))
        .await;
        for (index, result) in applied.into_iter().flatten() {
            results[index] = Some(result);
        }
        let results = results
            .into_iter()
            .map(|r| r.expect("every delivery applied"));
        Ok((tx, due.into_iter().zip(results).collect()))
    }

    async fn apply(&self, delivery: &DueDelivery) -> Result<String, Failure> {
        let provider = self.provider(&delivery.provider).ok_or_else(|| {
            Failure::Retry(format!("provider {} is not configured", delivery.provider))
        })?;
        let event = provider
            .parse(delivery.payload.as_bytes())
            .map_err(|e| Failure::Rejected(e.to_string()))?;
        let Some(payment_id) = event.action.payment_id().map(str::to_owned) else {
            return Ok("ignored".into());
        };
        let (raffle_id, order_id) = match (event.raffle_id, event.order_id) {
            (Some(raffle), Some(order)) => (raffle, order),
            _ => inbox::find_order_of_payment(self.engine.store(), provider.name(), &payment_id)
                .await
                .map_err(|e| Failure::Retry(e.to_string()))?
                // Deliveries arrive in any order: the one naming the order may be next.
                .ok_or_else(|| {
                    Failure::Retry(format!(
                        "no raffle and order known for payment {payment_id}"
                    ))
                })?,
        };
        let command = command_for(provider.name(), &event, order_id);
        let meta = CommandMeta {
            actor: provider.name().to_owned(),
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
                    && rejection.code == "invalid_order_state" =>
            {
                Err(Failure::Retry(rejection.message))
            }
            Err(EngineError::Rejected(rejection)) => Err(Failure::Rejected(rejection.code)),
            Err(other) => Err(Failure::Retry(other.to_string())),
        }
    }
}

/// Locked rows (in their transaction) and what applying each one led to.
type AppliedBatch = (
    sqlx::Transaction<'static, sqlx::Postgres>,
    Vec<(DueDelivery, Result<String, Failure>)>,
);

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
