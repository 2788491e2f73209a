//! Hold expiry: the writer's timer over its raffle's next expiring hold.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::FuturesUnordered;
use tokio::sync::oneshot::{self, error::RecvError};
use tokio::time::Instant;
use tombola_domain::RaffleCommand;

use super::{CommandRequest, Message, Writer};
use crate::clock::Clock;
use crate::engine::{Applied, CommandMeta, EngineError};

/// Ready at once when a hold is due, otherwise when the clock reaches it. After a failed
/// expiry, the retry also waits out its backoff (real time: it waits on the database).
pub(super) async fn hold_timer(clock: &dyn Clock, due: Option<(DateTime<Utc>, Option<Instant>)>) {
    let Some((at, retry_at)) = due else { return };
    if let Some(retry_at) = retry_at.filter(|at| *at > Instant::now()) {
        tokio::time::sleep_until(retry_at).await;
    }
    clock.sleep_until(at).await;
}

/// The answers of expiries decided and not yet answered.
pub(super) type Expiries = FuturesUnordered<oneshot::Receiver<Result<Applied, EngineError>>>;

/// Expiries decided and unanswered at most: one in the append in flight, one in the pending
/// batch behind it. Each expires up to `MAX_EXPIRY_BATCH` holds, so 50,000 due holds take
/// ten rounds, two commits apart at worst.
const EXPIRIES_IN_PIPELINE: usize = 2;

impl Writer {
    /// When the next hold is due, and when a failed expiry may be retried. None while the
    /// pipeline already carries as many expiries as it may.
    pub(super) fn expiry_due_at(
        &self,
        expiries: usize,
    ) -> Option<(DateTime<Utc>, Option<Instant>)> {
        if expiries >= EXPIRIES_IN_PIPELINE {
            return None;
        }
        let next = self.state.next_expiry()?;
        Some((next, self.expiry_retry_at))
    }

    /// Decides the expiry of the due holds like any command: it joins the pending batch and
    /// commits with the commands around it. (A batch of its own, flushed before and after,
    /// stalled the pipeline twice per round: 1.8 s for 50,000 holds under load, decision
    /// 0028.) A batch the database refuses is split as usual, so a failing expiry fails
    /// alone; its answer sets the backoff.
    pub(super) async fn expire_due_holds(&mut self, expiries: &mut Expiries) {
        let (reply, answer) = oneshot::channel();
        let request = CommandRequest {
            command: RaffleCommand::ExpireDueHolds,
            meta: CommandMeta::system("expiry"),
            reply,
            span: tracing::info_span!(parent: None, "engine.expire", raffle_id = %self.raffle_id),
            appended: Default::default(),
        };
        expiries.push(answer);
        self.process(vec![Message::Command(Box::new(request))])
            .await;
    }

    /// An expiry was answered: a failure waits a moment before the next try.
    pub(super) fn expiry_answered(
        &mut self,
        outcome: Option<Result<Result<Applied, EngineError>, RecvError>>,
    ) {
        self.expiry_retry_at = match outcome {
            Some(Ok(Ok(_))) | None => None,
            Some(_) => Some(Instant::now() + Duration::from_secs(1)),
        };
    }
}
