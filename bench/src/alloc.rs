//! A counting global allocator: forwards to mimalloc (the `tombola` binary's allocator, so
//! that a server started in process allocates as it does in production) and keeps the bytes
//! currently allocated, their high-water mark, and the live bytes per power-of-two size
//! class (which tells large tables and chunks apart from small per-item allocations).
//!
//! Counts are of the sizes *requested* (`Layout::size`): malloc's own per-block headers and
//! fragmentation are not included, which is why the benchmark also reports process RSS
//! ([`crate::sys`]).

// `GlobalAlloc` is an unsafe trait. This module only forwards each call unchanged to
// `MiMalloc` and updates counters, so the workspace's `unsafe_code = "deny"` is lifted here
// and nowhere else.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// Size classes: class `k` holds allocations of `2^k ..= 2^(k+1) - 1` bytes.
pub const CLASSES: usize = usize::BITS as usize;

static COUNTING: AtomicBool = AtomicBool::new(true);
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicUsize = AtomicUsize::new(0);
static BY_CLASS: [AtomicUsize; CLASSES] = [ZERO; CLASSES];

pub struct CountingAlloc;

fn class(size: usize) -> usize {
    (usize::BITS - 1 - size.max(1).leading_zeros()) as usize
}

/// Stops counting, for good (turned on again, frees of blocks never counted would make the
/// counts wrong). Benchmarks that read no counts call it: with every thread updating the
/// same counters, the counting cost a server under load about 6% of its CPU.
pub fn stop_counting() {
    COUNTING.store(false, Relaxed);
}

fn on_alloc(size: usize) {
    if !COUNTING.load(Relaxed) {
        return;
    }
    let now = CURRENT.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(now, Relaxed);
    BY_CLASS[class(size)].fetch_add(size, Relaxed);
}

fn on_dealloc(size: usize) {
    if !COUNTING.load(Relaxed) {
        return;
    }
    CURRENT.fetch_sub(size, Relaxed);
    BY_CLASS[class(size)].fetch_sub(size, Relaxed);
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = MiMalloc.alloc(layout);
        if !ptr.is_null() {
            on_alloc(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = MiMalloc.alloc_zeroed(layout);
        if !ptr.is_null() {
            on_alloc(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        MiMalloc.dealloc(ptr, layout);
        on_dealloc(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = MiMalloc.realloc(ptr, layout, new_size);
        if !new.is_null() {
            on_dealloc(layout.size());
            on_alloc(new_size);
        }
        new
    }
}

/// Bytes currently allocated through the global allocator.
pub fn allocated() -> usize {
    CURRENT.load(Relaxed)
}

/// The most bytes allocated at once since the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Relaxed)
}

/// Starts a new high-water mark from what is allocated now.
pub fn reset_peak() {
    PEAK.store(CURRENT.load(Relaxed), Relaxed);
}

/// Live bytes, in total and per size class, at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub total: usize,
    pub by_class: [usize; CLASSES],
}

pub fn snapshot() -> Snapshot {
    Snapshot {
        total: allocated(),
        by_class: std::array::from_fn(|k| BY_CLASS[k].load(Relaxed)),
    }
}

impl Snapshot {
    /// What was allocated between `before` and `self` and is still live, per size class,
    /// as `(class floor in bytes, bytes)`; classes that did not change are left out.
    pub fn grown_since(&self, before: &Snapshot) -> Vec<(usize, i64)> {
        (0..CLASSES)
            .filter_map(|k| {
                let delta = self.by_class[k] as i64 - before.by_class[k] as i64;
                (delta != 0).then_some((1usize << k, delta))
            })
            .collect()
    }

    /// Bytes allocated since `before` and still live (negative if more was freed).
    pub fn since(&self, before: &Snapshot) -> i64 {
        self.total as i64 - before.total as i64
    }
}

/// Tests that measure allocations, or allocate a lot, hold this: the counters are
/// process-wide and tests run on several threads.
#[cfg(test)]
pub static EXCLUSIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_powers_of_two() {
        assert_eq!(class(0), 0);
        assert_eq!(class(1), 0);
        assert_eq!(class(4096), 12);
        assert_eq!(class(8191), 12);
        assert_eq!(class(8192), 13);
    }
}
