//! Tombola's read side: read models fed from the raffles' event streams.
//!
//! A [`Projection`] owns some tables and knows how to apply a batch of one raffle's events to
//! them inside a transaction. The [`Runtime`] drives every projection over every raffle: it
//! reads each stream in sequence order after the projection's checkpoint, applies a batch and
//! moves the checkpoint in the same transaction, so a crash can neither skip an event nor
//! apply one twice. One node at a time owns a (projection, raffle): the batch's transaction
//! holds an advisory lock on the pair. Wake-ups (the engine's commit broadcast, NOTIFY from
//! other nodes) only make it look sooner; a poll finds whatever a lost wake-up missed.
//!
//! This crate depends on the domain's event types and on PostgreSQL, never on the engine or
//! on HTTP: the server wires it up (wake-ups, endpoints).

pub mod csv;
mod envelope;
pub mod models;
mod projection;
pub mod queries;
mod rebuild;
mod runtime;
mod schema;
mod status;
mod timings;
mod tx;

pub use envelope::{Envelope, EventSource};
pub use projection::{ApplyError, Batch, BoxFuture, Projection, Slot, Tables};
pub use rebuild::{RebuildError, RebuildProgress};
pub use runtime::{Runtime, RuntimeConfig, RuntimeHandle};
pub use schema::{migrate, ReadStoreError, MIGRATOR};
pub use status::{ProjectionStatus, RaffleLag, Status};
pub use timings::RebuildTimings;
pub use tx::begin;

/// The aggregate type under which raffle streams are stored (cqrs-es `Aggregate::TYPE`).
pub const RAFFLE_STREAM: &str = "raffle";
/// The write side's NOTIFY channel: `raffle:sequence` after each commit.
pub const EVENTS_CHANNEL: &str = "tombola_events";
