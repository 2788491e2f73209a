//! Random raffle histories, decided by the real aggregate from random commands, and written
//! to the log in the server's layout.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use sqlx::PgPool;
use tombola_domain::{
    Buyer, ConfirmManualPayment, CreateRaffle, FixedClock, LatePaymentPolicy, ProviderPayment,
    Raffle, RaffleCommand, RaffleEvent, RaffleServices, RecordPaymentFailure, RefundOrder, Reserve,
    Selection,
};
use uuid::Uuid;

pub const NAMES: [&str; 3] = ["Ana López", "Bob", "Cy O'Brien"];
/// The raffles' time zones, by seed: whole, half and quarter hours, with and without
/// daylight saving time.
pub const TIME_ZONES: [&str; 4] = [
    "UTC",
    "America/Mexico_City",
    "Asia/Kathmandu",
    "America/St_Johns",
];
pub const ACTORS: [&str; 3] = ["key:1", "system", "webhook:stripe"];

#[derive(Debug, Clone)]
pub enum Op {
    ReserveRandom {
        quantity: u32,
        buyer: usize,
    },
    ReserveNumbers {
        picks: Vec<u32>,
        buyer: usize,
    },
    Release(usize),
    Expire {
        advance: i64,
    },
    Extend {
        target: usize,
        secs: i64,
    },
    Pay {
        target: usize,
        short: bool,
        pool_id: Option<u8>,
    },
    Manual(usize),
    Fail(usize),
    Refund {
        target: usize,
        partial: bool,
    },
    Close,
    Cancel,
    Draw,
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (1u32..=4, 0..NAMES.len()).prop_map(|(quantity, buyer)| Op::ReserveRandom { quantity, buyer }),
        6 => (prop::collection::vec(0u32..40, 1..=4), 0..NAMES.len())
            .prop_map(|(picks, buyer)| Op::ReserveNumbers { picks, buyer }),
        3 => (0usize..50).prop_map(Op::Release),
        6 => (0i64..=120).prop_map(|advance| Op::Expire { advance }),
        2 => (0usize..50, 0i64..=300).prop_map(|(target, secs)| Op::Extend { target, secs }),
        12 => (0usize..50, prop::bool::weighted(0.1), prop::option::weighted(0.2, 0u8..3))
            .prop_map(|(target, short, pool_id)| Op::Pay { target, short, pool_id }),
        3 => (0usize..50).prop_map(Op::Manual),
        2 => (0usize..50).prop_map(Op::Fail),
        4 => (0usize..50, any::<bool>()).prop_map(|(target, partial)| Op::Refund { target, partial }),
        1 => Just(Op::Close),
        1 => Just(Op::Cancel),
        1 => Just(Op::Draw),
    ]
}

pub fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..=max)
}

/// An event as the log holds it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub sequence: u64,
    pub event: RaffleEvent,
    pub actor: String,
    pub recorded_at: DateTime<Utc>,
}

pub struct History {
    pub raffle_id: Uuid,
    pub organizer_id: String,
    pub events: Vec<Recorded>,
    /// The aggregate after every event: the model the read side must agree with.
    pub raffle: Raffle,
    pub order_ids: Vec<Uuid>,
    /// Events already in the database.
    pub written: usize,
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

impl History {
    /// The raffle `ops` make of a 30-ticket raffle on sale (a seeded random source, a clock
    /// moved only by `Expire`). Commands the aggregate refuses leave no events.
    pub fn build(raffle_id: Uuid, organizer_id: &str, seed: u64, ops: &[Op]) -> Self {
        let clock = Arc::new(FixedClock::new(t0()));
        let services = RaffleServices::deterministic(seed, clock.clone());
        let mut history = Self {
            raffle_id,
            organizer_id: organizer_id.to_owned(),
            events: Vec::new(),
            raffle: Raffle::default(),
            order_ids: Vec::new(),
            written: 0,
        };
        let mut create = CreateRaffle::example(raffle_id, 30);
        create.organizer_id = organizer_id.to_owned();
        create.hold_seconds = Some(60);
        create.max_hold_seconds = Some(300);
        create.max_tickets_per_order = 5;
        create.time_zone = Some(TIME_ZONES[(seed % TIME_ZONES.len() as u64) as usize].into());
        create.late_payment_policy = if seed.is_multiple_of(2) {
            LatePaymentPolicy::Substitute
        } else {
            LatePaymentPolicy::Refund
        };
        history.run(RaffleCommand::Create(create), &services, 0);
        history.run(RaffleCommand::OpenSales, &services, 0);
        let mut payments = 0u32;
        for (step, op) in ops.iter().enumerate() {
            let target = |i: &usize| {
                if history.order_ids.is_empty() {
                    Uuid::from_u128(0xDEAD)
                } else {
                    history.order_ids[i % history.order_ids.len()]
                }
            };
            let order_id = Uuid::from_u128((raffle_id.as_u128() << 16) ^ (step as u128 + 1));
            let command = match op {
                Op::ReserveRandom { quantity, buyer } => RaffleCommand::Reserve(Reserve {
                    order_id,
                    buyer: buyer_of(*buyer),
                    selection: Selection::Random(*quantity),
                }),
                Op::ReserveNumbers { picks, buyer } => RaffleCommand::Reserve(Reserve {
                    order_id,
                    buyer: buyer_of(*buyer),
                    selection: Selection::Numbers(picks.iter().map(|p| 1 + p % 30).collect()),
                }),
                Op::Release(t) => RaffleCommand::Release {
                    order_id: target(t),
                },
                Op::Expire { advance } => {
                    clock.advance(Duration::seconds(*advance));
                    RaffleCommand::ExpireDueHolds
                }
                Op::Extend { target: t, secs } => RaffleCommand::ExtendHold {
                    order_id: target(t),
                    until: clock_now(&services) + Duration::seconds(*secs),
                },
                Op::Pay {
                    target: t,
                    short,
                    pool_id,
                } => {
                    let order_id = target(t);
                    let amount = history
                        .raffle
                        .order(order_id)
                        .map_or(500, |o| o.amount_minor);
                    payments += 1;
                    let payment_id = match pool_id {
                        Some(p) => format!("pi_pool_{p}"),
                        None => format!("pi_{}_{payments}", raffle_id.simple()),
                    };
                    RaffleCommand::RecordPayment(ProviderPayment {
                        order_id,
                        provider: "stripe".into(),
                        provider_event_id: format!("evt_{payments}"),
                        payment_id,
                        amount_minor: if *short { amount - 1 } else { amount },
                        currency: tombola_domain::Currency::parse("USD").unwrap(),
                        method: "card".into(),
                    })
                }
                Op::Manual(t) => RaffleCommand::ConfirmManualPayment(ConfirmManualPayment {
                    order_id: target(t),
                    method: "cash".into(),
                    reference: format!("receipt-{step}"),
                    confirmed_by: "org".into(),
                }),
                Op::Fail(t) => RaffleCommand::RecordPaymentFailure(RecordPaymentFailure {
                    order_id: target(t),
                    provider: "stripe".into(),
                    payment_id: format!("pi_failed_{step}"),
                    provider_event_id: format!("evt_failed_{step}"),
                    reason: "card_declined".into(),
                }),
                Op::Refund { target: t, partial } => {
                    let order_id = target(t);
                    let amount = history
                        .raffle
                        .order(order_id)
                        .map_or(500, |o| o.amount_minor);
                    RaffleCommand::Refund(RefundOrder {
                        order_id,
                        amount_refunded_minor: partial.then_some(amount / 2),
                        reason: "requested".into(),
                        refund_id: Some(format!("re_{step}")),
                    })
                }
                Op::Close => RaffleCommand::CloseSales,
                Op::Cancel => RaffleCommand::Cancel {
                    reason: "test".into(),
                },
                Op::Draw => RaffleCommand::Draw {
                    seed: "seed".into(),
                    public_entropy: "entropy".into(),
                },
            };
            history.run(command, &services, step);
        }
        history
    }

    fn run(&mut self, command: RaffleCommand, services: &RaffleServices, step: usize) {
        let Ok(events) = self.raffle.decide(command, services) else {
            return;
        };
        for event in events {
            self.raffle.apply_event(&event);
            if let RaffleEvent::TicketsReserved { order_id, .. } = &event {
                self.order_ids.push(*order_id);
            }
            let sequence = self.events.len() as u64 + 1;
            self.events.push(Recorded {
                sequence,
                recorded_at: clock_now(services),
                actor: ACTORS[step % ACTORS.len()].to_owned(),
                event,
            });
        }
    }

    /// Writes the next `count` events (or all that are left) to the log.
    pub async fn write_next(&mut self, pool: &PgPool, count: usize) {
        let end = (self.written + count).min(self.events.len());
        if end == self.written {
            return;
        }
        if self.written == 0 {
            sqlx::query(
                "INSERT INTO raffles (raffle_id, organizer_id, title, status, status_sequence, \
                                      created_at, updated_at) \
                 VALUES ($1, $2, 'Test', 'on_sale', 2, now(), now())",
            )
            .bind(self.raffle_id)
            .bind(&self.organizer_id)
            .execute(pool)
            .await
            .unwrap();
        }
        for recorded in &self.events[self.written..end] {
            append(pool, self.raffle_id, recorded).await;
        }
        self.written = end;
    }

    pub async fn write_all(&mut self, pool: &PgPool) {
        self.write_next(pool, usize::MAX).await;
    }

    pub fn head(&self) -> u64 {
        self.events.len() as u64
    }
}

/// The chain hash these tests store with the event at `sequence`: not a real chain (the
/// projections never check one), but distinct per event, so receipts can be told apart.
pub fn stored_hash(sequence: u64) -> String {
    format!("{sequence:064x}")
}

pub async fn append(pool: &PgPool, raffle_id: Uuid, recorded: &Recorded) {
    let metadata = serde_json::json!({
        "actor": recorded.actor,
        "source": "api",
        "request_id": "req",
        "correlation_id": "req",
        "causation_id": "req",
        "recorded_at": recorded.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "prev_hash": stored_hash(recorded.sequence - 1),
        "hash": stored_hash(recorded.sequence),
    });
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                             payload, metadata, order_id) \
         VALUES ('raffle', $1, $2, $3, '1', $4::json, $5::json, $6)",
    )
    .bind(raffle_id.to_string())
    .bind(recorded.sequence as i64)
    .bind(recorded.event.name())
    .bind(serde_json::to_string(&recorded.event).unwrap())
    .bind(metadata.to_string())
    .bind(recorded.event.order_id())
    .execute(pool)
    .await
    .unwrap();
}

fn buyer_of(i: usize) -> Buyer {
    let name = NAMES[i % NAMES.len()];
    let email = format!("buyer{i}@example.com");
    Buyer::parse(
        name,
        &email,
        i.is_multiple_of(2).then_some("+52 55 1234 5678"),
    )
    .unwrap()
}

fn clock_now(services: &RaffleServices) -> DateTime<Utc> {
    services.now()
}
