//! What callers ask a raffle to do. Commands carry parsed values only; the time and the
//! randomness they need come from [`crate::RaffleServices`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{Bundle, LatePaymentPolicy, Prize};
use crate::values::{Buyer, Currency, PlusAddressing};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RaffleCommand {
    Create(CreateRaffle),
    OpenSales,
    Reserve(Reserve),
    /// The buyer gives the hold up.
    Release {
        order_id: Uuid,
    },
    /// Expires every hold due at the clock's now, up to [`crate::MAX_EXPIRY_BATCH`] per event.
    ExpireDueHolds,
    /// A payment is pending (e.g. a cash voucher): keep the hold until `until`, capped at the
    /// raffle's maximum hold.
    ExtendHold {
        order_id: Uuid,
        until: DateTime<Utc>,
    },
    RecordPayment(ProviderPayment),
    RecordPaymentFailure(RecordPaymentFailure),
    ConfirmManualPayment(ConfirmManualPayment),
    Refund(RefundOrder),
    CloseSales,
    Draw {
        seed: String,
        public_entropy: String,
    },
    Cancel {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateRaffle {
    pub raffle_id: Uuid,
    pub title: String,
    pub organizer_id: String,
    pub ticket_count: u32,
    pub first_number: u32,
    pub number_width: Option<u8>,
    pub price_minor: i64,
    pub currency: Currency,
    pub bundles: Vec<Bundle>,
    pub hold_seconds: Option<u32>,
    pub max_hold_seconds: Option<u32>,
    pub max_tickets_per_order: u32,
    pub max_tickets_per_buyer: Option<u32>,
    pub prizes: Vec<Prize>,
    pub draw_commitment: String,
    pub late_payment_policy: LatePaymentPolicy,
    pub plus_addressing: PlusAddressing,
    /// IANA time zone the raffle's times are shown in (exports); `None`: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

impl CreateRaffle {
    /// A valid raffle with round defaults; tests and benchmarks adjust what they need.
    pub fn example(raffle_id: Uuid, ticket_count: u32) -> Self {
        Self {
            raffle_id,
            title: "Example raffle".into(),
            organizer_id: "org-1".into(),
            ticket_count,
            first_number: 1,
            number_width: None,
            price_minor: 500,
            currency: Currency::parse("USD").expect("valid"),
            bundles: Vec::new(),
            hold_seconds: None,
            max_hold_seconds: None,
            max_tickets_per_order: 100,
            max_tickets_per_buyer: None,
            prizes: vec![Prize {
                name: "First prize".into(),
                early_bird_cutoff: None,
            }],
            // sha256("seed")
            draw_commitment: "19b25856e1c150ca834cffc8b59b23adbd0ec0389e58eb22b3b64768098d002b"
                .into(),
            late_payment_policy: LatePaymentPolicy::Refund,
            plus_addressing: PlusAddressing::SeparateBuyers,
            time_zone: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selection {
    /// These exact numbers, or nothing.
    Numbers(Vec<u32>),
    /// This many numbers chosen uniformly among the free ones.
    Random(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserve {
    pub order_id: Uuid,
    pub buyer: Buyer,
    pub selection: Selection,
}

/// A payment reported by a provider (Stripe, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderPayment {
    pub order_id: Uuid,
    pub provider: String,
    pub payment_id: String,
    pub provider_event_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub method: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordPaymentFailure {
    pub order_id: Uuid,
    pub provider: String,
    pub payment_id: String,
    pub provider_event_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmManualPayment {
    pub order_id: Uuid,
    pub method: String,
    pub reference: String,
    pub confirmed_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundOrder {
    pub order_id: Uuid,
    /// Total refunded so far for this order's payment (Stripe's `amount_refunded`); `None`
    /// means the whole amount. Less than the order's amount is a partial refund.
    pub amount_refunded_minor: Option<i64>,
    pub reason: String,
    /// The provider's refund or charge id, when a provider reported it.
    pub refund_id: Option<String>,
}
