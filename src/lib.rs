//! Tombola: an event-sourced raffle ticketing engine.
//!
//! `store` persists raffle streams in Postgres; `engine` runs one writer per raffle with
//! group commit over the pure rules of the `tombola-domain` crate; `api` is the thin HTTP
//! layer; `cli` and `startup` run it all.

pub mod api;
pub mod audit;
pub use tombola_domain::backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod export;
pub mod limits;
pub mod payments;
pub mod pgcluster;
pub mod progress;
pub mod retention;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod webhooks;
