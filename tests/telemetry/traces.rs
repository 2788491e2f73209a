//! One reservation's trace, as an OTLP collector receives it: the caller's `traceparent`
//! continued, and one parent chain from the HTTP request down to the append.

use std::time::Duration;

use reqwest::StatusCode;
use tombola_testkit::requests::{expect_json, numbers, raffle_request};
use tombola_testkit::telemetry::{capture, ReceivedSpan};
use tombola_testkit::{eventually, spawn_app};

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_reservation_is_one_trace_from_the_request_down_to_the_append() {
    let capture = capture();
    let app = spawn_app().await;
    let raffle = app
        .raffle_on_sale(raffle_request(serde_json::json!({})))
        .await;

    let response = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/raffles/{raffle}/reservations"),
            &app.client_key,
        )
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .json(&numbers("trace@example.com", &[7]))
        .send()
        .await
        .expect("reservation sent");
    let order = expect_json(response, StatusCode::CREATED).await;
    let order_id = order["order_id"].as_str().expect("an order id").to_owned();

    // Spans are exported once they end: the batch's after its callers were answered.
    let spans = eventually(
        Duration::from_secs(10),
        "the reservation's spans",
        || async {
            capture.flush_spans().await;
            let spans: Vec<ReceivedSpan> = capture
                .receiver
                .spans()
                .into_iter()
                .filter(|span| span.trace_id == CALLER_TRACE)
                .collect();
            spans.iter().any(|s| s.name == "append").then_some(spans)
        },
    )
    .await;

    let by_id = |id: &str| spans.iter().find(|s| s.span_id == id);
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in the caller's trace: {spans:#?}"))
    };
    let http = named("http");
    assert_eq!(
        http.parent_span_id, CALLER_SPAN,
        "continues the caller's span"
    );
    assert_eq!(
        http.attribute("raffle_id"),
        Some(raffle.to_string().as_str())
    );
    assert_eq!(http.attribute("order_id"), Some(order_id.as_str()));
    assert_eq!(
        http.attribute("route"),
        Some("/v1/raffles/{id}/reservations")
    );
    assert_eq!(http.attribute("status"), Some("201"));

    // From the append up, each span's parent, until the request.
    let mut chain = vec![named("append")];
    while let Some(parent) = by_id(&chain.last().expect("a span").parent_span_id) {
        chain.push(parent);
    }
    let names: Vec<&str> = chain.iter().rev().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "http",
            "engine.execute",
            "engine.batch",
            "commit.group",
            "append"
        ],
        "{spans:#?}"
    );
    let batch = named("engine.batch");
    assert_eq!(
        batch.attribute("raffle_id"),
        Some(raffle.to_string().as_str())
    );
    assert_eq!(batch.attribute("events"), Some("1"));
    assert_eq!(
        named("append").attribute("raffle_id"),
        Some(raffle.to_string().as_str())
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_request_without_traceparent_starts_a_trace_of_its_own() {
    let capture = capture();
    let app = spawn_app().await;
    let raffle = app
        .raffle_on_sale(raffle_request(serde_json::json!({})))
        .await;

    app.reserve_ok(raffle, &numbers("own@example.com", &[3]))
        .await;

    let raffle_id = raffle.to_string();
    let reservation = eventually(
        Duration::from_secs(10),
        "the reservation's span",
        || async {
            capture.flush_spans().await;
            capture.receiver.spans().into_iter().find(|s| {
                s.name == "http"
                    && s.attribute("raffle_id") == Some(raffle_id.as_str())
                    && s.attribute("route") == Some("/v1/raffles/{id}/reservations")
            })
        },
    )
    .await;
    assert_eq!(reservation.parent_span_id, "", "a root span");
    assert_ne!(reservation.trace_id, CALLER_TRACE);
    app.teardown().await;
}
