//! Group commit for the inbox: webhook handlers hand verified deliveries to one intake task,
//! which stores everything waiting with one multi-row insert and one commit, then answers
//! each handler. A provider is answered only once its delivery is durable, and a burst of
//! deliveries costs one fsync instead of one each.
//!
//! While this node runs inbox workers, new deliveries are also handed to them in memory,
//! already parsed, and their rows are stored leased to this node for [`LEASE`]: pollers
//! leave them alone until then, so the fast path needs no row lock and no second read. If
//! the node dies first, the lease runs out and any node's poller applies the delivery.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use super::inbox;
use super::provider::{PaymentAction, ProviderEvent};
use crate::store::{Store, StoreError};

/// How long a delivery handed to this node's workers is theirs alone. Far above any issue
/// lag seen under load; a longer lease only delays recovery after a crash.
pub const LEASE: Duration = Duration::from_secs(30);

/// A verified delivery, ready to store.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub provider: &'static str,
    pub event: ProviderEvent,
    /// The raw body, stored as received.
    pub body: String,
    /// When it was verified: workers leave a hand-off that waited too long of its lease to
    /// the pollers.
    pub received: Instant,
}

impl Delivery {
    pub fn new(provider: &'static str, event: ProviderEvent, body: String) -> Self {
        Self {
            provider,
            event,
            body,
            received: Instant::now(),
        }
    }

    fn ignored(&self) -> bool {
        self.event.action == PaymentAction::Ignored
    }

    /// The inbox row's key: provider and provider event id.
    pub fn key(&self) -> (&str, &str) {
        (self.provider, &self.event.event_id)
    }
}

/// Where new deliveries go once stored, when this node's workers take them in memory.
pub type Handoff = mpsc::Sender<Delivery>;

type Reply = oneshot::Sender<Result<bool, IntakeError>>;

/// Why a delivery got no acknowledgement.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IntakeError {
    /// Certainly not stored (the intake was full, or the database refused the insert
    /// before storing anything): the provider sends it again.
    #[error("{0}")]
    NotStored(String),
    /// The insert was sent and its answer lost: it may have committed (the provider's
    /// redelivery then finds it stored, as a duplicate).
    #[error("{0}")]
    InDoubt(String),
}

const MAX_BATCH: usize = 512;

#[derive(Clone)]
pub struct Intake {
    sender: mpsc::Sender<(Delivery, Reply)>,
    handoff: Arc<OnceLock<Handoff>>,
}

impl Intake {
    /// Starts the intake on a thread of its own, with connections of its own that skip the
    /// checkout ping. On the runtime that serves requests, each insert's reply waited in the
    /// run queue behind hundreds of HTTP tasks, and every acknowledgement waited with it.
    /// The thread ends when every `Intake` clone is dropped.
    /// `wake` is notified when a stored delivery is left to the pollers.
    pub fn start(store: Store, capacity: usize, wake: Arc<Notify>) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel(capacity);
        let handoff = Arc::new(OnceLock::new());
        let handoff_used = handoff.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("tombola-intake".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let own = store.sibling("tombola-intake");
                    // Connect now: the first deliveries should not wait for a handshake.
                    drop(own.pool().acquire().await);
                    run(&own, receiver, &handoff_used, &wake).await;
                    own.pool().close().await;
                })
            })?;
        Ok(Self { sender, handoff })
    }

    /// From now on, new deliveries are leased to this node and handed to `handoff`. Set
    /// once; when its receiver is gone, deliveries go to the pollers again.
    pub fn hand_off_to(&self, handoff: Handoff) {
        let _ = self.handoff.set(handoff);
    }

    /// Stores the delivery unless the same provider event is already there; answers whether
    /// it was new, once it is committed.
    pub async fn submit(&self, delivery: Delivery) -> Result<bool, IntakeError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .try_send((delivery, reply))
            .map_err(|_| IntakeError::NotStored("the inbox is saturated".to_owned()))?;
        // The intake dropped the delivery without an answer: it may have been in an insert.
        answer
            .await
            .map_err(|_| IntakeError::InDoubt("the inbox stopped".to_owned()))?
    }
}

/// One insert at a time. Two in flight deadlocked: a duplicate delivery lands in one batch
/// while its original is in the other, and each insert waits on a key the other holds.
async fn run(
    store: &Store,
    mut receiver: mpsc::Receiver<(Delivery, Reply)>,
    handoff: &OnceLock<Handoff>,
    wake: &Notify,
) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let handoff = handoff.get().filter(|h| !h.is_closed());
        let lease = if handoff.is_some() {
            LEASE
        } else {
            Duration::ZERO
        };
        let deliveries: Vec<&Delivery> = batch.iter().map(|(d, _)| d).collect();
        match insert(store, &deliveries, lease).await {
            Ok(inserted) => {
                // Within one batch the same event may come twice: the first one is new.
                let mut answered = HashSet::new();
                let mut for_pollers = false;
                let mut not_handed = Vec::new();
                for (delivery, reply) in batch {
                    let key = (delivery.provider, delivery.event.event_id.clone());
                    let new = inserted.contains(&key) && answered.insert(key);
                    let _ = reply.send(Ok(new));
                    if !new || delivery.ignored() {
                        continue;
                    }
                    match handoff {
                        Some(handoff) => {
                            if let Err(refused) = handoff.try_send(delivery) {
                                not_handed.push(refused.into_inner());
                            }
                        }
                        None => for_pollers = true,
                    }
                }
                // Full or gone: rather than wait out their leases, these go to the pollers.
                for_pollers |= leave_to_pollers(store, &not_handed, "hand-off refused").await;
                if for_pollers {
                    wake.notify_one();
                }
            }
            Err(error) => {
                tracing::warn!(%error, "inbox insert failed");
                let error = if error.in_doubt() {
                    IntakeError::InDoubt(error.to_string())
                } else {
                    IntakeError::NotStored(error.to_string())
                };
                for (_, reply) in batch {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Ends the leases of deliveries this node's workers will not apply, so that any node's
/// pollers take them now; returns whether it did (if not, they wait out their leases).
pub(super) async fn leave_to_pollers(store: &Store, deliveries: &[Delivery], why: &str) -> bool {
    if deliveries.is_empty() {
        return false;
    }
    tracing::warn!(
        count = deliveries.len(),
        why,
        "deliveries left to the pollers"
    );
    let leased: Vec<_> = deliveries.iter().map(Delivery::key).collect();
    match inbox::release(store.pool(), &leased).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, why, "deliveries wait out their leases");
            false
        }
    }
}

async fn insert(
    store: &Store,
    deliveries: &[&Delivery],
    lease: Duration,
) -> Result<HashSet<(&'static str, String)>, StoreError> {
    let column = |f: fn(&Delivery) -> Option<&str>| -> Vec<Option<&str>> {
        deliveries.iter().map(|d| f(d)).collect()
    };
    let providers = column(|d| Some(d.provider));
    let event_ids = column(|d| Some(&d.event.event_id));
    let types = column(|d| Some(&d.event.event_type));
    let bodies = column(|d| Some(&d.body));
    let payments = column(|d| d.event.action.payment_id());
    let statuses = column(|d| Some(if d.ignored() { "ignored" } else { "pending" }));
    let raffles: Vec<Option<Uuid>> = deliveries.iter().map(|d| d.event.raffle_id).collect();
    let orders: Vec<Option<Uuid>> = deliveries.iter().map(|d| d.event.order_id).collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO payment_inbox \
           (provider, event_id, event_type, payload, payment_id, raffle_id, order_id, status, \
            next_attempt_at) \
         SELECT t.provider, t.event_id, t.event_type, t.payload::json, t.payment_id, \
                t.raffle_id, t.order_id, t.status, now() + make_interval(secs => $9) \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], \
                     $7::uuid[], $8::text[]) \
           AS t(provider, event_id, event_type, payload, payment_id, raffle_id, order_id, status) \
         ON CONFLICT (provider, event_id) DO NOTHING RETURNING provider, event_id",
    )
    .bind(&providers)
    .bind(&event_ids)
    .bind(&types)
    .bind(&bodies)
    .bind(&payments)
    .bind(&raffles)
    .bind(&orders)
    .bind(&statuses)
    .bind(lease.as_secs_f64())
    .fetch_all(store.pool())
    .await?;
    let providers: HashSet<&'static str> = deliveries.iter().map(|d| d.provider).collect();
    Ok(rows
        .into_iter()
        .filter_map(|(provider, event_id)| {
            providers
                .iter()
                .find(|p| **p == provider)
                .map(|p| (*p, event_id))
        })
        .collect())
}
