//! The server's one clock: the "now" the domain's rules read, and what the engine's timers
//! wait for. Production reads the system time; tests move a [`ManualClock`], and a timer
//! waiting on it fires when, and only when, the test has moved it far enough.
//!
//! Why not `tokio::time::pause`: a paused runtime jumps its clock forward whenever every task
//! waits, which is all the time while a test waits on PostgreSQL, so hold timers would fire
//! at the wrong moments, and the domain's wall-clock "now" would not move with it anyway.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// What a timer of the engine waits on.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

pub trait Clock: tombola_domain::Clock {
    /// Resolves once [`now`](tombola_domain::Clock::now) has reached `at`: at once if it has.
    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep;

    /// Time on a count that never goes back, from an origin fixed for the clock's life: for
    /// measuring intervals (rate limits), which a stepped wall clock must not disturb.
    fn steady(&self) -> Duration;
}

/// The system's time, with tokio's timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl tombola_domain::Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

impl Clock for SystemClock {
    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        })
    }

    fn steady(&self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}

/// A clock that only moves when told to, waking the timers it passes.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
    origin: DateTime<Utc>,
}

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        Self {
            now: watch::Sender::new(at),
            origin: at,
        }
    }

    /// Stopped at the current system time.
    pub fn at_system_time() -> Self {
        Self::new(Utc::now())
    }

    pub fn set(&self, at: DateTime<Utc>) {
        self.now.send_replace(at);
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.now.send_modify(|now| *now += by);
    }
}

impl tombola_domain::Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }
}

impl Clock for ManualClock {
    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep {
        let mut now = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; a dropped clock never gets there.
            if now.wait_for(|now| *now >= at).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }

    /// Time moved forward since the clock was made (a clock set back reads as no time).
    fn steady(&self) -> Duration {
        (*self.now.borrow() - self.origin)
            .to_std()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use tombola_domain::Clock as _;

    #[tokio::test]
    async fn a_timer_fires_when_the_clock_reaches_it_and_not_before() {
        let clock = ManualClock::at_system_time();
        let start = clock.now();
        let mut timer = tokio::spawn(clock.sleep_until(start + Duration::seconds(60)));

        clock.advance(Duration::seconds(59));
        tokio::task::yield_now().await;
        assert!(
            futures::poll!(&mut timer).is_pending(),
            "fired a second early"
        );

        clock.advance(Duration::seconds(1));
        timer.await.expect("the timer fires at its time");
    }

    #[tokio::test]
    async fn a_timer_already_due_is_ready_at_once() {
        let clock = ManualClock::at_system_time();
        clock.sleep_until(clock.now()).await;
        SystemClock.sleep_until(Utc::now()).await;
    }
}
