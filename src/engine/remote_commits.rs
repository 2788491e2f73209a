//! Other nodes' commits, heard over LISTEN/NOTIFY: resident writers catch up on them.
//! The other half, sending the notices, is `Store::announce` on the commit thread.

use std::time::Duration;

use super::Engine;
use crate::backoff::Backoff;
use crate::store::{Store, EVENTS_CHANNEL};

/// Reconnecting the listener: 10 ms, 20 ms, … at most ~1.3 s.
const RECONNECT_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(5), Duration::from_millis(5 << 8));

/// Other nodes' commits arrive by NOTIFY; resident raffles catch up so reads stay fresh.
/// (Correctness never depends on it: appends are conditional on the stream's sequence.)
pub fn listen(engine: Engine, store: Store) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut attempt = 0;
        loop {
            match sqlx::postgres::PgListener::connect_with(store.pool()).await {
                Ok(mut listener) => {
                    if listener.listen(EVENTS_CHANNEL).await.is_ok() {
                        attempt = 0;
                        while let Ok(notification) = listener.recv().await {
                            if let Some((raffle, sequence)) = notification.payload().split_once(':')
                            {
                                if let (Ok(raffle), Ok(sequence)) =
                                    (raffle.parse(), sequence.parse())
                                {
                                    engine.notify_remote_commit(raffle, sequence);
                                }
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "LISTEN connection failed"),
            }
            attempt += 1;
            tokio::time::sleep(RECONNECT_BACKOFF.delay(attempt)).await;
        }
    })
    .abort_handle()
}
