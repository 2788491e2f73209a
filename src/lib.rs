//! Tombola: an event-sourced raffle ticketing engine.
//!
//! `store` persists raffle streams in Postgres; `engine` runs one writer per raffle with
//! group commit; the domain rules live in the `tombola-domain` crate.

pub mod engine;
pub mod store;
pub mod testing;
