//! Retention (issue 17): expired Idempotency-Key records and old settled deliveries are
//! deleted, fresh ones and unsettled ones kept, a replay after expiry is a new request, and
//! the passes run on the injected clock. Rows "from the past" are made by moving their
//! timestamps back: the clock decides what is old.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tombola::clock::ManualClock;
use tombola::retention::Retention;
use tombola_domain::Clock as _;
use uuid::Uuid;

use crate::helpers::*;

async fn reserve_with_key(app: &TestApp, raffle: Uuid, key: &str) -> String {
    let response = app
        .request(
            Method::POST,
            &format!("/v1/raffles/{raffle}/reservations"),
            &app.client_key,
        )
        .header("Idempotency-Key", key)
        .json(&quantity("ada@example.com", 1))
        .send()
        .await
        .expect("sent");
    expect_json(response, StatusCode::CREATED).await["order_id"]
        .as_str()
        .expect("an order id")
        .to_owned()
}

async fn stored_keys(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key")
        .fetch_all(app.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn expired_idempotency_records_go_fresh_ones_stay_and_a_late_replay_is_new() {
    let clock = Arc::new(ManualClock::at_system_time());
    let app = TestApp::start(clock.clone(), |settings| {
        settings.retention_interval = Duration::ZERO;
    })
    .await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let old_order = reserve_with_key(&app, raffle, "old").await;
    let fresh_order = reserve_with_key(&app, raffle, "fresh").await;
    // "old" was stored 25 hours ago.
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = created_at - interval '25 hours' \
         WHERE key = 'old'",
    )
    .execute(app.pool())
    .await
    .unwrap();

    let retention = Retention::default();
    let removed = retention.run_once(app.pool(), clock.now()).await.unwrap();
    assert_eq!(removed.idempotency_keys, 1);
    assert_eq!(stored_keys(&app).await, ["fresh"]);

    // The fresh key still answers with its first response; the expired one is a new request.
    assert_eq!(reserve_with_key(&app, raffle, "fresh").await, fresh_order);
    let replayed = reserve_with_key(&app, raffle, "old").await;
    assert_ne!(
        replayed, old_order,
        "an expired key returned its old answer"
    );
    assert_eq!(app.reserved_orders(raffle).await.len(), 3);

    // A day later by the clock, the fresh one has expired too.
    clock.advance(chrono::Duration::hours(24) + chrono::Duration::minutes(1));
    let removed = retention.run_once(app.pool(), clock.now()).await.unwrap();
    assert_eq!(removed.idempotency_keys, 2, "fresh, and old's new record");
    assert!(stored_keys(&app).await.is_empty());
    app.teardown().await;
}

/// An inbox row as the intake and the worker leave it.
async fn delivery(
    app: &TestApp,
    event_id: &str,
    status: &str,
    received: DateTime<Utc>,
    processed: Option<DateTime<Utc>>,
    payment: Option<(&str, Uuid, Uuid)>,
) {
    sqlx::query(
        "INSERT INTO payment_inbox (provider, event_id, event_type, payload, payment_id, \
           raffle_id, order_id, status, received_at, processed_at) \
         VALUES ('stripe', $1, 'payment_intent.succeeded', \
                 '{\"receipt_email\": \"ada@example.com\"}', $2, $3, $4, $5, $6, $7)",
    )
    .bind(event_id)
    .bind(payment.map(|p| p.0))
    .bind(payment.map(|p| p.1))
    .bind(payment.map(|p| p.2))
    .bind(status)
    .bind(received)
    .bind(processed)
    .execute(app.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn only_old_settled_deliveries_are_pruned_in_small_batches_and_refunds_still_find_their_order(
) {
    let clock = Arc::new(ManualClock::at_system_time());
    let app = TestApp::start(clock.clone(), |settings| {
        settings.retention_interval = Duration::ZERO;
    })
    .await;
    let now = clock.now();
    let days = chrono::Duration::days;
    let (raffle, order) = (Uuid::now_v7(), Uuid::now_v7());
    for i in 0..5 {
        let payment = format!("pi_old_{i}");
        delivery(
            &app,
            &format!("evt_old_done_{i}"),
            "done",
            now - days(31),
            Some(now - days(31)),
            Some((&payment, raffle, order)),
        )
        .await;
    }
    delivery(
        &app,
        "evt_old_ignored",
        "ignored",
        now - days(31),
        None,
        None,
    )
    .await;
    for status in ["pending", "failed", "rejected"] {
        delivery(
            &app,
            &format!("evt_old_{status}"),
            status,
            now - days(31),
            None,
            None,
        )
        .await;
    }
    delivery(
        &app,
        "evt_fresh_done",
        "done",
        now - days(29),
        Some(now - days(29)),
        None,
    )
    .await;
    // Received long ago, settled yesterday (a voucher paid late): kept for its 30 days.
    delivery(
        &app,
        "evt_late_done",
        "done",
        now - days(40),
        Some(now - days(1)),
        None,
    )
    .await;

    let retention = Retention {
        batch: 2,
        ..Retention::default()
    };
    let removed = retention.run_once(app.pool(), now).await.unwrap();
    assert_eq!(removed.payment_inbox, 6);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM payment_inbox ORDER BY event_id")
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(
        left,
        [
            "evt_fresh_done",
            "evt_late_done",
            "evt_old_failed",
            "evt_old_pending",
            "evt_old_rejected"
        ]
    );
    // A refund months later still finds the order its payment paid for.
    let found = tombola::payments::inbox::find_order_of_payment(&app.store, "stripe", "pi_old_3")
        .await
        .unwrap();
    assert_eq!(found, Some((raffle, order)));
    app.teardown().await;
}

#[tokio::test]
async fn buckets_full_for_a_minute_are_dropped_and_busy_ones_kept() {
    let clock = Arc::new(ManualClock::at_system_time());
    let app = TestApp::start(clock.clone(), |settings| {
        settings.retention_interval = Duration::ZERO;
    })
    .await;
    let now = clock.now().timestamp() as f64;
    for (bucket, tat) in [
        ("full", now - 120.0),
        ("busy", now + 30.0),
        ("just", now - 5.0),
    ] {
        sqlx::query("INSERT INTO rate_limit_buckets (bucket, tat, granted) VALUES ($1, $2, 1)")
            .bind(bucket)
            .bind(tat)
            .execute(app.pool())
            .await
            .unwrap();
    }
    let removed = Retention::default()
        .run_once(app.pool(), clock.now())
        .await
        .unwrap();
    assert_eq!(removed.rate_limit_buckets, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT bucket FROM rate_limit_buckets ORDER BY 1")
        .fetch_all(app.pool())
        .await
        .unwrap();
    assert_eq!(left, ["busy", "just"]);
    app.teardown().await;
}

/// The server's own passes follow the clock: nothing is due at start; once the clock has
/// moved past the interval, the next pass removes what expired.
#[tokio::test]
async fn the_server_runs_retention_passes_on_its_clock() {
    let clock = Arc::new(ManualClock::at_system_time());
    let app = TestApp::start(clock.clone(), |settings| {
        settings.retention_interval = Duration::from_secs(3600);
    })
    .await;
    let raffle = app.raffle_on_sale(json!({})).await;
    reserve_with_key(&app, raffle, "k").await;
    sqlx::query("UPDATE idempotency_keys SET created_at = created_at - interval '23 hours'")
        .execute(app.pool())
        .await
        .unwrap();
    clock.advance(chrono::Duration::minutes(61));
    eventually(Duration::from_secs(10), "the record expires", || async {
        stored_keys(&app).await.is_empty().then_some(())
    })
    .await;
    app.teardown().await;
}
