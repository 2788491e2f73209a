//! The two things a decision needs from outside: the time and randomness. Both are injected
//! so that tests and replays are deterministic.

use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};
use rand::{RngCore, SeedableRng};

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct FixedClock(Mutex<DateTime<Utc>>);

impl FixedClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Mutex::new(at))
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The aggregate's `Services`: a clock and a random source.
pub struct RaffleServices {
    clock: Arc<dyn Clock>,
    rng: Mutex<Box<dyn RngCore + Send>>,
}

impl RaffleServices {
    pub fn new(clock: Arc<dyn Clock>, rng: Box<dyn RngCore + Send>) -> Self {
        Self {
            clock,
            rng: Mutex::new(rng),
        }
    }

    /// Wall clock and an OS-seeded ChaCha generator: what production uses.
    pub fn system() -> Self {
        Self::new(
            Arc::new(SystemClock),
            Box::new(rand_chacha::ChaCha12Rng::from_os_rng()),
        )
    }

    /// A seeded generator and the given clock: what tests use.
    pub fn deterministic(seed: u64, clock: Arc<dyn Clock>) -> Self {
        Self::new(
            clock,
            Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)),
        )
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) fn rng(&self) -> MutexGuard<'_, Box<dyn RngCore + Send>> {
        self.rng.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for RaffleServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaffleServices")
            .field("now", &self.now())
            .finish()
    }
}
