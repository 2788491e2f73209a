//! Given/when/then tests of every `RaffleCommand` through cqrs-es's `TestFramework`: each
//! success, each refusal the command can produce, and each duplicate (which yields no events).

#[path = "../common/mod.rs"]
mod common;

mod lifecycle;
mod payments;
mod refunds;
mod reservations;
