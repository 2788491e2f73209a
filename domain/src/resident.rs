//! What a compact raffle keeps resident about its settled orders, and how it asks for the rest
//! (decision 0022).
//!
//! A raffle is *full* (every order's record resident, as [`crate::orders::OrderBook`] keeps
//! them) until [`crate::Raffle::compact`] makes it *compact*: from then on only live holds keep
//! a record. Every order that ever existed leaves a 64-bit digest of its id, every recorded
//! payment (and payment failure) a 64-bit digest of its key, and the few facts that `apply`
//! cannot read from an event are kept exactly (orders owing a refund without having been
//! paid, holds released by a cancellation). A decision about a settled order, or one whose
//! digest is merely present (a digest never decides alone: a hit is confirmed on the log), is
//! answered with a [`Need`]: the caller supplies the events it names ([`Supplied`]) and asks
//! again. No I/O happens here.

use std::collections::HashSet;

use uuid::Uuid;

use crate::events::RaffleEvent;
use crate::orders::{to_secs_ceil, to_secs_floor, OrderStatus, Secs};
use crate::Raffle;

/// A set of 64-bit digests, 8 bytes each: one sorted vector searched by bisection, and the
/// digests added since it was last rebuilt in a small hash set, merged into it once they
/// exceed 1/32 of it (so a merge's cost is spread over as many inserts as it moves).
#[derive(Debug, Clone, Default)]
pub(crate) struct DigestSet {
    sorted: Vec<u64>,
    recent: hashbrown::HashSet<u64>,
}

const MIN_RECENT: usize = 4096;

impl DigestSet {
    /// From strictly increasing digests (a snapshot's section); `None` if they are not.
    pub fn from_sorted(sorted: Vec<u64>) -> Option<Self> {
        sorted.windows(2).all(|w| w[0] < w[1]).then(|| Self {
            sorted,
            recent: hashbrown::HashSet::new(),
        })
    }

    pub fn from_unsorted(mut digests: Vec<u64>) -> Self {
        digests.sort_unstable();
        digests.dedup();
        digests.shrink_to_fit();
        Self {
            sorted: digests,
            recent: hashbrown::HashSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    pub fn contains(&self, digest: u64) -> bool {
        self.recent.contains(&digest) || self.sorted.binary_search(&digest).is_ok()
    }

    pub fn insert(&mut self, digest: u64) {
        if self.contains(digest) {
            return;
        }
        self.recent.insert(digest);
        if self.recent.len() > MIN_RECENT.max(self.sorted.len() / 32) {
            self.merge();
        }
    }

    /// Folds the recent digests into the sorted vector, sized exactly.
    pub fn merge(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let mut recent: Vec<u64> = self.recent.drain().collect();
        recent.sort_unstable();
        self.recent.shrink_to(0);
        let mut merged = Vec::with_capacity(self.sorted.len() + recent.len());
        let (mut a, mut b) = (self.sorted.iter().peekable(), recent.iter().peekable());
        while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
            if x < y {
                merged.push(x);
                a.next();
            } else {
                merged.push(y);
                b.next();
            }
        }
        merged.extend(a);
        merged.extend(b);
        self.sorted = merged;
    }

    /// Every digest, ascending, without merging.
    pub fn to_sorted_vec(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .sorted
            .iter()
            .chain(self.recent.iter())
            .copied()
            .collect();
        all.sort_unstable();
        all
    }
}

impl PartialEq for DigestSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.to_sorted_vec() == other.to_sorted_vec()
    }
}

/// A compact raffle's resident memory of its settled orders.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Settled {
    /// [`order_digest`] of every order the raffle ever had.
    pub orders: DigestSet,
    /// `digest64` of every recorded payment id, and each recorded failure's key.
    pub payments: DigestSet,
    /// Orders that owe a refund without having been paid (a late payment that found its
    /// numbers taken, or came after sales closed): refunding one returns no numbers. Few.
    pub refund_required: HashSet<Uuid>,
    /// Holds the raffle's cancellation released (their own events end at the reservation,
    /// like an expired hold's). Few.
    pub released_by_cancel: HashSet<Uuid>,
}

/// An order id's resident digest: v4 ids are random and v7 ids carry 74 random bits, so
/// folding both halves and mixing keeps them apart; equality is never decided on it alone.
pub(crate) fn order_digest(id: &Uuid) -> u64 {
    let (hi, lo) = id.as_u64_pair();
    (hi ^ lo.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// What a compact raffle needs to read from its own log before it can decide. The events
/// named are the stream's, in order, up to the state decided on (committed or not).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Need {
    /// The events about this order (`RaffleEvent::order_id`).
    Order(Uuid),
    /// Every `PaymentRecorded` of this payment id, on any order.
    Payment(String),
    /// Every `PaymentFailed` of this provider event.
    Failure {
        provider: String,
        provider_event_id: String,
    },
    /// The whole stream folded into a full raffle (the draw: every ticket's owner).
    Log,
}

impl Need {
    /// Whether `event` is one this need names (for [`Need::Log`]: every event).
    pub fn matches(&self, event: &RaffleEvent) -> bool {
        match (self, event) {
            (Self::Order(id), event) => event.order_id() == Some(*id),
            (Self::Payment(payment_id), RaffleEvent::PaymentRecorded { payment, .. }) => {
                payment.payment_id == *payment_id
            }
            (
                Self::Failure {
                    provider,
                    provider_event_id,
                },
                RaffleEvent::PaymentFailed {
                    provider: p,
                    provider_event_id: e,
                    ..
                },
            ) => p == provider && e == provider_event_id,
            (Self::Log, _) => true,
            _ => false,
        }
    }

    /// The one event type a scan for this need can be narrowed to, if any.
    pub fn event_type(&self) -> Option<&'static str> {
        match self {
            Self::Payment(_) => Some("PaymentRecorded"),
            Self::Failure { .. } => Some("PaymentFailed"),
            Self::Order(_) | Self::Log => None,
        }
    }
}

/// Answers to [`Need`]s, for one decision.
#[derive(Debug, Default)]
pub struct Supplied {
    answers: Vec<(Need, Vec<RaffleEvent>)>,
    log: Option<Box<Raffle>>,
}

impl Supplied {
    /// The events `need` names, in stream order. For [`Need::Log`] use [`Self::supply_log`].
    pub fn supply(&mut self, need: Need, events: Vec<RaffleEvent>) {
        self.answers.push((need, events));
    }

    /// The whole stream folded, from `Raffle::default()`, by `apply_event` (a full raffle).
    pub fn supply_log(&mut self, raffle: Raffle) {
        self.log = Some(Box::new(raffle));
    }

    pub fn has(&self, need: &Need) -> bool {
        match need {
            Need::Log => self.log.is_some(),
            need => self.answers.iter().any(|(n, _)| n == need),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.log.is_none()
    }

    pub(crate) fn events(&self, need: &Need) -> Result<&[RaffleEvent], Need> {
        self.answers
            .iter()
            .find(|(n, _)| n == need)
            .map(|(_, events)| events.as_slice())
            .ok_or_else(|| need.clone())
    }

    pub(crate) fn log(&self) -> Result<&Raffle, Need> {
        self.log.as_deref().ok_or(Need::Log)
    }
}

/// A settled order as its own events tell it (see [`OrderDetails::fold`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OrderDetails {
    pub status: OrderStatus,
    pub numbers: Vec<u32>,
    pub reserved_at: Secs,
    pub expires_at: Secs,
    pub issued_at: Secs,
    pub partial_refunded: i64,
}

impl OrderDetails {
    /// Folds one order's own events the way `Raffle::apply_event` moves its record. Expiry
    /// and cancellation name no single order, so an order whose events end at the
    /// reservation comes back `Reserved`, and a paid one stays `Paid` after a cancellation:
    /// [`Raffle::settled_details`] corrects both from resident facts. `None`: the raffle never
    /// had the order (its events, if any, are payments for an unknown order).
    pub fn fold(events: &[RaffleEvent]) -> Option<Self> {
        let mut details: Option<Self> = None;
        for event in events {
            match event {
                RaffleEvent::TicketsReserved {
                    numbers,
                    at,
                    expires_at,
                    ..
                } => {
                    details = Some(Self {
                        status: OrderStatus::Reserved,
                        numbers: numbers.clone(),
                        reserved_at: to_secs_floor(*at),
                        expires_at: to_secs_ceil(*expires_at),
                        issued_at: 0,
                        partial_refunded: 0,
                    });
                }
                _ => {
                    let Some(d) = details.as_mut() else { continue };
                    match event {
                        RaffleEvent::ReservationReleased { .. } => {
                            d.status = OrderStatus::Released;
                        }
                        RaffleEvent::HoldExtended { expires_at, .. } => {
                            d.expires_at = to_secs_ceil(*expires_at);
                        }
                        RaffleEvent::TicketsIssued {
                            numbers,
                            replaced_numbers,
                            at,
                            ..
                        } => {
                            if !replaced_numbers.is_empty() {
                                d.numbers.clone_from(numbers);
                            }
                            d.issued_at = to_secs_floor(*at);
                            d.status = OrderStatus::Paid;
                        }
                        RaffleEvent::RefundRequired { .. } => {
                            if matches!(
                                d.status,
                                OrderStatus::Reserved
                                    | OrderStatus::Expired
                                    | OrderStatus::Released
                            ) {
                                d.status = OrderStatus::RefundRequired;
                            }
                        }
                        RaffleEvent::PaymentPartiallyRefunded {
                            amount_refunded_minor,
                            ..
                        } => d.partial_refunded = *amount_refunded_minor,
                        RaffleEvent::OrderRefunded { .. } => d.status = OrderStatus::Refunded,
                        _ => {}
                    }
                }
            }
        }
        details
    }
}

/// Where the stream first recorded `payment_id`, in one order's own events: `None` if not
/// here, else whether the order had been reserved by then (a full raffle keys a payment for
/// an order it did not have under one "no order" position, which this mirrors). Only an
/// unflagged recording can be the stream's first: a later one is flagged `payment_id_reused`.
pub(crate) fn first_recorded(events: &[RaffleEvent], payment_id: &str) -> Option<bool> {
    let at = events.iter().enumerate().position(|(i, e)| {
        matches!(e, RaffleEvent::PaymentRecorded { payment, .. } if payment.payment_id == payment_id)
            && !matches!(
                events.get(i + 1),
                Some(RaffleEvent::PaymentFlagged { payment_id: p, reason, .. })
                    if p == payment_id && reason == "payment_id_reused"
            )
    })?;
    Some(
        events[..at]
            .iter()
            .any(|e| matches!(e, RaffleEvent::TicketsReserved { .. })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_found_before_and_after_merging() {
        let mut set = DigestSet::default();
        let digests: Vec<u64> = (0..20_000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        for d in &digests {
            set.insert(*d);
        }
        set.insert(digests[3]);
        assert_eq!(set.len(), digests.len());
        assert!(digests.iter().all(|d| set.contains(*d)));
        assert!(!set.contains(1));
        let sorted = set.to_sorted_vec();
        assert!(sorted.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(DigestSet::from_sorted(sorted).unwrap(), set);
        assert!(DigestSet::from_sorted(vec![2, 1]).is_none());
    }
}
