//! Faults tests inject into a running engine, where no real fault can be timed: the one
//! place production code reaches into for them. An engine started without `Faults` (every
//! engine outside tests) never looks.

use std::sync::atomic::{AtomicU32, Ordering};

/// Faults to inject, shared between a test and the engine it started.
#[derive(Debug, Default)]
pub struct Faults {
    lost_commit_replies: AtomicU32,
    lost_appends: AtomicU32,
    writer_crashes: AtomicU32,
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

    /// The next `count` appends never reach the database, and their writers are told the
    /// connection was lost on the way: as far as a writer can tell, they may have committed.
    pub fn lose_appends(&self, count: u32) {
        self.lost_appends.store(count, Ordering::Relaxed);
    }

    /// Whether this append is to be lost (and counts it).
    pub(crate) fn take_lost_append(&self) -> bool {
        self.lost_appends
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The next `count` writers that settle an append whose outcome is in doubt die
    /// instead (as a panic would), dropping their callers unanswered.
    pub fn crash_writers_in_doubt(&self, count: u32) {
        self.writer_crashes.store(count, Ordering::Relaxed);
    }

    /// Whether this writer is to crash (and counts it).
    pub(crate) fn take_writer_crash(&self) -> bool {
        self.writer_crashes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Whether this committed append's reply is to be lost (and counts it).
    pub(crate) fn take_lost_commit_reply(&self) -> bool {
        self.lost_commit_replies
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}
