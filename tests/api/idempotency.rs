//! Idempotency-Key over HTTP: a retry gets the first answer (a success or a refusal) and
//! does nothing twice; the same key with another request is refused.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn an_idempotent_retry_gets_the_first_answer_and_changes_nothing() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let reserve = |key: &'static str, body: Value, api_key: String| {
        let request = app
            .request(
                Method::POST,
                &format!("/v1/raffles/{raffle}/reservations"),
                &api_key,
            )
            .header("Idempotency-Key", key)
            .json(&body);
        async move { request.send().await.unwrap() }
    };

    let first = expect_json(
        reserve(
            "order-1",
            quantity("ada@example.com", 3),
            app.client_key.clone(),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let after_first = snapshot(&app, raffle).await;
    let retry = expect_json(
        reserve(
            "order-1",
            quantity("ada@example.com", 3),
            app.client_key.clone(),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(retry, first, "same order, same random numbers");
    assert_unchanged(&app, raffle, &after_first, "a retry").await;
    assert_eq!(
        app.reserved_orders(raffle).await,
        vec![first["order_id"].as_str().unwrap().parse::<Uuid>().unwrap()]
    );

    // The same key with another body, or on another endpoint: refused, nothing done.
    let response = reserve(
        "order-1",
        quantity("ada@example.com", 4),
        app.client_key.clone(),
    )
    .await;
    expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    let response = app
        .request(
            Method::DELETE,
            &format!(
                "/v1/raffles/{raffle}/orders/{}",
                first["order_id"].as_str().unwrap()
            ),
            &app.client_key,
        )
        .header("Idempotency-Key", "order-1")
        .send()
        .await
        .unwrap();
    expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_unchanged(&app, raffle, &after_first, "a conflicting retry").await;
    assert_eq!(
        app.order(raffle, first["order_id"].as_str().unwrap()).await["status"],
        "reserved"
    );

    // Keys are scoped per API key: another key's "order-1" is its own.
    let other = expect_json(
        reserve(
            "order-1",
            quantity("ada@example.com", 3),
            app.organizer_key.clone(),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_ne!(other["order_id"], first["order_id"]);
    assert_eq!(app.reserved_orders(raffle).await.len(), 2);
    app.teardown().await;
}

#[tokio::test]
async fn a_refusal_is_replayed_too_and_a_created_raffle_is_not_created_twice() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let blocker = app
        .reserve_ok(raffle, &numbers("ada@example.com", &[1]))
        .await;
    let attempt = || {
        app.request(
            Method::POST,
            &format!("/v1/raffles/{raffle}/reservations"),
            &app.client_key,
        )
        .header("Idempotency-Key", "grace-1")
        .json(&numbers("grace@example.com", &[1, 2]))
        .send()
    };
    let (refused, _) = expect_problem(
        attempt().await.unwrap(),
        StatusCode::CONFLICT,
        "tickets_unavailable",
    )
    .await;

    // The number is free again, but a retry with the key still gets the first answer.
    let path = format!(
        "/v1/raffles/{raffle}/orders/{}",
        blocker["order_id"].as_str().unwrap()
    );
    expect_json(
        app.request(Method::DELETE, &path, &app.client_key)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let (replayed, _) = expect_problem(
        attempt().await.unwrap(),
        StatusCode::CONFLICT,
        "tickets_unavailable",
    )
    .await;
    assert_eq!(replayed, refused);
    assert_eq!(app.reserved_orders(raffle).await.len(), 1);

    let create = || {
        app.request(Method::POST, "/v1/raffles", &app.organizer_key)
            .header("Idempotency-Key", "spring-raffle")
            .json(&raffle_request(json!({"title": "Once"})))
            .send()
    };
    let first = expect_json(create().await.unwrap(), StatusCode::CREATED).await;
    let again = expect_json(create().await.unwrap(), StatusCode::CREATED).await;
    assert_eq!(again["id"], first["id"]);
    let raffles: i64 = sqlx::query_scalar("SELECT count(*) FROM raffles WHERE title = 'Once'")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(raffles, 1);
    app.teardown().await;
}
