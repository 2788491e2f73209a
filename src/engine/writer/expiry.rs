//! Hold expiry: the writer's timer over its raffle's next expiring hold.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tombola_domain::RaffleCommand;

use super::{CommandRequest, Message, Writer};
use crate::clock::Clock;
use crate::engine::CommandMeta;

/// Ready at once when a hold is due, otherwise when the clock reaches it. After a failed
/// expiry, the retry also waits out its backoff (real time: it waits on the database).
pub(super) async fn hold_timer(clock: &dyn Clock, due: Option<(DateTime<Utc>, Option<Instant>)>) {
    let Some((at, retry_at)) = due else { return };
    if let Some(retry_at) = retry_at.filter(|at| *at > Instant::now()) {
        tokio::time::sleep_until(retry_at).await;
    }
    clock.sleep_until(at).await;
}

impl Writer {
    /// When the next hold is due, and when a failed expiry may be retried.
    pub(super) fn expiry_due_at(&self) -> Option<(DateTime<Utc>, Option<Instant>)> {
        let next = self.state.next_expiry()?;
        Some((next, self.expiry_retry_at))
    }

    /// Expires due holds in a batch of their own, so that an expiry that keeps failing
    /// backs off on its own outcome and takes no caller's command down with it.
    pub(super) async fn expire_due_holds(&mut self) {
        self.flush().await;
        let (reply, answer) = oneshot::channel();
        let request = CommandRequest {
            command: RaffleCommand::ExpireDueHolds,
            meta: CommandMeta::system("expiry"),
            reply,
            span: tracing::info_span!(parent: None, "engine.expire", raffle_id = %self.raffle_id),
            appended: Default::default(),
        };
        self.process(vec![Message::Command(Box::new(request))])
            .await;
        self.flush().await;
        self.expiry_retry_at = match answer.await {
            Ok(Ok(_)) => None,
            _ => Some(Instant::now() + Duration::from_secs(1)),
        };
    }
}
