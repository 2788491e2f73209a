//! An outbound webhook continues the trace of its delivery attempt: the receiver gets a
//! W3C `traceparent` naming the exported `webhook.attempt` span.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use reqwest::StatusCode;
use serde_json::json;
use tombola_testkit::requests::{expect_json, raffle_request};
use tombola_testkit::telemetry::capture;
use tombola_testkit::{eventually, spawn_app_with};

#[tokio::test]
async fn a_delivery_attempt_sends_its_traceparent() {
    let capture = capture();
    let app = spawn_app_with(|s| {
        s.webhooks.allow_private_targets = true;
        s.webhooks.poll_interval = Duration::from_millis(50);
    })
    .await;
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log = seen.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let log = log.clone();
            async move {
                let traceparent = headers
                    .get("traceparent")
                    .map(|v| v.to_str().unwrap().to_owned());
                log.lock().unwrap().push(traceparent);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:18299")
        .await
        .expect("port 18299");
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let created = app
        .post(
            "/v1/webhook-endpoints",
            &app.organizer_key,
            &json!({"url": "http://127.0.0.1:18299/hook", "event_types": ["raffle.opened"]}),
        )
        .await;
    expect_json(created, StatusCode::CREATED).await;
    app.raffle_on_sale(raffle_request(json!({}))).await;

    let traceparent = eventually(Duration::from_secs(20), "the delivery", || async {
        seen.lock().unwrap().first().cloned()
    })
    .await
    .expect("the delivery carries a traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let (trace_id, span_id) = (parts[1].to_owned(), parts[2].to_owned());
    eventually(
        Duration::from_secs(10),
        "the webhook.attempt span exported",
        || async {
            capture.flush_spans().await;
            capture
                .receiver
                .spans()
                .into_iter()
                .find(|s| s.trace_id == trace_id && s.span_id == span_id)
                .filter(|s| s.name == "webhook.attempt")
        },
    )
    .await;
    app.teardown().await;
}
