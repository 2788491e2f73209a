//! An export's byte stream that records its end in `exports_log` — completed, failed, or
//! aborted when the client goes away and the body is dropped — and holds whatever must live
//! as long as the export (the node's export permit).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use sqlx::PgPool;
use uuid::Uuid;

use super::log::{finish, Outcome};
use super::ExportStream;

pub struct Recorded<G: Send + 'static> {
    inner: ExportStream,
    pool: PgPool,
    export_id: Uuid,
    bytes: u64,
    finished: bool,
    _guard: G,
}

impl<G: Send + 'static> Recorded<G> {
    pub fn new(inner: ExportStream, pool: PgPool, export_id: Uuid, guard: G) -> Self {
        Self {
            inner,
            pool,
            export_id,
            bytes: 0,
            finished: false,
            _guard: guard,
        }
    }

    /// Records the end once, off the response path: a lost update leaves the row
    /// `running`, never a wrong outcome.
    fn record(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let (pool, export_id, bytes) = (self.pool.clone(), self.export_id, self.bytes);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = finish(&pool, export_id, outcome, bytes).await {
                    tracing::warn!(%export_id, %error, "could not record the end of an export");
                }
            });
        }
    }
}

impl<G: Send + Unpin + 'static> Stream for Recorded<G> {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => self.bytes += chunk.len() as u64,
            Poll::Ready(Some(Err(_))) => self.record(Outcome::Failed),
            Poll::Ready(None) => self.record(Outcome::Completed),
            Poll::Pending => {}
        }
        polled
    }
}

impl<G: Send + 'static> Drop for Recorded<G> {
    /// The body dropped before its end: the client went away.
    fn drop(&mut self) {
        self.record(Outcome::Aborted);
    }
}
