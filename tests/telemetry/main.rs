//! Telemetry, end to end: what a real server's logs, spans and exported traces say about a
//! buy flow. Every test here shares the binary's one capturing subscriber
//! (`tombola_testkit::telemetry::capture`): logs and spans at TRACE level in memory, and
//! spans exported over OTLP/HTTP to a receiver stand-in on loopback.
//!
//! `traces` follows one reservation from the HTTP request down to the append;
//! `personal_data` searches everything of a buy flow for the buyer, keys and secrets;
//! `deploy` checks the dashboards, alert rules and nginx example in `deploy/` against the
//! metrics the code exports; `balancer` runs three nodes behind that nginx example.
//!
//! Needs PostgreSQL: `DATABASE_URL` (or the private cluster, see `tombola::testing`).

mod balancer;
mod deploy;
mod personal_data;
#[path = "../payments/stripe_events.rs"]
#[expect(dead_code, reason = "the payment tests use the other events")]
mod stripe_events;
mod support;
mod traces;
mod webhooks;
