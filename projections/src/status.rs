//! Where each projection stands: version, state, lag per raffle and overall, last error.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::runtime::RuntimeHandle;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub projections: Vec<ProjectionStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    /// The version this build of Tombola defines.
    pub version: u32,
    /// The version the live tables were built by.
    pub live_version: Option<u32>,
    /// A rebuild into shadow tables under way, for this version.
    pub rebuilding_version: Option<u32>,
    /// `ok`, `catching_up` or `failing`.
    pub state: &'static str,
    /// Events not yet applied, over every raffle.
    pub lag_events: u64,
    /// Age of the oldest event not yet applied, over every raffle.
    pub lag_seconds: f64,
    /// Raffles that are behind or failing (caught-up raffles are left out).
    pub raffles: Vec<RaffleLag>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RaffleLag {
    pub raffle_id: Uuid,
    pub checkpoint: u64,
    pub head: u64,
    pub lag_events: u64,
    pub lag_seconds: f64,
    pub error: Option<FailureInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureInfo {
    pub sequence: u64,
    pub error: String,
    pub attempts: i32,
    pub since: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
}

impl RuntimeHandle {
    /// Reads every projection's standing from the log's heads and the read database.
    pub async fn status(&self) -> Result<Status, sqlx::Error> {
        let heads: HashMap<Uuid, u64> = self.source().heads().await?.into_iter().collect();
        let read = self.read_pool();
        let checkpoints: Vec<(String, Uuid, i64)> = sqlx::query_as(
            "SELECT projection, raffle_id, sequence FROM projection_checkpoints WHERE slot = 'live'",
        )
        .fetch_all(read)
        .await?;
        let checkpoints: HashMap<(String, Uuid), u64> = checkpoints
            .into_iter()
            .map(|(p, r, s)| ((p, r), s as u64))
            .collect();
        type FailureRow = (String, Uuid, i64, String, i32, DateTime<Utc>, DateTime<Utc>);
        let failures: Vec<FailureRow> = sqlx::query_as(
            "SELECT projection, raffle_id, sequence, error, attempts, first_failed_at, \
                    next_attempt_at FROM projection_failures",
        )
        .fetch_all(read)
        .await?;
        let mut failures: HashMap<(String, Uuid), FailureInfo> = failures
            .into_iter()
            .map(
                |(p, r, sequence, error, attempts, since, next_attempt_at)| {
                    (
                        (p, r),
                        FailureInfo {
                            sequence: sequence as u64,
                            error,
                            attempts,
                            since,
                            next_attempt_at,
                        },
                    )
                },
            )
            .collect();
        let versions: Vec<(String, i32, Option<i32>)> =
            sqlx::query_as("SELECT projection, version, shadow_version FROM projection_versions")
                .fetch_all(read)
                .await?;
        let versions: HashMap<String, (i32, Option<i32>)> =
            versions.into_iter().map(|(p, v, s)| (p, (v, s))).collect();
        let now = Utc::now();
        let mut out = Vec::new();
        for projection in self.projections() {
            let name = projection.name();
            let mut raffles = Vec::new();
            for (&raffle_id, &head) in &heads {
                let checkpoint = checkpoints
                    .get(&(name.to_owned(), raffle_id))
                    .copied()
                    .unwrap_or(0);
                let error = failures.remove(&(name.to_owned(), raffle_id));
                if checkpoint >= head && error.is_none() {
                    continue;
                }
                let lag_seconds = match self.source().recorded_at(raffle_id, checkpoint + 1).await?
                {
                    Some(at) if checkpoint < head => {
                        (now - at).num_milliseconds().max(0) as f64 / 1e3
                    }
                    _ => 0.0,
                };
                raffles.push(RaffleLag {
                    raffle_id,
                    checkpoint,
                    head,
                    lag_events: head.saturating_sub(checkpoint),
                    lag_seconds,
                    error,
                });
            }
            raffles.sort_by_key(|r| r.raffle_id);
            let lag_events = raffles.iter().map(|r| r.lag_events).sum();
            let lag_seconds = raffles.iter().map(|r| r.lag_seconds).fold(0.0, f64::max);
            let state = if raffles.iter().any(|r| r.error.is_some()) {
                "failing"
            } else if lag_events > 0 {
                "catching_up"
            } else {
                "ok"
            };
            metrics::gauge!("tombola_projection_lag_events", "projection" => name)
                .set(lag_events as f64);
            metrics::gauge!("tombola_projection_lag_seconds", "projection" => name)
                .set(lag_seconds);
            let (live_version, rebuilding_version) = versions
                .get(name)
                .map(|(v, s)| (Some(*v as u32), s.map(|s| s as u32)))
                .unwrap_or((None, None));
            out.push(ProjectionStatus {
                name: name.to_owned(),
                version: projection.version(),
                live_version,
                rebuilding_version,
                state,
                lag_events,
                lag_seconds,
                raffles,
            });
        }
        Ok(Status { projections: out })
    }
}
