//! What every payment provider module supplies: signature verification and a translation of
//! its events into [`PaymentAction`]s. A second provider is one more module.

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use tombola_domain::Currency;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing signature header")]
    MissingSignature,
    #[error("malformed signature header")]
    MalformedSignature,
    #[error("timestamp outside the tolerance window")]
    TimestampOutOfTolerance,
    #[error("no signature matches")]
    NoMatchingSignature,
    #[error("body is not a valid event: {0}")]
    InvalidBody(String),
}

/// A verified delivery, reduced to what Tombola acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderEvent {
    pub event_id: String,
    pub event_type: String,
    pub created: DateTime<Utc>,
    pub raffle_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub action: PaymentAction,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PaymentAction {
    Succeeded {
        payment_id: String,
        amount_minor: i64,
        currency: Currency,
        method: String,
    },
    Failed {
        payment_id: String,
        reason: String,
    },
    /// A delayed method is under way (e.g. a cash voucher): keep the hold until `until`.
    Pending {
        payment_id: String,
        until: DateTime<Utc>,
    },
    /// `amount_refunded` of `amount` went back (cumulative).
    Refunded {
        payment_id: String,
        refund_id: String,
        amount_refunded_minor: i64,
    },
    /// Stored and acknowledged, nothing to do.
    Ignored,
}

impl PaymentAction {
    pub fn payment_id(&self) -> Option<&str> {
        match self {
            Self::Succeeded { payment_id, .. }
            | Self::Failed { payment_id, .. }
            | Self::Pending { payment_id, .. }
            | Self::Refunded { payment_id, .. } => Some(payment_id),
            Self::Ignored => None,
        }
    }
}

pub trait PaymentProvider: Send + Sync + 'static {
    /// Stable name, stored with every delivery and payment (`stripe`).
    fn name(&self) -> &'static str;
    /// Checks the delivery's authenticity against the raw body, before anything is stored.
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), VerifyError>;
    /// Reads a verified body.
    fn parse(&self, body: &[u8]) -> Result<ProviderEvent, VerifyError>;
}
