//! Group commit for the inbox: webhook handlers hand verified deliveries to one intake task,
//! which stores everything waiting with one multi-row insert and one commit, then answers
//! each handler. A provider is answered only once its delivery is durable, and a burst of
//! deliveries costs one fsync instead of one each.

use std::collections::HashSet;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::provider::{PaymentAction, ProviderEvent};
use crate::store::{Store, StoreError};

/// A verified delivery, ready to store.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub provider: &'static str,
    pub event_id: String,
    pub event_type: String,
    pub payment_id: Option<String>,
    pub raffle_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub ignored: bool,
    /// The raw body, stored as received.
    pub body: String,
}

impl Delivery {
    pub fn new(provider: &'static str, event: ProviderEvent, body: String) -> Self {
        Self {
            provider,
            payment_id: event.action.payment_id().map(str::to_owned),
            ignored: event.action == PaymentAction::Ignored,
            event_id: event.event_id,
            event_type: event.event_type,
            raffle_id: event.raffle_id,
            order_id: event.order_id,
            body,
        }
    }
}

type Reply = oneshot::Sender<Result<bool, String>>;

const MAX_BATCH: usize = 512;

#[derive(Clone)]
pub struct Intake {
    sender: mpsc::Sender<(Delivery, Reply)>,
}

impl Intake {
    /// Starts the intake task; it ends when every `Intake` clone is dropped.
    pub fn start(store: Store, capacity: usize) -> Self {
        let (sender, receiver) = mpsc::channel(capacity);
        tokio::spawn(run(store, receiver));
        Self { sender }
    }

    /// Stores the delivery unless the same provider event is already there; answers whether
    /// it was new, once it is committed.
    pub async fn submit(&self, delivery: Delivery) -> Result<bool, String> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .try_send((delivery, reply))
            .map_err(|_| "the inbox is saturated".to_owned())?;
        answer.await.map_err(|_| "the inbox stopped".to_owned())?
    }
}

async fn run(store: Store, mut receiver: mpsc::Receiver<(Delivery, Reply)>) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let deliveries: Vec<&Delivery> = batch.iter().map(|(d, _)| d).collect();
        match insert(&store, &deliveries).await {
            Ok(inserted) => {
                // Within one batch the same event may come twice: the first one is new.
                let mut answered = HashSet::new();
                for (delivery, reply) in batch {
                    let key = (delivery.provider, delivery.event_id);
                    let new = inserted.contains(&key) && answered.insert(key);
                    let _ = reply.send(Ok(new));
                }
            }
            Err(error) => {
                tracing::warn!(%error, "inbox insert failed");
                for (_, reply) in batch {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
        }
    }
}

async fn insert(
    store: &Store,
    deliveries: &[&Delivery],
) -> Result<HashSet<(&'static str, String)>, StoreError> {
    let column = |f: fn(&Delivery) -> Option<&str>| -> Vec<Option<&str>> {
        deliveries.iter().map(|d| f(d)).collect()
    };
    let providers = column(|d| Some(d.provider));
    let event_ids = column(|d| Some(&d.event_id));
    let types = column(|d| Some(&d.event_type));
    let bodies = column(|d| Some(&d.body));
    let payments = column(|d| d.payment_id.as_deref());
    let statuses = column(|d| Some(if d.ignored { "ignored" } else { "pending" }));
    let raffles: Vec<Option<Uuid>> = deliveries.iter().map(|d| d.raffle_id).collect();
    let orders: Vec<Option<Uuid>> = deliveries.iter().map(|d| d.order_id).collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO payment_inbox \
           (provider, event_id, event_type, payload, payment_id, raffle_id, order_id, status) \
         SELECT t.provider, t.event_id, t.event_type, t.payload::json, t.payment_id, \
                t.raffle_id, t.order_id, t.status \
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
