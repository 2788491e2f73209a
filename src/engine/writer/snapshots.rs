//! When a writer snapshots its raffle, and saving the snapshot off the writer's path.

use std::sync::atomic::Ordering;

use super::Writer;

/// A large raffle's next snapshot (after one of [`LARGE_SNAPSHOT`] or more) waits for one
/// event per this many bytes of its last one.
/// Snapshots then add at most ~1/8 to what the database writes; more often, and large
/// raffles stall on them (figures: docs/decisions/0011).
const SNAPSHOT_BYTES_PER_EVENT: usize = 128;
/// Below this a snapshot is cheap whatever the raffle does: `snapshot_every` alone rules.
const LARGE_SNAPSHOT: usize = 1 << 20;

impl Writer {
    /// After `snapshot_every` events, and for a large raffle not before the events since its
    /// last snapshot outweigh it ([`SNAPSHOT_BYTES_PER_EVENT`]): a 10M-ticket raffle's
    /// snapshot is megabytes.
    pub(super) fn snapshot_due(&self) -> bool {
        let every = self.engine.inner.config.snapshot_every;
        let snapshot_bytes = self.snapshot_bytes.load(Ordering::Relaxed);
        let by_size = if snapshot_bytes >= LARGE_SNAPSHOT {
            (snapshot_bytes / SNAPSHOT_BYTES_PER_EVENT) as u64
        } else {
            0
        };
        every != 0 && self.tip.sequence - self.snapshot_sequence >= every.max(by_size)
    }

    /// Saves a snapshot off the hot path when one is due and the state is exactly the
    /// committed stream (nothing in flight or pending). The writer only copies its state;
    /// encoding (megabytes for a large raffle) runs on a blocking thread, and the size that
    /// paces the next snapshot is known once it has.
    pub(super) fn maybe_snapshot(&mut self) {
        if !self.snapshot_due() || self.tip != self.committed {
            return;
        }
        self.snapshot_sequence = self.committed.sequence;
        super::compact_if_large(
            &mut self.state,
            self.engine.inner.config.compact_after_orders,
        );
        let state = self.state.clone();
        let snapshot_bytes = self.snapshot_bytes.clone();
        let store = self.engine.inner.store.clone();
        let (raffle_id, sequence, hash) = (
            self.raffle_id,
            self.committed.sequence,
            self.committed.hash.clone(),
        );
        // Tracked with the writers, so shutdown waits for the save.
        self.engine.inner.tasks.spawn(async move {
            let Ok(bytes) = tokio::task::spawn_blocking(move || state.encode_snapshot()).await
            else {
                tracing::warn!(%raffle_id, "snapshot not encoded");
                return;
            };
            snapshot_bytes.store(bytes.len(), Ordering::Relaxed);
            if let Err(error) = store
                .save_snapshot(raffle_id, sequence, &hash, &bytes)
                .await
            {
                tracing::warn!(%raffle_id, %error, "snapshot not saved");
            }
        });
    }
}
