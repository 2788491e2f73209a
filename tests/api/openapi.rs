//! `/openapi.json` documents exactly the routes the router serves.
//!
//! Three checks, so that a route cannot be served undocumented: every documented route is
//! served (probed over HTTP); the documented set equals the list below of every served
//! route (each also probed); and the router is built only from `routes!(..)`, which takes a
//! route's method and path from its `#[utoipa::path]`, plus the one undocumented route
//! below (a scan of src/ for axum's other ways to add routes).

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

/// Every route the server answers, as (method, path template).
const SERVED: &[(&str, &str)] = &[
    ("POST", "/v1/raffles"),
    ("GET", "/v1/raffles"),
    ("GET", "/v1/raffles/{id}"),
    ("POST", "/v1/raffles/{id}/open"),
    ("POST", "/v1/raffles/{id}/close"),
    ("POST", "/v1/raffles/{id}/cancel"),
    ("POST", "/v1/raffles/{id}/draw"),
    ("GET", "/v1/raffles/{id}/draw"),
    ("GET", "/v1/raffles/{id}/draw/verify"),
    ("GET", "/v1/raffles/{id}/audit/verify"),
    ("GET", "/v1/raffles/{id}/exports/events.ndjson"),
    ("GET", "/v1/raffles/{id}/exports/tickets.csv"),
    ("GET", "/v1/raffles/{id}/exports/orders.csv"),
    ("GET", "/v1/raffles/{id}/exports"),
    ("GET", "/v1/raffles/{id}/events"),
    ("GET", "/v1/raffles/{id}/tickets/{number}/history"),
    ("GET", "/v1/raffles/{id}/orders/{order_id}/history"),
    ("GET", "/v1/raffles/{id}/availability"),
    ("GET", "/v1/raffles/{id}/availability/bitmap"),
    ("POST", "/v1/raffles/{id}/reservations"),
    ("GET", "/v1/raffles/{id}/orders/{order_id}"),
    ("DELETE", "/v1/raffles/{id}/orders/{order_id}"),
    ("POST", "/v1/raffles/{id}/orders/{order_id}/manual-payment"),
    ("POST", "/v1/raffles/{id}/orders/{order_id}/refund"),
    ("GET", "/v1/payments/needs-action"),
    ("GET", "/v1/raffles/{id}/stats"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/raffles/{id}/orders"),
    ("GET", "/v1/raffles/{id}/tickets/{number}"),
    ("GET", "/v1/admin/projections"),
    ("POST", "/v1/admin/projections/{name}/rebuild"),
    ("POST", "/v1/webhooks/stripe"),
    // Outbound webhooks.
    ("POST", "/v1/webhook-endpoints"),
    ("GET", "/v1/webhook-endpoints"),
    ("GET", "/v1/webhook-endpoints/{id}"),
    ("PATCH", "/v1/webhook-endpoints/{id}"),
    ("DELETE", "/v1/webhook-endpoints/{id}"),
    ("POST", "/v1/webhook-endpoints/{id}/rotate-secret"),
    ("GET", "/v1/webhook-endpoints/{id}/deliveries"),
    (
        "GET",
        "/v1/webhook-endpoints/{id}/messages/{msg_id}/attempts",
    ),
    (
        "POST",
        "/v1/webhook-endpoints/{id}/messages/{msg_id}/redeliver",
    ),
    ("POST", "/v1/webhook-endpoints/{id}/recover"),
    ("GET", "/v1/webhook-event-types"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

/// Served but rightly not in the document: the document itself.
const UNDOCUMENTED: &[(&str, &str)] = &[("GET", "/openapi.json")];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("a path item");
            METHODS
                .iter()
                .filter(|method| item.contains_key(**method))
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

/// Whether the router has this route: anything but 404 and 405 from an unauthenticated
/// request with made-up ids (a route that needs a key answers 401 first).
async fn is_served(app: &TestApp, method: &str, template: &str) -> bool {
    let path = template
        .replace("{id}", &uuid::Uuid::now_v7().to_string())
        .replace("{order_id}", &uuid::Uuid::now_v7().to_string());
    let method = Method::from_bytes(method.as_bytes()).expect("a method");
    let response = app.request(method, &path, "").send().await.expect("sent");
    !matches!(
        response.status(),
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
    )
}

#[tokio::test]
async fn the_openapi_document_lists_every_served_route_and_only_those() {
    let app = spawn_app().await;
    let doc = expect_json(app.get("/openapi.json", "").await, StatusCode::OK).await;
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3."),
        "an OpenAPI 3 document"
    );
    let documented = documented(&doc);

    // The probe can tell a missing route.
    assert!(!is_served(&app, "GET", "/v1/nowhere").await);
    assert!(!is_served(&app, "PUT", "/v1/raffles/{id}").await);

    for (method, path) in &documented {
        assert!(
            is_served(&app, method, path).await,
            "documented but not served: {method} {path}"
        );
    }
    for (method, path) in SERVED {
        assert!(
            is_served(&app, method, path).await,
            "not served: {method} {path}"
        );
    }
    let expected: BTreeSet<(String, String)> = SERVED
        .iter()
        .filter(|route| !UNDOCUMENTED.contains(route))
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    let undocumented: Vec<_> = expected.difference(&documented).collect();
    let unlisted: Vec<_> = documented.difference(&expected).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    assert!(
        unlisted.is_empty(),
        "documented routes missing from SERVED in this test: {unlisted:?}"
    );

    // Every operation says what it answers, and the protected ones how to authenticate.
    for (method, path) in &documented {
        let operation = &doc["paths"][path][method.to_lowercase()];
        assert!(
            operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()),
            "{method} {path} has no responses"
        );
        // Webhooks authenticate by their signature, not by an API key.
        if path.starts_with("/v1/") && !path.starts_with("/v1/webhooks/") {
            assert!(
                operation["security"].is_array(),
                "{method} {path} has no security"
            );
        }
    }
    app.teardown().await;
}

/// Routes added with plain axum calls bypass the document; only the listed one may.
#[test]
fn the_router_adds_no_route_outside_the_openapi_router() {
    let mut found = Vec::new();
    let mut pending = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read a source file");
                for call in [
                    ".route(",
                    ".route_service(",
                    ".nest(",
                    ".nest_service(",
                    ".merge(",
                    ".fallback_service(",
                ] {
                    for (at, _) in text.match_indices(call) {
                        let after: String = text[at + call.len()..]
                            .chars()
                            .take(80)
                            .filter(|c| !c.is_whitespace())
                            .collect();
                        found.push(format!("{}: {call}{after}", path.display()));
                    }
                }
            }
        }
    }
    assert_eq!(
        found.len(),
        1,
        "routes outside utoipa-axum's `routes!` (document them): {found:#?}"
    );
    assert!(found[0].contains(".route(\"/openapi.json\""), "{found:#?}");
}
