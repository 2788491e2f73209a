//! The reference model: orders in a `HashMap`, tickets in three plain sets, and the
//! evolution of both under each event, written without the aggregate's compact structures.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use proptest::test_runner::TestCaseError;
use tombola_domain::{OrderStatus, OrderView, RaffleConfig, RaffleEvent, RaffleStatus, Winner};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub(crate) struct ModelOrder {
    pub(crate) status: OrderStatus,
    pub(crate) numbers: Vec<u32>,
    pub(crate) email: String,
    /// Position in reservation order: ties between equal expiry times go to the older order.
    pub(crate) seq: usize,
    pub(crate) reserved_at: DateTime<Utc>,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) issued_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub(crate) struct Model {
    pub(crate) cfg: RaffleConfig,
    pub(crate) status: RaffleStatus,
    pub(crate) orders: HashMap<Uuid, ModelOrder>,
    /// Order ids in reservation order.
    pub(crate) ids: Vec<Uuid>,
    pub(crate) free: BTreeSet<u32>,
    pub(crate) held: BTreeSet<u32>,
    pub(crate) sold: BTreeSet<u32>,
    /// Payment id → the order it was first recorded for (`None`: an unknown order).
    pub(crate) payments: HashMap<String, Option<Uuid>>,
    pub(crate) partial_refunds: HashMap<Uuid, i64>,
    pub(crate) winners: Vec<Winner>,
}

/// Issued numbers with their issue time, and the order owning each.
pub(crate) type IssuedTickets = (Vec<(u32, DateTime<Utc>)>, HashMap<u32, Uuid>);

pub(crate) fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

impl Model {
    pub(crate) fn new(cfg: RaffleConfig) -> Self {
        let free = (cfg.first_number..cfg.first_number + cfg.ticket_count).collect();
        Self {
            cfg,
            status: RaffleStatus::Draft,
            orders: HashMap::new(),
            ids: Vec::new(),
            free,
            held: BTreeSet::new(),
            sold: BTreeSet::new(),
            payments: HashMap::new(),
            partial_refunds: HashMap::new(),
            winners: Vec::new(),
        }
    }

    pub(crate) fn in_range(&self, n: u32) -> bool {
        n >= self.cfg.first_number && n < self.cfg.first_number + self.cfg.ticket_count
    }

    /// Cheapest combination of singles and bundles, by brute force over bundle counts.
    pub(crate) fn price(&self, quantity: usize) -> i64 {
        let quantity = quantity as i64;
        match self.cfg.bundles.as_slice() {
            [] => self.cfg.price_minor * quantity,
            [bundle] => {
                let size = i64::from(bundle.quantity);
                (0..=quantity / size)
                    .map(|k| k * bundle.price_minor + (quantity - k * size) * self.cfg.price_minor)
                    .min()
                    .unwrap()
            }
            _ => unreachable!("the scenarios use at most one bundle"),
        }
    }

    pub(crate) fn order_price(&self, id: &Uuid) -> i64 {
        self.orders
            .get(id)
            .map_or(self.cfg.price_minor, |o| self.price(o.numbers.len()))
    }

    pub(crate) fn live_tickets_of(&self, email: &str) -> u32 {
        self.orders
            .values()
            .filter(|o| o.email == email && o.status.is_live())
            .map(|o| o.numbers.len() as u32)
            .sum()
    }

    /// Numbers the aggregate chose at random, checked against the model: `quantity` distinct
    /// free numbers, ascending.
    pub(crate) fn check_random_pick(
        &self,
        numbers: &[u32],
        quantity: usize,
    ) -> Result<(), TestCaseError> {
        let ok = numbers.len() == quantity
            && numbers.windows(2).all(|w| w[0] < w[1])
            && numbers.iter().all(|n| self.free.contains(n));
        if ok {
            Ok(())
        } else {
            Err(fail(format!(
                "random pick {numbers:?} is not {quantity} distinct free numbers (free: {:?})",
                self.free
            )))
        }
    }

    // ----- evolution -----

    pub(crate) fn order_mut(&mut self, id: &Uuid) -> Result<&mut ModelOrder, TestCaseError> {
        self.orders
            .get_mut(id)
            .ok_or_else(|| fail(format!("event for unknown order {id}")))
    }

    pub(crate) fn evolve(&mut self, event: &RaffleEvent) -> Result<(), TestCaseError> {
        fn take(
            from: &mut BTreeSet<u32>,
            to: &mut BTreeSet<u32>,
            numbers: &[u32],
            what: &str,
        ) -> Result<(), TestCaseError> {
            for n in numbers {
                if !from.remove(n) {
                    return Err(fail(format!("{what}: {n} was not where expected")));
                }
                to.insert(*n);
            }
            Ok(())
        }
        match event {
            RaffleEvent::RaffleCreated { .. } => {}
            RaffleEvent::SalesOpened { .. } => self.status = RaffleStatus::OnSale,
            RaffleEvent::TicketsReserved {
                order_id,
                buyer,
                numbers,
                at,
                expires_at,
                ..
            } => {
                take(&mut self.free, &mut self.held, numbers, "reserve")?;
                let seq = self.ids.len();
                self.ids.push(*order_id);
                self.orders.insert(
                    *order_id,
                    ModelOrder {
                        status: OrderStatus::Reserved,
                        numbers: numbers.clone(),
                        email: buyer.email().as_str().to_lowercase(),
                        seq,
                        reserved_at: *at,
                        expires_at: *expires_at,
                        issued_at: None,
                    },
                );
            }
            RaffleEvent::ReservationReleased {
                order_id, numbers, ..
            } => {
                take(&mut self.held, &mut self.free, numbers, "release")?;
                self.order_mut(order_id)?.status = OrderStatus::Released;
            }
            RaffleEvent::HoldsExpired { holds, .. } => {
                for hold in holds {
                    take(&mut self.held, &mut self.free, &hold.numbers, "expire")?;
                    self.order_mut(&hold.order_id)?.status = OrderStatus::Expired;
                }
            }
            RaffleEvent::HoldExtended {
                order_id,
                expires_at,
                ..
            } => self.order_mut(order_id)?.expires_at = *expires_at,
            RaffleEvent::PaymentRecorded {
                order_id, payment, ..
            } => {
                let known = self.orders.contains_key(order_id).then_some(*order_id);
                self.payments
                    .entry(payment.payment_id.clone())
                    .or_insert(known);
            }
            RaffleEvent::ManualPaymentConfirmed { .. }
            | RaffleEvent::PaymentFlagged { .. }
            | RaffleEvent::PaymentFailed { .. } => {}
            RaffleEvent::TicketsIssued {
                order_id,
                numbers,
                at,
                ..
            } => {
                let was = self.orders[order_id].status;
                if was == OrderStatus::Reserved {
                    take(&mut self.held, &mut self.sold, numbers, "issue held")?;
                } else {
                    take(&mut self.free, &mut self.sold, numbers, "issue late")?;
                }
                let o = self.order_mut(order_id)?;
                o.numbers = numbers.clone();
                o.status = OrderStatus::Paid;
                o.issued_at = Some(*at);
            }
            RaffleEvent::RefundRequired { order_id, .. } => {
                let Some(o) = self.orders.get(order_id) else {
                    return Ok(());
                };
                match o.status {
                    OrderStatus::Reserved => {
                        let numbers = o.numbers.clone();
                        take(&mut self.held, &mut self.free, &numbers, "refund held")?;
                        self.order_mut(order_id)?.status = OrderStatus::RefundRequired;
                    }
                    OrderStatus::Expired | OrderStatus::Released => {
                        self.order_mut(order_id)?.status = OrderStatus::RefundRequired;
                    }
                    _ => {}
                }
            }
            RaffleEvent::PaymentPartiallyRefunded {
                order_id,
                amount_refunded_minor,
                ..
            } => {
                self.partial_refunds
                    .insert(*order_id, *amount_refunded_minor);
            }
            RaffleEvent::OrderRefunded { order_id, .. } => {
                let o = &self.orders[order_id];
                if o.status == OrderStatus::Paid {
                    let numbers = o.numbers.clone();
                    take(&mut self.sold, &mut self.free, &numbers, "refund paid")?;
                }
                self.order_mut(order_id)?.status = OrderStatus::Refunded;
            }
            RaffleEvent::SalesClosed { .. } => self.status = RaffleStatus::Closed,
            RaffleEvent::WinnersDrawn { winners, .. } => {
                self.winners = winners.clone();
                self.status = RaffleStatus::Drawn;
            }
            RaffleEvent::RaffleCancelled { .. } => {
                self.status = RaffleStatus::Cancelled;
                let ids: Vec<Uuid> = self.orders.keys().copied().collect();
                for id in ids {
                    let o = &self.orders[&id];
                    let numbers = o.numbers.clone();
                    match o.status {
                        OrderStatus::Reserved => {
                            take(&mut self.held, &mut self.free, &numbers, "cancel held")?;
                            self.order_mut(&id)?.status = OrderStatus::Released;
                        }
                        OrderStatus::Paid => {
                            take(&mut self.sold, &mut self.free, &numbers, "cancel paid")?;
                            self.order_mut(&id)?.status = OrderStatus::RefundRequired;
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Every issued ticket with its issue time, and its owner.
    pub(crate) fn issued_tickets(&self) -> IssuedTickets {
        let mut issued = Vec::new();
        let mut owners = HashMap::new();
        for (id, o) in &self.orders {
            if o.status == OrderStatus::Paid {
                for n in &o.numbers {
                    issued.push((*n, o.issued_at.expect("paid orders have an issue time")));
                    owners.insert(*n, *id);
                }
            }
        }
        (issued, owners)
    }

    pub(crate) fn view(&self, id: Uuid) -> Option<OrderView> {
        let o = self.orders.get(&id)?;
        Some(OrderView {
            order_id: id,
            status: o.status,
            numbers: o.numbers.clone(),
            amount_minor: self.price(o.numbers.len()),
            currency: self.cfg.currency,
            reserved_at: o.reserved_at,
            expires_at: o.expires_at,
            issued_at: (o.status == OrderStatus::Paid).then(|| o.issued_at.unwrap()),
        })
    }
}
