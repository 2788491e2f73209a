//! Many deliveries about one payment at once, through the real server and its inbox workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::stripe_events::{event_id, unknown_event, Payment};
use crate::support::{eventually, spawn_app_with};

/// 50 copies of one `payment_intent.succeeded` (Stripe retrying) and 50 distinct events
/// about the same PaymentIntent, all released at once against a server with four inbox
/// workers: every delivery is acknowledged, the copies collapse into one inbox row, and
/// the order's tickets are issued exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_deliveries_of_one_payment_issue_its_tickets_once() {
    const COPIES: usize = 50;
    const DISTINCT: usize = 50;
    let server = Arc::new(spawn_app_with(|settings| settings.payment_workers = 4).await);
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve_order(raffle, &[7, 8, 9], 1).await;
    let payment = Payment::for_order(&order);
    let retried_id = event_id();
    let retried = payment.succeeded(&retried_id);

    let barrier = Arc::new(Barrier::new(COPIES + DISTINCT));
    let mut deliveries = JoinSet::new();
    for i in 0..COPIES + DISTINCT {
        // Interleaved, so copies and distinct events really compete.
        let event = if i % 2 == 0 {
            retried.clone()
        } else {
            payment.succeeded(&event_id())
        };
        let (server, barrier) = (server.clone(), barrier.clone());
        deliveries.spawn(async move {
            barrier.wait().await;
            server.deliver(&event).await
        });
    }
    let mut duplicates = 0;
    while let Some(delivery) = deliveries.join_next().await {
        let delivery = delivery.expect("delivery task");
        assert!(
            delivery.status.is_success(),
            "{}: {}",
            delivery.status,
            delivery.body
        );
        assert_eq!(delivery.body["received"], true);
        if delivery.body["duplicate"] == true {
            duplicates += 1;
        }
    }
    assert_eq!(
        duplicates,
        COPIES - 1,
        "all copies but the first are duplicates"
    );

    let rows: Vec<(String, String, Option<String>)> = eventually(
        Duration::from_secs(20),
        "the workers to settle every delivery",
        || async {
            let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT event_id, status, outcome FROM payment_inbox WHERE payment_id = $1",
            )
            .bind(&payment.intent_id)
            .fetch_all(server.pool())
            .await
            .expect("read the inbox");
            rows.iter()
                .all(|(_, status, _)| status != "pending")
                .then_some(rows)
        },
    )
    .await;
    assert_eq!(
        rows.len(),
        1 + DISTINCT,
        "the copies collapsed into one row"
    );
    let mut outcomes = BTreeMap::new();
    for (event_id, status, outcome) in &rows {
        assert_eq!(status, "done", "{event_id}");
        *outcomes
            .entry(outcome.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ("duplicate".to_owned(), DISTINCT),
            ("tickets_issued".to_owned(), 1)
        ])
    );

    assert_eq!(server.count_events(&order, "TicketsIssued").await, 1);
    assert_eq!(server.count_events(&order, "PaymentRecorded").await, 1);
    assert_eq!(server.count_events(&order, "PaymentFlagged").await, 0);
    assert_eq!(server.count_events(&order, "RefundRequired").await, 0);
    let read = server.order_view(&order).await;
    assert_eq!(read["status"], "paid");
    assert_eq!(read["numbers"], json!([7, 8, 9]));
    assert_eq!(read["payment"]["payment_id"], payment.intent_id.as_str());
    assert_eq!(read["payment"]["amount"], order.amount);

    Arc::into_inner(server)
        .expect("every delivery task finished")
        .teardown()
        .await;
}

/// Stripe delivers from a handful of addresses, and a burst of its retries must never be
/// turned away: the per-IP limit, which guards the rest of the API, does not apply to
/// webhooks (their signature is checked before anything else happens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_exempt_from_the_per_ip_rate_limit() {
    let server = spawn_app_with(|settings| settings.rate_limit_per_ip = 1).await;
    for _ in 0..10 {
        let delivery = server.deliver(&unknown_event(&event_id())).await;
        assert_eq!(delivery.status, StatusCode::OK, "{}", delivery.body);
    }
    assert_eq!(server.inbox_count().await, 10);
    // The limit itself is on: the API proper is refused after the burst of 2.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = server
            .http
            .get(format!("{}/healthz", server.address))
            .send()
            .await
            .expect("request sent");
        statuses.push(response.status());
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "the per-IP limit never applied: {statuses:?}"
    );
    server.teardown().await;
}
