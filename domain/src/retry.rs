//! The retry schedule every loop in Tombola uses: exponential backoff with proportional
//! jitter (50–150 % of the delay), so that clients that failed together do not retry
//! together. Here, in the pure crate, because both the server and the projections crate
//! retry and neither may depend on the other. Computing a delay is pure; sleeping is the
//! caller's business.

use std::time::Duration;

use rand::Rng;

/// `base × 2^attempt`, capped at `max`, times `jitter` (clamped to 0.5–1.5).
pub fn backoff_with_jitter(base: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    let exponential = base.saturating_mul(2u32.saturating_pow(attempt.min(31)));
    exponential.min(max).mul_f64(jitter.clamp(0.5, 1.5))
}

/// [`backoff_with_jitter`] with a fresh random jitter.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    backoff_with_jitter(base, max, attempt, rand::rng().random_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_attempt_up_to_the_cap() {
        let base = Duration::from_millis(10);
        let max = Duration::from_secs(1);
        assert_eq!(backoff_with_jitter(base, max, 0, 1.0), base);
        assert_eq!(backoff_with_jitter(base, max, 3, 1.0), base * 8);
        assert_eq!(backoff_with_jitter(base, max, 7, 1.0), max);
        assert_eq!(backoff_with_jitter(base, max, u32::MAX, 1.0), max);
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half_of_the_delay() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(60);
        assert_eq!(backoff_with_jitter(base, max, 1, 0.1), base);
        assert_eq!(backoff_with_jitter(base, max, 1, 9.0), base * 3);
        for _ in 0..1000 {
            let delay = backoff(base, max, 2);
            assert!(delay >= base * 2 && delay <= base * 6, "{delay:?}");
        }
    }
}
