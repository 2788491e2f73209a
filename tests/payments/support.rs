//! A Tombola server on a fresh database for each test, with the helpers the payment tests
//! share: an admin API key, raffles and reservations over HTTP, signed Stripe deliveries,
//! a hand-cranked inbox worker, and reads of the inbox and the event log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tombola::api::auth::{Keys, Role};
use tombola::api::rate_limit::RateLimits;
use tombola::api::AppState;
use tombola::config::ServeArgs;
use tombola::engine::{Engine, EngineConfig};
use tombola::payments::stripe::{Stripe, SIGNATURE_HEADER};
use tombola::payments::worker::PaymentsIn;
use tombola::startup::Application;
use tombola::store::Store;
use tombola_domain::{Clock, RaffleEvent};
use uuid::Uuid;

/// The endpoint secret every test server is configured with.
pub const SECRET: &str = "whsec_tombola_payments_test";
/// Ticket price of the raffles made by [`TestServer::open_raffle`], in cents (USD).
pub const PRICE: i64 = 500;
/// sha256("seed"): any valid commitment will do, nothing is drawn here.
const COMMITMENT: &str = "19b25856e1c150ca834cffc8b59b23adbd0ec0389e58eb22b3b64768098d002b";

pub struct Options {
    /// Inbox workers running in the background. With 0, the test applies deliveries itself
    /// through [`TestServer::payments`], so it decides exactly when.
    pub workers: usize,
    pub rate_limit_per_ip: u32,
    /// A controllable clock for the engine. `None` runs the production start-up
    /// (`Application::build`); `Some` wires the same pieces by hand around this clock,
    /// since `ServeArgs` has no clock to give.
    pub clock: Option<Arc<dyn Clock>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 0,
            rate_limit_per_ip: 10_000,
            clock: None,
        }
    }
}

pub struct TestServer {
    pub store: Store,
    pub engine: Engine,
    /// An inbox worker the test drives by hand (it shares the server's engine).
    pub payments: PaymentsIn,
    pub base: String,
    pub http: reqwest::Client,
    admin_key: String,
    database_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

fn init_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

fn stripe() -> Arc<Stripe> {
    Arc::new(Stripe::new(vec![SECRET.to_owned()], 300))
}

impl TestServer {
    pub async fn start(options: Options) -> Self {
        init_tracing();
        let (store, database_url) = tombola::testing::fresh_database(24)
            .await
            .expect("a fresh test database (is PostgreSQL running? see DATABASE_URL)");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        let (engine, addr, server) = match options.clock {
            None => {
                let args = ServeArgs {
                    listen: "127.0.0.1:0".parse().expect("address"),
                    rate_limit_per_key: 10_000,
                    rate_limit_per_ip: options.rate_limit_per_ip,
                    request_timeout_secs: 15,
                    body_limit_bytes: 256 * 1024,
                    queue_capacity: 4096,
                    snapshot_every: 10_000,
                    evict_after_secs: 600,
                    stripe_webhook_secrets: vec![SECRET.to_owned()],
                    stripe_tolerance_secs: 300,
                    payment_workers: options.workers,
                    read_database_url: None,
                    min_position_wait_ms: 2_000,
                };
                let app = Application::build(&args, store.clone())
                    .await
                    .expect("build the application");
                let engine = app.engine().clone();
                let addr = app.local_addr();
                let server = tokio::spawn(async move {
                    app.run_until_stopped(stopped).await.expect("server ran");
                });
                (engine, addr, server)
            }
            Some(clock) => {
                let engine = Engine::new(
                    store.clone(),
                    EngineConfig {
                        clock,
                        ..EngineConfig::default()
                    },
                );
                let payments =
                    PaymentsIn::new(engine.clone(), vec![stripe()]).expect("payments start");
                let stop_workers = tokio_util::sync::CancellationToken::new();
                let workers = payments.spawn_workers(options.workers, stop_workers.clone());
                let state = AppState::new(
                    engine.clone(),
                    RateLimits::new(10_000, options.rate_limit_per_ip),
                    None,
                    Some(payments),
                );
                let router = tombola::api::router(state, Duration::from_secs(15), 256 * 1024);
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("address");
                let served = engine.clone();
                let server = tokio::spawn(async move {
                    axum::serve(
                        listener,
                        router.into_make_service_with_connect_info::<SocketAddr>(),
                    )
                    .with_graceful_shutdown(stopped)
                    .await
                    .expect("server ran");
                    stop_workers.cancel();
                    workers.wait().await;
                    served.shutdown().await;
                });
                (engine, addr, server)
            }
        };
        let admin_key = Keys::create(&store, Role::Admin, None, Some("payments tests"))
            .await
            .expect("an admin key");
        Self {
            payments: PaymentsIn::new(engine.clone(), vec![stripe()]).expect("payments start"),
            store,
            engine,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            admin_key,
            database_url,
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// Stops the server and drops its database.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("the server stops within 10 s")
                .expect("the server task did not panic");
        }
        self.store.pool().close().await;
        tombola::testing::drop_database(&self.database_url)
            .await
            .expect("drop the test database");
    }

    // ----- the API, as an admin -----

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.admin_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let body: Value = response.json().await.expect("a JSON body");
        assert!(status.is_success(), "{method} {path}: {status} {body}");
        body
    }

    /// Creates a raffle of 100 tickets at [`PRICE`] (fields of `overrides` replace the
    /// defaults) and opens its sales.
    pub async fn open_raffle(&self, overrides: Value) -> Uuid {
        let mut body = json!({
            "title": "Payments test raffle",
            "ticket_count": 100,
            "price_minor": PRICE,
            "currency": "USD",
            "draw_commitment": COMMITMENT,
            "organizer_id": "org-payments",
            "prizes": [{"name": "A bicycle"}],
        });
        for (key, value) in overrides.as_object().expect("overrides are an object") {
            body[key] = value.clone();
        }
        let created = self
            .call(reqwest::Method::POST, "/v1/raffles", Some(body))
            .await;
        let raffle: Uuid = serde_json::from_value(created["id"].clone()).expect("raffle id");
        self.call(
            reqwest::Method::POST,
            &format!("/v1/raffles/{raffle}/open"),
            None,
        )
        .await;
        raffle
    }

    /// Reserves `numbers` for buyer `buyer`; returns the order (an `OrderBody`).
    pub async fn reserve(&self, raffle: Uuid, numbers: &[u32], buyer: u32) -> Order {
        let body = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/raffles/{raffle}/reservations"),
                Some(json!({
                    "buyer": {"name": format!("Buyer {buyer}"), "email": format!("buyer{buyer}@example.com")},
                    "numbers": numbers,
                })),
            )
            .await;
        assert_eq!(body["status"], "reserved", "{body}");
        let order = Order::from_body(raffle, &body);
        assert_eq!(order.numbers, numbers);
        order
    }

    /// The order as the API reads it back.
    pub async fn order(&self, order: &Order) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/raffles/{}/orders/{}", order.raffle, order.id),
            None,
        )
        .await
    }

    pub async fn order_status(&self, order: &Order) -> String {
        self.order(order).await["status"]
            .as_str()
            .expect("status")
            .to_owned()
    }

    // ----- Stripe deliveries -----

    /// POSTs `event` as Stripe would: pretty-printed, signed with [`SECRET`] now.
    pub async fn deliver(&self, event: &Value) -> Delivery {
        let body = serde_json::to_vec_pretty(event).expect("event serializes");
        let header = Stripe::sign(SECRET, Utc::now().timestamp(), &body);
        self.deliver_raw(body, Some(header)).await
    }

    /// Delivers `event` and asserts it was stored as new.
    pub async fn deliver_new(&self, event: &Value) {
        let delivery = self.deliver(event).await;
        assert_eq!(delivery.status, StatusCode::OK, "{}", delivery.body);
        assert_eq!(
            delivery.body,
            json!({"received": true, "duplicate": false}),
            "{}",
            event["id"]
        );
    }

    pub async fn deliver_raw(&self, body: Vec<u8>, signature: Option<String>) -> Delivery {
        let mut request = self
            .http
            .post(format!("{}/v1/webhooks/stripe", self.base))
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        let response = request.send().await.expect("delivery sent");
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.expect("a body");
        Delivery {
            status,
            content_type,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    /// Runs the inbox worker until nothing is due; returns how many deliveries it took.
    pub async fn process_all(&self) -> usize {
        let mut total = 0;
        for _ in 0..100 {
            let taken = self.payments.process_due().await.expect("inbox reachable");
            if taken == 0 {
                return total;
            }
            total += taken;
        }
        panic!("the inbox never ran dry");
    }

    // ----- the inbox and the log -----

    pub async fn inbox_row(&self, event_id: &str) -> InboxRow {
        sqlx::query_as(
            "SELECT status, attempts, outcome, last_error, next_attempt_at, payment_id \
             FROM payment_inbox WHERE provider = 'stripe' AND event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(self.pool())
        .await
        .expect("read the inbox")
        .unwrap_or_else(|| panic!("no inbox row for {event_id}"))
    }

    pub async fn inbox_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM payment_inbox")
            .fetch_one(self.pool())
            .await
            .expect("count the inbox")
    }

    /// The order's events, in stream order, as the log stores them.
    pub async fn order_events(&self, order: &Order) -> Vec<RaffleEvent> {
        self.store
            .order_events(order.raffle, order.id)
            .await
            .expect("read the order's events")
    }

    /// How many events of `event_type` the events table holds for the order (plain SQL).
    pub async fn count_events(&self, order: &Order, event_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE order_id = $1 AND event_type = $2")
            .bind(order.id)
            .bind(event_type)
            .fetch_one(self.pool())
            .await
            .expect("count events")
    }

    pub async fn raffle_event_count(&self, raffle: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
            .bind(raffle.to_string())
            .fetch_one(self.pool())
            .await
            .expect("count events")
    }

    /// Moves a pending delivery's next attempt an hour away, so that only the test decides
    /// when it runs (a first retry is due after 1 to 3 s).
    pub async fn postpone(&self, event_id: &str) {
        let updated = sqlx::query(
            "UPDATE payment_inbox SET next_attempt_at = now() + interval '1 hour' \
             WHERE provider = 'stripe' AND event_id = $1 AND status = 'pending'",
        )
        .bind(event_id)
        .execute(self.pool())
        .await
        .expect("update the inbox")
        .rows_affected();
        assert_eq!(updated, 1, "{event_id} is not pending");
    }

    /// Lets a delivery's retry backoff pass: it is due now.
    pub async fn make_due(&self, event_id: &str) {
        let updated = sqlx::query(
            "UPDATE payment_inbox SET next_attempt_at = now() \
             WHERE provider = 'stripe' AND event_id = $1 AND status = 'pending'",
        )
        .bind(event_id)
        .execute(self.pool())
        .await
        .expect("update the inbox")
        .rows_affected();
        assert_eq!(updated, 1, "{event_id} is not pending");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A test that panicked before `stop`: at least stop serving (its database stays,
        // for inspection).
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

#[derive(Debug, Clone)]
pub struct Order {
    pub raffle: Uuid,
    pub id: Uuid,
    pub numbers: Vec<u32>,
    pub amount: i64,
    pub reserved_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Order {
    fn from_body(raffle: Uuid, body: &Value) -> Self {
        let field = |name: &str| body[name].clone();
        Self {
            raffle,
            id: serde_json::from_value(field("order_id")).expect("order_id"),
            numbers: serde_json::from_value(field("numbers")).expect("numbers"),
            amount: field("amount").as_i64().expect("amount"),
            reserved_at: serde_json::from_value(field("reserved_at")).expect("reserved_at"),
            expires_at: serde_json::from_value(field("expires_at")).expect("expires_at"),
        }
    }
}

#[derive(Debug)]
pub struct Delivery {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InboxRow {
    pub status: String,
    pub attempts: i32,
    pub outcome: Option<String>,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub payment_id: Option<String>,
}

/// Polls `check` every 20 ms until it yields `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
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
