//! What the engine answers when a command does not commit.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tombola_domain::RaffleError;

/// A domain rule refused the command. Stored with idempotency records as plain data (the
/// stable `code`, a human `message` and the fields a client can act on) and read back into
/// the domain's error, so callers match on the error rather than on its code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "StoredRejection", try_from = "StoredRejection")]
pub struct Rejection {
    pub error: RaffleError,
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        self.error.code()
    }

    pub fn message(&self) -> String {
        self.error.to_string()
    }

    /// The error's fields, without its code.
    pub fn data(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(&self.error) {
            Ok(serde_json::Value::Object(mut map)) => {
                map.remove("code");
                map
            }
            _ => serde_json::Map::new(),
        }
    }
}

impl From<&RaffleError> for Rejection {
    fn from(error: &RaffleError) -> Self {
        Self {
            error: error.clone(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredRejection {
    code: String,
    message: String,
    data: serde_json::Map<String, serde_json::Value>,
}

impl From<Rejection> for StoredRejection {
    fn from(rejection: Rejection) -> Self {
        Self {
            code: rejection.code().to_owned(),
            message: rejection.message(),
            data: rejection.data(),
        }
    }
}

impl TryFrom<StoredRejection> for Rejection {
    type Error = serde_json::Error;
    fn try_from(stored: StoredRejection) -> Result<Self, Self::Error> {
        let mut fields = stored.data;
        fields.insert("code".into(), stored.code.into());
        Ok(Self {
            error: serde_json::from_value(serde_json::Value::Object(fields))?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("{}", .0.error)]
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
