//! What the engine answers when a command does not commit.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tombola_domain::RaffleError;

/// A domain rule refused the command. Stored with idempotency records, so it is plain data:
/// the stable `code`, a human `message` and the fields a client can act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: String,
    pub message: String,
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl From<&RaffleError> for Rejection {
    fn from(error: &RaffleError) -> Self {
        let mut data = match serde_json::to_value(error) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        data.remove("code");
        Self {
            code: error.code().to_owned(),
            message: error.to_string(),
            data,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("{}", .0.message)]
    Rejected(Rejection),
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyConflict,
    #[error("the raffle is busy; retry after {retry_after:?}")]
    Overloaded { retry_after: Duration },
    /// Storage failed or the writer stopped; the command may be retried (with the same
    /// Idempotency-Key, to be safe).
    #[error("temporarily unavailable: {reason}")]
    Unavailable { reason: String },
    /// The append was sent, and the connection was lost before its reply: the command may
    /// or may not have committed, and the stream could not tell yet. Retry only with the
    /// same Idempotency-Key, or look the outcome up (docs/CLIENTS.md).
    #[error("the outcome is unknown: {reason}")]
    OutcomeUnknown { reason: String },
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl EngineError {
    pub(crate) fn unavailable(error: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            reason: error.to_string(),
        }
    }
}
