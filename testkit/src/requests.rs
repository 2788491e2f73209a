//! Request bodies and response checks for the HTTP API.

use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{TestApp, SEED};

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
