//! Where a rebuild's time goes, phase by phase: what `tombola-bench rebuild` reports so that
//! a slow rebuild says which part to work on (decision 0026).
//!
//! The fill phases are summed over the workers (two raffles are filled at a time), so they
//! can add up to more than the fill's wall time; `read` counts only the waits for the log
//! that the prefetch did not hide.

use std::sync::Mutex;
use std::time::Duration;

/// Time spent per phase by this runtime's rebuilds, summed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RebuildTimings {
    /// Waiting for a batch of the log (the part not hidden behind the previous apply).
    pub read: Duration,
    /// Parsing the stored JSON into events.
    pub decode: Duration,
    /// Applying batches to each projection's shadow tables, by projection.
    pub apply: Vec<(&'static str, Duration)>,
    /// Beginning, locking, moving the checkpoints and committing the batches.
    pub commit: Duration,
    /// Wall time of the shadow fills (the phases above, overlapped across workers).
    pub fill: Duration,
    /// Building the deferred indexes (and ANALYZE), by projection.
    pub index: Vec<(&'static str, Duration)>,
    /// The swap transactions (catch-up rounds between refused swaps included), by projection.
    pub swap: Vec<(&'static str, Duration)>,
    /// Joint batches committed, and the events in them.
    pub batches: u64,
    pub events: u64,
}

/// What the phases add to, under one lock (a few updates per batch of thousands of events).
#[derive(Default)]
pub(crate) struct Clock {
    inner: Mutex<RebuildTimings>,
}

/// Which phase a measured duration belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Phase {
    Read,
    Decode,
    Apply(&'static str),
    Commit,
    Fill,
    Index(&'static str),
    Swap(&'static str),
}

fn add_to(list: &mut Vec<(&'static str, Duration)>, name: &'static str, took: Duration) {
    match list.iter_mut().find(|(n, _)| *n == name) {
        Some((_, total)) => *total += took,
        None => list.push((name, took)),
    }
}

impl Clock {
    pub(crate) fn add(&self, phase: Phase, took: Duration) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match phase {
            Phase::Read => t.read += took,
            Phase::Decode => t.decode += took,
            Phase::Apply(name) => add_to(&mut t.apply, name, took),
            Phase::Commit => t.commit += took,
            Phase::Fill => t.fill += took,
            Phase::Index(name) => add_to(&mut t.index, name, took),
            Phase::Swap(name) => add_to(&mut t.swap, name, took),
        }
    }

    /// One joint batch of `events` events committed.
    pub(crate) fn batch(&self, events: usize) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.batches += 1;
        t.events += events as u64;
    }

    pub(crate) fn snapshot(&self) -> RebuildTimings {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
