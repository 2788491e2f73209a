//! Faults tests inject into a running engine, where no real fault can be timed: the one
//! place production code reaches into for them. An engine started without `Faults` (every
//! engine outside tests) never looks.

use std::sync::atomic::{AtomicU32, Ordering};

/// Faults to inject, shared between a test and the engine it started.
#[derive(Debug, Default)]
pub struct Faults {
    lost_commit_replies: AtomicU32,
}

impl Faults {
    /// The next `count` appends that commit are reported to their writers as failed, as when
    /// the connection drops between the commit and its reply.
    pub fn lose_commit_replies(&self, count: u32) {
        self.lost_commit_replies.store(count, Ordering::Relaxed);
    }

    /// How many of those are still to come.
    pub fn commit_replies_to_lose(&self) -> u32 {
        self.lost_commit_replies.load(Ordering::Relaxed)
    }

    /// Whether this committed append's reply is to be lost (and counts it).
    pub(crate) fn take_lost_commit_reply(&self) -> bool {
        self.lost_commit_replies
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}
