//! The raffle's orders, stored compactly: a fixed 48-byte record per order in chunked
//! storage, all numbers in one shared arena, and hash indexes that hold only order
//! positions. Derived structures (hold queue, buyer counts) are kept in step by
//! [`OrderBook::set_status`], the only way an order's status changes.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeZone, Utc};
use hashbrown::{HashMap, HashTable};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::chunked::ChunkedVec;
use crate::values::Currency;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum OrderStatus {
    Reserved = 0,
    Paid = 1,
    Released = 2,
    Expired = 3,
    Refunded = 4,
    RefundRequired = 5,
}

impl OrderStatus {
    /// The stable name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Paid => "paid",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Refunded => "refunded",
            Self::RefundRequired => "refund_required",
        }
    }

    /// Live orders own their numbers.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Reserved | Self::Paid)
    }

    pub(crate) fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => Self::Reserved,
            1 => Self::Paid,
            2 => Self::Released,
            3 => Self::Expired,
            4 => Self::Refunded,
            5 => Self::RefundRequired,
            _ => return None,
        })
    }
}

/// Seconds since 2020-01-01T00:00:00Z; u32 lasts until 2156 and halves the record size.
pub(crate) type Secs = u32;
const EPOCH_2020: i64 = 1_577_836_800;

pub(crate) fn to_secs_ceil(at: DateTime<Utc>) -> Secs {
    let secs = at.timestamp() - EPOCH_2020 + i64::from(at.timestamp_subsec_nanos() > 0);
    secs.clamp(0, i64::from(u32::MAX)) as Secs
}

pub(crate) fn to_secs_floor(at: DateTime<Utc>) -> Secs {
    (at.timestamp() - EPOCH_2020).clamp(0, i64::from(u32::MAX)) as Secs
}

pub(crate) fn from_secs(secs: Secs) -> DateTime<Utc> {
    Utc.timestamp_opt(EPOCH_2020 + i64::from(secs), 0)
        .single()
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Order {
    pub id: Uuid,
    pub numbers_at: u32,
    pub numbers_len: u32,
    pub reserved_at: Secs,
    pub expires_at: Secs,
    pub issued_at: Secs,
    pub buyer: u64,
    pub status: OrderStatus,
}

/// An order as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderView {
    pub order_id: Uuid,
    pub status: OrderStatus,
    pub numbers: Vec<u32>,
    pub amount_minor: i64,
    pub currency: Currency,
    pub reserved_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub issued_at: Option<DateTime<Utc>>,
}

impl OrderView {
    /// The order exactly as [`crate::Raffle::order`] shows it right after `event` (a
    /// `TicketsReserved`) is applied, times in the raffle's whole seconds; `None` for any
    /// other event. Lets a new reservation be answered from its committed event instead of
    /// a read of the raffle (decision 0019).
    pub fn reserved(event: &crate::RaffleEvent) -> Option<Self> {
        let crate::RaffleEvent::TicketsReserved {
            order_id,
            amount_minor,
            currency,
            numbers,
            at,
            expires_at,
            ..
        } = event
        else {
            return None;
        };
        Some(Self {
            order_id: *order_id,
            status: OrderStatus::Reserved,
            numbers: numbers.clone(),
            amount_minor: *amount_minor,
            currency: *currency,
            reserved_at: from_secs(to_secs_floor(*at)),
            expires_at: from_secs(to_secs_ceil(*expires_at)),
            issued_at: None,
        })
    }
}

/// Marks a payment recorded against an order the raffle does not have.
pub(crate) const NO_ORDER: u32 = u32::MAX;

#[derive(Debug, Clone, Default)]
pub(crate) struct OrderBook {
    pub orders: ChunkedVec<Order>,
    pub numbers: ChunkedVec<u32>,
    index: HashTable<u32>,
    /// Payment id digest → order position, for every payment recorded; and each recorded
    /// failure's provider event, so that a failure delivered twice is recorded once.
    pub payments: HashMap<u64, u32>,
    /// Live tickets per buyer e-mail digest; only kept when the raffle limits buyers.
    pub buyers: Option<HashMap<u64, u32>>,
    /// (expires_at, order position) of every reserved order: the timer queue.
    holds: BTreeSet<(Secs, u32)>,
    /// Cumulative partial refunds by order position.
    pub partial_refunds: HashMap<u32, i64>,
}

impl PartialEq for OrderBook {
    fn eq(&self, other: &Self) -> bool {
        self.orders.len() == other.orders.len()
            && self.orders.iter().zip(other.orders.iter()).all(|(a, b)| {
                a.id == b.id
                    && a.status == b.status
                    && a.reserved_at == b.reserved_at
                    && a.expires_at == b.expires_at
                    && a.issued_at == b.issued_at
                    && a.buyer == b.buyer
            })
            && (0..self.orders.len() as u32).all(|i| self.numbers_of(i).eq(other.numbers_of(i)))
            && self.payments == other.payments
            && self.buyers == other.buyers
            && self.holds == other.holds
            && self.partial_refunds == other.partial_refunds
    }
}

fn id_hash(id: &Uuid) -> u64 {
    // v4 ids are random and v7 ids carry randomness in the low half: fold and mix both.
    let (hi, lo) = id.as_u64_pair();
    (hi ^ lo.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl OrderBook {
    pub fn new(limits_buyers: bool) -> Self {
        Self {
            buyers: limits_buyers.then(HashMap::new),
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.orders.len()
    }

    pub fn find(&self, id: &Uuid) -> Option<u32> {
        let orders = &self.orders;
        self.index
            .find(id_hash(id), |&pos| orders.get(pos as usize).id == *id)
            .copied()
    }

    pub fn get(&self, pos: u32) -> &Order {
        self.orders.get(pos as usize)
    }

    pub fn numbers_of(&self, pos: u32) -> impl Iterator<Item = u32> + '_ {
        let order = self.get(pos);
        let start = order.numbers_at as usize;
        (start..start + order.numbers_len as usize).map(|i| *self.numbers.get(i))
    }

    pub fn numbers_vec(&self, pos: u32) -> Vec<u32> {
        self.numbers_of(pos).collect()
    }

    fn append_numbers(&mut self, numbers: &[u32]) -> u32 {
        let at = self.numbers.len() as u32;
        for n in numbers {
            self.numbers.push(*n);
        }
        at
    }

    /// Adds a record and indexes it.
    fn push_record(&mut self, order: Order) -> u32 {
        let pos = self.push_unindexed(order);
        let orders = &self.orders;
        self.index.insert_unique(id_hash(&order.id), pos, |&p| {
            id_hash(&orders.get(p as usize).id)
        });
        pos
    }

    /// Adds a record as it was stored (snapshot decoding), without indexing it: call
    /// [`Self::rebuild_index`] once all are in (one presized table instead of many growths).
    pub(crate) fn push_unindexed(&mut self, order: Order) -> u32 {
        let pos = self.orders.len() as u32;
        self.orders.push(order);
        if order.status == OrderStatus::Reserved {
            self.holds.insert((order.expires_at, pos));
        }
        if order.status.is_live() {
            if let Some(buyers) = &mut self.buyers {
                *buyers.entry(order.buyer).or_default() += order.numbers_len;
            }
        }
        pos
    }

    pub(crate) fn rebuild_index(&mut self) {
        let orders = &self.orders;
        let mut index = HashTable::with_capacity(orders.len());
        for (pos, order) in orders.iter().enumerate() {
            index.insert_unique(id_hash(&order.id), pos as u32, |&p| {
                id_hash(&orders.get(p as usize).id)
            });
        }
        self.index = index;
    }

    /// A book of the reserved orders only (a compact raffle's resident records), buyer counts
    /// and payments left behind.
    pub(crate) fn live_only(&self) -> Self {
        let mut live = Self::default();
        for (pos, order) in self.orders.iter().enumerate() {
            if order.status == OrderStatus::Reserved {
                let numbers_at = live.numbers.len() as u32;
                self.numbers_of(pos as u32)
                    .for_each(|n| live.numbers.push(n));
                live.push_unindexed(Order {
                    numbers_at,
                    ..*order
                });
            }
        }
        live.rebuild_index();
        live
    }

    pub(crate) fn push_number(&mut self, number: u32) {
        self.numbers.push(number);
    }

    pub fn insert_reserved(
        &mut self,
        id: Uuid,
        numbers: &[u32],
        buyer: u64,
        reserved_at: Secs,
        expires_at: Secs,
    ) -> u32 {
        let numbers_at = self.append_numbers(numbers);
        self.push_record(Order {
            id,
            numbers_at,
            numbers_len: numbers.len() as u32,
            reserved_at,
            expires_at,
            issued_at: 0,
            buyer,
            status: OrderStatus::Reserved,
        })
    }

    /// Moves an order to `status`, keeping the hold queue and buyer counts in step.
    pub fn set_status(&mut self, pos: u32, status: OrderStatus) {
        let order = *self.get(pos);
        if order.status == OrderStatus::Reserved {
            self.holds.remove(&(order.expires_at, pos));
        }
        if status == OrderStatus::Reserved {
            self.holds.insert((order.expires_at, pos));
        }
        if let Some(buyers) = &mut self.buyers {
            match (order.status.is_live(), status.is_live()) {
                (false, true) => *buyers.entry(order.buyer).or_default() += order.numbers_len,
                (true, false) => {
                    if let Some(held) = buyers.get_mut(&order.buyer) {
                        *held = held.saturating_sub(order.numbers_len);
                        if *held == 0 {
                            buyers.remove(&order.buyer);
                        }
                    }
                }
                _ => {}
            }
        }
        self.orders.get_mut(pos as usize).status = status;
    }

    pub fn set_expiry(&mut self, pos: u32, expires_at: Secs) {
        let order = self.orders.get_mut(pos as usize);
        if order.status == OrderStatus::Reserved {
            self.holds.remove(&(order.expires_at, pos));
            self.holds.insert((expires_at, pos));
        }
        order.expires_at = expires_at;
    }

    pub fn set_issued_at(&mut self, pos: u32, at: Secs) {
        self.orders.get_mut(pos as usize).issued_at = at;
    }

    /// Gives an order other numbers (late-payment substitution). The old ones stay in the
    /// arena as garbage; substitutions are rare and snapshots compact it away.
    pub fn replace_numbers(&mut self, pos: u32, numbers: &[u32]) {
        let numbers_at = self.append_numbers(numbers);
        let order = self.orders.get_mut(pos as usize);
        order.numbers_at = numbers_at;
        order.numbers_len = numbers.len() as u32;
    }

    pub fn buyer_held(&self, buyer: u64) -> Option<u32> {
        self.buyers
            .as_ref()
            .map(|b| b.get(&buyer).copied().unwrap_or(0))
    }

    /// Reserved orders whose hold ended at or before `now`, oldest first.
    pub fn due_holds(&self, now: Secs, limit: usize) -> Vec<u32> {
        self.holds
            .range(..=(now, u32::MAX))
            .take(limit)
            .map(|&(_, pos)| pos)
            .collect()
    }

    pub fn next_expiry(&self) -> Option<Secs> {
        self.holds.first().map(|&(at, _)| at)
    }

    pub fn last_expiry(&self) -> Option<Secs> {
        self.holds.last().map(|&(at, _)| at)
    }
}
