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
