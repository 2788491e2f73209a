//! `TestApp`: the real server on a free port over a fresh database, with API keys for every
//! role and request helpers. Arrange / Act / Assert in the tests; the plumbing lives here.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tombola::api::auth::{Keys, Role};
use tombola::clock::{Clock, SystemClock};
use tombola::config::Settings;
use tombola::engine::Engine;
use tombola::payments::stripe::Stripe;
use tombola::payments::worker::PaymentsIn;
use tombola::startup::Application;
use tombola::store::Store;
use uuid::Uuid;

use crate::proxy::LosingProxy;
use crate::requests::{expect_json, raffle_request};
use crate::{TestDb, SECRET};

/// The secret draw seed of every raffle made by [`raffle_request`].
pub const SEED: &str = "the organizer's secret seed";
pub const ORGANIZER: &str = "org-a";
pub const OTHER_ORGANIZER: &str = "org-b";

/// The server's own defaults, with port 0, limits generous enough that only the tests about
/// limits meet them, Stripe deliveries signed with [`SECRET`] accepted, and no inbox workers
/// (a test applies deliveries with [`TestApp::process_all`], or asks for workers).
pub fn test_settings() -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().expect("an address"),
        rate_limit_per_key: 10_000,
        rate_limit_per_ip: 10_000,
        stripe_webhook_secrets: vec![SECRET.to_owned()],
        payment_workers: 0,
        // Tests check that a read reaches its position, not how soon (that is the benches'
        // job): a debug build on a loaded machine took over the default 2 s.
        min_position_wait: std::time::Duration::from_secs(30),
        ..Settings::default()
    }
}

pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub address: String,
    /// The server's store (same database, same pool): for reading the event log.
    pub store: Store,
    pub db_url: String,
    /// The server's engine.
    pub engine: Engine,
    pub http: reqwest::Client,
    pub admin_key: String,
    /// Organizer `org-a`.
    pub organizer_key: String,
    /// A sales front end of `org-a`.
    pub client_key: String,
    /// Organizer `org-b`: valid, but not for `org-a`'s raffles.
    pub other_organizer_key: String,
    /// An inbox worker the test drives by hand: see [`TestApp::payments`].
    payments: OnceLock<PaymentsIn>,
    stripe_tolerance_secs: i64,
    db: Option<TestDb>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// The server with [`test_settings`] on the system clock.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The server with [`test_settings`] changed by `configure`, on the system clock.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::start(Arc::new(SystemClock), configure).await
}

impl TestApp {
    /// The server with [`test_settings`] changed by `configure`, on `clock` (a
    /// `ManualClock` for tests that move time: the holds' timers follow it).
    pub async fn start(clock: Arc<dyn Clock>, configure: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = test_settings();
        configure(&mut settings);
        let db = TestDb::new(24).await;
        let keys = Self::keys(&db.store).await;
        Self::launch(&settings, db.store.clone(), clock, keys, Some(db)).await
    }

    /// The server with [`test_settings`], every connection of it through a
    /// [`LosingProxy`] that the test arms to lose a reply. The test's own reads
    /// (`self.store`) go through it too.
    pub async fn start_through_proxy(clock: Arc<dyn Clock>) -> (Self, LosingProxy) {
        let settings = test_settings();
        let db = TestDb::new(24).await;
        let keys = Self::keys(&db.store).await;
        let proxy = LosingProxy::start(&db.url).await;
        let store = Store::connect(&proxy.url, 24)
            .await
            .expect("connect through the proxy");
        let app = Self::launch(&settings, store, clock, keys, Some(db)).await;
        (app, proxy)
    }

    /// An API key for every role: admin, organizer and client of [`ORGANIZER`], organizer
    /// of [`OTHER_ORGANIZER`].
    async fn keys(store: &Store) -> [String; 4] {
        let key = |role, organizer: Option<&'static str>| {
            let store = store.clone();
            async move {
                Keys::create(&store, role, organizer, Some("test"))
                    .await
                    .expect("create an API key")
            }
        };
        [
            key(Role::Admin, None).await,
            key(Role::Organizer, Some(ORGANIZER)).await,
            key(Role::Client, Some(ORGANIZER)).await,
            key(Role::Organizer, Some(OTHER_ORGANIZER)).await,
        ]
    }

    /// Another node on this server's database, with the same keys, on `clock`, with
    /// [`test_settings`] changed by `configure`. It does not own the database: this server
    /// does (and keeps it after [`Self::stop`], so that new nodes can start on it).
    pub async fn another_node(
        &self,
        clock: Arc<dyn Clock>,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        let mut settings = test_settings();
        configure(&mut settings);
        let store = Store::connect(&self.db_url, 24)
            .await
            .expect("connect another node");
        let keys = [
            self.admin_key.clone(),
            self.organizer_key.clone(),
            self.client_key.clone(),
            self.other_organizer_key.clone(),
        ];
        let mut node = Self::launch(&settings, store, clock, keys, None).await;
        node.db_url = self.db_url.clone();
        node
    }

    /// Stops serving (cleanly) and keeps the database.
    pub async fn stop(&mut self) {
        self.trigger_shutdown();
        if self.server.is_some() {
            self.stopped().await;
        }
    }

    async fn launch(
        settings: &Settings,
        store: Store,
        clock: Arc<dyn Clock>,
        keys: [String; 4],
        db: Option<TestDb>,
    ) -> Self {
        let [admin_key, organizer_key, client_key, other_organizer_key] = keys;
        let application = Application::build(settings, store.clone(), clock)
            .await
            .expect("build the application");
        let engine = application.engine().clone();
        let port = application.port();
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until_stopped(async move {
            let _ = stop.await;
        }));
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            db_url: db.as_ref().map(|db| db.url.clone()).unwrap_or_default(),
            store,
            payments: OnceLock::new(),
            stripe_tolerance_secs: settings.stripe_tolerance_secs,
            engine,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
            admin_key,
            organizer_key,
            client_key,
            other_organizer_key,
            db,
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A request with `key` as bearer token (none if `key` is empty).
    pub fn request(&self, method: Method, path: &str, key: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, self.url(path));
        if key.is_empty() {
            builder
        } else {
            builder.bearer_auth(key)
        }
    }

    pub async fn get(&self, path: &str, key: &str) -> Response {
        self.request(Method::GET, path, key)
            .send()
            .await
            .expect("GET sent")
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Response {
        self.request(Method::POST, path, key)
            .json(body)
            .send()
            .await
            .expect("POST sent")
    }

    pub async fn post_empty(&self, path: &str, key: &str) -> Response {
        self.request(Method::POST, path, key)
            .send()
            .await
            .expect("POST sent")
    }

    /// Creates a raffle as `org-a`'s organizer; returns its id.
    pub async fn create_raffle(&self, body: &Value) -> Uuid {
        let response = self.post("/v1/raffles", &self.organizer_key, body).await;
        let raffle = expect_json(response, StatusCode::CREATED).await;
        raffle["id"]
            .as_str()
            .expect("raffle id")
            .parse()
            .expect("a uuid")
    }

    pub async fn open(&self, raffle: Uuid) -> Value {
        let response = self
            .post_empty(&format!("/v1/raffles/{raffle}/open"), &self.organizer_key)
            .await;
        expect_json(response, StatusCode::OK).await
    }

    /// A raffle on sale, made from [`raffle_request`] with `overrides` merged in.
    pub async fn raffle_on_sale(&self, overrides: Value) -> Uuid {
        let id = self.create_raffle(&raffle_request(overrides)).await;
        self.open(id).await;
        id
    }

    pub async fn reserve(&self, raffle: Uuid, key: &str, body: &Value) -> Response {
        self.post(&format!("/v1/raffles/{raffle}/reservations"), key, body)
            .await
    }

    /// Reserves as `org-a`'s client and expects a 201; returns the order.
    pub async fn reserve_ok(&self, raffle: Uuid, body: &Value) -> Value {
        expect_json(
            self.reserve(raffle, &self.client_key, body).await,
            StatusCode::CREATED,
        )
        .await
    }

    pub async fn pay(&self, raffle: Uuid, order: &str) -> Value {
        let response = self
            .post(
                &format!("/v1/raffles/{raffle}/orders/{order}/manual-payment"),
                &self.organizer_key,
                &json!({"method": "cash", "reference": "receipt-1"}),
            )
            .await;
        expect_json(response, StatusCode::OK).await
    }

    pub async fn raffle(&self, raffle: Uuid) -> Value {
        expect_json(
            self.get(&format!("/v1/raffles/{raffle}"), &self.admin_key)
                .await,
            StatusCode::OK,
        )
        .await
    }

    /// `(available, reserved, sold, status)`: what a rejected command must leave alone.
    pub async fn counts(&self, raffle: Uuid) -> (u64, u64, u64, String) {
        let body = self.raffle(raffle).await;
        (
            body["available"].as_u64().expect("available"),
            body["reserved"].as_u64().expect("reserved"),
            body["sold"].as_u64().expect("sold"),
            body["status"].as_str().expect("status").to_owned(),
        )
    }

    pub async fn order(&self, raffle: Uuid, order: &str) -> Value {
        let response = self
            .get(
                &format!("/v1/raffles/{raffle}/orders/{order}"),
                &self.client_key,
            )
            .await;
        expect_json(response, StatusCode::OK).await
    }

    /// The stream's event types, in order, from the database.
    pub async fn event_types(&self, raffle: Uuid) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT event_type FROM events WHERE aggregate_type = 'raffle' AND aggregate_id = $1 \
             ORDER BY sequence",
        )
        .bind(raffle.to_string())
        .fetch_all(self.pool())
        .await
        .expect("read the event log")
    }

    /// The order ids of every `TicketsReserved` in the stream.
    pub async fn reserved_orders(&self, raffle: Uuid) -> Vec<Uuid> {
        sqlx::query_scalar(
            "SELECT order_id FROM events WHERE aggregate_type = 'raffle' AND aggregate_id = $1 \
             AND event_type = 'TicketsReserved' ORDER BY sequence",
        )
        .bind(raffle.to_string())
        .fetch_all(self.pool())
        .await
        .expect("read the event log")
    }

    /// Fires the shutdown future; the server finishes what is in flight, then stops.
    pub fn trigger_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    pub fn is_running(&self) -> bool {
        self.server
            .as_ref()
            .is_some_and(|server| !server.is_finished())
    }

    /// Waits for the server to stop (after [`Self::trigger_shutdown`]).
    pub async fn stopped(&mut self) {
        let server = self.server.take().expect("the server is running");
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("the server stops within 20 s")
            .expect("the server task does not panic")
            .expect("the server exits cleanly");
    }

    /// Stops the server (it must stop cleanly) and drops the database. A test that panics
    /// before this still has its database dropped.
    pub async fn teardown(mut self) {
        self.trigger_shutdown();
        if self.server.is_some() {
            self.stopped().await;
        }
        if let Some(payments) = self.payments.get() {
            payments.close().await;
        }
        // Another node (see `another_node`) leaves the database to its owner.
        match self.db.take() {
            Some(db) => db.drop_database().await,
            None => self.store.pool().close().await,
        }
    }

    /// An inbox worker of its own (its own intake too) that the test drives by hand; it
    /// shares the server's engine. Made on first use.
    pub fn payments(&self) -> &PaymentsIn {
        self.payments.get_or_init(|| {
            let stripe = Stripe::new(vec![SECRET.to_owned()], self.stripe_tolerance_secs);
            PaymentsIn::new(self.engine.clone(), vec![Arc::new(stripe)]).expect("payments start")
        })
    }

    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }
}

impl Drop for TestApp {
    /// A test that panicked before [`TestApp::teardown`]: stop serving; the database goes
    /// with the [`TestDb`] it holds.
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
