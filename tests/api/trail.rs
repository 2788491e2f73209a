//! The audit trail: a raffle's events by order, ticket, payment, actor, type and time, with
//! keyset pages; a ticket's and an order's history; the CLI's `tombola audit RAFFLE …`; and
//! a verification over HTTP bounded in time that resumes where it stopped.

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::audit::rehash_from;
use crate::helpers::{expect_json, expect_problem, numbers, spawn_app, TestApp, SEED};
use tombola::store::RAFFLE_STREAM;

/// Ada holds 7 and 8 and pays; Bob holds 9 and releases it; the raffle closes and draws its
/// one prize. Returns the raffle, Ada's and Bob's orders, and the position of the last event.
async fn history(app: &TestApp) -> (Uuid, String, String, String) {
    let raffle = app
        .raffle_on_sale(json!({"prizes": [{"name": "Car"}]}))
        .await;
    let ada = app
        .reserve_ok(raffle, &numbers("ada@example.com", &[7, 8]))
        .await;
    let ada = ada["order_id"].as_str().unwrap().to_owned();
    app.pay(raffle, &ada).await;
    let bob = app
        .reserve_ok(raffle, &numbers("bob@example.com", &[9]))
        .await;
    let bob = bob["order_id"].as_str().unwrap().to_owned();
    let released = app
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/raffles/{raffle}/orders/{bob}"),
            &app.client_key,
        )
        .send()
        .await
        .unwrap();
    assert!(released.status().is_success(), "{}", released.status());
    let close = app
        .post_empty(&format!("/v1/raffles/{raffle}/close"), &app.organizer_key)
        .await;
    assert_eq!(close.status(), StatusCode::OK);
    let draw = app
        .post(
            &format!("/v1/raffles/{raffle}/draw"),
            &app.organizer_key,
            &json!({"seed": SEED, "public_entropy": "lottery 42"}),
        )
        .await;
    assert_eq!(draw.status(), StatusCode::OK);
    let position = format!("{raffle}:{}", app.event_types(raffle).await.len());
    (raffle, ada, bob, position)
}

async fn trail(app: &TestApp, path: &str, query: &str) -> Value {
    expect_json(
        app.get(&format!("{path}?{query}"), &app.organizer_key)
            .await,
        StatusCode::OK,
    )
    .await
}

fn types(page: &Value) -> Vec<&str> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_trail_finds_events_by_order_ticket_payment_actor_type_and_time() {
    let app = spawn_app().await;
    let (raffle, ada, bob, position) = history(&app).await;
    let events = format!("/v1/raffles/{raffle}/events");
    let wait = format!("min_position={position}");

    let all = trail(&app, &events, &wait).await;
    let count = app.event_types(raffle).await.len();
    assert_eq!(all["events"].as_array().unwrap().len(), count);
    assert_eq!(all["next_after_sequence"], Value::Null);
    let first = &all["events"][0];
    assert_eq!(first["sequence"], 1);
    assert_eq!(first["event_type"], "RaffleCreated");
    assert!(first["actor"].as_str().unwrap().starts_with("key:"));
    assert_eq!(first["source"], "api");
    assert!(first["request_id"].as_str().is_some());
    assert_eq!(first["hash"].as_str().unwrap().len(), 64);
    assert!(first["payload"].to_string().contains(&raffle.to_string()));

    let order = trail(
        &app,
        &format!("/v1/raffles/{raffle}/orders/{ada}/history"),
        &wait,
    )
    .await;
    assert_eq!(
        types(&order),
        ["TicketsReserved", "ManualPaymentConfirmed", "TicketsIssued"]
    );
    let released = trail(&app, &events, &format!("{wait}&order_id={bob}")).await;
    assert_eq!(types(&released), ["TicketsReserved", "ReservationReleased"]);
    assert_eq!(released["events"][1]["source"], "api");

    // Number 9: Bob's hold and its release. The winning number ends with the draw.
    let nine = trail(
        &app,
        &format!("/v1/raffles/{raffle}/tickets/9/history"),
        &wait,
    )
    .await;
    assert_eq!(types(&nine), ["TicketsReserved", "ReservationReleased"]);
    let drawn = app.raffle(raffle).await["winners"][0]["number"]
        .as_u64()
        .unwrap();
    let winner = trail(
        &app,
        &format!("/v1/raffles/{raffle}/tickets/{drawn}/history"),
        &wait,
    )
    .await;
    assert_eq!(
        types(&winner),
        ["TicketsReserved", "TicketsIssued", "WinnersDrawn"]
    );

    // Both keys must match: Ada's order and ticket 9 never met.
    let none = trail(&app, &events, &format!("{wait}&order_id={ada}&ticket=9")).await;
    assert!(types(&none).is_empty());
    let both = trail(&app, &events, &format!("{wait}&order_id={ada}&ticket=8")).await;
    assert_eq!(types(&both), ["TicketsReserved", "TicketsIssued"]);
    let payment = trail(&app, &events, &format!("{wait}&payment_id=receipt-1")).await;
    assert_eq!(types(&payment), ["ManualPaymentConfirmed"]);
    let issued = trail(&app, &events, &format!("{wait}&type=TicketsIssued")).await;
    assert_eq!(types(&issued), ["TicketsIssued"]);
    let actor = first["actor"].as_str().unwrap();
    let by_actor = trail(&app, &events, &format!("{wait}&actor={actor}")).await;
    assert!(types(&by_actor).contains(&"RaffleCreated"));
    assert!(
        !types(&by_actor).contains(&"TicketsReserved"),
        "the client key reserved"
    );
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let later = trail(
        &app,
        &events,
        &format!("{wait}&since={}", future.replace('+', "%2B")),
    )
    .await;
    assert!(types(&later).is_empty());

    // Keyset pages: two at a time, every event once, in order.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = trail(&app, &events, &format!("limit=2&after_sequence={after}")).await;
        seen.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["sequence"].as_u64().unwrap()),
        );
        match page["next_after_sequence"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, (1..=count as u64).collect::<Vec<_>>());

    // Scope and bad input.
    let client = app.get(&events, &app.client_key).await;
    expect_problem(client, StatusCode::FORBIDDEN, "forbidden").await;
    let other = app.get(&events, &app.other_organizer_key).await;
    expect_problem(other, StatusCode::NOT_FOUND, "not_found").await;
    for (query, field) in [
        ("since=soon", "since"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
    ] {
        let response = app
            .get(&format!("{events}?{query}"), &app.organizer_key)
            .await;
        let (body, _) = expect_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        )
        .await;
        assert_eq!(body["field"], field);
    }

    // The operator's view: the same events, as JSON lines.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tombola"))
        .args(["audit", &raffle.to_string(), "--ticket", "9", "--json"])
        .env("DATABASE_URL", &app.db_url)
        .env("TOMBOLA_DB_CONNECTIONS", "2")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, nine["events"].as_array().unwrap().clone());
    app.teardown().await;
}

#[tokio::test]
async fn a_verification_out_of_time_stops_between_pages_and_resumes_from_its_head() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    // A log longer than one page (5,000 events): copies of the opening event, chained again.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT aggregate_type, aggregate_id, n, event_type, event_version, payload, metadata \
         FROM events, generate_series(3, 7002) AS n \
         WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = 2",
    )
    .bind(RAFFLE_STREAM)
    .bind(raffle.to_string())
    .execute(app.pool())
    .await
    .unwrap();
    rehash_from(app.pool(), raffle, 3).await;
    let verify = |query: String| {
        let app = &app;
        async move {
            expect_json(
                app.get(
                    &format!("/v1/raffles/{raffle}/audit/verify{query}"),
                    &app.organizer_key,
                )
                .await,
                StatusCode::OK,
            )
            .await
        }
    };
    let whole = verify(String::new()).await;
    assert_eq!(whole["intact"], true, "{whole}");
    assert_eq!(whole["complete"], true);
    assert_eq!(whole["events_verified"], 7002);

    // No time at all: one page, then a head to resume from; not called intact.
    let first = verify("?budget_ms=0".into()).await;
    assert_eq!(first["complete"], false, "{first}");
    assert_eq!(first["intact"], false);
    assert_eq!(first["events_verified"], 5000);
    assert!(first.get("break").is_none());
    let head = format!(
        "{}:{}",
        first["head"]["sequence"],
        first["head"]["hash"].as_str().unwrap()
    );
    assert!(head.starts_with("5000:"));
    let rest = verify(format!("?budget_ms=0&resume={head}")).await;
    assert_eq!(rest["complete"], true, "{rest}");
    assert_eq!(rest["intact"], true);
    assert_eq!(
        rest["events_verified"], 2003,
        "the resumed head and the 2,002 after it"
    );
    assert_eq!(rest["head"], whole["head"]);

    // A resume point the log does not hold is caught, not trusted.
    let forged = format!("5000:{}", "0".repeat(64));
    let caught = verify(format!("?resume={forged}")).await;
    assert_eq!(caught["intact"], false);
    assert_eq!(caught["break"]["kind"], "anchor_mismatch");
    for query in ["?budget_ms=10001", "?resume=5000:xyz"] {
        let response = app
            .get(
                &format!("/v1/raffles/{raffle}/audit/verify{query}"),
                &app.organizer_key,
            )
            .await;
        expect_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        )
        .await;
    }
    app.teardown().await;
}
