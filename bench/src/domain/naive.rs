//! The same-run baseline: the raffle as a straightforward first implementation would hold it,
//! with std collections and no attention to memory.
//!
//! - `free: Vec<u32>` of the unsold numbers; a random pick is a uniform index + `swap_remove`;
//! - `tickets: HashMap<u32, Ticket>`: number → owning order id and whether it is sold;
//! - `orders: HashMap<Uuid, NaiveOrder>`: every order with its buyer e-mail, numbers (a
//!   `Vec<u32>`), status, amount, timestamps and payment id;
//! - `payments: HashSet<String>`: every payment id seen, to drop repeated deliveries.
//!
//! It gets the very same command stream (order ids, buyers, payment ids) and makes the same
//! checks the aggregate makes for these commands (order unknown, enough free numbers, payment
//! id unseen, amount and currency match, order still reserved), but it emits no events and
//! hashes nothing. Its snapshot is `serde_json` of its orders, and decoding rebuilds the
//! three other structures from them (as the aggregate rebuilds its indexes).

use chrono::{DateTime, Utc};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use tombola_domain::{Clock as _, Currency, FixedClock, ProviderPayment, Reserve, Selection};
use uuid::Uuid;

use super::workload::{Model, Reserved, Sale, Workload};
use crate::alloc;
use crate::report::BenchResult;
use crate::sys::{self, Span};

pub(super) const DESCRIPTION: &str = "naive model: Vec<u32> free numbers + std \
    HashMap<u32 number, (order id, sold)> + HashMap<Uuid, order {e-mail, Vec<u32> numbers, \
    status, amount, 3 timestamps, payment id}> + HashSet<String> payment ids; same commands, \
    same checks, no events; snapshot = serde_json of the orders, indexes rebuilt on decode";

const PRICE_MINOR: i64 = 500;
const HOLD_SECONDS: i64 = 15 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Reserved,
    Paid,
}

#[derive(Debug, Serialize, Deserialize)]
struct NaiveOrder {
    id: Uuid,
    buyer_email: String,
    numbers: Vec<u32>,
    status: Status,
    amount_minor: i64,
    reserved_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    issued_at: Option<DateTime<Utc>>,
    payment_id: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Ticket {
    order: Uuid,
    sold: bool,
}

struct NaiveRaffle<'a> {
    first_number: u32,
    ticket_count: u32,
    currency: Currency,
    free: Vec<u32>,
    tickets: HashMap<u32, Ticket>,
    orders: HashMap<Uuid, NaiveOrder>,
    payments: HashSet<String>,
    clock: &'a FixedClock,
    rng: ChaCha8Rng,
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    first_number: u32,
    ticket_count: u32,
    currency: Currency,
    orders: Vec<&'a NaiveOrder>,
}

#[derive(Deserialize)]
struct SnapshotIn {
    first_number: u32,
    ticket_count: u32,
    currency: Currency,
    orders: Vec<NaiveOrder>,
}

impl<'a> NaiveRaffle<'a> {
    fn new(ticket_count: u32, clock: &'a FixedClock, seed: u64) -> Self {
        Self {
            first_number: 1,
            ticket_count,
            currency: Currency::parse("USD").expect("valid"),
            free: (1..=ticket_count).collect(),
            tickets: HashMap::new(),
            orders: HashMap::new(),
            payments: HashSet::new(),
            clock,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn encode(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&SnapshotOut {
            first_number: self.first_number,
            ticket_count: self.ticket_count,
            currency: self.currency,
            orders: self.orders.values().collect(),
        })
    }

    fn decode(bytes: &[u8], clock: &'a FixedClock) -> serde_json::Result<Self> {
        let snapshot: SnapshotIn = serde_json::from_slice(bytes)?;
        let mut tickets = HashMap::with_capacity(snapshot.ticket_count as usize);
        let mut orders = HashMap::with_capacity(snapshot.orders.len());
        let mut payments = HashSet::with_capacity(snapshot.orders.len());
        for order in snapshot.orders {
            for &n in &order.numbers {
                tickets.insert(
                    n,
                    Ticket {
                        order: order.id,
                        sold: order.status == Status::Paid,
                    },
                );
            }
            if let Some(payment_id) = &order.payment_id {
                payments.insert(payment_id.clone());
            }
            orders.insert(order.id, order);
        }
        let last = snapshot.first_number + snapshot.ticket_count - 1;
        let free = (snapshot.first_number..=last)
            .filter(|n| !tickets.contains_key(n))
            .collect();
        Ok(Self {
            first_number: snapshot.first_number,
            ticket_count: snapshot.ticket_count,
            currency: snapshot.currency,
            free,
            tickets,
            orders,
            payments,
            clock,
            rng: ChaCha8Rng::seed_from_u64(0),
        })
    }

    fn sold(&self) -> usize {
        self.tickets.values().filter(|t| t.sold).count()
    }

    /// Every number of the first `count` orders is owned by its order.
    fn owners_match(&self, count: usize) -> bool {
        self.orders.values().take(count).all(|order| {
            order
                .numbers
                .iter()
                .all(|n| self.tickets.get(n).map(|t| t.order) == Some(order.id))
        })
    }
}

impl Model for NaiveRaffle<'_> {
    fn reserve(&mut self, reserve: Reserve) -> Result<Reserved, String> {
        let Selection::Random(quantity) = reserve.selection else {
            return Err("the naive model only picks random numbers".into());
        };
        if self.orders.contains_key(&reserve.order_id) {
            return Err("order already exists".into());
        }
        if quantity == 0 || quantity as usize > self.free.len() {
            return Err("not enough tickets".into());
        }
        let mut numbers = Vec::with_capacity(quantity as usize);
        for _ in 0..quantity {
            let at = self.rng.random_range(0..self.free.len());
            numbers.push(self.free.swap_remove(at));
        }
        numbers.sort_unstable();
        for &n in &numbers {
            self.tickets.insert(
                n,
                Ticket {
                    order: reserve.order_id,
                    sold: false,
                },
            );
        }
        let now = self.clock.now();
        let amount_minor = PRICE_MINOR * i64::from(quantity);
        self.orders.insert(
            reserve.order_id,
            NaiveOrder {
                id: reserve.order_id,
                buyer_email: reserve.buyer.email().as_str().to_owned(),
                numbers,
                status: Status::Reserved,
                amount_minor,
                reserved_at: now,
                expires_at: now + chrono::Duration::seconds(HOLD_SECONDS),
                issued_at: None,
                payment_id: None,
            },
        );
        Ok(Reserved {
            amount_minor,
            currency: self.currency,
        })
    }

    fn pay(&mut self, payment: ProviderPayment) -> Result<(), String> {
        if self.payments.contains(&payment.payment_id) {
            return Ok(());
        }
        let order = self
            .orders
            .get_mut(&payment.order_id)
            .ok_or("unknown order")?;
        if order.status != Status::Reserved {
            return Err("order not payable".into());
        }
        if payment.amount_minor != order.amount_minor || payment.currency != self.currency {
            return Err("amount mismatch".into());
        }
        order.status = Status::Paid;
        order.issued_at = Some(self.clock.now());
        order.payment_id = Some(payment.payment_id.clone());
        for n in &order.numbers {
            if let Some(ticket) = self.tickets.get_mut(n) {
                ticket.sold = true;
            }
        }
        self.payments.insert(payment.payment_id);
        Ok(())
    }
}

pub(super) struct Baseline {
    pub sale: Sale,
    pub resident: i64,
    pub reload_resident: i64,
    pub snapshot_bytes: usize,
    pub encode: Span,
    pub decode: Span,
}

/// Builds the naive model from the workload, measures it like the aggregate, and checks it.
pub(super) fn measure(
    workload: &Workload,
    clock: &FixedClock,
    failures: &mut Vec<String>,
) -> BenchResult<Baseline> {
    let before = alloc::snapshot();
    let mut model = NaiveRaffle::new(workload.tickets, clock, workload.seed);
    let sale = workload.run(&mut model, clock, "baseline")?;
    let resident = alloc::snapshot().since(&before);

    let (json, encode) = sys::span(|| model.encode());
    let json = json?;
    let before_decode = alloc::snapshot();
    let (decoded, decode) = sys::span(|| NaiveRaffle::decode(&json, clock));
    let decoded = decoded?;
    let reload_resident = alloc::snapshot().since(&before_decode);

    let tickets = workload.tickets as usize;
    for (name, m) in [("baseline built", &model), ("baseline reloaded", &decoded)] {
        if m.sold() != tickets
            || !m.free.is_empty()
            || m.payments.len() != m.orders.len()
            || !m.owners_match(1_000)
        {
            failures.push(format!(
                "{name}: sold {} of {tickets}, {} free, {} payments for {} orders",
                m.sold(),
                m.free.len(),
                m.payments.len(),
                m.orders.len()
            ));
        }
    }
    Ok(Baseline {
        sale,
        resident,
        reload_resident,
        snapshot_bytes: json.len(),
        encode,
        decode,
    })
}
