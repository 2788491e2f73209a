//! Shared fixtures for the domain test suites: a fixed clock, a small raffle's config, and
//! builders for the events that `given(..)` starts from.
//!
//! Events are written out as literals (not produced by `decide`) so that a scenario's
//! "given" does not depend on the code under test.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use tombola_domain::{
    draw, Buyer, Currency, ExpiredHold, FixedClock, LatePaymentPolicy, Payment, Prize,
    ProviderPayment, Raffle, RaffleCommand, RaffleConfig, RaffleError, RaffleEvent, RaffleServices,
};
use uuid::Uuid;

pub const SEED: &str = "seed";
pub const PRICE: i64 = 500;
pub const HOLD: i64 = 900;
pub const MAX_HOLD: i64 = 3600;

/// The instant every scenario's clock starts from; `at(secs)` is relative to it.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap()
}

pub fn at(secs: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(secs)
}

pub fn clock_at(secs: i64) -> Arc<FixedClock> {
    Arc::new(FixedClock::new(at(secs)))
}

pub fn services_at(secs: i64) -> RaffleServices {
    RaffleServices::deterministic(7, clock_at(secs))
}

/// cqrs-es's given/when/then harness with the clock at `t0 + secs`.
pub fn framework_at(secs: i64) -> TestFramework<Raffle> {
    TestFramework::with(services_at(secs))
}

pub fn raffle_id() -> Uuid {
    Uuid::from_u128(0xAAAA)
}

pub fn order(n: u128) -> Uuid {
    Uuid::from_u128(0x0100 + n)
}

pub fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

pub fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

pub fn buyer(name: &str, email: &str) -> Buyer {
    Buyer::parse(name, email, None).unwrap()
}

pub fn ana() -> Buyer {
    buyer("Ana", "Ana@Example.com")
}

pub fn bob() -> Buyer {
    buyer("Bob", "bob@example.com")
}

pub fn prize(name: &str) -> Prize {
    Prize {
        name: name.into(),
        early_bird_cutoff: None,
    }
}

/// A small raffle numbered from 1, $5 a ticket, 15-minute holds capped at one hour.
pub fn config(ticket_count: u32) -> RaffleConfig {
    RaffleConfig {
        raffle_id: raffle_id(),
        title: "Test raffle".into(),
        organizer_id: "org-1".into(),
        ticket_count,
        first_number: 1,
        number_width: ticket_count.to_string().len() as u8,
        price_minor: PRICE,
        currency: usd(),
        bundles: Vec::new(),
        hold_seconds: HOLD as u32,
        max_hold_seconds: MAX_HOLD as u32,
        max_tickets_per_order: 10,
        max_tickets_per_buyer: None,
        prizes: vec![prize("Car")],
        draw_commitment: draw::commitment_of(SEED),
        late_payment_policy: LatePaymentPolicy::Refund,
        plus_addressing: Default::default(),
        time_zone: None,
    }
}

// ----- events -----

pub fn created(config: RaffleConfig) -> RaffleEvent {
    RaffleEvent::RaffleCreated {
        config,
        at: at(-7200),
    }
}

pub fn opened() -> RaffleEvent {
    RaffleEvent::SalesOpened { at: at(-3600) }
}

/// A created raffle with sales open.
pub fn on_sale(config: &RaffleConfig) -> Vec<RaffleEvent> {
    vec![created(config.clone()), opened()]
}

/// `numbers` held for `buyer` from `t0 + secs`, priced without bundles.
pub fn reserved(
    config: &RaffleConfig,
    order_id: Uuid,
    buyer: &Buyer,
    numbers: &[u32],
    secs: i64,
) -> RaffleEvent {
    RaffleEvent::TicketsReserved {
        order_id,
        buyer: buyer.clone(),
        numbers: numbers.to_vec(),
        amount_minor: config.price_minor * numbers.len() as i64,
        currency: config.currency,
        at: at(secs),
        expires_at: at(secs + i64::from(config.hold_seconds)),
    }
}

pub fn released(order_id: Uuid, numbers: &[u32], secs: i64) -> RaffleEvent {
    RaffleEvent::ReservationReleased {
        order_id,
        numbers: numbers.to_vec(),
        at: at(secs),
    }
}

pub fn expired(holds: &[(Uuid, &[u32])], secs: i64) -> RaffleEvent {
    RaffleEvent::HoldsExpired {
        holds: holds
            .iter()
            .map(|(order_id, numbers)| ExpiredHold {
                order_id: *order_id,
                numbers: numbers.to_vec(),
            })
            .collect(),
        at: at(secs),
    }
}

/// A Stripe card payment of `amount_minor` USD.
pub fn payment(order_id: Uuid, payment_id: &str, amount_minor: i64) -> ProviderPayment {
    ProviderPayment {
        order_id,
        provider: "stripe".into(),
        payment_id: payment_id.into(),
        provider_event_id: format!("evt_{payment_id}"),
        amount_minor,
        currency: usd(),
        method: "card".into(),
    }
}

pub fn recorded(payment: &ProviderPayment, secs: i64) -> RaffleEvent {
    RaffleEvent::PaymentRecorded {
        order_id: payment.order_id,
        payment: Payment {
            provider: payment.provider.clone(),
            payment_id: payment.payment_id.clone(),
            provider_event_id: payment.provider_event_id.clone(),
            amount_minor: payment.amount_minor,
            currency: payment.currency,
            method: payment.method.clone(),
        },
        at: at(secs),
    }
}

pub fn issued(order_id: Uuid, numbers: &[u32], secs: i64) -> RaffleEvent {
    RaffleEvent::TicketsIssued {
        order_id,
        numbers: numbers.to_vec(),
        late: false,
        replaced_numbers: Vec::new(),
        at: at(secs),
    }
}

/// A provider payment of the right amount and the tickets it issued.
pub fn paid(order_id: Uuid, numbers: &[u32], payment_id: &str, secs: i64) -> Vec<RaffleEvent> {
    let p = payment(order_id, payment_id, PRICE * numbers.len() as i64);
    vec![recorded(&p, secs), issued(order_id, numbers, secs)]
}

pub fn closed(secs: i64) -> RaffleEvent {
    RaffleEvent::SalesClosed { at: at(secs) }
}

pub fn cancelled(reason: &str, secs: i64) -> RaffleEvent {
    RaffleEvent::RaffleCancelled {
        reason: reason.into(),
        at: at(secs),
    }
}

pub fn reserve_cmd(order_id: Uuid, buyer: &Buyer, numbers: &[u32]) -> RaffleCommand {
    RaffleCommand::Reserve(tombola_domain::Reserve {
        order_id,
        buyer: buyer.clone(),
        selection: tombola_domain::Selection::Numbers(numbers.to_vec()),
    })
}

pub fn pay_cmd(order_id: Uuid, payment_id: &str, amount_minor: i64) -> RaffleCommand {
    RaffleCommand::RecordPayment(payment(order_id, payment_id, amount_minor))
}

/// Folds `events` into a fresh aggregate, the way a load from the log does.
pub fn replay(events: &[RaffleEvent]) -> Raffle {
    let mut raffle = Raffle::default();
    for event in events {
        raffle.apply_event(event);
    }
    raffle
}

/// A raffle driven command by command with a movable clock: for scenarios too long to write
/// as literal events (snapshots, large expiry sweeps).
pub struct Sim {
    pub raffle: Raffle,
    pub history: Vec<RaffleEvent>,
    pub clock: Arc<FixedClock>,
    pub services: RaffleServices,
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        let clock = clock_at(0);
        Self {
            raffle: Raffle::default(),
            history: Vec::new(),
            services: RaffleServices::deterministic(seed, clock.clone()),
            clock,
        }
    }

    pub fn advance(&self, secs: i64) {
        self.clock.advance(Duration::seconds(secs));
    }

    /// Decides and, when accepted, applies.
    pub fn try_exec(&mut self, command: RaffleCommand) -> Result<Vec<RaffleEvent>, RaffleError> {
        let events = self.raffle.decide(command, &self.services)?;
        for event in &events {
            self.raffle.apply_event(event);
        }
        self.history.extend(events.iter().cloned());
        Ok(events)
    }

    pub fn exec(&mut self, command: RaffleCommand) -> Vec<RaffleEvent> {
        let description = format!("{command:?}");
        self.try_exec(command)
            .unwrap_or_else(|e| panic!("{description} was refused: {e}"))
    }
}
