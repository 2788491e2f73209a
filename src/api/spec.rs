//! The served OpenAPI document, completed from what the code does so that it cannot drift:
//! every operation lists the problem+json answers its extractors and middleware can give
//! (derived from whether it is authenticated, takes a path id, a query or a body), and
//! unsigned 32-bit integers say their true range.

use serde_json::{json, Value};
use tombola_domain::{json_schema_pattern, Email, TextKind};

/// The RFC 9457 body every error has; rejections add the fields a client can act on.
fn problem_schema() -> Value {
    json!({
        "type": "object",
        "required": ["type", "title", "status", "code", "detail"],
        "properties": {
            "type": {"type": "string", "description": "`/problems/<code>`, stable"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "code": {"type": "string", "description": "Stable, machine-readable"},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "The invalid field, for a 422"},
            "retry_after_seconds": {"type": "integer", "minimum": 1}
        },
        "additionalProperties": true
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Malformed JSON or an invalid webhook",
        401 => "Missing or invalid API key",
        403 => "The key's role may not do this",
        404 => "No such resource, or not the key's organizer's",
        405 => "Method not allowed",
        409 => "The raffle's or the order's state, or taken numbers",
        413 => "Body too large",
        415 => "Body is not application/json",
        422 => "Invalid request: the problem's `field` names what",
        429 => "Rate limited; see Retry-After",
        503 => "Busy, unavailable or timed out; retry after Retry-After (with the same Idempotency-Key)",
        _ => "Error",
    }
}

/// The headers of a 429: `Retry-After` always; the IETF draft's `RateLimit-*` when a rate
/// limit refused (not when the node's heavy-read slots are taken). Answers that a rate limit
/// let through carry the `RateLimit-*` headers too.
fn rate_limited_headers() -> Value {
    let seconds = json!({"type": "integer", "minimum": 0});
    json!({
        "Retry-After": {
            "required": true,
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer", "minimum": 1}
        },
        "RateLimit-Limit": {
            "description": "Requests the refusing limit allows at once (its burst)",
            "schema": seconds
        },
        "RateLimit-Remaining": {
            "description": "Requests left under that limit (0 on a refusal)",
            "schema": seconds
        },
        "RateLimit-Reset": {
            "description": "Seconds until that limit's budget is full again",
            "schema": seconds
        }
    })
}

/// The statuses an operation can answer besides its own, from how it is served.
fn error_statuses(path: &str, method: &str, operation: &Value) -> Vec<u16> {
    let mut statuses = vec![429, 503];
    if operation.get("security").is_some() {
        statuses.extend([401, 403]);
    }
    if path.contains('{') {
        statuses.push(404);
    }
    let parameters = operation["parameters"].as_array();
    let has_query = parameters.is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
    let has_body = operation.get("requestBody").is_some();
    if has_query || has_body || path.contains('{') || operation.get("security").is_some() {
        statuses.push(422);
    }
    if has_body {
        statuses.extend([400, 413, 415]);
    }
    if path.starts_with("/v1/raffles/{id}") && matches!(method, "post" | "delete") {
        statuses.push(409);
    }
    if path == "/v1/webhooks/stripe" {
        statuses.push(400);
    }
    statuses
}

/// Unsigned 32-bit fields come out as `int32` with `minimum: 0`, which would call
/// 2,147,483,648 invalid; say `0..=u32::MAX` instead (fields with their own maximum keep it).
fn widen_unsigned(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let is_u32 = map.get("format") == Some(&json!("int32"))
                && map.get("minimum") == Some(&json!(0))
                && !map.contains_key("maximum");
            if is_u32 {
                map.insert("format".into(), json!("int64"));
                map.insert("maximum".into(), json!(u32::MAX));
            }
            map.values_mut().for_each(widen_unsigned);
        }
        Value::Array(items) => items.iter_mut().for_each(widen_unsigned),
        _ => {}
    }
}

/// The text policy each request text field is parsed with (src/api handlers and the
/// domain's raffle parsing), so its schema can say which characters it refuses.
const TEXT_FIELDS: &[(&str, &str, TextKind)] = &[
    ("CreateRaffleRequest", "title", TextKind::Name),
    ("CreateRaffleRequest", "organizer_id", TextKind::Name),
    ("PrizeBody", "name", TextKind::Name),
    ("BuyerBody", "name", TextKind::Name),
    ("ManualPaymentRequest", "method", TextKind::Name),
    ("ManualPaymentRequest", "reference", TextKind::Note),
    ("CancelRequest", "reason", TextKind::Note),
    ("RefundRequest", "reason", TextKind::Note),
    ("DrawRequest", "seed", TextKind::Exact),
    ("DrawRequest", "public_entropy", TextKind::Exact),
    ("NewEndpoint", "description", TextKind::Note),
    ("PatchEndpoint", "description", TextKind::Note),
];

/// Operations whose body may be left out entirely (their handlers read it with
/// `optional_json`).
const OPTIONAL_BODIES: &[(&str, &str)] = &[
    ("/v1/raffles/{id}/cancel", "post"),
    ("/v1/raffles/{id}/orders/{order_id}/refund", "post"),
    ("/v1/webhook-endpoints/{id}/rotate-secret", "post"),
];

/// The finished document.
pub fn complete(openapi: &utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(openapi).unwrap_or_default();
    widen_unsigned(&mut doc);
    for (schema, field, kind) in TEXT_FIELDS {
        let property = &mut doc["components"]["schemas"][schema]["properties"][field];
        if property.is_object() {
            property["pattern"] = json!(json_schema_pattern(*kind));
        }
    }
    let email = &mut doc["components"]["schemas"]["BuyerBody"]["properties"]["email"];
    if email.is_object() {
        email["pattern"] = json!(Email::json_schema_pattern());
        email["maxLength"] = json!(Email::MAX_CHARS);
    }
    // Exact numbers or a quantity of random ones, never both: a `null` counts as absent,
    // as serde reads it.
    let reserve = &mut doc["components"]["schemas"]["ReserveRequest"];
    if reserve.is_object() {
        reserve["oneOf"] = json!([
            {"required": ["numbers"],
             "properties": {"numbers": {"type": "array"}, "quantity": {"type": "null"}}},
            {"required": ["quantity"],
             "properties": {"quantity": {"type": "integer"}, "numbers": {"type": "null"}}}
        ]);
    }
    for (path, method) in OPTIONAL_BODIES {
        let body = &mut doc["paths"][path][method]["requestBody"];
        if body.is_object() {
            body["required"] = json!(false);
        }
    }
    doc["components"]["schemas"]["Problem"] = problem_schema();
    super::webhooks_out::document(&mut doc);
    let problem =
        json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}});
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                let statuses = error_statuses(path, method, operation);
                let responses = operation["responses"]
                    .as_object_mut()
                    .expect("every operation has responses");
                for status in statuses {
                    responses
                        .entry(status.to_string())
                        .or_insert_with(|| json!({"description": reason(status)}));
                }
                for (status, response) in responses.iter_mut() {
                    let is_error = status.starts_with('4') || status.starts_with('5');
                    if is_error && response.get("content").is_none() {
                        response["content"] = problem.clone();
                    }
                    if status == "429" && response.get("headers").is_none() {
                        response["headers"] = rate_limited_headers();
                    }
                }
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u32_fields_say_their_true_range_and_explicit_maxima_stay() {
        let mut schema = json!({"properties": {
            "a": {"type": "integer", "format": "int32", "minimum": 0},
            "b": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 10},
            "c": {"type": "integer", "format": "int32"}
        }});
        widen_unsigned(&mut schema);
        assert_eq!(schema["properties"]["a"]["maximum"], json!(u32::MAX));
        assert_eq!(schema["properties"]["a"]["format"], "int64");
        assert_eq!(schema["properties"]["b"]["maximum"], 10);
        assert_eq!(schema["properties"]["c"].get("maximum"), None);
    }

    #[test]
    fn operations_list_the_answers_their_extractors_give() {
        let op = json!({"security": [], "requestBody": {}, "responses": {}});
        let statuses = error_statuses("/v1/raffles/{id}/draw", "post", &op);
        for status in [400, 401, 403, 404, 409, 413, 415, 422, 429, 503] {
            assert!(statuses.contains(&status), "{status}");
        }
        let health = error_statuses("/healthz", "get", &json!({"responses": {}}));
        assert!(!health.contains(&401) && !health.contains(&422));
    }
}
