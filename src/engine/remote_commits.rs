//! Other nodes' commits, heard over LISTEN/NOTIFY: resident writers catch up on them.
//! The other half, sending the notices, is `Store::announce` on the commit thread.

use std::time::Duration;

use super::Engine;
use crate::backoff::Backoff;
use crate::store::{Store, EVENTS_CHANNEL};

/// Reconnecting the listener: 10 ms, 20 ms, … at most ~1.3 s.
const RECONNECT_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(5), Duration::from_millis(5 << 8));

/// Other nodes' commits arrive by NOTIFY; resident raffles catch up so that what they
/// decide and read is current. Notices sent while the listener is not connected are lost, so
/// once (re)connected every resident raffle catches up, LISTEN first so nothing falls between.
/// (Appends never depend on it: they are conditional on the stream's sequence.)
pub fn listen(engine: Engine, store: Store) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut attempt = 0;
        loop {
            match sqlx::postgres::PgListener::connect_with(store.pool()).await {
                Ok(mut listener) => {
                    if listener.listen(EVENTS_CHANNEL).await.is_ok() {
                        attempt = 0;
                        engine.catch_up_all();
                        // `try_recv` says when the connection drops (`recv` would reconnect
                        // silently, and the notices sent meanwhile would be lost unseen).
                        while let Ok(Some(notification)) = listener.try_recv().await {
                            if let Some((raffle, sequence)) = parse(notification.payload()) {
                                engine.notify_remote_commit(raffle, sequence);
                            }
                        }
                        tracing::warn!("LISTEN connection lost; reconnecting");
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

/// A `raffle:sequence` notice.
fn parse(payload: &str) -> Option<(uuid::Uuid, u64)> {
    let (raffle, sequence) = payload.split_once(':')?;
    Some((raffle.parse().ok()?, sequence.parse().ok()?))
}
