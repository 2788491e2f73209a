//! Back-pressure: rate limits per key and per IP (429), a full raffle queue and a slow
//! request (503), an oversized body (413). Each says when to come back, and a refused
//! command changes nothing.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tombola::clock::ManualClock;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn a_key_over_its_rate_is_429_with_retry_after() {
    let clock = Arc::new(ManualClock::at_system_time());
    let app = TestApp::start(clock.clone(), |settings| settings.rate_limit_per_key = 1).await;
    // Set up as the admin, so the client key's budget (a burst of 2) is untouched.
    let raffle = {
        let response = app
            .post(
                "/v1/raffles",
                &app.admin_key,
                &raffle_request(json!({"organizer_id": ORGANIZER})),
            )
            .await;
        let id: Uuid = expect_json(response, StatusCode::CREATED).await["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        expect_json(
            app.post_empty(&format!("/v1/raffles/{id}/open"), &app.admin_key)
                .await,
            StatusCode::OK,
        )
        .await;
        id
    };
    clock.advance(chrono::Duration::seconds(2)); // the admin's budget refills
    let before = app.counts(raffle).await;

    let mut statuses = Vec::new();
    let mut limited = None;
    for number in 1..=4 {
        let response = app
            .reserve(
                raffle,
                &app.client_key,
                &numbers("ada@example.com", &[number]),
            )
            .await;
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS && limited.is_none() {
            limited =
                Some(expect_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await);
        }
    }
    assert_eq!(
        &statuses[..2],
        [StatusCode::CREATED; 2],
        "a burst of twice the rate passes"
    );
    assert_eq!(statuses[2], StatusCode::TOO_MANY_REQUESTS);
    let (problem, headers) = limited.expect("a 429");
    let wait = retry_after(&headers);
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert_eq!(problem["retry_after_seconds"], json!(wait));

    // Only the two admitted reservations happened; other keys are not limited.
    let after = app.counts(raffle).await;
    assert_eq!((after.0, after.1), (before.0 - 2, before.1 + 2));
    expect_json(
        app.get(&format!("/v1/raffles/{raffle}"), &app.organizer_key)
            .await,
        StatusCode::OK,
    )
    .await;

    // After the wait, the key works again.
    clock.advance(chrono::Duration::seconds(wait as i64));
    app.reserve_ok(raffle, &numbers("ada@example.com", &[10]))
        .await;
    app.teardown().await;
}

#[tokio::test]
async fn a_client_ip_over_its_rate_is_429_even_without_a_key() {
    let app = spawn_app_with(|args| args.rate_limit_per_ip = 2).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = app.get("/healthz", "").await;
        let status = response.status();
        statuses.push(status);
        if status == StatusCode::TOO_MANY_REQUESTS {
            let (_, headers) =
                expect_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
            assert!(retry_after(&headers) >= 1);
            break;
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert!(statuses.len() >= 5, "a burst of 4 passes: {statuses:?}");
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_503_with_retry_after_and_every_201_is_committed() {
    let app = spawn_app_with(|args| args.queue_capacity = 1).await;
    let raffle = app.raffle_on_sale(json!({"ticket_count": 1000})).await;

    // 40 callers, 5 reservations each, back to back: the queue of one stays under pressure.
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..40 {
        let requests: Vec<_> = (0..5)
            .map(|i| {
                app.request(
                    Method::POST,
                    &format!("/v1/raffles/{raffle}/reservations"),
                    &app.client_key,
                )
                .json(&quantity(&format!("buyer{caller}-{i}@example.com"), 1))
            })
            .collect();
        callers.spawn(async move {
            let mut answers = Vec::new();
            for request in requests {
                answers.push(request.send().await.unwrap());
            }
            answers
        });
    }
    let mut created = Vec::new();
    let mut overloaded = 0;
    for response in callers.join_all().await.into_iter().flatten() {
        if response.status() == StatusCode::CREATED {
            let order = expect_json(response, StatusCode::CREATED).await;
            created.push(order["order_id"].as_str().unwrap().parse::<Uuid>().unwrap());
        } else {
            let (_, headers) =
                expect_problem(response, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
            assert!(retry_after(&headers) >= 1);
            overloaded += 1;
        }
    }
    assert!(overloaded > 0, "a queue of one overflows under 40 callers");
    assert!(!created.is_empty());
    // A 503 means "not done": exactly the 201s are in the log.
    let mut logged = app.reserved_orders(raffle).await;
    logged.sort();
    created.sort();
    assert_eq!(logged, created, "reservations answered 503 were committed");
    let (_, reserved, _, _) = app.counts(raffle).await;
    assert_eq!(reserved as usize, created.len());
    app.teardown().await;
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = spawn_app_with(|args| args.body_limit_bytes = 1024).await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let before = snapshot(&app, raffle).await;
    let huge =
        json!({"buyer": {"name": "x".repeat(2048), "email": "ada@example.com"}, "numbers": [1]});
    let response = app.reserve(raffle, &app.client_key, &huge).await;
    expect_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // Also where the body is optional.
    let huge = json!({"reason": "x".repeat(2048)});
    for path in [
        format!("/v1/raffles/{raffle}/cancel"),
        format!(
            "/v1/raffles/{raffle}/orders/{}/refund",
            uuid::Uuid::now_v7()
        ),
    ] {
        let response = app.post(&path, &app.organizer_key, &huge).await;
        expect_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    }
    assert_unchanged(&app, raffle, &before, "an oversized body").await;
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_command_is_503_outcome_unknown_and_a_retry_with_its_key_is_safe() {
    let app = spawn_app_with(|settings| settings.request_timeout = Duration::from_secs(1)).await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let reserve = || {
        app.request(
            Method::POST,
            &format!("/v1/raffles/{raffle}/reservations"),
            &app.client_key,
        )
        .header("Idempotency-Key", "slow-1")
        .json(&numbers("ada@example.com", &[1, 2]))
        .send()
    };

    // The writer's commit waits on a lock the test holds (inserts into the event log are
    // blocked), past the request's time limit. The command is still queued for its append,
    // so the answer cannot be `unavailable` ("not applied", docs/CLIENTS.md): it commits
    // once the lock goes (the chaos harness found such 503s whose events were in the log).
    let mut lock = app.store.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let (_, headers) = expect_problem(
        reserve().await.unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
        "outcome_unknown",
    )
    .await;
    assert!(retry_after(&headers) >= 1);
    lock.rollback().await.unwrap();

    // The command went on and committed; the retry gets its answer, not a second order.
    let order = expect_json(reserve().await.unwrap(), StatusCode::CREATED).await;
    assert_eq!(order["numbers"], json!([1, 2]));
    assert_eq!(app.reserved_orders(raffle).await.len(), 1);
    app.teardown().await;
}
