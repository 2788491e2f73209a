//! Payments in, end to end: Stripe deliveries signed as Stripe signs them, posted to a real
//! Tombola server over HTTP, stored in its inbox on a fresh PostgreSQL database per test,
//! and applied by the inbox worker to the raffle.
//!
//! `signatures` checks the verifier against vectors from Stripe's official library; `race`
//! floods one payment with concurrent deliveries; `crash` cuts a worker between the
//! raffle's commit and the inbox update; `late` pays after the hold expired (on a fixed
//! clock); `mapping` covers what each kind of event does, in and out of order.
//!
//! Needs PostgreSQL: `DATABASE_URL` (or the private cluster, see `tombola::testing`).

mod crash;
mod late;
mod lost_reply;
mod mapping;
mod race;
mod signatures;
mod stripe_events;
mod support;
