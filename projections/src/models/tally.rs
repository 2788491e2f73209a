//! The counting both stats projections share: each keeps, in tables of its own, every order's
//! status, size and money, and folds events into a raffle's [`Tally`] by status transitions,
//! so a count can never drift from the orders it counts.

use std::collections::HashMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use tombola_domain::RaffleEvent;
use uuid::Uuid;

use crate::envelope::Envelope;

/// One raffle's figures. Rates are derived when read (see [`Tally::hold_expiry_rate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub organizer_id: String,
    pub currency: String,
    pub status: String,
    pub ticket_count: i64,
    /// Numbers held by live reservations.
    pub reserved: i64,
    /// Numbers issued to orders that are paid now.
    pub sold: i64,
    /// Orders by their current status.
    pub orders: OrdersByStatus,
    /// Reservations ever made.
    pub reservations: i64,
    /// Holds that ran out (an order paid late after its hold expired counts too).
    pub expirations: i64,
    /// Orders whose tickets were issued.
    pub payments: i64,
    pub late_payments: i64,
    /// Money received that must go back (including payments for unknown orders).
    pub refunds_required: i64,
    /// Paid orders' amounts less what was refunded of them, in `currency`.
    pub revenue_minor: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrdersByStatus {
    pub reserved: i64,
    pub paid: i64,
    pub expired: i64,
    pub released: i64,
    pub refund_required: i64,
    pub refunded: i64,
}

impl OrdersByStatus {
    fn slot(&mut self, status: &str) -> &mut i64 {
        match status {
            "reserved" => &mut self.reserved,
            "paid" => &mut self.paid,
            "expired" => &mut self.expired,
            "released" => &mut self.released,
            "refund_required" => &mut self.refund_required,
            _ => &mut self.refunded,
        }
    }
}

impl Tally {
    pub fn available(&self) -> i64 {
        self.ticket_count - self.reserved - self.sold
    }

    /// Share of reservations whose hold ran out.
    pub fn hold_expiry_rate(&self) -> f64 {
        ratio(self.expirations, self.reservations)
    }

    /// Share of reservations that ended paid.
    pub fn conversion_rate(&self) -> f64 {
        ratio(self.payments, self.reservations)
    }
}

fn ratio(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// What the tally needs of one order.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderState {
    pub order_id: Uuid,
    pub status: String,
    pub tickets: i32,
    pub amount_minor: i64,
    pub refunded_minor: i64,
}

impl OrderState {
    fn revenue(&self) -> i64 {
        if self.status == "paid" {
            self.amount_minor - self.refunded_minor
        } else {
            0
        }
    }
}

/// Tickets, orders and revenue issued in one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourlySales {
    pub tickets: i64,
    pub orders: i64,
    pub revenue_minor: i64,
}

/// A batch's working set: the raffle's tally, the orders it touches, hourly sales added.
pub struct Fold {
    pub tally: Tally,
    pub orders: HashMap<Uuid, OrderState>,
    pub dirty: Vec<Uuid>,
    pub hourly: HashMap<DateTime<Utc>, HourlySales>,
}

/// The orders a batch touches, and whether it cancels the raffle (which touches every
/// live order).
pub fn touched_orders(events: &[Envelope]) -> (Vec<Uuid>, bool) {
    let mut touched = Vec::new();
    let mut cancelled = false;
    for envelope in events {
        match &envelope.event {
            RaffleEvent::HoldsExpired { holds, .. } => {
                touched.extend(holds.iter().map(|h| h.order_id))
            }
            RaffleEvent::RaffleCancelled { .. } => cancelled = true,
            event => touched.extend(event.order_id()),
        }
    }
    touched.sort_unstable();
    touched.dedup();
    (touched, cancelled)
}

impl Fold {
    /// Moves an order to `status`, keeping every count and the revenue in step.
    fn change(&mut self, order_id: Uuid, f: impl FnOnce(&mut OrderState)) {
        let Some(order) = self.orders.get_mut(&order_id) else {
            return;
        };
        let before = order.clone();
        f(order);
        let after = order.clone();
        let t = &mut self.tally;
        *t.orders.slot(&before.status) -= 1;
        *t.orders.slot(&after.status) += 1;
        let held = |o: &OrderState, s: &str| if o.status == s { o.tickets as i64 } else { 0 };
        t.reserved += held(&after, "reserved") - held(&before, "reserved");
        t.sold += held(&after, "paid") - held(&before, "paid");
        t.revenue_minor += after.revenue() - before.revenue();
        self.dirty.push(order_id);
    }

    pub fn apply(&mut self, envelope: &Envelope) {
        match &envelope.event {
            RaffleEvent::RaffleCreated { config, .. } => {
                self.tally.organizer_id = config.organizer_id.clone();
                self.tally.currency = config.currency.as_str().to_owned();
                self.tally.ticket_count = config.ticket_count as i64;
                self.tally.status = "draft".into();
            }
            RaffleEvent::SalesOpened { .. } => self.tally.status = "on_sale".into(),
            RaffleEvent::SalesClosed { .. } => self.tally.status = "closed".into(),
            RaffleEvent::WinnersDrawn { .. } => self.tally.status = "drawn".into(),
            RaffleEvent::TicketsReserved {
                order_id,
                numbers,
                amount_minor,
                ..
            } => {
                let order = OrderState {
                    order_id: *order_id,
                    status: "reserved".into(),
                    tickets: numbers.len() as i32,
                    amount_minor: *amount_minor,
                    refunded_minor: 0,
                };
                self.tally.reservations += 1;
                self.tally.orders.reserved += 1;
                self.tally.reserved += order.tickets as i64;
                self.orders.insert(*order_id, order);
                self.dirty.push(*order_id);
            }
            RaffleEvent::ReservationReleased { order_id, .. } => {
                self.change(*order_id, |o| o.status = "released".into())
            }
            RaffleEvent::HoldsExpired { holds, .. } => {
                for hold in holds {
                    self.tally.expirations += 1;
                    self.change(hold.order_id, |o| o.status = "expired".into());
                }
            }
            RaffleEvent::TicketsIssued {
                order_id,
                numbers,
                late,
                at,
                ..
            } => {
                if !self.orders.contains_key(order_id) {
                    return;
                }
                self.tally.payments += 1;
                self.tally.late_payments += i64::from(*late);
                let tickets = numbers.len() as i32;
                self.change(*order_id, |o| {
                    o.status = "paid".into();
                    o.tickets = tickets;
                });
                let amount = self.orders[order_id].amount_minor;
                let hour = at.duration_trunc(TimeDelta::hours(1)).unwrap_or(*at);
                let sales = self.hourly.entry(hour).or_default();
                sales.tickets += tickets as i64;
                sales.orders += 1;
                sales.revenue_minor += amount;
            }
            RaffleEvent::RefundRequired { order_id, .. } => {
                self.tally.refunds_required += 1;
                self.change(*order_id, |o| {
                    if matches!(o.status.as_str(), "reserved" | "expired" | "released") {
                        o.status = "refund_required".into();
                    }
                });
            }
            RaffleEvent::PaymentPartiallyRefunded {
                order_id,
                amount_refunded_minor,
                ..
            } => self.change(*order_id, |o| o.refunded_minor = *amount_refunded_minor),
            RaffleEvent::OrderRefunded {
                order_id,
                amount_minor,
                ..
            } => self.change(*order_id, |o| {
                o.status = "refunded".into();
                o.refunded_minor = *amount_minor;
            }),
            RaffleEvent::RaffleCancelled { .. } => {
                self.tally.status = "cancelled".into();
                let mut live: Vec<Uuid> = self
                    .orders
                    .values()
                    .filter(|o| o.status == "reserved" || o.status == "paid")
                    .map(|o| o.order_id)
                    .collect();
                live.sort_unstable();
                for id in live {
                    self.change(id, |o| {
                        o.status = if o.status == "reserved" {
                            "released".into()
                        } else {
                            "refund_required".into()
                        };
                    });
                }
            }
            RaffleEvent::HoldExtended { .. }
            | RaffleEvent::PaymentRecorded { .. }
            | RaffleEvent::ManualPaymentConfirmed { .. }
            | RaffleEvent::PaymentFlagged { .. }
            | RaffleEvent::PaymentFailed { .. } => {}
        }
    }
}
