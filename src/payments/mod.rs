//! Payments in: provider webhooks verified, stored in a durable inbox, answered at once, and
//! applied by workers as raffle commands.
//!
//! Exactly-once comes from two layers: the inbox's primary key collapses duplicate
//! deliveries, and the raffle itself ignores a payment id it has already applied. So a
//! worker that crashes after the command committed but before marking the row done only
//! causes a harmless second attempt.

pub mod inbox;
pub mod intake;
pub mod provider;
pub mod stripe;
pub mod worker;

pub use provider::{PaymentAction, PaymentProvider, ProviderEvent, VerifyError};
