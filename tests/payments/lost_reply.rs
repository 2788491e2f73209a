//! A delivery whose inbox insert committed but whose reply was lost (found by the chaos
//! harness during a `pg_restart`: "delivery … was refused every time but is in the inbox").
//! The intake cannot tell whether such an insert landed; answering 503 `unavailable`
//! ("not applied", docs/CLIENTS.md) would be a lie whenever it did. It answers
//! `outcome_unknown`, and the provider's redelivery finds the stored row.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;
use tombola::clock::SystemClock;

use crate::stripe_events::{event_id, Payment};
use crate::support::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_stored_with_its_reply_lost_is_outcome_unknown_and_its_redelivery_a_duplicate() {
    let (server, proxy) = TestApp::start_through_proxy(Arc::new(SystemClock)).await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve_order(raffle, &[31], 1).await;
    let payment = Payment::for_order(&order);
    let id = event_id();

    proxy.lose_reply_to("INSERT INTO payment_inbox");
    let first = server.deliver(&payment.succeeded(&id)).await;
    assert_eq!(proxy.replies_lost(), 1, "the insert's reply was lost");
    assert_eq!(
        first.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        first.body
    );
    assert_eq!(first.body["code"], "outcome_unknown", "{}", first.body);
    // It did commit: the row is there, waiting to be applied.
    assert_eq!(server.inbox_row(&id).await.status, "pending");

    let again = server.deliver(&payment.succeeded(&id)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body, json!({"received": true, "duplicate": true}));
    server.process_all().await;
    assert_eq!(server.order_status(&order).await, "paid");
    assert_eq!(server.count_events(&order, "PaymentRecorded").await, 1);
    server.teardown().await;
}

/// Chaos finding B: a release, manual payment or refund that committed was answered 503
/// `unavailable` ("not applied") when reading the order back failed while PostgreSQL
/// restarted. The answer comes from the decision; reading the order's history after the
/// commit is best effort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_committed_is_not_answered_unavailable_when_its_order_cannot_be_read() {
    let (server, proxy) = TestApp::start_through_proxy(Arc::new(SystemClock)).await;
    let raffle = server.open_raffle(json!({})).await;
    let released = server.reserve_order(raffle, &[41], 1).await;
    let paid = server.reserve_order(raffle, &[42], 2).await;
    let send = |method: reqwest::Method, path: String, body: serde_json::Value| {
        let request = server
            .http
            .request(method, server.url(&path))
            .bearer_auth(&server.admin_key)
            .json(&body);
        async move {
            let response = request.send().await.expect("request sent");
            let status = response.status();
            let position = response.headers().get("tombola-position").cloned();
            let body: serde_json::Value = response.json().await.expect("a JSON body");
            (status, position, body)
        }
    };
    let history = "SELECT sequence, payload::text FROM events";

    proxy.lose_reply_to(history);
    let (status, position, body) = send(
        reqwest::Method::DELETE,
        format!("/v1/raffles/{raffle}/orders/{}", released.id),
        json!(null),
    )
    .await;
    assert_eq!(proxy.replies_lost(), 1, "the history read lost its reply");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(position.is_some(), "{body}");
    assert_eq!(body["status"], "released", "{body}");
    assert_eq!(body["numbers"], json!([41]), "{body}");

    proxy.lose_reply_to(history);
    let (status, _, body) = send(
        reqwest::Method::POST,
        format!("/v1/raffles/{raffle}/orders/{}/manual-payment", paid.id),
        json!({"method": "cash", "reference": "r-42"}),
    )
    .await;
    assert_eq!(proxy.replies_lost(), 2, "the history read lost its reply");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "paid", "{body}");
    assert_eq!(body["payment"]["reference"], "r-42", "{body}");

    // What the answers said is what the log holds.
    assert_eq!(server.order_status(&released).await, "released");
    assert_eq!(server.order_status(&paid).await, "paid");
    server.teardown().await;
}
