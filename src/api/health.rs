//! Liveness, readiness and Prometheus metrics.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// The last readiness answer, reused for a second so probes cannot load the database.
#[derive(Default)]
pub struct Readiness(Mutex<Option<(Instant, Result<(), String>)>>);

const READINESS_TTL: Duration = Duration::from_secs(1);

/// The database is reachable and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let cached = state
        .readiness
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let result = match cached {
        Some((at, result)) if at.elapsed() < READINESS_TTL => result,
        _ => {
            let result = check(&state).await;
            *state.readiness.0.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((Instant::now(), result.clone()));
            result
        }
    };
    match result {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(Health {
                status: "ready".into(),
            }),
        )
            .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Health { status: reason }),
        )
            .into_response(),
    }
}

async fn check(state: &AppState) -> Result<(), String> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(state.engine.store().pool())
            .await
            .map_err(|e| format!("database unreachable: {e}"))?;
    let missing = crate::store::MIGRATOR
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .count();
    if missing > 0 {
        return Err(format!("{missing} migrations not applied"));
    }
    Ok(())
}

/// Prometheus text format: every metric is listed in docs/OPERATIONS.md. The payment
/// inbox's backlog is counted at scrape time (a bounded query; skipped if it is slow).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!("tombola_active_raffles").set(state.engine.active_raffles() as f64);
    metrics::gauge!("tombola_engine_commands_waiting").set(state.engine.commands_waiting() as f64);
    metrics::gauge!("tombola_engine_appends_waiting").set(state.engine.appends_waiting() as f64);
    if state.payments.is_some() {
        let backlog = crate::payments::inbox::record_backlog(state.engine.store().pool());
        match tokio::time::timeout(std::time::Duration::from_secs(2), backlog).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "inbox backlog not counted"),
            Err(_) => tracing::warn!("inbox backlog not counted in 2 s"),
        }
    }
    match &state.metrics {
        Some(handle) => handle.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

/// Counts and times every request by route template (not raw path: ids would explode the
/// label space).
pub async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("tombola_http_requests_total", &labels).increment(1);
    metrics::histogram!("tombola_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
