//! Why a command was refused. One variant per business rule, each with the data a caller
//! needs to act on it, and a stable `code()` that the HTTP layer uses as its problem `type`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::RaffleStatus;
use crate::orders::OrderStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    PerOrder,
    PerBuyer,
}

impl LimitKind {
    /// The API's words for the limit.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerOrder => "per-order",
            Self::PerBuyer => "per-buyer",
        }
    }
}

/// What kind of refusal an error is, for a caller that must choose how to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// What the command names does not exist.
    NotFound,
    /// The raffle's or the order's state, or a competing command, stands in the way.
    Conflict,
    /// The command itself is invalid.
    Invalid,
}

/// Serializes as `{"code": …, <fields>}`, the data a client can act on, and reads back
/// from it (an idempotency record replays the refusal it stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum RaffleError {
    #[error("the raffle does not exist")]
    RaffleNotFound,
    #[error("the raffle already exists")]
    RaffleAlreadyExists,
    #[error("invalid raffle: {field} {reason}")]
    InvalidRaffle {
        field: Cow<'static, str>,
        reason: Cow<'static, str>,
    },
    #[error("the raffle is {}, not on sale", status.as_str())]
    SalesClosed { status: RaffleStatus },
    #[error("the raffle is {}; this needs it to be {expected}", status.as_str())]
    InvalidRaffleState {
        status: RaffleStatus,
        expected: Cow<'static, str>,
    },
    #[error("numbers outside the raffle: {numbers:?}")]
    InvalidTicketNumber { numbers: Vec<u32> },
    #[error("numbers requested twice: {numbers:?}")]
    DuplicateTicketNumber { numbers: Vec<u32> },
    #[error("numbers already taken: {numbers:?}")]
    TicketsUnavailable { numbers: Vec<u32> },
    #[error("only {available} numbers are free, {requested} requested")]
    NotEnoughTickets { requested: u32, available: u32 },
    #[error(
        "{} limit of {limit} tickets exceeded ({requested} requested, {held} held)",
        kind.as_str()
    )]
    LimitExceeded {
        kind: LimitKind,
        limit: u32,
        requested: u32,
        held: u32,
    },
    #[error("quantity must be at least 1")]
    InvalidQuantity,
    #[error("order {order_id} not found")]
    OrderNotFound { order_id: Uuid },
    #[error("order {order_id} already exists")]
    OrderAlreadyExists { order_id: Uuid },
    #[error("order {order_id} is {}", status.as_str())]
    InvalidOrderState { order_id: Uuid, status: OrderStatus },
    #[error("the seed does not match the draw commitment")]
    DrawSeedMismatch,
    #[error("refund amount must be positive")]
    InvalidRefundAmount,
    #[error("the amount exceeds {limit} minor units, the most a payment provider accepts")]
    AmountTooLarge { limit: i64 },
}

impl RaffleError {
    /// Stable machine-readable code; part of the public API, never renamed.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RaffleNotFound => "raffle_not_found",
            Self::RaffleAlreadyExists => "raffle_already_exists",
            Self::InvalidRaffle { .. } => "invalid_raffle",
            Self::SalesClosed { .. } => "sales_closed",
            Self::InvalidRaffleState { .. } => "invalid_raffle_state",
            Self::InvalidTicketNumber { .. } => "invalid_ticket_number",
            Self::DuplicateTicketNumber { .. } => "duplicate_ticket_number",
            Self::TicketsUnavailable { .. } => "tickets_unavailable",
            Self::NotEnoughTickets { .. } => "not_enough_tickets",
            Self::LimitExceeded { .. } => "limit_exceeded",
            Self::InvalidQuantity => "invalid_quantity",
            Self::OrderNotFound { .. } => "order_not_found",
            Self::OrderAlreadyExists { .. } => "order_already_exists",
            Self::InvalidOrderState { .. } => "invalid_order_state",
            Self::DrawSeedMismatch => "draw_seed_mismatch",
            Self::InvalidRefundAmount => "invalid_refund_amount",
            Self::AmountTooLarge { .. } => "amount_too_large",
        }
    }

    pub fn kind(&self) -> RejectionKind {
        match self {
            Self::RaffleNotFound | Self::OrderNotFound { .. } => RejectionKind::NotFound,
            Self::TicketsUnavailable { .. }
            | Self::NotEnoughTickets { .. }
            | Self::SalesClosed { .. }
            | Self::InvalidRaffleState { .. }
            | Self::InvalidOrderState { .. }
            | Self::OrderAlreadyExists { .. }
            | Self::RaffleAlreadyExists => RejectionKind::Conflict,
            Self::InvalidRaffle { .. }
            | Self::InvalidTicketNumber { .. }
            | Self::DuplicateTicketNumber { .. }
            | Self::LimitExceeded { .. }
            | Self::InvalidQuantity
            | Self::DrawSeedMismatch
            | Self::InvalidRefundAmount
            | Self::AmountTooLarge { .. } => RejectionKind::Invalid,
        }
    }
}
