//! The one retry delay of Tombola: exponential, with proportional jitter (50–150 % of the
//! delay), so that retries that failed together spread out instead of colliding again.
//! Every retry loop uses it: the writer's conflict retries, the payment inbox, the LISTEN
//! reconnect, the projection runtime, and whatever comes next. It lives in the pure crate
//! because the server and the projections both retry and neither may depend on the other.

use std::time::Duration;

use rand::Rng;

/// `base` doubled per attempt up to `cap`, then jittered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The delay before retry number `attempt` (1 for the first retry), without jitter.
    pub fn nominal(&self, attempt: u32) -> Duration {
        // 2^31 already overflows any cap worth having; saturate rather than panic.
        self.base
            .checked_mul(2u32.saturating_pow(attempt.min(31)))
            .unwrap_or(Duration::MAX)
            .min(self.cap)
    }

    /// The delay before retry number `attempt`: [`Self::nominal`] times a uniform 0.5–1.5.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.nominal(attempt)
            .mul_f64(rand::rng().random_range(0.5..1.5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_backoff() -> impl Strategy<Value = Backoff> {
        (1u64..10_000, 0u64..10_000_000).prop_map(|(base, extra)| {
            Backoff::new(
                Duration::from_micros(base),
                Duration::from_micros(base + extra),
            )
        })
    }

    proptest! {
        /// Every delay lies within 50–150 % of its attempt's nominal delay.
        #[test]
        fn delays_stay_within_the_jitter_bounds(backoff in any_backoff(), attempt in 0u32..64) {
            let nominal = backoff.nominal(attempt);
            let delay = backoff.delay(attempt);
            prop_assert!(delay >= nominal.mul_f64(0.5), "{delay:?} < half of {nominal:?}");
            prop_assert!(delay <= nominal.mul_f64(1.5), "{delay:?} > 1.5 × {nominal:?}");
        }

        /// Each attempt waits twice the one before, until the cap; never more than the cap.
        #[test]
        fn delays_double_until_the_cap(backoff in any_backoff(), attempt in 0u32..64) {
            let (this, next) = (backoff.nominal(attempt), backoff.nominal(attempt + 1));
            prop_assert!(next <= backoff.cap);
            if this * 2 <= backoff.cap {
                prop_assert_eq!(next, this * 2);
            } else {
                prop_assert_eq!(next, backoff.cap);
            }
        }
    }

    #[test]
    fn attempt_zero_waits_the_base_and_the_cap_rules_late_attempts() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(3600));
        assert_eq!(backoff.nominal(0), Duration::from_secs(1));
        assert_eq!(backoff.nominal(1), Duration::from_secs(2));
        assert_eq!(backoff.nominal(11), Duration::from_secs(2048));
        assert_eq!(backoff.nominal(12), Duration::from_secs(3600));
        assert_eq!(backoff.nominal(u32::MAX), Duration::from_secs(3600));
    }
}
