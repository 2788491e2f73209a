//! Engine-level helpers: engines on fresh databases, raffles ready to sell, command
//! metadata, the stored log, hash-chain verification. `use tombola_testkit::engine::*` also
//! brings [`TestDb`] and [`eventually`].

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::PgPool;
use tombola::engine::{Applied, CommandMeta, Engine, EngineConfig, EngineError};
use tombola::store::chain::{event_hash, ChainInput, GENESIS};
use tombola::store::{
    EventMetadata, IdempotencyRequest, Source, Store, StoredEvent, RAFFLE_STREAM,
};
use tombola_domain::{
    Buyer, CreateRaffle, Currency, ProviderPayment, Raffle, RaffleCommand, RaffleEvent, Reserve,
    Selection,
};
use uuid::Uuid;

pub use crate::{drop_database, eventually, DatabaseGuard, TestDb};

/// Ticket price of the raffles made by [`open_raffle`] (`CreateRaffle::example`), no bundles.
pub const PRICE_MINOR: i64 = 500;

/// An engine on a fresh database.
pub async fn start_engine(config: EngineConfig) -> (Engine, TestDb) {
    let db = TestDb::new(10).await;
    (Engine::new(db.store.clone(), config), db)
}

/// Metadata of a client API call, with a unique request id.
pub fn meta() -> CommandMeta {
    CommandMeta {
        actor: "key_test".into(),
        source: Source::Api,
        request_id: format!("req-{}", Uuid::now_v7()),
        correlation_id: None,
        causation_id: None,
        idempotency: None,
    }
}

/// Metadata carrying an `Idempotency-Key` (scoped to the test API key) and a request hash.
pub fn keyed_meta(key: &str, request_hash: &[u8]) -> CommandMeta {
    CommandMeta {
        idempotency: Some(IdempotencyRequest {
            scope: "key_test".into(),
            key: key.into(),
            request_hash: request_hash.to_vec(),
        }),
        ..meta()
    }
}

/// Metadata of a payment provider's webhook delivery.
pub fn webhook_meta() -> CommandMeta {
    CommandMeta {
        actor: "stripe".into(),
        source: Source::Webhook,
        ..meta()
    }
}

/// Creates a raffle of `ticket_count` tickets (`CreateRaffle::example`, adjusted by `adjust`)
/// and opens its sales. Returns its id.
pub async fn open_raffle(
    engine: &Engine,
    ticket_count: u32,
    adjust: impl FnOnce(&mut CreateRaffle),
) -> Uuid {
    let raffle_id = Uuid::new_v4();
    let mut create = CreateRaffle::example(raffle_id, ticket_count);
    adjust(&mut create);
    engine
        .execute(raffle_id, RaffleCommand::Create(create), meta())
        .await
        .expect("create the raffle");
    engine
        .execute(raffle_id, RaffleCommand::OpenSales, meta())
        .await
        .expect("open sales");
    raffle_id
}

pub fn buyer(i: u64) -> Buyer {
    Buyer::parse(
        &format!("Buyer {i}"),
        &format!("buyer{i}@example.com"),
        None,
    )
    .expect("buyer")
}

pub fn usd() -> Currency {
    Currency::parse("USD").expect("USD")
}

pub fn reserve(order_id: Uuid, buyer: Buyer, selection: Selection) -> RaffleCommand {
    RaffleCommand::Reserve(Reserve {
        order_id,
        buyer,
        selection,
    })
}

pub fn reserve_numbers(order_id: Uuid, buyer: Buyer, numbers: &[u32]) -> RaffleCommand {
    reserve(order_id, buyer, Selection::Numbers(numbers.to_vec()))
}

pub fn reserve_random(order_id: Uuid, buyer: Buyer, quantity: u32) -> RaffleCommand {
    reserve(order_id, buyer, Selection::Random(quantity))
}

/// A Stripe card payment report in USD.
pub fn payment(order_id: Uuid, payment_id: &str, amount_minor: i64) -> RaffleCommand {
    RaffleCommand::RecordPayment(ProviderPayment {
        order_id,
        provider: "stripe".into(),
        payment_id: payment_id.into(),
        provider_event_id: format!("evt_{payment_id}"),
        amount_minor,
        currency: usd(),
        method: "card".into(),
    })
}

/// The numbers of the `TicketsReserved` event among `applied`'s events, if any.
pub fn reserved_numbers(applied: &Applied) -> Option<Vec<u32>> {
    applied.events.iter().find_map(|e| match &e.event {
        RaffleEvent::TicketsReserved { numbers, .. } => Some(numbers.clone()),
        _ => None,
    })
}

/// The stable code of a domain rejection, if `error` is one.
pub fn rejection_code(error: &EngineError) -> Option<&str> {
    match error {
        EngineError::Rejected(rejection) => Some(rejection.code()),
        _ => None,
    }
}

/// The raffle's whole committed stream, in order.
pub async fn log(store: &Store, raffle_id: Uuid) -> Vec<StoredEvent> {
    store
        .events_after(raffle_id, 0)
        .await
        .expect("read the stream")
}

/// Number of stored events of the raffle (counted by SQL, not through the store's decoding).
pub async fn event_count(pool: &PgPool, raffle_id: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(RAFFLE_STREAM)
    .bind(raffle_id.to_string())
    .fetch_one(pool)
    .await
    .expect("count events")
}

/// Folds events into a fresh aggregate, as a full replay does.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a RaffleEvent>) -> Raffle {
    let mut raffle = Raffle::default();
    for event in events {
        raffle.apply_event(event);
    }
    raffle
}

/// Panics unless every event of `applied` is in `log` at the sequence it was answered with.
pub fn assert_in_log(log: &[StoredEvent], applied: &Applied) {
    let by_sequence: BTreeMap<u64, &RaffleEvent> = log
        .iter()
        .map(|stored| (stored.sequence, &stored.event))
        .collect();
    for sequenced in &applied.events {
        match by_sequence.get(&sequenced.sequence) {
            Some(stored) => assert_eq!(
                *stored, &sequenced.event,
                "acknowledged event at sequence {} differs from the log",
                sequenced.sequence
            ),
            None => panic!(
                "acknowledged event at sequence {} is not in the log: {:?}",
                sequenced.sequence, sequenced.event
            ),
        }
    }
}

/// The engine's in-memory state of a raffle.
pub async fn engine_state(engine: &Engine, raffle_id: Uuid) -> Raffle {
    engine
        .read(raffle_id, |raffle| raffle.clone())
        .await
        .expect("read the raffle")
}

/// Keeps the raffle's writer busy for `busy` (a read that blocks it), so that the commands
/// sent meanwhile queue up and are decided as one batch. Returns once the writer is busy.
pub async fn hold_writer(
    engine: &Engine,
    raffle_id: Uuid,
    busy: Duration,
) -> tokio::task::JoinHandle<()> {
    let engine = engine.clone();
    let (started, writer_busy) = tokio::sync::oneshot::channel();
    let held = tokio::spawn(async move {
        engine
            .read(raffle_id, move |_| {
                let _ = started.send(());
                std::thread::sleep(busy);
            })
            .await
            .expect("the writer runs the read");
    });
    writer_busy.await.expect("the writer starts the read");
    held
}

/// Where a stream's hash chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// Sequences must run 1, 2, 3, … without holes.
    Gap {
        expected: u64,
        found: u64,
    },
    /// The event's `prev_hash` is not the previous event's hash.
    BrokenLink {
        sequence: u64,
    },
    /// The stored hash is not the hash of what is stored.
    HashMismatch {
        sequence: u64,
    },
    Unreadable {
        sequence: u64,
        reason: String,
    },
}

/// Recomputes the raffle stream's hash chain from the stored text (what `tombola audit
/// verify` will do): every event's hash over its exact payload and metadata, every
/// `prev_hash` linking to the event before. Returns the number of events verified.
pub async fn verify_chain(pool: &PgPool, raffle_id: Uuid) -> Result<u64, ChainBreak> {
    let aggregate_id = raffle_id.to_string();
    let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "SELECT sequence, event_type, event_version, payload::text, metadata::text FROM events \
         WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
    )
    .bind(RAFFLE_STREAM)
    .bind(&aggregate_id)
    .fetch_all(pool)
    .await
    .expect("read the stream's rows");
    let mut prev = GENESIS.to_owned();
    let mut expected = 1u64;
    for (sequence, event_type, event_version, payload, metadata) in rows {
        let sequence = sequence as u64;
        if sequence != expected {
            return Err(ChainBreak::Gap {
                expected,
                found: sequence,
            });
        }
        let metadata = EventMetadata::from_json(&metadata)
            .map_err(|reason| ChainBreak::Unreadable { sequence, reason })?;
        if metadata.prev_hash != prev {
            return Err(ChainBreak::BrokenLink { sequence });
        }
        let input = ChainInput {
            aggregate_type: RAFFLE_STREAM,
            aggregate_id: &aggregate_id,
            sequence,
            event_type: &event_type,
            event_version: &event_version,
            payload: &payload,
        };
        if event_hash(&input, &metadata) != metadata.hash {
            return Err(ChainBreak::HashMismatch { sequence });
        }
        prev = metadata.hash;
        expected += 1;
    }
    Ok(expected - 1)
}
