//! GCRA (the generic cell rate algorithm) as pure arithmetic on a theoretical arrival time
//! (`tat`): the node-local limiter, and the same rule the lease statement applies in
//! PostgreSQL (`lease.rs`), so both are tested here.
//!
//! A bucket with emission interval `T` (seconds per request) and burst `B` is full when
//! `tat <= now`; taking `n` tokens moves `tat` to `max(tat, now) + n·T`, allowed while
//! `tat - now <= B·T`.

use super::config::Limit;

/// Tokens a bucket holds at `now`.
pub fn available(tat: f64, now: f64, limit: &Limit) -> u32 {
    let backlog = (tat - now).max(0.0);
    // The epsilon absorbs float error (1/3 s steps must add up to a whole token).
    (f64::from(limit.burst) - backlog / limit.interval() + 1e-9)
        .floor()
        .max(0.0) as u32
}

/// Seconds from `now` until the bucket holds one token again (0 if it holds one).
pub fn wait_for_one(tat: f64, now: f64, limit: &Limit) -> f64 {
    wait_for(tat, now, limit, 1)
}

/// Seconds from `now` until the bucket holds `tokens` (at most its burst) again.
pub fn wait_for(tat: f64, now: f64, limit: &Limit, tokens: u32) -> f64 {
    let tokens = tokens.clamp(1, limit.burst.max(1));
    (tat - now - f64::from(limit.burst - tokens) * limit.interval()).max(0.0)
}

/// Seconds from `now` until the bucket is full.
pub fn until_full(tat: f64, now: f64) -> f64 {
    (tat - now).max(0.0)
}

/// Takes up to `wanted` tokens at `now`: the new `tat` and how many were taken.
pub fn take(tat: f64, now: f64, limit: &Limit, wanted: u32) -> (f64, u32) {
    let granted = wanted.min(available(tat, now, limit));
    (
        tat.max(now) + f64::from(granted) * limit.interval(),
        granted,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(count: u32, secs: u64, burst: u32) -> Limit {
        Limit {
            count,
            per: Duration::from_secs(secs),
            burst,
        }
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_one_token_per_interval() {
        let l = limit(10, 1, 5);
        let (mut tat, mut taken) = (0.0, 0);
        for _ in 0..20 {
            let (next, granted) = take(tat, 100.0, &l, 1);
            tat = next;
            taken += granted;
        }
        assert_eq!(taken, 5);
        assert!((wait_for_one(tat, 100.0, &l) - 0.1).abs() < 1e-9);
        assert!((wait_for(tat, 100.0, &l, 3) - 0.3).abs() < 1e-9);
        assert!(
            (wait_for(tat, 100.0, &l, 50) - 0.5).abs() < 1e-9,
            "at most the burst"
        );
        assert_eq!(take(tat, 100.1, &l, 3).1, 1);
    }

    #[test]
    fn a_lease_takes_what_is_there_and_no_more() {
        let l = limit(3, 1, 3);
        let (tat, granted) = take(0.0, 50.0, &l, 10);
        assert_eq!(granted, 3);
        assert_eq!(available(tat, 50.0, &l), 0);
        // Thirds of a second add up to whole tokens despite float error.
        assert_eq!(available(tat, 51.0, &l), 3);
        assert!((until_full(tat, 50.0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn over_any_window_the_tokens_taken_are_at_most_the_burst_plus_the_rate() {
        // Leases of 7 every 13 ms for 10 s against 100/s with a burst of 50.
        let l = limit(100, 1, 50);
        let (mut tat, mut taken, mut now) = (0.0, 0u32, 1000.0);
        while now < 1010.0 {
            let (next, granted) = take(tat, now, &l, 7);
            tat = next;
            taken += granted;
            now += 0.013;
        }
        assert!(taken <= 50 + 1000, "{taken}");
        assert!(taken >= 1000, "{taken}");
    }
}
