//! Payments in: Stripe deliveries signed as Stripe signs them, the inbox, and the orders
//! they pay, on [`TestApp`].

use chrono::{DateTime, Utc};
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tombola::payments::stripe::{Stripe, SIGNATURE_HEADER};
use tombola_domain::RaffleEvent;
use uuid::Uuid;

use crate::TestApp;

/// The endpoint secret every test server is configured with.
pub const SECRET: &str = "whsec_tombola_payments_test";
/// Ticket price of the raffles made by [`TestApp::open_raffle`], in cents (USD).
pub const PRICE: i64 = 500;
/// sha256("seed"): any valid commitment will do, nothing is drawn here.
pub const COMMITMENT: &str = "19b25856e1c150ca834cffc8b59b23adbd0ec0389e58eb22b3b64768098d002b";

impl TestApp {
    // ----- the API, as an admin -----

    /// A request as the admin that must succeed; returns its JSON body.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), self.url(path))
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
    pub async fn reserve_order(&self, raffle: Uuid, numbers: &[u32], buyer: u32) -> Order {
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
    pub async fn order_view(&self, order: &Order) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/raffles/{}/orders/{}", order.raffle, order.id),
            None,
        )
        .await
    }

    pub async fn order_status(&self, order: &Order) -> String {
        self.order_view(order).await["status"]
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
            .post(self.url("/v1/webhooks/stripe"))
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
            let taken = self
                .payments()
                .process_due()
                .await
                .expect("inbox reachable");
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
        self.set_next_attempt(event_id, "1 hour").await;
    }

    /// Lets a delivery's retry backoff pass: it is due now.
    pub async fn make_due(&self, event_id: &str) {
        self.set_next_attempt(event_id, "0").await;
    }

    /// Sets a pending delivery's next attempt to `now() + interval`.
    async fn set_next_attempt(&self, event_id: &str, interval: &str) {
        let updated = sqlx::query(
            "UPDATE payment_inbox SET next_attempt_at = now() + $2::interval \
             WHERE provider = 'stripe' AND event_id = $1 AND status = 'pending'",
        )
        .bind(event_id)
        .bind(interval)
        .execute(self.pool())
        .await
        .expect("update the inbox")
        .rows_affected();
        assert_eq!(updated, 1, "{event_id} is not pending");
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
