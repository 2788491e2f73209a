//! Graceful shutdown: requests in flight when the signal comes are answered and committed,
//! and the server then stops.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_shutdown_are_answered_and_none_is_lost() {
    let mut app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({"ticket_count": 1000})).await;

    // Block inserts into the event log: the writer's next commit waits on the lock, so
    // requests are certainly in flight when the signal comes.
    let mut lock = app.store.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let mut requests = JoinSet::new();
    for i in 0..50u32 {
        let request = app
            .request(
                Method::POST,
                &format!("/v1/raffles/{raffle}/reservations"),
                &app.client_key,
            )
            .json(&numbers(
                &format!("buyer{i}@example.com"),
                &[2 * i + 1, 2 * i + 2],
            ));
        requests.spawn(async move { (request.send().await, Instant::now()) });
    }
    wait_for_blocked_commit(&app).await;
    eventually(
        Duration::from_secs(10),
        "every request in the engine",
        || {
            let waiting = app.engine.commands_waiting();
            async move { (waiting == 50).then_some(()) }
        },
    )
    .await;

    app.trigger_shutdown();
    let signalled = Instant::now();
    // The server took the signal (it accepts no more connections) and still runs.
    eventually(Duration::from_secs(10), "the listener to close", || {
        let connect = reqwest::Client::new()
            .get(app.url("/healthz"))
            .timeout(Duration::from_secs(2))
            .send();
        async move { connect.await.is_err().then_some(()) }
    })
    .await;
    assert!(
        app.is_running(),
        "the server waits for the requests in flight"
    );
    lock.rollback().await.unwrap();

    let mut created = Vec::new();
    let mut answered_after_signal = 0;
    while let Some(joined) = requests.join_next().await {
        let (result, at) = joined.unwrap();
        // Refused connections and 503s are fine: the client knows nothing happened.
        let Ok(response) = result else { continue };
        if response.status() == StatusCode::CREATED {
            let order = expect_json(response, StatusCode::CREATED).await;
            created.push(order["order_id"].as_str().unwrap().parse::<Uuid>().unwrap());
            if at > signalled {
                answered_after_signal += 1;
            }
        } else {
            let (_, headers) =
                expect_problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
            assert!(retry_after(&headers) >= 1);
        }
    }
    app.stopped().await;

    assert!(answered_after_signal > 0, "some 201s came after the signal");
    let mut logged = app.reserved_orders(raffle).await;
    logged.sort();
    created.sort();
    assert_eq!(logged, created, "every 201 is in the log, and nothing else");

    // Stopped: no more connections.
    let refused = reqwest::Client::new()
        .get(app.url("/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err(), "the server still answers: {refused:?}");
    app.teardown().await;
}

#[tokio::test]
async fn an_idle_server_stops_promptly_and_keeps_its_commits() {
    let mut app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let order = app
        .reserve_ok(raffle, &numbers("ada@example.com", &[1, 2]))
        .await;

    let started = Instant::now();
    app.trigger_shutdown();
    app.stopped().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let logged = app.reserved_orders(raffle).await;
    assert_eq!(
        logged,
        vec![order["order_id"].as_str().unwrap().parse::<Uuid>().unwrap()]
    );
    app.teardown().await;
}

/// Waits until a connection of the test database waits on a lock: the writer's commit.
async fn wait_for_blocked_commit(app: &TestApp) {
    eventually(
        Duration::from_secs(10),
        "a commit to reach the lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(app.store.pool())
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;
}
