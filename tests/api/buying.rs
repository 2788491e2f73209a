//! The happy paths over HTTP: sell, pay, read back, close, draw; cancel, release, refund.

use reqwest::{Method, StatusCode};
use roaring::RoaringBitmap;
use serde_json::{json, Value};
use tombola_domain::{draw_winners, Prize};
use uuid::Uuid;

use crate::helpers::*;

fn order_id(order: &Value) -> String {
    order["order_id"].as_str().expect("order_id").to_owned()
}

fn numbers_of(order: &Value) -> Vec<u32> {
    order["numbers"]
        .as_array()
        .expect("numbers")
        .iter()
        .map(|n| n.as_u64().expect("a number") as u32)
        .collect()
}

#[tokio::test]
async fn a_raffle_sells_pays_closes_and_draws_verifiably() {
    let app = spawn_app().await;

    // Create and open.
    let body = raffle_request(json!({"bundles": [{"quantity": 3, "price_minor": 1200}]}));
    let created = expect_json(
        app.post("/v1/raffles", &app.organizer_key, &body).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["status"], "draft");
    assert_eq!(created["organizer_id"], ORGANIZER);
    assert_eq!(created["available"], 100);
    let raffle: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let opened = app.open(raffle).await;
    assert_eq!(opened["status"], "on_sale");

    // Reserve explicit numbers, then a random quantity.
    let explicit = app
        .reserve_ok(raffle, &numbers("ada@example.com", &[7, 13, 42]))
        .await;
    assert_eq!(explicit["status"], "reserved");
    assert_eq!(numbers_of(&explicit), vec![7, 13, 42]);
    assert_eq!(
        explicit["amount"], 1200,
        "three tickets cost the bundle price"
    );
    assert_eq!(explicit["currency"], "EUR");
    assert_eq!(explicit["buyer"]["email"], "ada@example.com");
    let random = app
        .reserve_ok(raffle, &quantity("grace@example.com", 2))
        .await;
    let random_numbers = numbers_of(&random);
    assert_eq!(random_numbers.len(), 2);
    assert!(random_numbers
        .iter()
        .all(|n| (1..=100).contains(n) && ![7, 13, 42].contains(n)));
    assert_eq!(random["amount"], 1000);
    let (available, reserved, sold, _) = app.counts(raffle).await;
    assert_eq!((available, reserved, sold), (95, 5, 0));

    // The organizer confirms a payment received by hand.
    let paid = app.pay(raffle, &order_id(&explicit)).await;
    assert_eq!(paid["status"], "paid");

    // Read back: buyer, payment and status.
    let order = app.order(raffle, &order_id(&explicit)).await;
    assert_eq!(order["status"], "paid");
    assert_eq!(order["numbers"], json!([7, 13, 42]));
    assert_eq!(order["buyer"]["name"], "Ada Lovelace");
    assert_eq!(order["buyer"]["email"], "ada@example.com");
    assert_eq!(order["payment"]["provider"], "manual");
    assert_eq!(order["payment"]["method"], "cash");
    assert_eq!(order["payment"]["reference"], "receipt-1");
    assert_eq!(order["payment"]["amount"], 1200);
    assert!(order["paid_at"].is_string());
    let (available, reserved, sold, _) = app.counts(raffle).await;
    assert_eq!((available, reserved, sold), (95, 2, 3));

    // The availability page and the bitmap agree with that.
    let page = expect_json(
        app.get(
            &format!("/v1/raffles/{raffle}/availability?from=1&to=50"),
            &app.client_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (
            page["from"].as_u64(),
            page["to"].as_u64(),
            page["available"].as_u64()
        ),
        (Some(1), Some(50), Some(95))
    );
    let states = page["numbers"].as_array().unwrap();
    assert_eq!(states.len(), 50);
    for state in states {
        let number = state["number"].as_u64().unwrap() as u32;
        let expected = if [7, 13, 42].contains(&number) {
            "sold"
        } else if random_numbers.contains(&number) {
            "reserved"
        } else {
            "available"
        };
        assert_eq!(state["state"], expected, "number {number}");
    }
    let response = app
        .get(
            &format!("/v1/raffles/{raffle}/availability/bitmap"),
            &app.client_key,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.roaring-bitmap"
    );
    let bitmap = RoaringBitmap::deserialize_from(&response.bytes().await.unwrap()[..])
        .expect("a portable roaring bitmap");
    let mut expected_free: RoaringBitmap = (1..=100).collect();
    for taken in [7, 13, 42].iter().chain(&random_numbers) {
        expected_free.remove(*taken);
    }
    assert_eq!(bitmap, expected_free);

    // Close, then draw with the seed whose SHA-256 is the commitment.
    let closed = expect_json(
        app.post_empty(&format!("/v1/raffles/{raffle}/close"), &app.organizer_key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(closed["status"], "closed");
    let draw = expect_json(
        app.post(
            &format!("/v1/raffles/{raffle}/draw"),
            &app.organizer_key,
            &json!({"seed": SEED, "public_entropy": "lottery 2025-06-01: 04 11 23 35 41"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let winners = draw["winners"].as_array().expect("winners");
    assert_eq!(winners.len(), 2, "two prizes, three sold numbers");
    let won: Vec<u32> = winners
        .iter()
        .map(|w| w["number"].as_u64().unwrap() as u32)
        .collect();
    assert!(
        won.iter().all(|n| [7, 13, 42].contains(n)),
        "winners are sold numbers: {won:?}"
    );
    assert_ne!(won[0], won[1]);
    assert!(winners
        .iter()
        .all(|w| w["order_id"] == explicit["order_id"]));
    // Anyone can re-run the draw from the published seed and entropy.
    let prizes = ["Bicycle", "Book"].map(|name| Prize {
        name: name.into(),
        early_bird_cutoff: None,
    });
    let issued: Vec<_> = [7, 13, 42]
        .into_iter()
        .map(|n| (n, chrono::Utc::now()))
        .collect();
    let recomputed: Vec<u32> =
        draw_winners(SEED, "lottery 2025-06-01: 04 11 23 35 41", &prizes, &issued)
            .into_iter()
            .map(|w| w.expect("a winner"))
            .collect();
    assert_eq!(won, recomputed);
    let drawn = app.raffle(raffle).await;
    assert_eq!(drawn["status"], "drawn");
    assert_eq!(drawn["winners"], draw["winners"]);

    assert_eq!(
        app.event_types(raffle).await,
        [
            "RaffleCreated",
            "SalesOpened",
            "TicketsReserved",
            "TicketsReserved",
            "ManualPaymentConfirmed",
            "TicketsIssued",
            "SalesClosed",
            "WinnersDrawn"
        ]
    );
    app.teardown().await;
}

#[tokio::test]
async fn release_returns_numbers_and_cancel_makes_paid_orders_refundable() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;

    // A released hold gives its numbers back.
    let held = app
        .reserve_ok(raffle, &numbers("ada@example.com", &[1, 2]))
        .await;
    let path = format!("/v1/raffles/{raffle}/orders/{}", order_id(&held));
    let released = expect_json(
        app.request(Method::DELETE, &path, &app.client_key)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(released["status"], "released");
    let again = expect_json(
        app.request(Method::DELETE, &path, &app.client_key)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(again["status"], "released", "releasing twice is harmless");
    assert_eq!(app.counts(raffle).await.0, 100);
    let retaken = app
        .reserve_ok(raffle, &numbers("grace@example.com", &[1, 2]))
        .await;
    assert_eq!(numbers_of(&retaken), vec![1, 2]);

    // A paid order, and another hold, when the raffle is cancelled.
    let paid = app
        .reserve_ok(raffle, &numbers("alan@example.com", &[10, 11, 12]))
        .await;
    app.pay(raffle, &order_id(&paid)).await;
    let cancelled = expect_json(
        app.post(
            &format!("/v1/raffles/{raffle}/cancel"),
            &app.organizer_key,
            &json!({"reason": "venue closed"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        app.order(raffle, &order_id(&paid)).await["status"],
        "refund_required"
    );
    assert_eq!(
        app.order(raffle, &order_id(&retaken)).await["status"],
        "released"
    );

    // The organizer refunds it.
    let refunded = expect_json(
        app.post(
            &format!("/v1/raffles/{raffle}/orders/{}/refund", order_id(&paid)),
            &app.organizer_key,
            &json!({"reason": "raffle cancelled"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(refunded["status"], "refunded");
    assert_eq!(
        app.order(raffle, &order_id(&paid)).await["status"],
        "refunded"
    );
    let types = app.event_types(raffle).await;
    assert!(
        types.ends_with(&["RaffleCancelled".to_owned(), "OrderRefunded".to_owned()]),
        "{types:?}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_refund_while_on_sale_returns_the_numbers_to_the_pool() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let order = app
        .reserve_ok(raffle, &numbers("ada@example.com", &[5]))
        .await;
    app.pay(raffle, &order_id(&order)).await;
    assert_eq!(app.counts(raffle).await.2, 1);

    // No body at all: the whole amount.
    let response = app
        .post_empty(
            &format!("/v1/raffles/{raffle}/orders/{}/refund", order_id(&order)),
            &app.organizer_key,
        )
        .await;
    assert_eq!(
        expect_json(response, StatusCode::OK).await["status"],
        "refunded"
    );

    let (available, reserved, sold, _) = app.counts(raffle).await;
    assert_eq!((available, reserved, sold), (100, 0, 0));
    app.reserve_ok(raffle, &numbers("grace@example.com", &[5]))
        .await;
    app.teardown().await;
}

#[tokio::test]
async fn organizers_list_their_own_raffles_and_admins_see_all() {
    let app = spawn_app().await;
    let own = app
        .create_raffle(&raffle_request(json!({"title": "Ours"})))
        .await;
    let admin_made = expect_json(
        app.post(
            "/v1/raffles",
            &app.admin_key,
            &raffle_request(json!({"organizer_id": OTHER_ORGANIZER})),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(admin_made["organizer_id"], OTHER_ORGANIZER);

    let ids = |list: &Value| -> Vec<String> {
        list["raffles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mine = expect_json(
        app.get("/v1/raffles", &app.organizer_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&mine), vec![own.to_string()]);
    let all = expect_json(app.get("/v1/raffles", &app.admin_key).await, StatusCode::OK).await;
    assert_eq!(ids(&all).len(), 2);
    let on_sale = expect_json(
        app.get("/v1/raffles?status=on_sale", &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert!(ids(&on_sale).is_empty(), "both are drafts");
    app.teardown().await;
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    assert_eq!(
        expect_json(app.get("/healthz", "").await, StatusCode::OK).await["status"],
        "ok"
    );
    assert_eq!(
        expect_json(app.get("/readyz", "").await, StatusCode::OK).await["status"],
        "ready"
    );
    app.teardown().await;
}

/// Waits until `node` has expired `order`'s hold (no command sent: its timer's doing), and
/// checks the order shows it.
async fn expired_on(node: &TestApp, raffle: Uuid, order: &Value) {
    eventually(
        std::time::Duration::from_secs(30),
        "the hold to expire",
        || async {
            node.event_types(raffle)
                .await
                .contains(&"HoldsExpired".to_owned())
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        node.order(raffle, &order_id(order)).await["status"],
        "expired"
    );
}

/// Whether the registry asks start-ups to load `raffle` for its holds.
async fn marked_for_start_up(node: &TestApp, raffle: Uuid) -> bool {
    sqlx::query_scalar("SELECT holds_until IS NOT NULL FROM raffles WHERE raffle_id = $1")
        .bind(raffle)
        .fetch_one(node.pool())
        .await
        .expect("the registry row")
}

/// Chaos finding C (docs/RELIABILITY.md): a raffle closed and drawn while a hold was live,
/// then its node restarted. Start-up loaded only the raffles on sale, so nothing ever
/// expired that hold. The registry must say which raffles still have holds to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_still_live_when_its_raffle_was_drawn_expires_after_a_restart() {
    use std::sync::Arc;
    use tombola::clock::ManualClock;

    let clock = Arc::new(ManualClock::at_system_time());
    let mut first = TestApp::start(clock.clone(), |_| {}).await;
    let raffle = first.raffle_on_sale(json!({"hold_minutes": 1})).await;
    let paid = first
        .reserve_ok(raffle, &numbers("ada@example.com", &[7]))
        .await;
    first.pay(raffle, &order_id(&paid)).await;
    let held = first
        .reserve_ok(raffle, &numbers("grace@example.com", &[9]))
        .await;
    expect_json(
        first
            .post_empty(&format!("/v1/raffles/{raffle}/close"), &first.organizer_key)
            .await,
        StatusCode::OK,
    )
    .await;
    expect_json(
        first
            .post(
                &format!("/v1/raffles/{raffle}/draw"),
                &first.organizer_key,
                &json!({"seed": SEED, "public_entropy": "block 1"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    first.stop().await;

    // Nothing is sent to the raffle: the new node's start-up must load it by itself.
    let second = first.another_node(clock.clone(), |_| {}).await;
    clock.advance(chrono::Duration::seconds(61));
    expired_on(&second, raffle, &held).await;
    // With no hold left, the registry no longer asks start-ups to load the raffle.
    assert!(
        !marked_for_start_up(&second, raffle).await,
        "a raffle without holds stays listed"
    );

    // A mark with no hold behind it (migration 0110 marks every raffle closed before it) is
    // cleared by the next node that loads the raffle at start-up.
    sqlx::query("UPDATE raffles SET holds_until = now() WHERE raffle_id = $1")
        .bind(raffle)
        .execute(second.pool())
        .await
        .expect("mark the raffle");
    let third = first.another_node(clock.clone(), |_| {}).await;
    eventually(
        std::time::Duration::from_secs(30),
        "the mark to be cleared",
        || async { (!marked_for_start_up(&third, raffle).await).then_some(()) },
    )
    .await;
    third.teardown().await;
    second.teardown().await;
    first.teardown().await;
}

/// The same raffle, but its node never comes back: another node, which started before the
/// raffle existed and never loaded it, must find it and expire the hold on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_raffle_whose_node_is_gone_has_its_holds_expired_by_another() {
    use std::sync::Arc;
    use tombola::clock::ManualClock;

    let clock = Arc::new(ManualClock::at_system_time());
    let mut gone = TestApp::start(clock.clone(), |_| {}).await;
    let other = gone.another_node(clock.clone(), |_| {}).await;
    let raffle = gone.raffle_on_sale(json!({"hold_minutes": 1})).await;
    let held = gone
        .reserve_ok(raffle, &numbers("grace@example.com", &[9]))
        .await;
    expect_json(
        gone.post_empty(&format!("/v1/raffles/{raffle}/close"), &gone.organizer_key)
            .await,
        StatusCode::OK,
    )
    .await;
    gone.stop().await;
    assert_eq!(other.engine.active_raffles(), 0, "never loaded here");

    clock.advance(chrono::Duration::seconds(61));
    expired_on(&other, raffle, &held).await;
    other.teardown().await;
    gone.teardown().await;
}
