//! Outbound webhooks (decision 0016, docs/WEBHOOKS.md): organizers register endpoints; the
//! `webhooks_outbox` subscriber turns committed events into messages and deliveries; the
//! delivery worker sends them signed per Standard Webhooks, retries on a schedule, opens a
//! circuit per failing endpoint, dead-letters after the last attempt, and records every
//! attempt on the raffle's delivery stream. Nothing here runs on the command path: a sale
//! commits, and the outbox finds it afterwards, like any projection.

pub mod deliveries;
pub mod endpoints;
pub mod journal;
pub mod messages;
mod outbox;
mod running;
mod runtime;
pub mod signature;
pub mod targets;
mod worker;

use std::time::Duration;

pub use endpoints::{Endpoint, EndpointError, NewEndpoint, PatchEndpoint};
pub use outbox::{Outbox, NAME as OUTBOX};
pub use running::{start, Running, Webhooks};
pub use worker::Worker;

/// How the delivery worker behaves; [`Config::default`] is production's.
#[derive(Debug, Clone)]
pub struct Config {
    /// Delays before each retry (the first attempt goes at once); after the last retry
    /// fails, the message is dead-lettered.
    pub retry_schedule: Vec<Duration>,
    /// Deliveries to loopback, private, link-local addresses and over plain http.
    pub allow_private_targets: bool,
    /// One attempt's time limit, connection to the end of the response.
    pub timeout: Duration,
    /// How long a claimed delivery stays this node's: longer than `timeout`, so only a
    /// node that died (or hung) loses it.
    pub lease: Duration,
    /// Attempts in flight on this node.
    pub concurrency: usize,
    /// Attempts in flight to one endpoint, all nodes together (one while its circuit is
    /// half-open).
    pub per_endpoint: i32,
    /// How often the worker looks for due deliveries besides being woken.
    pub poll_interval: Duration,
    /// Failures in a row that open an endpoint's circuit.
    pub circuit_threshold: i32,
    /// First open period; doubles for each reopening up to `circuit_max`.
    pub circuit_base: Duration,
    pub circuit_max: Duration,
    /// An endpoint failing without a single success for this long is disabled.
    pub disable_after: Duration,
    /// Longest `Retry-After` honoured.
    pub retry_after_max: Duration,
    /// Default grace period of a rotated secret.
    pub rotation_grace: Duration,
    /// Off: no subscriber and no worker on this node (endpoints can still be managed).
    pub enabled: bool,
    /// Connections of the outbound webhooks' own pool (the subscriber, claims, settlements).
    pub db_connections: u32,
    /// Niceness of the threads the subscriber and the worker run on (decision 0030).
    pub nice: i32,
}

/// Deliveries yield the CPU to requests by this much (decision 0030).
pub const DEFAULT_NICE: i32 = 10;

impl Default for Config {
    fn default() -> Self {
        Self {
            retry_schedule: parse_schedule(DEFAULT_SCHEDULE).expect("the default schedule parses"),
            allow_private_targets: false,
            timeout: Duration::from_secs(15),
            lease: Duration::from_secs(60),
            concurrency: 64,
            per_endpoint: 16,
            poll_interval: Duration::from_secs(1),
            circuit_threshold: 5,
            circuit_base: Duration::from_secs(30),
            circuit_max: Duration::from_secs(600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            retry_after_max: Duration::from_secs(3600),
            rotation_grace: Duration::from_secs(24 * 3600),
            enabled: true,
            db_connections: 8,
            nice: DEFAULT_NICE,
        }
    }
}

/// Retries after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h: eight attempts over ~28 h.
pub const DEFAULT_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";

/// A retry schedule as a flag takes it: `1s,2s,5s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        parse_schedule(text).map(Schedule)
    }
}

/// `1s,2s,5s` (units ms, s, m, h) → the delays before each retry.
pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(parse_duration)
        .collect()
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: give a unit (ms, s, m, h)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a number"))?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
    };
    Ok(Duration::from_millis(n.saturating_mul(millis)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_with_units() {
        assert_eq!(
            parse_schedule("1s,2s,5s").unwrap(),
            [1, 2, 5].map(Duration::from_secs)
        );
        assert_eq!(
            parse_schedule("250ms, 5m,2h").unwrap(),
            [
                Duration::from_millis(250),
                Duration::from_secs(300),
                Duration::from_secs(7200)
            ]
        );
        assert_eq!(Config::default().retry_schedule.len(), 7);
        assert!(parse_schedule("5").is_err());
        assert!(parse_schedule("5d").is_err());
    }
}
