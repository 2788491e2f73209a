//! The JSON shapes of the API (snake_case; numbers are JSON integers; money is integer minor
//! units with an ISO currency). Built from domain state and events, never from SQL rows.

use chrono::{DateTime, Utc};

use crate::audit::chain::Anchor;
use serde::{Deserialize, Serialize};
use tombola_domain::{OrderStatus, OrderView, Raffle, RaffleEvent, Winner};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BundleBody {
    #[schema(minimum = 2)]
    pub quantity: u32,
    #[schema(minimum = 1, maximum = 99_999_999)]
    pub price_minor: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PrizeBody {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Early-bird prize: only tickets issued before this instant take part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_bird_cutoff: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WinnerBody {
    pub prize_index: u32,
    pub prize: String,
    pub number: u32,
    pub order_id: Uuid,
}

impl From<&Winner> for WinnerBody {
    fn from(w: &Winner) -> Self {
        Self {
            prize_index: w.prize_index,
            prize: w.prize.clone(),
            number: w.number,
            order_id: w.order_id,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RaffleBody {
    pub id: Uuid,
    pub title: String,
    pub organizer_id: String,
    /// `draft`, `on_sale`, `closed`, `drawn` or `cancelled`.
    pub status: String,
    pub ticket_count: u32,
    pub first_number: u32,
    pub number_width: u8,
    pub price_minor: i64,
    pub currency: String,
    pub bundles: Vec<BundleBody>,
    pub hold_minutes: u32,
    pub max_hold_minutes: u32,
    pub max_tickets_per_order: u32,
    pub max_tickets_per_buyer: Option<u32>,
    pub prizes: Vec<PrizeBody>,
    pub draw_commitment: String,
    /// `refund` or `substitute`.
    pub late_payment_policy: String,
    /// `separate_buyers` or `same_buyer`: whether plus-addresses are one buyer.
    pub plus_addressing: String,
    /// IANA time zone exports show times in.
    pub time_zone: String,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
    pub winners: Vec<WinnerBody>,
}

impl RaffleBody {
    pub fn from_raffle(raffle: &Raffle) -> Option<Self> {
        let c = raffle.config()?;
        Some(Self {
            id: c.raffle_id,
            title: c.title.clone(),
            organizer_id: c.organizer_id.clone(),
            status: raffle.status().as_str().to_owned(),
            ticket_count: c.ticket_count,
            first_number: c.first_number,
            number_width: c.number_width,
            price_minor: c.price_minor,
            currency: c.currency.to_string(),
            bundles: c
                .bundles
                .iter()
                .map(|b| BundleBody {
                    quantity: b.quantity,
                    price_minor: b.price_minor,
                })
                .collect(),
            hold_minutes: c.hold_seconds / 60,
            max_hold_minutes: c.max_hold_seconds / 60,
            max_tickets_per_order: c.max_tickets_per_order,
            max_tickets_per_buyer: c.max_tickets_per_buyer,
            prizes: c
                .prizes
                .iter()
                .map(|p| PrizeBody {
                    name: p.name.clone(),
                    early_bird_cutoff: p.early_bird_cutoff,
                })
                .collect(),
            draw_commitment: c.draw_commitment.clone(),
            late_payment_policy: c.late_payment_policy.as_str().to_owned(),
            plus_addressing: c.plus_addressing.as_str().to_owned(),
            time_zone: c.time_zone().to_owned(),
            available: raffle.available_count(),
            reserved: raffle.reserved_count(),
            sold: raffle.sold_count(),
            winners: raffle.winners().iter().map(WinnerBody::from).collect(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuyerBody {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[schema(min_length = 3, max_length = 254)]
    pub email: String,
    #[serde(default)]
    #[schema(max_length = 32)]
    pub phone: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PaymentBody {
    /// `stripe`, …, or `manual` for an organizer's confirmation.
    pub provider: String,
    pub payment_id: Option<String>,
    pub method: String,
    pub reference: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub at: DateTime<Utc>,
}

/// A payment on this order that an operator must act on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderFlag {
    /// `payment_flagged` (a payment that issued nothing: wrong amount or currency, or a
    /// payment id seen on another order) or `refund_required` (money to send back).
    pub kind: String,
    /// E.g. `amount_mismatch`, `payment_id_reused`, `tickets_taken`, `raffle_cancelled`.
    pub reason: String,
    pub payment_id: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderBody {
    pub order_id: Uuid,
    pub raffle_id: Uuid,
    /// `reserved`, `paid`, `released`, `expired`, `refunded` or `refund_required`.
    pub status: String,
    pub numbers: Vec<u32>,
    /// Integer minor units (cents).
    pub amount: i64,
    pub currency: String,
    /// Absent only in the answer to a command whose order history could not be read right
    /// after it committed (the database away); `GET` the order for it.
    pub buyer: Option<BuyerBody>,
    pub reserved_at: DateTime<Utc>,
    /// When the hold ends; only while the order is `reserved`.
    pub expires_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub payment: Option<PaymentBody>,
    /// Payments on this order that need an operator, oldest first; empty when none.
    pub flags: Vec<OrderFlag>,
    /// Once paid: `SEQUENCE:HASH` of the event that issued the tickets. Keep it: `tombola
    /// audit verify --receipt` (or `GET …/audit/verify?receipt=`) proves against the log
    /// that the issue is still there, unchanged (docs/AUDIT.md).
    pub receipt: Option<Anchor>,
}

impl OrderBody {
    /// The live order from the aggregate, completed with its buyer and payment from its
    /// events (the aggregate keeps only what decisions need).
    pub fn new(raffle_id: Uuid, view: OrderView, events: &[RaffleEvent]) -> Self {
        let mut buyer = None;
        let mut payment = None;
        let mut issuing_payment = None;
        let mut flags = Vec::new();
        for event in events {
            match event {
                RaffleEvent::PaymentFlagged {
                    payment_id,
                    reason,
                    at,
                    ..
                } => flags.push(OrderFlag {
                    kind: "payment_flagged".into(),
                    reason: reason.clone(),
                    payment_id: Some(payment_id.clone()),
                    at: *at,
                }),
                RaffleEvent::RefundRequired {
                    payment_id,
                    reason,
                    at,
                    ..
                } => flags.push(OrderFlag {
                    kind: "refund_required".into(),
                    reason: reason.as_str().to_owned(),
                    payment_id: payment_id.clone(),
                    at: *at,
                }),
                RaffleEvent::TicketsReserved { buyer: b, .. } => {
                    buyer = Some(BuyerBody {
                        name: b.name().to_owned(),
                        email: b.email().as_str().to_owned(),
                        phone: b.phone().map(str::to_owned),
                    })
                }
                RaffleEvent::PaymentRecorded { payment: p, at, .. } => {
                    payment = Some(PaymentBody {
                        provider: p.provider.clone(),
                        payment_id: Some(p.payment_id.clone()),
                        method: p.method.clone(),
                        reference: None,
                        amount: p.amount_minor,
                        currency: p.currency.to_string(),
                        at: *at,
                    })
                }
                RaffleEvent::ManualPaymentConfirmed {
                    method,
                    reference,
                    amount_minor,
                    currency,
                    at,
                    ..
                } => {
                    payment = Some(PaymentBody {
                        provider: "manual".into(),
                        payment_id: None,
                        method: method.clone(),
                        reference: Some(reference.clone()),
                        amount: *amount_minor,
                        currency: currency.to_string(),
                        at: *at,
                    })
                }
                RaffleEvent::TicketsIssued { .. } => issuing_payment = payment.clone(),
                // The money went back: nothing is owed any more.
                RaffleEvent::OrderRefunded { .. } => {
                    flags.retain(|f: &OrderFlag| f.kind != "refund_required")
                }
                _ => {}
            }
        }
        Self {
            order_id: view.order_id,
            raffle_id,
            status: view.status.as_str().to_owned(),
            numbers: view.numbers,
            amount: view.amount_minor,
            currency: view.currency.to_string(),
            buyer,
            reserved_at: view.reserved_at,
            expires_at: (view.status == OrderStatus::Reserved).then_some(view.expires_at),
            paid_at: view.issued_at,
            payment: issuing_payment.or(payment),
            flags,
            receipt: None,
        }
    }
}

#[cfg(test)]
mod reserved_view_tests {
    use std::sync::Arc;

    use tombola_domain::{
        Buyer, CreateRaffle, FixedClock, RaffleCommand, RaffleServices, Reserve, Selection,
    };

    use super::*;

    #[test]
    fn a_reservation_event_shows_the_order_as_the_raffle_does() {
        // Sub-second times: the raffle keeps whole seconds.
        let now = DateTime::from_timestamp(1_800_000_000, 250_000_000).unwrap();
        let services = RaffleServices::deterministic(7, Arc::new(FixedClock::new(now)));
        let raffle_id = Uuid::now_v7();
        let mut raffle = Raffle::default();
        let buyer = Buyer::parse("Ada", "ada@example.com", None).unwrap();
        let mut commands = vec![
            RaffleCommand::Create(CreateRaffle::example(raffle_id, 1_000)),
            RaffleCommand::OpenSales,
        ];
        let orders = [Uuid::now_v7(), Uuid::now_v7()];
        for (order_id, selection) in orders
            .into_iter()
            .zip([Selection::Numbers(vec![9, 2, 5]), Selection::Random(3)])
        {
            commands.push(RaffleCommand::Reserve(Reserve {
                order_id,
                buyer: buyer.clone(),
                selection,
            }));
        }
        let mut reserved = Vec::new();
        for command in commands {
            for event in raffle.decide(command, &services).unwrap() {
                raffle.apply_event(&event);
                reserved.extend(OrderView::reserved(&event));
            }
        }
        assert_eq!(reserved.len(), 2);
        for view in reserved {
            assert_eq!(Some(view.clone()), raffle.order(view.order_id));
            assert_eq!(view.reserved_at.timestamp_subsec_nanos(), 0);
        }
    }
}
