//! Hostile but fair input (issue 18): every bad request is a clear 4xx that changes nothing,
//! and no input reaches the engine only to fail there.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// 1. Money never wraps: prices beyond what a provider accepts are refused, and so is an
/// order whose total would exceed it.
#[tokio::test]
async fn money_beyond_the_provider_limit_is_refused_not_wrapped() {
    let app = spawn_app().await;
    for (what, overrides) in [
        ("an i64::MAX price", json!({"price_minor": i64::MAX})),
        (
            "an i64::MAX bundle",
            json!({"bundles": [{"quantity": 3, "price_minor": i64::MAX}]}),
        ),
    ] {
        let response = app
            .post(
                "/v1/raffles",
                &app.organizer_key,
                &raffle_request(overrides),
            )
            .await;
        let (problem, _) =
            expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_raffle").await;
        assert!(
            problem["detail"].as_str().unwrap().contains("99999999"),
            "{what}"
        );
    }

    let raffle = app
        .raffle_on_sale(json!({"price_minor": tombola_domain::MAX_AMOUNT_MINOR}))
        .await;
    let before = snapshot(&app, raffle).await;
    let response = app
        .reserve(
            raffle,
            &app.client_key,
            &numbers("ana@example.com", &[1, 2]),
        )
        .await;
    let (problem, _) = expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "amount_too_large",
    )
    .await;
    assert_eq!(problem["limit"], tombola_domain::MAX_AMOUNT_MINOR);
    assert_unchanged(&app, raffle, &before, "an order beyond the limit").await;
    let one = app
        .reserve_ok(raffle, &numbers("ana@example.com", &[1]))
        .await;
    assert_eq!(one["amount"], tombola_domain::MAX_AMOUNT_MINOR);
    app.teardown().await;
}

/// 2. A NUL in a query string is a 422, not a 500.
#[tokio::test]
async fn a_nul_status_filter_is_a_422() {
    let app = spawn_app().await;
    for status in ["%00", "paid", "DRAFT"] {
        let response = app
            .get(&format!("/v1/raffles?status={status}"), &app.organizer_key)
            .await;
        let (problem, _) = expect_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        )
        .await;
        assert_eq!(problem["field"], "status");
    }
    let list = expect_json(
        app.get("/v1/raffles?status=on_sale", &app.organizer_key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["raffles"], json!([]));
    app.teardown().await;
}

/// 3. NUL, control, bidi and zero-width characters are refused at the door, naming the
/// field, with or without an Idempotency-Key, and change nothing.
#[tokio::test]
async fn control_and_format_characters_are_422_naming_the_field() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let order = app
        .reserve_ok(raffle, &numbers("ada@example.com", &[1]))
        .await;
    let order = order["order_id"].as_str().unwrap().to_owned();
    let before = snapshot(&app, raffle).await;

    let name =
        |name: &str| json!({"buyer": {"name": name, "email": "eve@example.com"}, "numbers": [2]});
    let reservations = format!("/v1/raffles/{raffle}/reservations");
    let payment = format!("/v1/raffles/{raffle}/orders/{order}/manual-payment");
    let cases: Vec<(&str, String, String, Value, &str)> = vec![
        (
            "NUL in a buyer name",
            reservations.clone(),
            app.client_key.clone(),
            name("Ev\u{0}e"),
            "buyer.name",
        ),
        (
            "an ANSI escape",
            reservations.clone(),
            app.client_key.clone(),
            name("\u{1b}[31mEve"),
            "buyer.name",
        ),
        (
            "BEL",
            reservations.clone(),
            app.client_key.clone(),
            name("Eve\u{7}"),
            "buyer.name",
        ),
        (
            "CR/LF",
            reservations.clone(),
            app.client_key.clone(),
            name("Eve\r\nBcc: x"),
            "buyer.name",
        ),
        (
            "a right-to-left override",
            reservations.clone(),
            app.client_key.clone(),
            name("Eve\u{202e}gpj.exe"),
            "buyer.name",
        ),
        (
            "a zero-width space",
            reservations.clone(),
            app.client_key.clone(),
            name("E\u{200b}ve"),
            "buyer.name",
        ),
        (
            "NUL in an e-mail",
            reservations.clone(),
            app.client_key.clone(),
            json!({"buyer": {"name": "Eve", "email": "ev\u{0}e@example.com"}, "numbers": [2]}),
            "buyer.email",
        ),
        (
            "NUL in a payment reference",
            payment.clone(),
            app.organizer_key.clone(),
            json!({"method": "cash", "reference": "r\u{0}"}),
            "reference",
        ),
        (
            "NUL in a payment method",
            payment,
            app.organizer_key.clone(),
            json!({"method": "ca\u{0}sh", "reference": "r"}),
            "method",
        ),
        (
            "NUL in a cancel reason",
            format!("/v1/raffles/{raffle}/cancel"),
            app.organizer_key.clone(),
            json!({"reason": "fraud\u{0}"}),
            "reason",
        ),
    ];
    for (what, path, key, body, field) in cases {
        let response = app
            .request(Method::POST, &path, &key)
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&body)
            .send()
            .await
            .unwrap();
        let (problem, headers) = expect_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        )
        .await;
        assert_eq!(problem["field"], field, "{what}");
        assert!(
            headers.get("retry-after").is_none(),
            "{what} is not retryable"
        );
        assert_unchanged(&app, raffle, &before, what).await;
    }

    // Raffle fields are the domain's: refused as an invalid raffle naming the field.
    for (what, key, overrides, field) in [
        (
            "NUL in a title",
            &app.organizer_key,
            json!({"title": "Car\u{0}"}),
            "title",
        ),
        (
            "NUL in a prize name",
            &app.organizer_key,
            json!({"prizes": [{"name": "Car\u{0}"}]}),
            "prizes",
        ),
        (
            "NUL in an admin's organizer_id",
            &app.admin_key,
            json!({"organizer_id": "org\u{0}"}),
            "organizer_id",
        ),
    ] {
        let response = app
            .request(Method::POST, "/v1/raffles", key)
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&raffle_request(overrides))
            .send()
            .await
            .unwrap();
        let (problem, _) =
            expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_raffle").await;
        assert_eq!(problem["field"], field, "{what}");
    }
    let raffles: i64 = sqlx::query_scalar("SELECT count(*) FROM raffles")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(raffles, 1, "no refused raffle was created");
    app.teardown().await;
}

/// 4. The per-buyer cap counts one buyer however the address is dressed up.
#[tokio::test]
async fn the_per_buyer_cap_sees_through_case_width_and_confusables() {
    let app = spawn_app().await;
    let raffle = app
        .raffle_on_sale(json!({"max_tickets_per_buyer": 1}))
        .await;
    app.reserve_ok(raffle, &numbers("ana@example.com", &[1]))
        .await;
    let before = snapshot(&app, raffle).await;
    for (n, email) in [
        "ANA@example.com",
        "\u{430}na@example.com",
        "\u{ff41}na@example.com",
        "ana@ex\u{430}mple.com",
    ]
    .into_iter()
    .enumerate()
    {
        let response = app
            .reserve(raffle, &app.client_key, &numbers(email, &[n as u32 + 2]))
            .await;
        let (problem, _) =
            expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded").await;
        assert_eq!(
            problem["detail"],
            "per-buyer limit of 1 tickets exceeded (1 requested, 1 held)"
        );
        assert_unchanged(&app, raffle, &before, email).await;
    }
    // A zero-width character is not dressing up: it is refused outright.
    let response = app
        .reserve(
            raffle,
            &app.client_key,
            &numbers("a\u{200b}na@example.com", &[9]),
        )
        .await;
    expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    // Plus-addresses are separate buyers unless the raffle says otherwise.
    app.reserve_ok(raffle, &numbers("ana+2@example.com", &[10]))
        .await;
    let same = app
        .raffle_on_sale(json!({"max_tickets_per_buyer": 1, "plus_addressing": "same_buyer"}))
        .await;
    assert_eq!(app.raffle(same).await["plus_addressing"], "same_buyer");
    app.reserve_ok(same, &numbers("ana@example.com", &[1]))
        .await;
    let response = app
        .reserve(same, &app.client_key, &numbers("ana+2@example.com", &[2]))
        .await;
    expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded").await;
    app.teardown().await;
}

/// 6. The authentication scheme is case-insensitive (RFC 9110 §11.1).
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let response = app
            .http
            .get(app.url("/v1/raffles"))
            .header("Authorization", format!("{scheme} {}", app.organizer_key))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{scheme}");
    }
    let response = app
        .http
        .get(app.url("/v1/raffles"))
        .header("Authorization", format!("Basic {}", app.organizer_key))
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    app.teardown().await;
}

/// 9. Details use the API's words, and a paid order no longer shows its hold's expiry.
#[tokio::test]
async fn details_use_the_apis_words_and_a_paid_order_has_no_expiry() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let order = app
        .reserve_ok(raffle, &numbers("ada@example.com", &[1]))
        .await;
    assert!(order["expires_at"].is_string(), "a hold expires");
    let order = order["order_id"].as_str().unwrap().to_owned();
    let paid = app.pay(raffle, &order).await;
    assert_eq!(paid["status"], "paid");
    assert_eq!(
        paid["expires_at"],
        Value::Null,
        "a paid order holds nothing"
    );

    let response = app
        .reserve(raffle, &app.client_key, &quantity("bob@example.com", 11))
        .await;
    let (problem, _) =
        expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded").await;
    assert_eq!(
        problem["detail"],
        "per-order limit of 10 tickets exceeded (11 requested, 0 held)"
    );
    app.post_empty(&format!("/v1/raffles/{raffle}/close"), &app.organizer_key)
        .await;
    let response = app
        .reserve(raffle, &app.client_key, &numbers("bob@example.com", &[2]))
        .await;
    let (problem, _) = expect_problem(response, StatusCode::CONFLICT, "sales_closed").await;
    assert_eq!(problem["detail"], "the raffle is closed, not on sale");
    let response = app
        .post_empty(&format!("/v1/raffles/{raffle}/open"), &app.organizer_key)
        .await;
    let (problem, _) = expect_problem(response, StatusCode::CONFLICT, "invalid_raffle_state").await;
    assert_eq!(
        problem["detail"],
        "the raffle is closed; this needs it to be draft"
    );
    app.teardown().await;
}

/// Characters a hostile client reaches for, mixed into otherwise arbitrary Unicode.
fn hostile_text() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        '\u{0}', '\u{7}', '\u{1b}', '\r', '\n', '\t', '\u{7f}', '\u{85}', '\u{200b}', '\u{200d}',
        '\u{202e}', '\u{2066}', '\u{feff}', '\u{2028}', '\u{ff41}', '\u{430}', '@', '+', ' ',
    ]);
    prop::collection::vec(prop_oneof![3 => any::<char>(), 2 => special], 0..24)
        .prop_map(|chars| chars.into_iter().collect())
}

/// The parsing edge, property-tested: whatever Unicode lands in any text field, the answer
/// is a success or a 4xx refusal, never a 5xx, and a refusal leaves the log as it was (the
/// engine never got a command it could not append).
#[tokio::test]
async fn arbitrary_unicode_in_any_text_field_parses_or_is_refused() {
    let app = spawn_app().await;
    let raffle = app
        .raffle_on_sale(json!({"ticket_count": 10_000, "max_tickets_per_order": 1}))
        .await;
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    let strategy = hostile_text();
    for case in 0..96u32 {
        let text = strategy.new_tree(&mut runner).unwrap().current();
        let number = case + 1;
        let (path, key, body) = match case % 8 {
            0 => (
                format!("/v1/raffles/{raffle}/reservations"),
                &app.client_key,
                json!({"buyer": {"name": text, "email": "p@example.com"}, "numbers": [number]}),
            ),
            1 => (
                format!("/v1/raffles/{raffle}/reservations"),
                &app.client_key,
                json!({"buyer": {"name": "P", "email": format!("{text}@example.com")}, "numbers": [number]}),
            ),
            2 => (
                format!("/v1/raffles/{raffle}/reservations"),
                &app.client_key,
                json!({"buyer": {"name": "P", "email": "p@example.com", "phone": text}, "numbers": [number]}),
            ),
            3 => (
                "/v1/raffles".to_owned(),
                &app.organizer_key,
                raffle_request(json!({"title": text})),
            ),
            4 => (
                "/v1/raffles".to_owned(),
                &app.organizer_key,
                raffle_request(json!({"prizes": [{"name": text}]})),
            ),
            5 => (
                "/v1/raffles".to_owned(),
                &app.admin_key,
                raffle_request(json!({"organizer_id": text})),
            ),
            6 => (
                "/v1/raffles".to_owned(),
                &app.organizer_key,
                raffle_request(json!({"currency": text})),
            ),
            _ => {
                let order = app
                    .reserve_ok(raffle, &numbers("q@example.com", &[5_000 + number]))
                    .await;
                let order = order["order_id"].as_str().unwrap().to_owned();
                (
                    format!("/v1/raffles/{raffle}/orders/{order}/manual-payment"),
                    &app.organizer_key,
                    json!({"method": text, "reference": text}),
                )
            }
        };
        let before = snapshot(&app, raffle).await;
        let response = app
            .request(Method::POST, &path, key)
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer = response.text().await.unwrap();
        assert!(
            status.is_success() || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{text:?} in case {case}: {status} {answer}"
        );
        if status == StatusCode::UNPROCESSABLE_ENTITY {
            assert_unchanged(&app, raffle, &before, &format!("{text:?}")).await;
        }
    }
    app.teardown().await;
}
