//! Tombola's pure raffle domain.
//!
//! Everything that decides who gets which ticket lives here, and nothing else: no I/O, no
//! SQL, no HTTP, no async runtime of its own. The [`Raffle`] aggregate takes a command and the
//! current state and answers with events (or a [`RaffleError`] carrying what the caller can
//! act on); [`Raffle::apply`] folds events into state. The engine (src/engine) drives this
//! synchronously through [`Raffle::decide`]; cqrs-es drives it through its `Aggregate` impl.
//!
//! Exactly-once issuance is a property of this crate: a payment id or a paid order seen
//! twice yields no events, so whatever delivers commands twice cannot issue twice.

mod aggregate;
pub mod backoff;
mod chunked;
mod clock;
mod commands;
mod config;
pub mod draw;
mod errors;
mod events;
mod money;
mod orders;
mod resident;
mod snapshot;
mod text;
mod tickets;
mod values;

pub use aggregate::{Raffle, RaffleStatus, MAX_EXPIRY_BATCH};
pub use clock::{Clock, FixedClock, RaffleServices, SystemClock};
pub use commands::{
    ConfirmManualPayment, CreateRaffle, ProviderPayment, RaffleCommand, RecordPaymentFailure,
    RefundOrder, Reserve, Selection,
};
pub use config::{
    is_time_zone_name, Bundle, LatePaymentPolicy, Prize, RaffleConfig, MAX_TICKETS_PER_ORDER_CAP,
};
pub use draw::{draw_winners, DrawError, Winner};
pub use errors::{LimitKind, RaffleError, RejectionKind};
pub use events::{ExpiredHold, Payment, RaffleEvent, RefundReason};
pub use money::{Money, MoneyError, MAX_AMOUNT_MINOR};
pub use orders::{OrderStatus, OrderView};
pub use resident::{Need, Supplied};
pub use snapshot::SnapshotError;
pub use text::{json_schema_pattern, parse_text, text_allows, TextKind};
pub use tickets::TicketState;
pub use values::{Buyer, Currency, Email, InvalidValue, PlusAddressing};
