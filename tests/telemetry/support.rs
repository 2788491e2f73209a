//! The names `stripe_events` (shared with the payment tests) expects.

pub use tombola_testkit::*;
