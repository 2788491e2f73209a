//! Inbox workers: applying provider events as raffle commands. New deliveries come from the
//! intake in memory ([`fresh`]); pollers take everything else that is due ([`poller`]).
//! Both turn events into commands the same way ([`mapping`]), apply them here, and settle
//! their rows by the retry schedule ([`retry`]): failures retry with exponential backoff
//! and proportional jitter and end up visible to operators.

mod fresh;
mod mapping;
mod poller;
mod retry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::inbox;
use super::intake::Intake;
use super::provider::{PaymentAction, PaymentProvider, ProviderEvent};
use crate::engine::{CommandMeta, Engine, EngineError};
use crate::store::{Source, Store};
use mapping::{command_for, summarize};
use retry::Failure;
pub use retry::MAX_ATTEMPTS;

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

    /// One delivery as a raffle command; its span is the root of the delivery's trace (the
    /// HTTP request that stored it answered long ago).
    #[tracing::instrument(
        name = "payments.apply",
        parent = None,
        skip_all,
        fields(
            provider = %provider,
            event_id = %event.event_id,
            raffle_id = tracing::field::Empty,
            order_id = tracing::field::Empty,
        )
    )]
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
        let span = tracing::Span::current();
        span.record("raffle_id", tracing::field::display(raffle_id));
        span.record("order_id", tracing::field::display(order_id));
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
                    && matches!(
                        rejection.error,
                        tombola_domain::RaffleError::InvalidOrderState { .. }
                    ) =>
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
