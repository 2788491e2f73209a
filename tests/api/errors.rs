//! Invalid requests over HTTP (400, 404, 409, 422 and unknown routes): the status, the
//! problem+json body, and that a refused command changes nothing (counts and log).

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn malformed_json_is_400_invalid_json() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let before = snapshot(&app, raffle).await;

    for body in ["{\"buyer\": ", "not json at all", "{\"numbers\": [1, 2", ""] {
        let response = app
            .request(
                Method::POST,
                &format!("/v1/raffles/{raffle}/reservations"),
                &app.client_key,
            )
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        expect_problem(response, StatusCode::BAD_REQUEST, "invalid_json").await;
    }
    // The same for the endpoints whose body is optional.
    let response = app
        .request(
            Method::POST,
            &format!("/v1/raffles/{raffle}/cancel"),
            &app.organizer_key,
        )
        .header(CONTENT_TYPE, "application/json")
        .body("{\"reason\": ")
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::BAD_REQUEST, "invalid_json").await;
    // Well-formed JSON of the wrong shape there is a 422.
    let response = app
        .post(
            &format!("/v1/raffles/{raffle}/cancel"),
            &app.organizer_key,
            &json!({"why": "no reason"}),
        )
        .await;
    expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;

    assert_unchanged(&app, raffle, &before, "malformed JSON").await;
    app.teardown().await;
}

#[tokio::test]
async fn unknown_fields_and_invalid_values_are_422() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    app.reserve_ok(raffle, &numbers("ada@example.com", &[1]))
        .await;
    let before = snapshot(&app, raffle).await;

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "an unknown field",
            json!({"buyer": buyer("grace@example.com"), "numbers": [2], "colour": "red"}),
            "invalid_request",
        ),
        (
            "a number where a list is due",
            json!({"buyer": buyer("grace@example.com"), "numbers": 2}),
            "invalid_request",
        ),
        (
            "a missing buyer",
            json!({"numbers": [2]}),
            "invalid_request",
        ),
        (
            "a negative quantity",
            json!({"buyer": buyer("grace@example.com"), "quantity": -1}),
            "invalid_request",
        ),
        (
            "both numbers and quantity",
            json!({"buyer": buyer("grace@example.com"), "numbers": [2], "quantity": 1}),
            "invalid_request",
        ),
        (
            "neither numbers nor quantity",
            json!({"buyer": buyer("grace@example.com")}),
            "invalid_request",
        ),
        (
            "an invalid e-mail",
            numbers("not-an-email", &[2]),
            "invalid_request",
        ),
        (
            "an empty name",
            json!({"buyer": {"name": " ", "email": "g@example.com"}, "numbers": [2]}),
            "invalid_request",
        ),
        (
            "a number outside the raffle",
            numbers("grace@example.com", &[2, 101]),
            "invalid_ticket_number",
        ),
        (
            "a number twice",
            numbers("grace@example.com", &[3, 3]),
            "duplicate_ticket_number",
        ),
        (
            "a quantity of zero",
            quantity("grace@example.com", 0),
            "invalid_quantity",
        ),
        (
            "no numbers",
            numbers("grace@example.com", &[]),
            "invalid_quantity",
        ),
    ];
    for (what, body, code) in cases {
        let response = app.reserve(raffle, &app.client_key, &body).await;
        let (problem, _) = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, code).await;
        if code == "invalid_ticket_number" {
            assert_eq!(problem["numbers"], json!([101]), "{what}");
        }
        assert_unchanged(&app, raffle, &before, what).await;
    }

    // An Idempotency-Key must be short.
    let response = app
        .request(
            Method::POST,
            &format!("/v1/raffles/{raffle}/reservations"),
            &app.client_key,
        )
        .header("Idempotency-Key", "k".repeat(256))
        .json(&numbers("grace@example.com", &[2]))
        .send()
        .await
        .unwrap();
    let (problem, _) = expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_eq!(problem["field"], "Idempotency-Key");

    // An unknown raffle, and an id that is no id.
    let response = app
        .reserve(
            Uuid::nil(),
            &app.client_key,
            &numbers("grace@example.com", &[2]),
        )
        .await;
    expect_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = app
        .post(
            "/v1/raffles/not-a-uuid/reservations",
            &app.client_key,
            &numbers("grace@example.com", &[2]),
        )
        .await;
    // A path id that is no UUID names nothing: 404, as an unknown id (docs/API.md).
    expect_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = app
        .get(&format!("/v1/raffles/{raffle}/orders/42"), &app.client_key)
        .await;
    expect_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    // A query string of the wrong type.
    let response = app
        .get(
            &format!("/v1/raffles/{raffle}/availability?from=one"),
            &app.client_key,
        )
        .await;
    expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    let response = app.get("/v1/raffles?limit=-1", &app.admin_key).await;
    expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_unchanged(
        &app,
        raffle,
        &before,
        "a bad Idempotency-Key, path or query",
    )
    .await;

    // Invalid raffles are refused and create nothing.
    let invalid_raffles = [
        (json!({"currency": "EURO"}), "invalid_request"),
        (json!({"late_payment_policy": "maybe"}), "invalid_request"),
        (json!({"ticket_count": 0}), "invalid_raffle"),
        (json!({"price_minor": -5}), "invalid_raffle"),
        (json!({"draw_commitment": "not a sha256"}), "invalid_raffle"),
        (json!({"ticket_count": "many"}), "invalid_request"),
        (json!({"surprise": true}), "invalid_request"),
    ];
    for (overrides, code) in invalid_raffles {
        let response = app
            .post(
                "/v1/raffles",
                &app.organizer_key,
                &raffle_request(overrides.clone()),
            )
            .await;
        expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, code).await;
    }
    let list = expect_json(app.get("/v1/raffles", &app.admin_key).await, StatusCode::OK).await;
    assert_eq!(
        list["raffles"].as_array().unwrap().len(),
        1,
        "only the first raffle exists"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(events as usize, before.events.len());
    app.teardown().await;
}

#[tokio::test]
async fn unknown_raffles_and_orders_are_404() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let before = snapshot(&app, raffle).await;
    let unknown = Uuid::now_v7();

    for response in [
        app.get(&format!("/v1/raffles/{unknown}"), &app.admin_key)
            .await,
        app.get(
            &format!("/v1/raffles/{unknown}/availability"),
            &app.client_key,
        )
        .await,
        app.get(
            &format!("/v1/raffles/{unknown}/availability/bitmap"),
            &app.client_key,
        )
        .await,
        app.reserve(unknown, &app.client_key, &numbers("ada@example.com", &[1]))
            .await,
        app.post_empty(&format!("/v1/raffles/{unknown}/open"), &app.organizer_key)
            .await,
        app.post_empty(&format!("/v1/raffles/{unknown}/cancel"), &app.organizer_key)
            .await,
    ] {
        expect_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    let missing_order = Uuid::now_v7();
    let response = app
        .get(
            &format!("/v1/raffles/{raffle}/orders/{missing_order}"),
            &app.client_key,
        )
        .await;
    expect_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = app
        .post(
            &format!("/v1/raffles/{raffle}/orders/{missing_order}/manual-payment"),
            &app.organizer_key,
            &json!({"method": "cash", "reference": "r"}),
        )
        .await;
    let (problem, _) = expect_problem(response, StatusCode::NOT_FOUND, "order_not_found").await;
    assert_eq!(problem["order_id"], json!(missing_order));
    let response = app
        .request(
            Method::DELETE,
            &format!("/v1/raffles/{raffle}/orders/{missing_order}"),
            &app.client_key,
        )
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::NOT_FOUND, "order_not_found").await;

    assert_unchanged(&app, raffle, &before, "requests for unknown resources").await;
    let raffles: i64 = sqlx::query_scalar("SELECT count(*) FROM raffles")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(raffles, 1, "asking about a raffle does not create it");
    app.teardown().await;
}

#[tokio::test]
async fn taken_numbers_are_409_and_name_the_taken_numbers() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({"ticket_count": 12})).await;
    app.reserve_ok(raffle, &numbers("ada@example.com", &[1, 2, 3]))
        .await;
    let before = snapshot(&app, raffle).await;

    let response = app
        .reserve(
            raffle,
            &app.client_key,
            &numbers("grace@example.com", &[4, 3, 1]),
        )
        .await;
    let (problem, _) = expect_problem(response, StatusCode::CONFLICT, "tickets_unavailable").await;
    assert_eq!(problem["numbers"], json!([1, 3]));
    assert_unchanged(&app, raffle, &before, "a reservation of taken numbers").await;

    // More random numbers than are free.
    let response = app
        .reserve(raffle, &app.client_key, &quantity("grace@example.com", 10))
        .await;
    let (problem, _) = expect_problem(response, StatusCode::CONFLICT, "not_enough_tickets").await;
    assert_eq!(
        (problem["available"].as_u64(), problem["requested"].as_u64()),
        (Some(9), Some(10))
    );
    assert_unchanged(&app, raffle, &before, "a reservation of too many numbers").await;

    // Sales that are not open.
    let draft = app.create_raffle(&raffle_request(json!({}))).await;
    let draft_before = snapshot(&app, draft).await;
    let response = app
        .reserve(draft, &app.client_key, &numbers("grace@example.com", &[4]))
        .await;
    expect_problem(response, StatusCode::CONFLICT, "sales_closed").await;
    let response = app
        .post(
            &format!("/v1/raffles/{draft}/draw"),
            &app.organizer_key,
            &json!({"seed": SEED, "public_entropy": "x"}),
        )
        .await;
    expect_problem(response, StatusCode::CONFLICT, "invalid_raffle_state").await;
    assert_unchanged(&app, draft, &draft_before, "commands on a draft").await;

    // A wrong seed does not draw.
    app.post_empty(&format!("/v1/raffles/{raffle}/close"), &app.organizer_key)
        .await;
    let closed = snapshot(&app, raffle).await;
    let response = app
        .post(
            &format!("/v1/raffles/{raffle}/draw"),
            &app.organizer_key,
            &json!({"seed": "a guess", "public_entropy": "x"}),
        )
        .await;
    expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "draw_seed_mismatch",
    )
    .await;
    assert_unchanged(&app, raffle, &closed, "a draw with the wrong seed").await;
    app.teardown().await;
}

#[tokio::test]
async fn per_order_and_per_buyer_limits_are_422_limit_exceeded() {
    let app = spawn_app().await;
    let raffle = app
        .raffle_on_sale(json!({"max_tickets_per_order": 3, "max_tickets_per_buyer": 4}))
        .await;

    let before = snapshot(&app, raffle).await;
    let response = app
        .reserve(
            raffle,
            &app.client_key,
            &numbers("ada@example.com", &[1, 2, 3, 4]),
        )
        .await;
    let (problem, _) =
        expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded").await;
    assert_eq!(problem["kind"], "per_order");
    assert_eq!(problem["limit"], 3);
    assert_eq!(problem["requested"], 4);
    let response = app
        .reserve(raffle, &app.client_key, &quantity("ada@example.com", 4))
        .await;
    expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded").await;
    assert_unchanged(&app, raffle, &before, "an order over the per-order limit").await;

    app.reserve_ok(raffle, &numbers("ada@example.com", &[1, 2, 3]))
        .await;
    let before = snapshot(&app, raffle).await;
    // The same buyer, however the address is written.
    let response = app
        .reserve(
            raffle,
            &app.client_key,
            &numbers(" ADA@Example.com ", &[4, 5]),
        )
        .await;
    let (problem, _) =
        expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded").await;
    assert_eq!(problem["kind"], "per_buyer");
    assert_eq!(
        (
            problem["limit"].as_u64(),
            problem["held"].as_u64(),
            problem["requested"].as_u64()
        ),
        (Some(4), Some(3), Some(2))
    );
    assert_unchanged(&app, raffle, &before, "an order over the per-buyer limit").await;

    // The last one the buyer may hold, and another buyer, still go through.
    app.reserve_ok(raffle, &numbers("ada@example.com", &[4]))
        .await;
    app.reserve_ok(raffle, &numbers("grace@example.com", &[5, 6, 7]))
        .await;
    app.teardown().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_too() {
    let app = spawn_app().await;
    expect_problem(
        app.get("/v1/nothing-here", &app.admin_key).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let response = app
        .request(Method::DELETE, "/v1/raffles", &app.admin_key)
        .send()
        .await
        .unwrap();
    expect_problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    let response = app
        .request(Method::POST, "/v1/raffles", &app.organizer_key)
        .header(CONTENT_TYPE, "text/plain")
        .body(raffle_request(json!({})).to_string())
        .send()
        .await
        .unwrap();
    expect_problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    app.teardown().await;
}

/// JSON has one number type: `2.0` is the integer 2 to the OpenAPI document's JSON Schema,
/// so it is to the server too; a fraction where an integer goes stays a 422.
#[tokio::test]
async fn integral_floats_are_integers_and_fractions_are_refused() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let buyer = json!({"name": "Ana", "email": "ana@example.com"});
    let before = snapshot(&app, raffle).await;
    for body in [
        json!({"buyer": buyer, "quantity": 2.5}),
        json!({"buyer": buyer, "numbers": [7.5]}),
        json!({"buyer": buyer, "numbers": [7], "quantity": 1}),
        json!({"buyer": {"name": "Ana", "email": "000"}, "quantity": 1}),
    ] {
        expect_problem(
            app.reserve(raffle, &app.client_key, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        )
        .await;
    }
    assert_unchanged(&app, raffle, &before, "refused bodies").await;

    let random = app
        .reserve_ok(raffle, &json!({"buyer": buyer, "quantity": 2.0}))
        .await;
    assert_eq!(random["numbers"].as_array().unwrap().len(), 2, "{random}");
    let exact = app
        .reserve_ok(raffle, &json!({"buyer": buyer, "numbers": [7.0, 8.0]}))
        .await;
    assert_eq!(exact["numbers"], json!([7, 8]), "{exact}");
    app.teardown().await;
}
