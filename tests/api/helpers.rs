//! `TestApp`: the real server on a free port over a fresh database, with API keys for every
//! role and request helpers. Arrange / Act / Assert in the tests; the plumbing lives here.
//! Server logs are printed only when `TEST_LOG` is set.

use std::sync::Once;
use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tombola::api::auth::{Keys, Role};
use tombola::config::ServeArgs;
use tombola::startup::Application;
use tombola::store::Store;
use uuid::Uuid;

/// The secret draw seed of every raffle made by [`raffle_request`].
pub const SEED: &str = "the organizer's secret seed";
pub const ORGANIZER: &str = "org-a";
pub const OTHER_ORGANIZER: &str = "org-b";

/// The server's own defaults (as `tombola serve` parses them), with port 0 and limits
/// generous enough that only the tests about limits meet them.
pub fn serve_args() -> ServeArgs {
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }
    let mut args = <Serve as clap::Parser>::try_parse_from(["serve", "--listen", "127.0.0.1:0"])
        .expect("the default serve arguments parse")
        .args;
    args.rate_limit_per_key = 10_000;
    args.rate_limit_per_ip = 10_000;
    args
}

pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub address: String,
    /// The server's store (same database, same pool): for reading the event log.
    pub store: Store,
    pub db_url: String,
    pub http: reqwest::Client,
    pub admin_key: String,
    /// Organizer `org-a`.
    pub organizer_key: String,
    /// A sales front end of `org-a`.
    pub client_key: String,
    /// Organizer `org-b`: valid, but not for `org-a`'s raffles.
    pub other_organizer_key: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    static LOGGING: Once = Once::new();
    LOGGING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tombola::telemetry::init_logging();
        }
    });
    let mut args = serve_args();
    configure(&mut args);
    let (store, db_url) = tombola::testing::fresh_database(16)
        .await
        .expect("a fresh test database (is PostgreSQL running? see DATABASE_URL)");
    let key = |role, organizer: Option<&'static str>| {
        let store = store.clone();
        async move {
            Keys::create(&store, role, organizer, Some("api test"))
                .await
                .expect("create an API key")
        }
    };
    let admin_key = key(Role::Admin, None).await;
    let organizer_key = key(Role::Organizer, Some(ORGANIZER)).await;
    let client_key = key(Role::Client, Some(ORGANIZER)).await;
    let other_organizer_key = key(Role::Organizer, Some(OTHER_ORGANIZER)).await;

    let application = Application::build(&args, store.clone())
        .await
        .expect("build the application");
    let port = application.port();
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async move {
        let _ = stop.await;
    }));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        store,
        db_url,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client"),
        admin_key,
        organizer_key,
        client_key,
        other_organizer_key,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

impl TestApp {
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
        .fetch_all(self.store.pool())
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
        .fetch_all(self.store.pool())
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

    /// Stops the server and drops the database. A failed test skips this and leaves its
    /// database behind to look at.
    pub async fn teardown(mut self) {
        self.trigger_shutdown();
        if self.server.is_some() {
            self.stopped().await;
        }
        self.store.pool().close().await;
        tombola::testing::drop_database(&self.db_url)
            .await
            .expect("drop the test database");
    }
}

/// What a refused command must leave alone: the raffle's counts and status, and its log.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub counts: (u64, u64, u64, String),
    pub events: Vec<String>,
}

pub async fn snapshot(app: &TestApp, raffle: Uuid) -> Snapshot {
    Snapshot {
        counts: app.counts(raffle).await,
        events: app.event_types(raffle).await,
    }
}

pub async fn assert_unchanged(app: &TestApp, raffle: Uuid, before: &Snapshot, what: &str) {
    assert_eq!(
        &snapshot(app, raffle).await,
        before,
        "{what} changed the raffle"
    );
}

/// A raffle of 100 numbers (1–100) at 5.00 EUR with two prizes, committed to [`SEED`];
/// `overrides` (a JSON object) replaces or adds fields.
pub fn raffle_request(overrides: Value) -> Value {
    let mut body = json!({
        "title": "Spring raffle",
        "ticket_count": 100,
        "price_minor": 500,
        "currency": "EUR",
        "prizes": [{"name": "Bicycle"}, {"name": "Book"}],
        "draw_commitment": tombola_domain::draw::commitment_of(SEED),
        "max_tickets_per_order": 10,
    });
    let fields = body.as_object_mut().expect("an object");
    for (key, value) in overrides.as_object().expect("overrides are an object") {
        fields.insert(key.clone(), value.clone());
    }
    body
}

pub fn buyer(email: &str) -> Value {
    json!({"name": "Ada Lovelace", "email": email, "phone": "+44 20 7946 0000"})
}

pub fn numbers(email: &str, numbers: &[u32]) -> Value {
    json!({"buyer": buyer(email), "numbers": numbers})
}

pub fn quantity(email: &str, quantity: u32) -> Value {
    json!({"buyer": buyer(email), "quantity": quantity})
}

/// Asserts the status and returns the JSON body.
pub async fn expect_json(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let text = response.text().await.expect("a body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts an RFC 9457 problem with this status and code; returns the body and headers.
pub async fn expect_problem(
    response: Response,
    status: StatusCode,
    code: &str,
) -> (Value, HeaderMap) {
    let actual = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    assert_eq!(
        headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "problem content type; body: {text}"
    );
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(
        body["type"],
        json!(format!("/problems/{code}")),
        "type; body: {text}"
    );
    assert_eq!(body["code"], json!(code), "code; body: {text}");
    assert_eq!(
        body["status"],
        json!(status.as_u16()),
        "status member; body: {text}"
    );
    for member in ["title", "detail"] {
        let value = body[member].as_str().unwrap_or_default();
        assert!(!value.is_empty(), "problem lacks {member}: {text}");
    }
    (body, headers)
}

/// The whole seconds a `Retry-After` header asks to wait; panics if it is absent.
pub fn retry_after(headers: &HeaderMap) -> u64 {
    headers
        .get(RETRY_AFTER)
        .expect("a Retry-After header")
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("delay-seconds")
}
