//! No personal data and no secret in anything the server says: every log line and span (all
//! crates, TRACE level) and every exported span of a full buy flow is searched for the
//! buyer's name, email and phone, the API keys and the webhook secret.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tombola::payments::stripe::SIGNATURE_HEADER;
use tombola_testkit::requests::expect_json;
use tombola_testkit::telemetry::capture;
use tombola_testkit::{eventually, spawn_app, Order, TestApp, SECRET};

use crate::stripe_events::{event_id, Payment};

const NAME: &str = "Wilhelmina Quarterstaff";
const EMAIL: &str = "wilhelmina.quarterstaff@example.org";
const PHONE: &str = "+34 612 345 678";

/// Every way the buyer could show: whole, in parts, normalised.
fn buyer_traces() -> Vec<String> {
    vec![
        NAME.into(),
        "Wilhelmina".into(),
        "Quarterstaff".into(),
        EMAIL.into(),
        "wilhelmina.quarterstaff".into(),
        PHONE.into(),
        "612 345 678".into(),
        "612345678".into(),
    ]
}

async fn reserve(app: &TestApp, raffle: uuid::Uuid, buyer: Value) -> reqwest::Response {
    app.request(
        Method::POST,
        &format!("/v1/raffles/{raffle}/reservations"),
        &app.admin_key,
    )
    .json(&json!({"buyer": buyer, "numbers": [11, 12]}))
    .send()
    .await
    .expect("reservation sent")
}

#[tokio::test]
async fn a_buy_flow_leaves_no_buyer_key_or_secret_in_logs_or_traces() {
    let capture = capture();
    let app = spawn_app().await;

    // Create and open a raffle; reserve for a buyer with a name, an email and a phone.
    let raffle = app.open_raffle(json!({})).await;
    let body = expect_json(
        reserve(
            &app,
            raffle,
            json!({"name": NAME, "email": EMAIL, "phone": PHONE}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let order_id: uuid::Uuid =
        serde_json::from_value(body["order_id"].clone()).expect("an order id");
    let order = Order {
        raffle,
        id: order_id,
        numbers: vec![11, 12],
        amount: body["amount"].as_i64().expect("an amount"),
        reserved_at: serde_json::from_value(body["reserved_at"].clone()).expect("a time"),
        expires_at: serde_json::from_value(body["expires_at"].clone()).expect("a time"),
    };
    // Refused input is where a buyer's data most easily slips into a message.
    let refused = reserve(
        &app,
        raffle,
        json!({"name": NAME, "email": "wilhelmina.quarterstaff@", "phone": PHONE}),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Stripe reports the payment; like real PaymentIntents, it carries the buyer's email.
    let payment = Payment::for_order(&order);
    let mut succeeded = payment.succeeded(&event_id());
    succeeded["data"]["object"]["receipt_email"] = EMAIL.into();
    succeeded["data"]["object"]["description"] = format!("Tickets for {NAME}").into();
    app.deliver_new(&succeeded).await;
    // A forged delivery is refused; its body must not be logged either.
    let forged = app
        .http
        .post(app.url("/v1/webhooks/stripe"))
        .header(SIGNATURE_HEADER, "t=1,v1=00")
        .body(serde_json::to_vec(&succeeded).expect("JSON"))
        .send()
        .await
        .expect("delivery sent");
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.process_all().await, 1);

    // Read the order back, and search the read model by the buyer's email.
    let read = app.order_view(&order).await;
    assert_eq!(read["status"], "paid", "{read}");
    let found = eventually(Duration::from_secs(10), "the read model", || async {
        let page = app
            .call(
                Method::GET,
                &format!("/v1/raffles/{raffle}/orders?q=quarterstaff%40example.org"),
                None,
            )
            .await;
        // The search can find the order reserved before the payment's events are projected.
        (page["orders"].as_array().map(Vec::len) == Some(1)
            && page["orders"][0]["status"] == "paid")
            .then_some(page)
    })
    .await;
    assert_eq!(found["orders"][0]["status"], "paid", "{found}");

    capture.flush_spans().await;
    let logs = capture.logs();
    let exported = capture.receiver.raw_text();
    // The capture saw this flow (a search of an empty capture would prove nothing).
    assert!(
        logs.contains(&order_id.to_string()),
        "the flow was not logged"
    );
    assert!(
        capture
            .receiver
            .spans()
            .iter()
            .any(|s| s.name == "payments.apply"
                && s.attribute("order_id") == Some(order_id.to_string().as_str())),
        "the payment's span was not exported"
    );
    let secrets = [
        app.admin_key.clone(),
        app.organizer_key.clone(),
        app.client_key.clone(),
        app.other_organizer_key.clone(),
        SECRET.to_owned(),
    ];
    for needle in buyer_traces().iter().chain(&secrets) {
        for (what, text) in [("logs", &logs), ("exported spans", &exported)] {
            if let Some(at) = text.find(needle.as_str()) {
                let start = (0..=at.saturating_sub(300))
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                let context = text.get(start..at + needle.len()).unwrap_or(needle);
                panic!("{needle:?} found in the {what}: …{context}…");
            }
        }
    }
    app.teardown().await;
}
