//! Hold expiry: the writer's timer over its raffle's next expiring hold.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tombola_domain::RaffleCommand;

use super::{CommandRequest, Message, Writer};
use crate::engine::CommandMeta;

/// Ready at once when a hold is due, otherwise after `wait`.
pub(super) async fn hold_timer(wait: Option<Duration>) {
    match wait {
        Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
        _ => {}
    }
}

impl Writer {
    pub(super) fn expiry_due_in(&self) -> Option<Duration> {
        let next = self.state.next_expiry()?;
        let wait = (next - self.services.now()).to_std().unwrap_or_default();
        let backoff = self
            .expiry_retry_at
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        Some(wait.max(backoff))
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
