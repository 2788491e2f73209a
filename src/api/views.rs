//! The JSON shapes of the API (snake_case; numbers are JSON integers; money is integer minor
//! units with an ISO currency). Built from domain state and events, never from SQL rows.

use chrono::{DateTime, Utc};

use crate::audit::chain::Anchor;
use serde::{Deserialize, Serialize};
use tombola_domain::{OrderView, Raffle, RaffleEvent, Winner};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BundleBody {
    pub quantity: u32,
    pub price_minor: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PrizeBody {
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
            available: raffle.available_count(),
            reserved: raffle.reserved_count(),
            sold: raffle.sold_count(),
            winners: raffle.winners().iter().map(WinnerBody::from).collect(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuyerBody {
    pub name: String,
    pub email: String,
    #[serde(default)]
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
    pub buyer: Option<BuyerBody>,
    pub reserved_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub payment: Option<PaymentBody>,
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
        for event in events {
            match event {
                RaffleEvent::TicketsReserved { buyer: b, .. } => {
                    buyer = Some(BuyerBody {
                        name: b.name.clone(),
                        email: b.email.as_str().to_owned(),
                        phone: b.phone.clone(),
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
            expires_at: view.expires_at,
            paid_at: view.issued_at,
            payment: issuing_payment.or(payment),
            receipt: None,
        }
    }
}
