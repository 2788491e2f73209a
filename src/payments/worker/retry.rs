//! The retry schedule: how a delivery's row is settled after an attempt, and when a
//! delivery that could not be applied yet is tried again.

use std::time::Duration;

use chrono::Utc;

use crate::backoff::Backoff;
use crate::payments::inbox::{Settled, Settlement};

/// Attempts before a delivery is marked failed (about a day and a half of backoff).
pub const MAX_ATTEMPTS: i32 = 12;
/// A delivery that could not be applied yet: 2 s, 4 s, … at most an hour between attempts.
const DELIVERY_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(3600));
/// A poller whose inbox is unavailable: 10 ms, 20 ms, … at most ~5 s.
pub(super) const UNAVAILABLE_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(5), Duration::from_millis(5 << 10));

#[derive(Clone)]
pub(super) enum Failure {
    Rejected(String),
    Retry(String),
}

/// How to settle each row, given what applying its delivery led to; `attempts` is how many
/// times the row had been tried before.
pub(super) fn settlements<'a>(
    rows: impl Iterator<Item = (&'a str, &'a str, i32)>,
    results: &'a [Result<String, Failure>],
) -> Vec<Settled<'a>> {
    rows.zip(results)
        .map(|((provider, event_id, attempts), result)| {
            let settlement = match result {
                Ok(outcome) => Settlement::Done { outcome },
                Err(Failure::Rejected(error)) => Settlement::Rejected { error },
                Err(Failure::Retry(error)) => {
                    let attempt = attempts + 1;
                    Settlement::Retry {
                        error,
                        next_attempt_at: Utc::now()
                            + chrono::Duration::from_std(
                                DELIVERY_BACKOFF.delay(attempt.max(0) as u32),
                            )
                            .unwrap_or_default(),
                        give_up: attempt >= MAX_ATTEMPTS,
                    }
                }
            };
            Settled {
                provider,
                event_id,
                attempts,
                settlement,
            }
        })
        .collect()
}
