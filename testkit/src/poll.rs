use std::future::Future;
use std::time::Duration;

/// Polls `check` every 20 ms until it yields `Some`, for at most `limit`: for waiting on
/// something that happens on its own (a worker, another connection), never on a timer (move
/// the clock instead).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
