//! The command stream of a sale, and the two models it drives: the aggregate (decide, then
//! apply every event, as the engine does) and the naive baseline ([`super::naive`]).

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use tombola_domain::{
    Buyer, Currency, FixedClock, ProviderPayment, Raffle, RaffleCommand, RaffleError, RaffleEvent,
    RaffleServices, Reserve, Selection,
};
use uuid::Uuid;

use crate::report::{self, BenchResult};
use crate::sys::{self, Span};

/// Orders decided per timed batch: the batch's commands are built outside the timer.
const BATCH: usize = 1_024;

/// What a successful reservation tells the payer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reserved {
    pub amount_minor: i64,
    pub currency: Currency,
}

/// A raffle model the workload can drive.
pub(crate) trait Model {
    fn reserve(&mut self, reserve: Reserve) -> Result<Reserved, String>;
    fn pay(&mut self, payment: ProviderPayment) -> Result<(), String>;
}

/// The aggregate as the engine drives it: decide, then apply every event.
pub(crate) struct Aggregate<'a> {
    pub raffle: Raffle,
    pub services: &'a RaffleServices,
}

impl Aggregate<'_> {
    pub fn execute(&mut self, command: RaffleCommand) -> Result<Vec<RaffleEvent>, RaffleError> {
        let events = self.raffle.decide(command, self.services)?;
        for event in &events {
            self.raffle.apply_event(event);
        }
        Ok(events)
    }
}

impl Model for Aggregate<'_> {
    fn reserve(&mut self, reserve: Reserve) -> Result<Reserved, String> {
        let wanted = match reserve.selection {
            Selection::Random(quantity) => quantity as usize,
            Selection::Numbers(ref numbers) => numbers.len(),
        };
        let events = self
            .execute(RaffleCommand::Reserve(reserve))
            .map_err(|e| e.to_string())?;
        match events.as_slice() {
            [RaffleEvent::TicketsReserved {
                amount_minor,
                currency,
                numbers,
                ..
            }] if numbers.len() == wanted => Ok(Reserved {
                amount_minor: *amount_minor,
                currency: *currency,
            }),
            other => Err(format!("reserve gave unexpected events: {other:?}")),
        }
    }

    fn pay(&mut self, payment: ProviderPayment) -> Result<(), String> {
        let events = self
            .execute(RaffleCommand::RecordPayment(payment))
            .map_err(|e| e.to_string())?;
        match events.as_slice() {
            [RaffleEvent::PaymentRecorded { .. }, RaffleEvent::TicketsIssued {
                late: false,
                replaced_numbers,
                ..
            }] if replaced_numbers.is_empty() => Ok(()),
            other => Err(format!("payment gave unexpected events: {other:?}")),
        }
    }
}

/// The sale both models get: the same order ids, buyers and payment ids, in the same order.
pub(crate) struct Workload<'a> {
    pub tickets: u32,
    pub per_order: u32,
    pub buyers: &'a [Buyer],
    pub seed: u64,
}

/// What a sale cost, and what the checks afterwards need from it.
pub(crate) struct Sale {
    pub orders: u64,
    /// Deciding and applying the reserve commands only.
    pub reserve: Span,
    /// Deciding and applying the payment commands only.
    pub pay: Span,
    /// The whole sale, command building and checks included.
    pub total: Span,
    pub first_order: Uuid,
    pub last_payment: Option<ProviderPayment>,
}

impl Workload<'_> {
    pub fn orders(&self) -> u64 {
        u64::from(self.tickets).div_ceil(u64::from(self.per_order))
    }

    /// Reserves and pays every ticket, `BATCH` orders at a time: the batch's reserve commands
    /// are built, then decided and applied under the timer; then its payments likewise. So up
    /// to `BATCH` holds are live at once, as with concurrent checkouts. The clock moves one
    /// second per batch.
    pub fn run(&self, model: &mut impl Model, clock: &FixedClock, what: &str) -> BenchResult<Sale> {
        let mut ids = ChaCha8Rng::seed_from_u64(self.seed ^ 0x0bad_5eed);
        let bar = report::progress(u64::from(self.tickets), what);
        let mut reserves = Vec::with_capacity(BATCH);
        let mut reserved = Vec::with_capacity(BATCH);
        let mut payments = Vec::with_capacity(BATCH);
        let mut paid = Vec::with_capacity(BATCH);
        let mut order_ids = Vec::with_capacity(BATCH);
        let mut sale = Sale {
            orders: 0,
            reserve: Span::default(),
            pay: Span::default(),
            total: Span::default(),
            first_order: Uuid::nil(),
            last_payment: None,
        };
        let (outcome, total) = sys::span(|| -> BenchResult<()> {
            let mut assigned = 0u32;
            while assigned < self.tickets {
                let mut batch_tickets = 0u32;
                while reserves.len() < BATCH && assigned < self.tickets {
                    let quantity = self.per_order.min(self.tickets - assigned);
                    assigned += quantity;
                    batch_tickets += quantity;
                    let order_id = uuid::Builder::from_random_bytes(ids.random()).into_uuid();
                    let buyer = self.buyers[(sale.orders as usize) % self.buyers.len()].clone();
                    if sale.orders == 0 {
                        sale.first_order = order_id;
                    }
                    sale.orders += 1;
                    order_ids.push(order_id);
                    reserves.push(Reserve {
                        order_id,
                        buyer,
                        selection: Selection::Random(quantity),
                    });
                }

                let ((), span) = sys::span(|| {
                    for reserve in reserves.drain(..) {
                        reserved.push(model.reserve(reserve));
                    }
                });
                sale.reserve += span;

                let first_in_batch = sale.orders - order_ids.len() as u64;
                for (k, (order_id, outcome)) in
                    order_ids.drain(..).zip(reserved.drain(..)).enumerate()
                {
                    let Reserved {
                        amount_minor,
                        currency,
                    } = outcome.map_err(|e| format!("{what}: reserving order {order_id}: {e}"))?;
                    let n = first_in_batch + k as u64;
                    payments.push(ProviderPayment {
                        order_id,
                        provider: "stripe".into(),
                        payment_id: format!("pi_{:016x}{n:010}", self.seed),
                        provider_event_id: format!("evt_{:016x}{n:010}", self.seed),
                        amount_minor,
                        currency,
                        method: "card".into(),
                    });
                }
                if assigned == self.tickets {
                    sale.last_payment = payments.last().cloned();
                }

                let ((), span) = sys::span(|| {
                    for payment in payments.drain(..) {
                        paid.push(model.pay(payment));
                    }
                });
                sale.pay += span;
                for outcome in paid.drain(..) {
                    outcome.map_err(|e| format!("{what}: paying: {e}"))?;
                }

                clock.advance(chrono::Duration::seconds(1));
                bar.inc(u64::from(batch_tickets));
            }
            Ok(())
        });
        bar.finish_and_clear();
        outcome?;
        sale.total = total;
        Ok(sale)
    }
}
