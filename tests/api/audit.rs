//! The audit trail's proofs over HTTP and the CLI's functions: hash-chain verification
//! catches an edited event, a deleted one and a truncated tail; a draw verifies from the log
//! alone, an independent Python implementation agrees, and any changed input fails it; the
//! event log exports as NDJSON and a client that leaves frees its connection.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tombola::store::chain::{event_hash, ChainInput, GENESIS};
use tombola::store::{EventMetadata, RAFFLE_STREAM};
use uuid::Uuid;

use crate::helpers::{eventually, expect_json, spawn_app, TestApp, SEED};

const ENTROPY: &str = "lottery 2026-12-01: 03 17 22 38 45";

/// A raffle with five paid orders of two numbers each (buyer names that JSON must escape,
/// and non-ASCII ones), closed and drawn.
async fn drawn_raffle(app: &TestApp) -> Uuid {
    let raffle = app
        .raffle_on_sale(json!({"prizes": [{"name": "Car"}, {"name": "Bike"}, {"name": "Book"}]}))
        .await;
    for i in 0..5u32 {
        let name = [
            "José \"Pepe\" Ñúñez",
            "C:\\raffles\\李小龙",
            "Zoë",
            "O'Brien",
            "Ana",
        ][i as usize];
        let buyer = json!({
            "name": name,
            "email": format!("buyer{i}@example.com"),
        });
        let order = app
            .reserve_ok(
                raffle,
                &json!({"buyer": buyer, "numbers": [i * 10 + 1, i * 10 + 2]}),
            )
            .await;
        app.pay(raffle, order["order_id"].as_str().unwrap()).await;
    }
    let closed = app
        .post_empty(&format!("/v1/raffles/{raffle}/close"), &app.organizer_key)
        .await;
    assert_eq!(closed.status(), StatusCode::OK);
    let draw = app
        .post(
            &format!("/v1/raffles/{raffle}/draw"),
            &app.organizer_key,
            &json!({"seed": SEED, "public_entropy": ENTROPY}),
        )
        .await;
    assert_eq!(draw.status(), StatusCode::OK);
    raffle
}

async fn verify(app: &TestApp, raffle: Uuid, query: &str) -> Value {
    expect_json(
        app.get(
            &format!("/v1/raffles/{raffle}/audit/verify{query}"),
            &app.client_key,
        )
        .await,
        StatusCode::OK,
    )
    .await
}

async fn draw_verification(app: &TestApp, raffle: Uuid) -> Value {
    expect_json(
        app.get(
            &format!("/v1/raffles/{raffle}/draw/verify"),
            &app.organizer_key,
        )
        .await,
        StatusCode::OK,
    )
    .await
}

/// Rewrites the stored chain from `from` on, as a forger with database access would, so
/// that every link and hash holds again over the edited events.
pub(crate) async fn rehash_from(pool: &PgPool, raffle: Uuid, from: i64) {
    let id = raffle.to_string();
    let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "SELECT sequence, event_type, event_version, payload::text, metadata::text FROM events \
         WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
    )
    .bind(RAFFLE_STREAM)
    .bind(&id)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut prev = GENESIS.to_owned();
    for (sequence, event_type, event_version, payload, metadata) in rows {
        let mut metadata = EventMetadata::from_json(&metadata).unwrap();
        if sequence >= from {
            metadata.prev_hash = prev.clone();
            let input = ChainInput {
                aggregate_type: RAFFLE_STREAM,
                aggregate_id: &id,
                sequence: sequence as u64,
                event_type: &event_type,
                event_version: &event_version,
                payload: &payload,
            };
            metadata.hash = event_hash(&input, &metadata);
            sqlx::query(
                "UPDATE events SET metadata = $1::json WHERE aggregate_type = $2 \
                 AND aggregate_id = $3 AND sequence = $4",
            )
            .bind(metadata.to_json())
            .bind(RAFFLE_STREAM)
            .bind(&id)
            .bind(sequence)
            .execute(pool)
            .await
            .unwrap();
        }
        prev = metadata.hash;
    }
}

async fn edit_payload(pool: &PgPool, raffle: Uuid, event_type: &str, from: &str, to: &str) -> i64 {
    sqlx::query_scalar(
        "UPDATE events SET payload = replace(payload::text, $1, $2)::json \
         WHERE aggregate_type = $3 AND aggregate_id = $4 AND event_type = $5 \
         AND payload::text LIKE '%' || $1 || '%' RETURNING sequence",
    )
    .bind(from)
    .bind(to)
    .bind(RAFFLE_STREAM)
    .bind(raffle.to_string())
    .bind(event_type)
    .fetch_one(pool)
    .await
    .expect("the event to edit exists")
}

#[tokio::test]
async fn an_untouched_log_verifies_and_its_head_proves_its_tail_later() {
    let app = spawn_app().await;
    let raffle = drawn_raffle(&app).await;
    let events = app.event_types(raffle).await.len() as u64;

    let report = verify(&app, raffle, "").await;
    assert_eq!(report["intact"], true, "{report}");
    assert_eq!(report["events_verified"], events);
    assert_eq!(report["head"]["sequence"], events);
    let head = format!(
        "{}:{}",
        report["head"]["sequence"],
        report["head"]["hash"].as_str().unwrap()
    );

    // The head given back holds on the untouched log…
    let again = verify(&app, raffle, &format!("?expect_head={head}")).await;
    assert_eq!(again["intact"], true, "{again}");

    // …and a truncated tail, whose remaining chain is perfectly intact, is caught by it.
    sqlx::query(
        "DELETE FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence >= $3",
    )
    .bind(RAFFLE_STREAM)
    .bind(raffle.to_string())
    .bind(events as i64 - 1)
    .execute(app.store.pool())
    .await
    .unwrap();
    let cut = verify(&app, raffle, "").await;
    assert_eq!(
        cut["intact"], true,
        "the chain alone cannot see a cut tail: {cut}"
    );
    let caught = verify(&app, raffle, &format!("?expect_head={head}")).await;
    assert_eq!(caught["intact"], false);
    assert_eq!(caught["break"]["kind"], "anchor_missing");
    assert_eq!(caught["break"]["sequence"], events);
    app.teardown().await;
}

#[tokio::test]
async fn an_edited_event_and_a_deleted_one_are_caught_where_they_happened() {
    let app = spawn_app().await;
    let raffle = drawn_raffle(&app).await;

    // A buyer's name changed in place.
    let edited = edit_payload(
        app.store.pool(),
        raffle,
        "TicketsReserved",
        "buyer2@",
        "buyer9@",
    )
    .await;
    let report = verify(&app, raffle, "").await;
    assert_eq!(report["intact"], false);
    assert_eq!(
        report["break"],
        json!({"kind": "hash_mismatch", "sequence": edited})
    );
    assert_eq!(report["events_verified"], edited - 1);

    // Even re-hashed from there on, a head recorded before the edit catches the rewrite.
    let head_before: (i64, String) = sqlx::query_as(
        "SELECT sequence, metadata->>'hash' FROM events WHERE aggregate_type = $1 \
         AND aggregate_id = $2 ORDER BY sequence DESC LIMIT 1",
    )
    .bind(RAFFLE_STREAM)
    .bind(raffle.to_string())
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    rehash_from(app.store.pool(), raffle, edited).await;
    assert_eq!(verify(&app, raffle, "").await["intact"], true);
    let rewritten = verify(
        &app,
        raffle,
        &format!("?expect_head={}:{}", head_before.0, head_before.1),
    )
    .await;
    assert_eq!(rewritten["break"]["kind"], "anchor_mismatch", "{rewritten}");

    // An event removed from the middle.
    sqlx::query(
        "DELETE FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = 4",
    )
    .bind(RAFFLE_STREAM)
    .bind(raffle.to_string())
    .execute(app.store.pool())
    .await
    .unwrap();
    let report = verify(&app, raffle, "").await;
    assert_eq!(
        report["break"],
        json!({"kind": "gap", "expected": 4, "found": 5})
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_receipt_must_name_a_tickets_issued_event_that_is_still_there() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let order = app
        .reserve_ok(
            raffle,
            &json!({"buyer": {"name": "Ana", "email": "ana@example.com"}, "numbers": [5]}),
        )
        .await;
    assert_eq!(order["receipt"], Value::Null, "a hold has no receipt yet");
    let paid = app.pay(raffle, order["order_id"].as_str().unwrap()).await;
    let issued: (i64, String) = sqlx::query_as(
        "SELECT sequence, metadata->>'hash' FROM events WHERE aggregate_type = $1 \
         AND aggregate_id = $2 AND event_type = 'TicketsIssued'",
    )
    .bind(RAFFLE_STREAM)
    .bind(raffle.to_string())
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(
        paid["receipt"],
        json!({"sequence": issued.0, "hash": issued.1})
    );
    let order_view = app.order(raffle, order["order_id"].as_str().unwrap()).await;
    assert_eq!(order_view["receipt"], paid["receipt"]);
    let receipt = format!("{}:{}", issued.0, issued.1);
    assert_eq!(
        verify(&app, raffle, &format!("?receipt={receipt}")).await["intact"],
        true
    );

    let created: String = sqlx::query_scalar(
        "SELECT metadata->>'hash' FROM events WHERE aggregate_type = $1 \
         AND aggregate_id = $2 AND sequence = 1",
    )
    .bind(RAFFLE_STREAM)
    .bind(raffle.to_string())
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    let not_a_receipt = format!("1:{created}");
    let report = verify(&app, raffle, &format!("?receipt={not_a_receipt}")).await;
    assert_eq!(report["break"]["kind"], "not_a_receipt", "{report}");

    let forged = format!("{}:{}", issued.0, "0".repeat(64));
    let report = verify(&app, raffle, &format!("?receipt={forged}")).await;
    assert_eq!(report["break"]["kind"], "anchor_mismatch");

    let malformed = app
        .get(
            &format!("/v1/raffles/{raffle}/audit/verify?receipt=12"),
            &app.client_key,
        )
        .await;
    assert_eq!(malformed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    app.teardown().await;
}

#[tokio::test]
async fn a_draw_verifies_from_the_log_and_any_changed_input_fails_it() {
    let app = spawn_app().await;
    let raffle = drawn_raffle(&app).await;
    let draw = expect_json(
        app.get(&format!("/v1/raffles/{raffle}/draw"), &app.client_key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(draw["drawn"], true);
    assert_eq!(draw["seed"], SEED);
    assert_eq!(draw["public_entropy"], ENTROPY);
    assert_eq!(
        draw["commitment"],
        tombola_domain::draw::commitment_of(SEED)
    );
    assert_eq!(draw["winners"].as_array().unwrap().len(), 3);

    let report = draw_verification(&app, raffle).await;
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["recomputed"], draw["winners"]);
    assert_eq!(report["issued_tickets"], 10);

    // Each input changed, with the chain re-hashed so that only the draw itself can tell.
    let winner = draw["winners"][0]["number"].as_u64().unwrap();
    let pool = app.store.pool();
    // Order i holds [10i+1, 10i+2]; 99 is held by nobody.
    let (ticket_from, ticket_to) = if winner % 10 == 1 {
        (format!("[{winner},"), "[99,".to_owned())
    } else {
        (format!(",{winner}]"), ",99]".to_owned())
    };
    let cases = [
        (
            "WinnersDrawn",
            format!("\"public_entropy\":\"{ENTROPY}\""),
            "\"public_entropy\":\"other\"".to_owned(),
        ),
        (
            "WinnersDrawn",
            format!("\"seed\":\"{SEED}\""),
            "\"seed\":\"another seed\"".to_owned(),
        ),
        // The first winner's ticket, issued as a number nobody holds.
        ("TicketsIssued", ticket_from, ticket_to),
    ];
    for (event_type, from, to) in cases {
        let sequence = edit_payload(pool, raffle, event_type, &from, &to).await;
        rehash_from(pool, raffle, sequence).await;
        assert_eq!(verify(&app, raffle, "").await["intact"], true);
        let report = draw_verification(&app, raffle).await;
        assert_eq!(
            report["verified"], false,
            "changing {event_type} ({to}) went unnoticed: {report}"
        );
        assert_eq!(report["chain_intact"], true);
        // Put it back: the next case starts from the true log.
        edit_payload(pool, raffle, event_type, &to, &from).await;
        rehash_from(pool, raffle, sequence).await;
        assert_eq!(draw_verification(&app, raffle).await["verified"], true);
    }
    app.teardown().await;
}

#[tokio::test]
async fn an_independent_python_implementation_agrees_on_the_winners() {
    let app = spawn_app().await;
    let raffle = drawn_raffle(&app).await;
    let response = app
        .get(
            &format!("/v1/raffles/{raffle}/exports/events.ndjson"),
            &app.organizer_key,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let log = response.bytes().await.unwrap();
    let dir = std::env::temp_dir().join(format!("tombola-draw-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.ndjson");
    std::fs::write(&file, &log).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/verify_draw.py");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .arg(&file)
        .output()
        .expect("python3 runs (CI installs it)");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let python: Value = serde_json::from_slice(&output.stdout).expect("the script prints JSON");
    let draw = expect_json(
        app.get(&format!("/v1/raffles/{raffle}/draw"), &app.client_key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(python["winners"], draw["winners"]);
    assert_eq!(python["chain_intact"], true);
    assert_eq!(python["seed_matches_commitment"], true);
    app.teardown().await;
}

#[tokio::test]
async fn the_event_log_exports_in_order_to_organizers_only() {
    let app = spawn_app().await;
    let raffle = drawn_raffle(&app).await;
    let response = app
        .get(
            &format!("/v1/raffles/{raffle}/exports/events.ndjson"),
            &app.organizer_key,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect();
    let types = app.event_types(raffle).await;
    assert_eq!(lines.len(), types.len());
    for (index, (line, event_type)) in lines.iter().zip(&types).enumerate() {
        assert_eq!(line["sequence"], index as u64 + 1);
        assert_eq!(&line["event_type"], event_type);
        assert_eq!(line["raffle_id"], raffle.to_string());
        assert!(line["payload"].is_object() && line["metadata"]["hash"].is_string());
    }
    assert_eq!(lines[0]["metadata"]["prev_hash"], GENESIS);

    for key in [&app.client_key, &app.other_organizer_key] {
        let refused = app
            .get(&format!("/v1/raffles/{raffle}/exports/events.ndjson"), key)
            .await;
        assert!(refused.status().is_client_error(), "{}", refused.status());
        assert_ne!(refused.status(), StatusCode::OK);
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_export_frees_its_connection() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    // A long log, written directly: the export neither checks nor decodes it.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT aggregate_type, aggregate_id, sequence + n, event_type, event_version, payload, metadata \
         FROM events, generate_series(1000, 400000) AS n \
         WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = 1",
    )
    .bind(RAFFLE_STREAM)
    .bind(raffle.to_string())
    .execute(app.store.pool())
    .await
    .unwrap();
    let exports = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tombola-export' \
             AND datname = current_database()",
        )
        .fetch_one(app.store.pool())
        .await
        .unwrap()
    };
    let mut response = app
        .get(
            &format!("/v1/raffles/{raffle}/exports/events.ndjson"),
            &app.admin_key,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let first = response.chunk().await.unwrap().expect("a first chunk");
    assert!(!first.is_empty());
    assert_eq!(exports().await, 1, "the export runs on its own connection");
    drop(response);
    eventually(
        Duration::from_secs(20),
        "the export's connection to close",
        || async { (exports().await == 0).then_some(()) },
    )
    .await;
    app.teardown().await;
}

/// Runs the `tombola` binary against the test's database.
fn tombola(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tombola"))
        .args(args)
        .env("DATABASE_URL", &app.db_url)
        .env("TOMBOLA_DB_CONNECTIONS", "2")
        .output()
        .expect("the tombola binary runs")
}

#[tokio::test]
async fn the_cli_verifies_chains_and_draws_and_exports_the_log() {
    let app = spawn_app().await;
    let raffle = drawn_raffle(&app).await;
    let id = raffle.to_string();

    let verified = tombola(&app, &["audit", "verify", &id]);
    assert!(verified.status.success(), "{verified:?}");
    let line = String::from_utf8(verified.stdout).unwrap();
    let head = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(line.contains("intact") && head.contains(':'), "{line}");
    assert!(tombola(&app, &["audit", "verify", "--all"])
        .status
        .success());

    let draw = tombola(&app, &["draw", "verify", &id]);
    assert!(draw.status.success(), "{draw:?}");
    let report: Value = serde_json::from_slice(&draw.stdout).unwrap();
    assert_eq!(report["verified"], true);

    let dir = std::env::temp_dir().join(format!("tombola-export-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("log.ndjson");
    let exported = tombola(
        &app,
        &[
            "export",
            &id,
            "--format",
            "ndjson",
            "-o",
            file.to_str().unwrap(),
        ],
    );
    assert!(exported.status.success(), "{exported:?}");
    let lines = std::fs::read_to_string(&file).unwrap().lines().count();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(lines, app.event_types(raffle).await.len());

    // The tail cut after the head was printed: the chain holds, the head does not.
    sqlx::query("DELETE FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = (SELECT max(sequence) FROM events WHERE aggregate_id = $2)")
        .bind(RAFFLE_STREAM)
        .bind(&id)
        .execute(app.store.pool())
        .await
        .unwrap();
    assert!(tombola(&app, &["audit", "verify", &id]).status.success());
    let caught = tombola(&app, &["audit", "verify", &id, "--expect-head", &head]);
    assert!(!caught.status.success());
    assert!(String::from_utf8_lossy(&caught.stdout).contains("BROKEN"));
    let draw = tombola(&app, &["draw", "verify", &id]);
    assert!(
        !draw.status.success(),
        "the draw event is gone: nothing to verify"
    );
    app.teardown().await;
}
