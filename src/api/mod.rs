//! The HTTP API: axum routers, one module per resource. Handlers stay thin: parse into
//! domain commands, call the engine or the store, map the result.

mod audit;
pub mod auth;
pub mod client_ip;
pub mod error;
mod exports;
mod health;
mod inbox;
mod json;
mod orders;
mod raffles;
pub mod rate_limit;
mod read;
mod spec;
mod trail;
mod views;
mod webhooks;
mod webhooks_out;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::{HeaderMap, HeaderName, Method};
use axum::Router;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::engine::{CommandMeta, Engine};
use crate::store::{IdempotencyRequest, Source};
use auth::{Caller, Keys};
use error::ApiError;
use rate_limit::RateLimits;

pub use json::{optional_json, ApiJson};
pub use views::{OrderBody, RaffleBody};

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub keys: Arc<Keys>,
    pub limits: Arc<RateLimits>,
    /// Whose `Forwarded` / `X-Forwarded-For` names the client (per-IP limits).
    pub trusted_proxies: Arc<client_ip::TrustedProxies>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub payments: Option<crate::payments::worker::PaymentsIn>,
    /// The read side, when the server runs it (see [`AppState::with_read_side`]).
    pub read: Option<read::ReadSide>,
    /// Outbound webhooks, when the server runs them (see [`AppState::with_webhooks`]).
    pub webhooks: Option<crate::webhooks::Webhooks>,
    readiness: Arc<health::Readiness>,
    /// Raffle → organizer: immutable once created, so cached forever.
    organizers: Arc<Mutex<HashMap<Uuid, String>>>,
    /// Exports and verifications read whole streams: at most this many at once per node.
    heavy_reads: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(
        engine: Engine,
        limits: RateLimits,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
        payments: Option<crate::payments::worker::PaymentsIn>,
    ) -> Self {
        let limits = Arc::new(limits);
        limits.spawn_cleanup();
        Self {
            keys: Arc::new(Keys::new(engine.store().clone())),
            engine,
            limits,
            trusted_proxies: Arc::default(),
            metrics,
            payments,
            read: None,
            webhooks: None,
            readiness: Arc::default(),
            organizers: Arc::default(),
            heavy_reads: Arc::new(tokio::sync::Semaphore::new(DEFAULT_HEAVY_READS)),
        }
    }

    /// Per-IP limits key on the address these proxies forward, when the peer is one of them.
    pub fn with_trusted_proxies(mut self, proxies: client_ip::TrustedProxies) -> Self {
        self.trusted_proxies = Arc::new(proxies);
        self
    }

    /// At most `limit` exports and log verifications at once on this node.
    pub fn with_heavy_read_limit(mut self, limit: usize) -> Self {
        self.heavy_reads = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
        self
    }

    /// A place among the heavy reads, held until dropped; none free: 429 + Retry-After.
    pub fn heavy_read(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.heavy_reads
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::RateLimited {
                retry_after: Duration::from_secs(5),
            })
    }

    /// Checks that `caller` may act on `raffle_id`. Another organizer's raffle is a 404
    /// exactly like one that does not exist, so ids leak nothing across organizers.
    pub async fn authorize(&self, caller: &Caller, raffle_id: Uuid) -> Result<(), ApiError> {
        let cached = self.lock_organizers().get(&raffle_id).cloned();
        let organizer = match cached {
            Some(organizer) => organizer,
            None => {
                let organizer = self
                    .engine
                    .read(raffle_id, |raffle| {
                        raffle.config().map(|c| c.organizer_id.clone())
                    })
                    .await?
                    .ok_or(ApiError::NotFound("raffle"))?;
                self.lock_organizers().insert(raffle_id, organizer.clone());
                organizer
            }
        };
        if caller.may_access(&organizer) {
            Ok(())
        } else {
            Err(ApiError::NotFound("raffle"))
        }
    }

    /// Serves the read endpoints from `runtime`'s read models.
    pub fn with_read_side(
        mut self,
        runtime: tombola_projections::RuntimeHandle,
        min_position_wait: Duration,
    ) -> Self {
        self.read = Some(read::ReadSide {
            runtime,
            min_position_wait,
        });
        self
    }

    /// Serves the outbound webhook endpoints.
    pub fn with_webhooks(mut self, webhooks: crate::webhooks::Webhooks) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    fn lock_organizers(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, String>> {
        self.organizers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Path parameters whose rejections (e.g. an id that is no UUID) are problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// A query string whose rejections are problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Exports and verifications that may run at once per node unless configured otherwise.
pub const DEFAULT_HEAVY_READS: usize = 4;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Event metadata for a command from this request, with its idempotency key if any. The
/// request hash covers method, path and the canonical JSON of the body.
pub fn command_meta(
    caller: &Caller,
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: &impl Serialize,
) -> Result<CommandMeta, ApiError> {
    let request_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().to_string());
    let idempotency = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::invalid("Idempotency-Key", "must be 1 to 255 visible characters")
                })?;
            let canonical =
                serde_json::to_vec(&serde_json::to_value(body).map_err(ApiError::internal)?)
                    .map_err(ApiError::internal)?;
            let mut hash = Sha256::new();
            hash.update(method.as_str().as_bytes());
            hash.update(b" ");
            hash.update(path.as_bytes());
            hash.update(b"\n");
            hash.update(&canonical);
            Some(IdempotencyRequest {
                scope: caller.key_id.to_string(),
                key: key.to_owned(),
                request_hash: hash.finalize().to_vec(),
            })
        }
    };
    Ok(CommandMeta {
        actor: caller.actor(),
        source: Source::Api,
        request_id,
        correlation_id: None,
        causation_id: None,
        idempotency,
    })
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tombola", description = "Event-sourced raffle ticketing engine"),
    components(schemas(views::RaffleBody, views::OrderBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route with its OpenAPI description; `/openapi.json` serves the latter.
pub fn router(state: AppState, request_timeout: Duration, body_limit: usize) -> Router {
    let (routes, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(raffles::create, raffles::list))
        .routes(routes!(raffles::get))
        .routes(routes!(raffles::open))
        .routes(routes!(raffles::close))
        .routes(routes!(raffles::cancel))
        .routes(routes!(raffles::draw, audit::draw))
        .routes(routes!(raffles::availability))
        .routes(routes!(raffles::availability_bitmap))
        .routes(routes!(orders::reserve))
        .routes(routes!(orders::get, orders::release))
        .routes(routes!(orders::manual_payment))
        .routes(routes!(orders::refund))
        .routes(routes!(inbox::needs_action))
        .routes(routes!(read::raffle_stats))
        .routes(routes!(read::platform_stats))
        .routes(routes!(read::orders))
        .routes(routes!(read::ticket))
        .routes(routes!(read::projections_status))
        .routes(routes!(read::rebuild))
        .routes(routes!(audit::verify))
        .routes(routes!(audit::draw_verify))
        .routes(routes!(audit::events_ndjson))
        .routes(routes!(exports::tickets_csv))
        .routes(routes!(exports::orders_csv))
        .routes(routes!(exports::list))
        .routes(routes!(trail::events))
        .routes(routes!(trail::ticket_history))
        .routes(routes!(trail::order_history))
        .routes(routes!(webhooks::stripe))
        .routes(routes!(webhooks_out::create, webhooks_out::list))
        .routes(routes!(
            webhooks_out::get,
            webhooks_out::update,
            webhooks_out::delete
        ))
        .routes(routes!(webhooks_out::rotate_secret))
        .routes(routes!(webhooks_out::deliveries))
        .routes(routes!(webhooks_out::attempts))
        .routes(routes!(webhooks_out::redeliver))
        .routes(routes!(webhooks_out::recover))
        .routes(routes!(webhooks_out::event_types))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .split_for_parts();
    let openapi = Arc::new(spec::complete(&openapi));
    routes
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let openapi = openapi.clone();
                async move { axum::Json(openapi.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit,
        ))
        .layer(axum::middleware::from_fn(health::record_metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            request_timeout,
            time_limit,
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(
                    |response: &axum::http::Response<_>,
                     latency: Duration,
                     span: &tracing::Span| {
                        span.record("status", response.status().as_u16());
                        tracing::debug!(latency_us = latency.as_micros() as u64, "response sent");
                    },
                ),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// The span of one request: method, route, request id, and the raffle and order it is
/// about (ids from the path; a reservation records the order it creates). Its parent is
/// the caller's W3C `traceparent`, when given. Never the query, headers or body: those may
/// hold personal data or credentials.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", axum::extract::MatchedPath::as_str);
    let path = request.uri().path();
    let span = tracing::info_span!(
        "http",
        method = %request.method(),
        route,
        %request_id,
        raffle_id = tracing::field::Empty,
        order_id = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    if let Some(raffle_id) = id_after(path, "raffles") {
        span.record("raffle_id", tracing::field::display(raffle_id));
    }
    if let Some(order_id) = id_after(path, "orders") {
        span.record("order_id", tracing::field::display(order_id));
    }
    crate::telemetry::otel::continue_trace(&span, request.headers());
    span
}

/// The UUID in `path` right after the segment `name`, e.g. the raffle of
/// `/v1/raffles/{id}/…`.
fn id_after(path: &str, name: &str) -> Option<Uuid> {
    let mut segments = path.split('/');
    segments.find(|segment| *segment == name)?;
    segments.next()?.parse().ok()
}

/// Answers 503 problem+json (tower-http's timeout answers with an empty body) when a request
/// takes longer than `limit`. A command may still commit after that: retrying it safely is
/// what Idempotency-Key is for.
async fn time_limit(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // A command given up on here may still be queued for its writer or in an append, and
    // commit after this answer: `unavailable` ("not applied") would be a lie that a retry
    // without a key turns into a second hold. Reads change nothing either way.
    let command = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) if command => ApiError::OutcomeUnknown.into_response(),
        Err(_) => ApiError::Unavailable {
            retry_after: Duration::from_secs(1),
        }
        .into_response(),
    }
}
