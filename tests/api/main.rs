//! End-to-end tests of the HTTP API: the real server (`Application::build`) on a free port,
//! a fresh PostgreSQL database per test, and reqwest as the client.
//!
//! `DATABASE_URL` names the server to create test databases on (else the private cluster);
//! `TEST_LOG=1` shows the server's logs.

mod audit;
mod auth;
mod backpressure;
mod buying;
mod errors;
mod exports;
mod helpers;
mod hostile;
mod idempotency;
mod openapi;
mod rate_limits;
mod read_side;
mod retention;
mod shutdown;
mod trail;
mod webhooks_out;
