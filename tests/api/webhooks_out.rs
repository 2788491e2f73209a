//! Outbound webhooks end to end: the real server, a real PostgreSQL, and a local axum
//! receiver (ports 18200–18299) that records every request and answers as a test scripts
//! it. Signatures are checked by the Standard Webhooks reference library (Python,
//! `standardwebhooks` 1.1.0, in a virtualenv under target/ made on first use).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tombola::clock::{Clock, ManualClock};
use tombola::config::Settings;
use tombola::startup::Application;
use tombola::store::Store;
use uuid::Uuid;

use super::helpers::{eventually, expect_json, expect_problem, numbers, spawn_app_with, TestApp};

// ---------------------------------------------------------------------------------------
// The receiver

/// How the receiver answers a message's n-th request (0-based).
#[derive(Debug, Clone, Copy)]
enum Script {
    Ok,
    /// This status for the first n requests of each message, then 200.
    FailFirst(usize, u16),
    Always(u16),
    /// Never answers the first n requests of each message, then 200.
    HangFirst(usize),
    /// Answers 200 after this long.
    Slow(Duration),
}

#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    script: Arc<Mutex<Script>>,
    log: Arc<Mutex<Vec<Received>>>,
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(18200);

impl Receiver {
    async fn start(script: Script) -> Self {
        let receiver = Receiver {
            url: String::new(),
            script: Arc::new(Mutex::new(script)),
            log: Arc::default(),
        };
        let listener = loop {
            let port = 18200 + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 100;
            if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                break listener;
            }
        };
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let state = state.clone();
                async move { state.answer(headers, body).await }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, ..receiver }
    }

    async fn answer(&self, headers: HeaderMap, body: String) -> AxumStatus {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let received = Received {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body,
        };
        let (nth, script) = {
            let mut log = self.log.lock().unwrap();
            let nth = log.iter().filter(|r| r.id == received.id).count();
            log.push(received);
            (nth, *self.script.lock().unwrap())
        };
        let code = match script {
            Script::Ok => 200,
            Script::FailFirst(n, status) if nth < n => status,
            Script::FailFirst(..) => 200,
            Script::Always(status) => status,
            Script::HangFirst(n) if nth < n => std::future::pending().await,
            Script::HangFirst(_) => 200,
            Script::Slow(delay) => {
                tokio::time::sleep(delay).await;
                200
            }
        };
        AxumStatus::from_u16(code).unwrap()
    }

    fn set(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Requests per message id.
    fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for r in self.received() {
            *counts.entry(r.id).or_default() += 1;
        }
        counts
    }
}

// ---------------------------------------------------------------------------------------
// Setup

/// Private targets allowed (the receiver is on loopback), quick retries and polls.
fn fast(settings: &mut Settings) {
    settings.webhooks.allow_private_targets = true;
    settings.webhooks.retry_schedule = vec![Duration::from_millis(20); 3];
    settings.webhooks.poll_interval = Duration::from_millis(50);
    settings.webhooks.timeout = Duration::from_secs(30);
    // The circuit has a test of its own; elsewhere it would hold failing messages back.
    settings.webhooks.circuit_threshold = 1_000;
}

async fn create_endpoint(app: &TestApp, body: Value) -> (Uuid, String) {
    let created = expect_json(
        app.post("/v1/webhook-endpoints", &app.organizer_key, &body)
            .await,
        StatusCode::CREATED,
    )
    .await;
    let secret = created["secret"]
        .as_str()
        .expect("the secret, shown once")
        .to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (created["id"].as_str().unwrap().parse().unwrap(), secret)
}

async fn endpoint(app: &TestApp, id: Uuid) -> Value {
    expect_json(
        app.get(&format!("/v1/webhook-endpoints/{id}"), &app.organizer_key)
            .await,
        StatusCode::OK,
    )
    .await
}

async fn deliveries(app: &TestApp, id: Uuid) -> Vec<Value> {
    let body = expect_json(
        app.get(
            &format!("/v1/webhook-endpoints/{id}/deliveries"),
            &app.organizer_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    body.as_array().unwrap().clone()
}

async fn attempts(app: &TestApp, id: Uuid, msg_id: &str) -> Vec<String> {
    let body = expect_json(
        app.get(
            &format!("/v1/webhook-endpoints/{id}/messages/{msg_id}/attempts"),
            &app.organizer_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    body.as_array()
        .unwrap()
        .iter()
        .map(|a| a["event_type"].as_str().unwrap().to_owned())
        .collect()
}

/// `POST …/recover?since=`: expects 202 and returns the body (`requeued`).
async fn recover(app: &TestApp, id: Uuid, since: DateTime<Utc>) -> Value {
    expect_json(
        app.post_empty(
            &format!(
                "/v1/webhook-endpoints/{id}/recover?since={}",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            &app.organizer_key,
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await
}

/// Waits until the endpoint has `n` deliveries, all in `status`.
async fn all_deliveries(app: &TestApp, id: Uuid, n: usize, status: &str) -> Vec<Value> {
    eventually(
        Duration::from_secs(20),
        &format!("{n} deliveries {status}"),
        || async {
            let list = deliveries(app, id).await;
            (list.len() == n && list.iter().all(|d| d["status"] == status)).then_some(list)
        },
    )
    .await
}

/// Another node on the app's database, on `clock`; stops when the sender is dropped.
async fn second_node(
    app: &TestApp,
    settings: Settings,
    clock: Arc<dyn Clock>,
) -> tokio::sync::oneshot::Sender<()> {
    let store = Store::connect(&app.db_url, 8).await.expect("a second pool");
    let node = Application::build(&settings, store, clock)
        .await
        .expect("a second node");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(node.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    stop
}

fn node_settings(configure: impl FnOnce(&mut Settings)) -> Settings {
    let mut settings = tombola_testkit::test_settings();
    fast(&mut settings);
    configure(&mut settings);
    settings
}

// ---------------------------------------------------------------------------------------
// The reference library

/// The virtualenv's python with `standardwebhooks` 1.1.0, made on first use.
fn reference_python() -> PathBuf {
    static MADE: Mutex<()> = Mutex::new(());
    let _one_at_a_time = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let venv = target.join("standardwebhooks-1.1.0");
    let python = venv.join("bin/python");
    let usable = |python: &PathBuf| {
        std::process::Command::new(python)
            .args(["-c", "import standardwebhooks"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !usable(&python) {
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs (apt-get install python3 python3-venv)");
        assert!(
            made.success(),
            "python3 -m venv failed (apt-get install python3-venv)"
        );
        let installed = std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "standardwebhooks==1.1.0"])
            .status()
            .expect("pip runs");
        assert!(
            installed.success(),
            "pip install standardwebhooks==1.1.0 failed"
        );
    }
    assert!(usable(&python), "standardwebhooks is not importable");
    python
}

/// Verifies every request with the reference library under `secret`; panics naming the
/// first that fails.
fn verify_with_reference(secret: &str, requests: &[Received]) {
    let items: Vec<Value> = requests
        .iter()
        .map(|r| {
            json!({"secret": secret, "body": r.body, "headers": {
                "webhook-id": r.id, "webhook-timestamp": r.timestamp,
                "webhook-signature": r.signature}})
        })
        .collect();
    let file = std::env::temp_dir().join(format!("tombola-webhooks-{}.json", Uuid::new_v4()));
    std::fs::write(&file, serde_json::to_vec(&items).unwrap()).unwrap();
    let script = "import json, sys\n\
        from standardwebhooks import Webhook\n\
        items = json.load(open(sys.argv[1]))\n\
        for item in items:\n    \
            Webhook(item['secret']).verify(item['body'], item['headers'])\n\
        print('verified', len(items))\n";
    let output = std::process::Command::new(reference_python())
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("the reference library runs");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "the reference library refused a signature: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("verified {}", requests.len())
    );
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn every_message_verifies_with_the_reference_library_also_during_a_rotation() {
    let app = spawn_app_with(fast).await;
    let receiver = Receiver::start(Script::Ok).await;
    let (id, old_secret) =
        create_endpoint(&app, json!({"url": receiver.url, "description": "shop"})).await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let order = app
        .reserve_ok(raffle, &numbers("ada@example.com", &[7, 13]))
        .await;
    app.pay(raffle, order["order_id"].as_str().unwrap()).await;
    // raffle.opened, order.reserved, order.paid, tickets.issued
    let before = all_deliveries(&app, id, 4, "succeeded").await;
    let types: Vec<&str> = before
        .iter()
        .map(|d| d["event_type"].as_str().unwrap())
        .collect();
    for t in [
        "raffle.opened",
        "order.reserved",
        "order.paid",
        "tickets.issued",
    ] {
        assert!(types.contains(&t), "{types:?}");
    }
    let first = receiver.received();
    assert_eq!(first.len(), 4);
    verify_with_reference(&old_secret, &first);
    let issued = first
        .iter()
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap())
        .find(|b| b["type"] == "tickets.issued")
        .expect("tickets.issued received");
    assert_eq!(issued["data"]["numbers"], json!([7, 13]));
    assert_eq!(issued["data"]["order_id"], order["order_id"]);
    assert!(
        !first.iter().any(|r| r.body.contains("ada@example.com")),
        "no personal data"
    );

    let rotated = expect_json(
        app.post(
            &format!("/v1/webhook-endpoints/{id}/rotate-secret"),
            &app.organizer_key,
            &json!({"grace_seconds": 3600}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    app.reserve_ok(raffle, &numbers("bob@example.com", &[21]))
        .await;
    all_deliveries(&app, id, 5, "succeeded").await;
    let during: Vec<Received> = receiver.received().into_iter().skip(4).collect();
    assert_eq!(during.len(), 1);
    assert_eq!(
        during[0].signature.split(' ').count(),
        2,
        "two signatures during the grace period"
    );
    verify_with_reference(&old_secret, &during);
    verify_with_reference(&new_secret, &during);
    assert!(
        std::panic::catch_unwind(|| verify_with_reference(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            &during
        ))
        .is_err(),
        "a wrong secret must not verify"
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_message_once_as_a_success_after_two_recorded_failures() {
    let app = spawn_app_with(fast).await;
    let receiver = Receiver::start(Script::FailFirst(2, 500)).await;
    let (id, _) = create_endpoint(
        &app,
        json!({"url": receiver.url, "event_types": ["order.reserved"]}),
    )
    .await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let order = app
        .reserve_ok(raffle, &numbers("ada@example.com", &[1]))
        .await;

    let delivered = all_deliveries(&app, id, 1, "succeeded").await;
    let msg_id = delivered[0]["msg_id"].as_str().unwrap();
    assert_eq!(delivered[0]["attempts"], 3);
    let requests = receiver.received();
    assert_eq!(requests.len(), 3, "two failures, then the success");
    assert!(
        requests.iter().all(|r| r.id == msg_id),
        "the same webhook-id every time"
    );
    assert_eq!(
        attempts(&app, id, msg_id).await,
        [
            "WebhookAttempted",
            "WebhookFailed",
            "WebhookAttempted",
            "WebhookFailed",
            "WebhookAttempted",
            "WebhookSucceeded"
        ]
    );
    // The order's audit trail shows its deliveries: the stream's events carry the order id.
    let on_order: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'webhook_delivery' AND order_id = $1",
    )
    .bind(order["order_id"].as_str().unwrap().parse::<Uuid>().unwrap())
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(on_order, 6);
    // The metric the alerts use.
    let metrics = app.get("/metrics", "").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tombola_webhook_attempts_total")
                && l.contains("outcome=\"failed\"")
                && l.contains(&id.to_string())),
        "{metrics}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_receiver_that_always_fails_is_dead_lettered_then_redelivered_and_recovered() {
    let app = spawn_app_with(fast).await;
    let receiver = Receiver::start(Script::Always(500)).await;
    let (id, _) = create_endpoint(
        &app,
        json!({"url": receiver.url, "event_types": ["order.reserved"]}),
    )
    .await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let since = Utc::now() - chrono::Duration::seconds(1);
    app.reserve_ok(raffle, &numbers("ada@example.com", &[1]))
        .await;
    app.reserve_ok(raffle, &numbers("bob@example.com", &[2]))
        .await;

    let dead = all_deliveries(&app, id, 2, "dead").await;
    assert!(
        dead.iter().all(|d| d["attempts"] == 4),
        "1 + 3 retries: {dead:?}"
    );
    let msg_id = dead[0]["msg_id"].as_str().unwrap().to_owned();
    assert_eq!(
        attempts(&app, id, &msg_id).await.last().unwrap(),
        "WebhookDeadLettered"
    );

    receiver.set(Script::Ok);
    let redelivered = app
        .post_empty(
            &format!("/v1/webhook-endpoints/{id}/messages/{msg_id}/redeliver"),
            &app.organizer_key,
        )
        .await;
    assert_eq!(redelivered.status(), StatusCode::ACCEPTED);
    eventually(Duration::from_secs(20), "the redelivery", || async {
        let list = deliveries(&app, id).await;
        list.iter()
            .any(|d| d["msg_id"] == json!(msg_id) && d["status"] == "succeeded")
            .then_some(())
    })
    .await;
    let recovered = recover(&app, id, since).await;
    assert_eq!(
        recovered["requeued"], 1,
        "only the other one was still dead"
    );
    all_deliveries(&app, id, 2, "succeeded").await;
    let missing = app
        .post_empty(
            &format!("/v1/webhook-endpoints/{id}/messages/msg_00000000000000000000000000000000/redeliver"),
            &app.organizer_key,
        )
        .await;
    expect_problem(missing, StatusCode::NOT_FOUND, "not_found").await;
    app.teardown().await;
}

#[tokio::test]
async fn a_receiver_answering_410_is_disabled() {
    let app = spawn_app_with(fast).await;
    let receiver = Receiver::start(Script::Always(410)).await;
    let (id, _) = create_endpoint(
        &app,
        json!({"url": receiver.url, "event_types": ["order.reserved"]}),
    )
    .await;
    let raffle = app.raffle_on_sale(json!({})).await;
    app.reserve_ok(raffle, &numbers("ada@example.com", &[1]))
        .await;

    let disabled = eventually(Duration::from_secs(20), "the endpoint disabled", || async {
        let e = endpoint(&app, id).await;
        (e["enabled"] == false).then_some(e)
    })
    .await;
    assert_eq!(disabled["disabled_reason"], "gone");
    let list = deliveries(&app, id).await;
    let msg_id = list[0]["msg_id"].as_str().unwrap();
    assert_eq!(
        attempts(&app, id, msg_id).await,
        [
            "WebhookAttempted",
            "WebhookFailed",
            "WebhookEndpointDisabled"
        ]
    );
    // Disabled: later messages are not even queued for it.
    app.reserve_ok(raffle, &numbers("bob@example.com", &[2]))
        .await;
    app.reserve_ok(raffle, &numbers("eve@example.com", &[3]))
        .await;
    let receiver_before = receiver.received().len();
    let (other, _) = create_endpoint(
        &app,
        json!({"url": receiver.url, "event_types": ["order.released"]}),
    )
    .await;
    assert_eq!(deliveries(&app, other).await.len(), 0);
    assert_eq!(receiver_before, 1);
    assert_eq!(deliveries(&app, id).await.len(), 1);
    app.teardown().await;
}

/// A disabled endpoint is not sent anything, but nothing is lost to it: once enabled again,
/// `recover` sends what failed and what happened while it was off.
#[tokio::test]
async fn recover_sends_what_an_endpoint_missed_while_it_was_disabled() {
    let app = spawn_app_with(fast).await;
    let receiver = Receiver::start(Script::Always(410)).await;
    let (id, _) = create_endpoint(
        &app,
        json!({"url": receiver.url, "event_types": ["order.reserved"]}),
    )
    .await;
    let since = Utc::now() - chrono::Duration::seconds(1);
    let raffle = app.raffle_on_sale(json!({})).await;
    app.reserve_ok(raffle, &numbers("ada@example.com", &[1]))
        .await;
    eventually(Duration::from_secs(20), "the endpoint disabled", || async {
        (endpoint(&app, id).await["enabled"] == false).then_some(())
    })
    .await;
    app.reserve_ok(raffle, &numbers("bob@example.com", &[2]))
        .await;
    app.reserve_ok(raffle, &numbers("eve@example.com", &[3]))
        .await;
    // Messages exist for every reservation before recover looks for them.
    eventually(Duration::from_secs(20), "three messages", || async {
        let made: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_messages WHERE raffle_id = $1 \
             AND event_type = 'order.reserved'",
        )
        .bind(raffle)
        .fetch_one(app.pool())
        .await
        .unwrap();
        (made == 3).then_some(())
    })
    .await;

    // Recovered while still disabled: queued, and sent once it is enabled again.
    let recovered = recover(&app, id, since).await;
    assert_eq!(
        recovered["requeued"], 3,
        "the failed one and the two missed"
    );
    receiver.set(Script::Ok);
    let enabled = app
        .request(
            reqwest::Method::PATCH,
            &format!("/v1/webhook-endpoints/{id}"),
            &app.organizer_key,
        )
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    expect_json(enabled, StatusCode::OK).await;
    let sent = all_deliveries(&app, id, 3, "succeeded").await;
    let mut ids: Vec<&str> = sent.iter().map(|d| d["msg_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three different messages: {sent:?}");
    // A second recover finds nothing more to send.
    let again = recover(&app, id, since).await;
    assert_eq!(again["requeued"], 0);
    app.teardown().await;
}

#[tokio::test]
async fn a_hanging_endpoint_delays_neither_a_fast_one_nor_a_sale() {
    let app = spawn_app_with(fast).await;
    let slow = Receiver::start(Script::HangFirst(usize::MAX)).await;
    let fast_receiver = Receiver::start(Script::Ok).await;
    let (slow_id, _) = create_endpoint(
        &app,
        json!({"url": slow.url, "event_types": ["order.reserved", "order.paid"]}),
    )
    .await;
    let (fast_id, _) = create_endpoint(
        &app,
        json!({"url": fast_receiver.url, "event_types": ["order.reserved", "order.paid"]}),
    )
    .await;
    let raffle = app.raffle_on_sale(json!({})).await;
    for n in 1..=6u32 {
        let order = app
            .reserve_ok(raffle, &numbers(&format!("b{n}@example.com"), &[n]))
            .await;
        app.pay(raffle, order["order_id"].as_str().unwrap()).await;
    }
    // Every sale was answered; the fast endpoint gets everything while the slow one holds
    // its requests open.
    all_deliveries(&app, fast_id, 12, "succeeded").await;
    eventually(
        Duration::from_secs(20),
        "the slow endpoint holding requests",
        || async { (!slow.received().is_empty()).then_some(()) },
    )
    .await;
    let stuck = deliveries(&app, slow_id).await;
    assert_eq!(stuck.len(), 12);
    assert!(stuck.iter().all(|d| d["status"] == "pending"), "{stuck:?}");
    // One order's messages go out in order: its order.paid waits for its order.reserved.
    assert!(slow
        .received()
        .iter()
        .all(|r| r.body.contains("\"order.reserved\"")));
    app.teardown().await;
}

#[tokio::test]
async fn two_nodes_never_send_the_same_attempt() {
    let app = spawn_app_with(fast).await;
    let receiver = Receiver::start(Script::Slow(Duration::from_millis(30))).await;
    let stop = second_node(
        &app,
        node_settings(|_| {}),
        Arc::new(tombola::clock::SystemClock),
    )
    .await;
    let (id, _) = create_endpoint(
        &app,
        json!({"url": receiver.url, "event_types": ["order.reserved"]}),
    )
    .await;
    let raffle = app
        .raffle_on_sale(json!({"ticket_count": 1000, "max_tickets_per_order": 1}))
        .await;
    for n in 1..=40u32 {
        app.reserve_ok(raffle, &numbers(&format!("b{n}@example.com"), &[n]))
            .await;
    }
    let done = all_deliveries(&app, id, 40, "succeeded").await;
    let counts = receiver.counts();
    assert_eq!(counts.len(), 40);
    assert!(counts.values().all(|&n| n == 1), "sent twice: {counts:?}");
    assert!(done.iter().all(|d| d["attempts"] == 1));
    drop(stop);
    app.teardown().await;
}

#[tokio::test]
async fn a_delivery_in_flight_when_its_node_dies_is_sent_again_with_the_same_id() {
    let mut app = spawn_app_with(|s| {
        fast(s);
        s.webhooks.lease = Duration::from_secs(2);
    })
    .await;
    let receiver = Receiver::start(Script::HangFirst(1)).await;
    let (id, _) = create_endpoint(
        &app,
        json!({"url": receiver.url, "event_types": ["order.reserved"]}),
    )
    .await;
    let raffle = app.raffle_on_sale(json!({})).await;
    app.reserve_ok(raffle, &numbers("ada@example.com", &[1]))
        .await;
    eventually(
        Duration::from_secs(20),
        "the first request, held open",
        || async { (receiver.received().len() == 1).then_some(()) },
    )
    .await;
    // The node goes away mid-delivery: nothing settles the attempt.
    app.trigger_shutdown();
    app.stopped().await;
    let status = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (String, String, i32)>(
            "SELECT msg_id, status, attempts FROM webhook_deliveries WHERE endpoint_id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(status(app.pool().clone()).await.1, "pending");

    let stop = second_node(
        &app,
        node_settings(|_| {}),
        Arc::new(tombola::clock::SystemClock),
    )
    .await;
    let (msg_id, _, attempts_made) = eventually(
        Duration::from_secs(20),
        "the delivery after the restart",
        || async {
            let row = status(app.pool().clone()).await;
            (row.1 == "succeeded").then_some(row)
        },
    )
    .await;
    assert_eq!(attempts_made, 2);
    let requests = receiver.received();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].id, requests[1].id,
        "the same webhook-id after the restart"
    );
    assert_eq!(requests[0].id, msg_id);
    drop(stop);
    app.teardown().await;
}

#[tokio::test]
async fn an_endpoint_failing_for_five_days_is_disabled_and_not_before() {
    let clock = Arc::new(ManualClock::at_system_time());
    let app = TestApp::start(clock.clone(), |s| {
        fast(s);
        s.webhooks.retry_schedule = vec![Duration::from_secs(1); 5];
    })
    .await;
    let receiver = Receiver::start(Script::Always(500)).await;
    let (id, _) = create_endpoint(
        &app,
        json!({"url": receiver.url, "event_types": ["order.reserved"]}),
    )
    .await;
    let raffle = app.raffle_on_sale(json!({})).await;
    app.reserve_ok(raffle, &numbers("ada@example.com", &[1]))
        .await;
    let attempts_made = |n: usize| {
        let receiver = receiver.clone();
        let app = &app;
        async move {
            eventually(
                Duration::from_secs(20),
                &format!("attempt {n} settled"),
                || async {
                    let list = deliveries(app, id).await;
                    (receiver.received().len() >= n
                        && list[0]["attempts"] == n
                        && list[0]["last_status"] == 500
                        && list[0]["next_attempt_at"].as_str().unwrap()
                            > list[0]["updated_at"].as_str().unwrap())
                    .then_some(())
                },
            )
            .await
        }
    };
    attempts_made(1).await;
    clock.advance(chrono::Duration::days(4));
    attempts_made(2).await;
    assert_eq!(
        endpoint(&app, id).await["enabled"],
        true,
        "four days of failure is not five"
    );
    clock.advance(chrono::Duration::days(1) + chrono::Duration::seconds(2));
    let disabled = eventually(Duration::from_secs(20), "the endpoint disabled", || async {
        let e = endpoint(&app, id).await;
        (e["enabled"] == false).then_some(e)
    })
    .await;
    assert_eq!(disabled["disabled_reason"], "failing");
    assert_eq!(receiver.received().len(), 3);
    app.teardown().await;
}

#[tokio::test]
async fn a_failing_endpoints_circuit_opens_then_a_probe_closes_it() {
    let clock = Arc::new(ManualClock::at_system_time());
    let app = TestApp::start(clock.clone(), |s| {
        fast(s);
        s.webhooks.retry_schedule = vec![Duration::from_secs(1); 6];
        s.webhooks.circuit_threshold = 2;
        s.webhooks.circuit_base = Duration::from_secs(60);
    })
    .await;
    let failing = Receiver::start(Script::Always(503)).await;
    let healthy = Receiver::start(Script::Ok).await;
    let (id, _) = create_endpoint(
        &app,
        json!({"url": failing.url, "event_types": ["order.reserved"]}),
    )
    .await;
    let raffle = app.raffle_on_sale(json!({})).await;
    app.reserve_ok(raffle, &numbers("ada@example.com", &[1]))
        .await;
    eventually(Duration::from_secs(20), "the first failure", || async {
        let list = deliveries(&app, id).await;
        list.first()
            .is_some_and(|d| d["last_status"] == 503)
            .then_some(())
    })
    .await;
    clock.advance(chrono::Duration::seconds(2));
    let open = eventually(Duration::from_secs(20), "the circuit open", || async {
        let e = endpoint(&app, id).await;
        e["circuit_open_until"].is_string().then_some(e)
    })
    .await;
    assert_eq!(open["consecutive_failures"], 2);
    // Due again, but the circuit is open: a claim after the retry's time skips it. The
    // healthy endpoint's message shows a claim ran after the clock moved.
    clock.advance(chrono::Duration::seconds(3));
    let (probe_seen, _) = create_endpoint(
        &app,
        json!({"url": healthy.url, "event_types": ["order.released"]}),
    )
    .await;
    let order = app
        .reserve_ok(raffle, &numbers("bob@example.com", &[2]))
        .await;
    app.request(
        Method::DELETE,
        &format!(
            "/v1/raffles/{raffle}/orders/{}",
            order["order_id"].as_str().unwrap()
        ),
        &app.client_key,
    )
    .send()
    .await
    .unwrap();
    all_deliveries(&app, probe_seen, 1, "succeeded").await;
    assert_eq!(
        failing.received().len(),
        2,
        "no attempt while the circuit is open"
    );

    failing.set(Script::Ok);
    clock.advance(chrono::Duration::seconds(120));
    eventually(
        Duration::from_secs(20),
        "the probe closing the circuit",
        || async {
            let e = endpoint(&app, id).await;
            (e["circuit_open_until"].is_null() && e["consecutive_failures"] == 0).then_some(())
        },
    )
    .await;
    all_deliveries(&app, id, 2, "succeeded").await;
    app.teardown().await;
}

#[tokio::test]
async fn an_endpoints_rate_limit_holds_across_nodes() {
    let clock = Arc::new(ManualClock::at_system_time());
    let app = TestApp::start(clock.clone(), fast).await;
    let stop = second_node(&app, node_settings(|_| {}), clock.clone()).await;
    let receiver = Receiver::start(Script::Ok).await;
    let (id, _) = create_endpoint(
        &app,
        json!({"url": receiver.url, "event_types": ["order.reserved"], "rate_limit_per_sec": 1}),
    )
    .await;
    let raffle = app.raffle_on_sale(json!({})).await;
    for n in 1..=4u32 {
        app.reserve_ok(raffle, &numbers(&format!("b{n}@example.com"), &[n]))
            .await;
    }
    // The clock moves one second once each delivery has settled: if either node sent two
    // in one second of it, two successes would carry the same time.
    for sent in 1..=4usize {
        eventually(
            Duration::from_secs(20),
            &format!("{sent} delivered"),
            || async {
                let list = deliveries(&app, id).await;
                (list.iter().filter(|d| d["status"] == "succeeded").count() >= sent).then_some(())
            },
        )
        .await;
        clock.advance(chrono::Duration::seconds(1));
    }
    let times: Vec<String> = sqlx::query_scalar(
        "SELECT metadata ->> 'recorded_at' FROM events WHERE aggregate_type = 'webhook_delivery' \
         AND event_type = 'WebhookSucceeded' ORDER BY sequence",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(times.len(), 4);
    let distinct: std::collections::HashSet<&String> = times.iter().collect();
    assert_eq!(distinct.len(), 4, "two sends in one second: {times:?}");
    assert_eq!(receiver.received().len(), 4);
    drop(stop);
    app.teardown().await;
}

#[tokio::test]
async fn endpoints_are_checked_scoped_and_listed() {
    let app = spawn_app_with(|_| {}).await;
    let create = |key: String, body: Value| {
        let app = &app;
        async move { app.post("/v1/webhook-endpoints", &key, &body).await }
    };
    let organizer = app.organizer_key.clone();
    for (url, why) in [
        ("https://127.0.0.1/hook", "loopback"),
        (
            "https://localhost:8443/hook",
            "a name resolving to loopback",
        ),
        ("https://169.254.169.254/latest", "cloud metadata"),
        ("https://10.0.0.1/hook", "private"),
        ("http://93.184.216.34/hook", "plain http"),
        ("not a url", "not a URL"),
    ] {
        let refused = create(organizer.clone(), json!({"url": url})).await;
        let (problem, _) =
            expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request").await;
        assert_eq!(problem["field"], "url", "{why}: {problem}");
    }
    let unknown = create(
        organizer.clone(),
        json!({"url": "https://93.184.216.34/", "event_types": ["order.nope"]}),
    )
    .await;
    assert_eq!(
        expect_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request")
            .await
            .0["field"],
        "event_types"
    );
    let client = create(
        app.client_key.clone(),
        json!({"url": "https://93.184.216.34/"}),
    )
    .await;
    expect_problem(client, StatusCode::FORBIDDEN, "forbidden").await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(count, 0, "refused endpoints store nothing");

    let (id, _) = create_endpoint(
        &app,
        json!({"url": "https://93.184.216.34/hook", "event_types": ["order.paid"]}),
    )
    .await;
    let listed = expect_json(
        app.get("/v1/webhook-endpoints", &app.organizer_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(
        listed[0].get("secret").is_none(),
        "the secret is shown once"
    );
    let others = expect_json(
        app.get("/v1/webhook-endpoints", &app.other_organizer_key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(others, json!([]));
    let hidden = app
        .get(
            &format!("/v1/webhook-endpoints/{id}"),
            &app.other_organizer_key,
        )
        .await;
    expect_problem(hidden, StatusCode::NOT_FOUND, "not_found").await;
    let all = expect_json(
        app.get("/v1/webhook-endpoints", &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(all.as_array().unwrap().len(), 1);

    let patched = expect_json(
        app.request(
            Method::PATCH,
            &format!("/v1/webhook-endpoints/{id}"),
            &app.organizer_key,
        )
        .json(&json!({"enabled": false, "rate_limit_per_sec": 5}))
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (
            patched["enabled"].clone(),
            patched["disabled_reason"].clone()
        ),
        (json!(false), json!("manual"))
    );
    assert_eq!(patched["rate_limit_per_sec"], 5);
    let types = expect_json(
        app.get("/v1/webhook-event-types", &app.client_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(types.as_array().unwrap().len(), 10);
    let deleted = app
        .request(
            Method::DELETE,
            &format!("/v1/webhook-endpoints/{id}"),
            &app.organizer_key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    expect_problem(
        app.get(&format!("/v1/webhook-endpoints/{id}"), &app.organizer_key)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    app.teardown().await;
}

/// Deliveries take the CPU requests leave (decision 0030): the outbound webhooks' threads
/// run at niceness 10, read from `/proc` as the kernel's scheduler sees them.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn outbound_webhooks_run_on_threads_that_yield_to_requests() {
    let app = spawn_app_with(|_| {}).await;
    let nice_of = |task: &std::path::Path| -> Option<(String, i64)> {
        let name = std::fs::read_to_string(task.join("comm")).ok()?;
        let stat = std::fs::read_to_string(task.join("stat")).ok()?;
        // After "pid (comm)": state is field 3, nice field 19.
        let nice = stat.rsplit_once(')')?.1.split_whitespace().nth(16)?;
        Some((name.trim().to_owned(), nice.parse().ok()?))
    };
    let threads: Vec<(String, i64)> = std::fs::read_dir("/proc/self/task")
        .expect("the process's threads")
        .filter_map(|task| nice_of(&task.ok()?.path()))
        .collect();
    let webhooks: Vec<i64> = threads
        .iter()
        .filter(|(name, _)| name.starts_with("tombola-webhook"))
        .map(|(_, nice)| *nice)
        .collect();
    assert!(
        !webhooks.is_empty(),
        "no outbound webhooks thread: {threads:?}"
    );
    assert!(
        webhooks.iter().all(|nice| *nice >= 10),
        "webhooks threads not niced: {threads:?}"
    );
    app.teardown().await;
}
