//! Facts about a raffle, in the past tense. Their JSON shape is the log's format: fields are
//! only ever added (with serde defaults), and a breaking change bumps `event_version`.
//! Events carry what read models need (buyer, numbers, amounts) so projections stay free of
//! business logic.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::RaffleConfig;
use crate::draw::Winner;
use crate::values::{Buyer, Currency};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RaffleEvent {
    RaffleCreated {
        config: RaffleConfig,
        at: DateTime<Utc>,
    },
    SalesOpened {
        at: DateTime<Utc>,
    },
    TicketsReserved {
        order_id: Uuid,
        buyer: Buyer,
        numbers: Vec<u32>,
        amount_minor: i64,
        currency: Currency,
        at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    ReservationReleased {
        order_id: Uuid,
        numbers: Vec<u32>,
        at: DateTime<Utc>,
    },
    /// Many holds expired in one sweep of the writer's timer queue.
    HoldsExpired {
        holds: Vec<ExpiredHold>,
        at: DateTime<Utc>,
    },
    HoldExtended {
        order_id: Uuid,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// A provider reported money received. What it led to follows in the same batch:
    /// `TicketsIssued`, `PaymentFlagged` or `RefundRequired`.
    PaymentRecorded {
        order_id: Uuid,
        payment: Payment,
        at: DateTime<Utc>,
    },
    ManualPaymentConfirmed {
        order_id: Uuid,
        method: String,
        reference: String,
        confirmed_by: String,
        amount_minor: i64,
        currency: Currency,
        at: DateTime<Utc>,
    },
    /// Happens at most once per order.
    TicketsIssued {
        order_id: Uuid,
        numbers: Vec<u32>,
        /// Paid after the hold had ended.
        #[serde(default)]
        late: bool,
        /// The order's original numbers, when they had been resold and the raffle's policy
        /// substituted `numbers` for them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replaced_numbers: Vec<u32>,
        at: DateTime<Utc>,
    },
    /// A recorded payment that issues nothing: wrong amount or currency, or an id seen on
    /// another order. An operator resolves it.
    PaymentFlagged {
        order_id: Uuid,
        payment_id: String,
        reason: String,
        expected_amount_minor: i64,
        expected_currency: Currency,
        at: DateTime<Utc>,
    },
    /// Money was received that must go back to the buyer.
    RefundRequired {
        order_id: Uuid,
        #[serde(default)]
        payment_id: Option<String>,
        amount_minor: i64,
        currency: Currency,
        reason: RefundReason,
        at: DateTime<Utc>,
    },
    PaymentFailed {
        order_id: Uuid,
        provider: String,
        payment_id: String,
        provider_event_id: String,
        reason: String,
        at: DateTime<Utc>,
    },
    /// Part of the payment went back; the tickets stay issued.
    PaymentPartiallyRefunded {
        order_id: Uuid,
        amount_refunded_minor: i64,
        #[serde(default)]
        refund_id: Option<String>,
        at: DateTime<Utc>,
    },
    OrderRefunded {
        order_id: Uuid,
        numbers: Vec<u32>,
        amount_minor: i64,
        /// True while sales are open: the numbers can be sold again.
        returned_to_pool: bool,
        reason: String,
        #[serde(default)]
        refund_id: Option<String>,
        at: DateTime<Utc>,
    },
    SalesClosed {
        at: DateTime<Utc>,
    },
    WinnersDrawn {
        seed: String,
        public_entropy: String,
        winners: Vec<Winner>,
        at: DateTime<Utc>,
    },
    /// Live holds are released and every paid order becomes refund-required.
    RaffleCancelled {
        reason: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiredHold {
    pub order_id: Uuid,
    pub numbers: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub provider: String,
    pub payment_id: String,
    pub provider_event_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub method: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundReason {
    /// The hold had ended and its numbers were sold to someone else.
    TicketsTaken,
    /// Paid while the raffle was not on sale.
    SalesClosed,
    /// The order was already paid by another payment.
    AlreadyPaid,
    /// The order was refunded or already owed a refund.
    OrderNotPayable,
    /// The payment names an order this raffle never had.
    UnknownOrder,
    /// The raffle was cancelled.
    RaffleCancelled,
}

impl RefundReason {
    /// The stable name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TicketsTaken => "tickets_taken",
            Self::SalesClosed => "sales_closed",
            Self::AlreadyPaid => "already_paid",
            Self::OrderNotPayable => "order_not_payable",
            Self::UnknownOrder => "unknown_order",
            Self::RaffleCancelled => "raffle_cancelled",
        }
    }
}

impl RaffleEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::RaffleCreated { .. } => "RaffleCreated",
            Self::SalesOpened { .. } => "SalesOpened",
            Self::TicketsReserved { .. } => "TicketsReserved",
            Self::ReservationReleased { .. } => "ReservationReleased",
            Self::HoldsExpired { .. } => "HoldsExpired",
            Self::HoldExtended { .. } => "HoldExtended",
            Self::PaymentRecorded { .. } => "PaymentRecorded",
            Self::ManualPaymentConfirmed { .. } => "ManualPaymentConfirmed",
            Self::TicketsIssued { .. } => "TicketsIssued",
            Self::PaymentFlagged { .. } => "PaymentFlagged",
            Self::RefundRequired { .. } => "RefundRequired",
            Self::PaymentFailed { .. } => "PaymentFailed",
            Self::PaymentPartiallyRefunded { .. } => "PaymentPartiallyRefunded",
            Self::OrderRefunded { .. } => "OrderRefunded",
            Self::SalesClosed { .. } => "SalesClosed",
            Self::WinnersDrawn { .. } => "WinnersDrawn",
            Self::RaffleCancelled { .. } => "RaffleCancelled",
        }
    }

    /// The order this event is about, if any (for audit indexes and routing).
    pub fn order_id(&self) -> Option<Uuid> {
        match self {
            Self::TicketsReserved { order_id, .. }
            | Self::ReservationReleased { order_id, .. }
            | Self::HoldExtended { order_id, .. }
            | Self::PaymentRecorded { order_id, .. }
            | Self::ManualPaymentConfirmed { order_id, .. }
            | Self::TicketsIssued { order_id, .. }
            | Self::PaymentFlagged { order_id, .. }
            | Self::RefundRequired { order_id, .. }
            | Self::PaymentFailed { order_id, .. }
            | Self::PaymentPartiallyRefunded { order_id, .. }
            | Self::OrderRefunded { order_id, .. } => Some(*order_id),
            _ => None,
        }
    }
}

impl DomainEvent for RaffleEvent {
    fn event_type(&self) -> String {
        self.name().to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
