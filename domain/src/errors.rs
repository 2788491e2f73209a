//! Why a command was refused. One variant per business rule, each with the data a caller
//! needs to act on it, and a stable `code()` that the HTTP layer uses as its problem `type`.

use serde::Serialize;
use uuid::Uuid;

use crate::aggregate::RaffleStatus;
use crate::orders::OrderStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    PerOrder,
    PerBuyer,
}

/// Serializes as `{"code": …, <fields>}`, the data a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum RaffleError {
    #[error("the raffle does not exist")]
    RaffleNotFound,
    #[error("the raffle already exists")]
    RaffleAlreadyExists,
    #[error("invalid raffle: {field} {reason}")]
    InvalidRaffle {
        field: &'static str,
        reason: &'static str,
    },
    #[error("the raffle is {status:?}, not on sale")]
    SalesClosed { status: RaffleStatus },
    #[error("the raffle is {status:?}; this needs it to be {expected}")]
    InvalidRaffleState {
        status: RaffleStatus,
        expected: &'static str,
    },
    #[error("numbers outside the raffle: {numbers:?}")]
    InvalidTicketNumber { numbers: Vec<u32> },
    #[error("numbers requested twice: {numbers:?}")]
    DuplicateTicketNumber { numbers: Vec<u32> },
    #[error("numbers already taken: {numbers:?}")]
    TicketsUnavailable { numbers: Vec<u32> },
    #[error("only {available} numbers are free, {requested} requested")]
    NotEnoughTickets { requested: u32, available: u32 },
    #[error("{kind:?} limit of {limit} tickets exceeded ({requested} requested, {held} held)")]
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
    #[error("order {order_id} is {status:?}")]
    InvalidOrderState { order_id: Uuid, status: OrderStatus },
    #[error("the seed does not match the draw commitment")]
    DrawSeedMismatch,
    #[error("refund amount must be positive")]
    InvalidRefundAmount,
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
        }
    }
}
