//! Error reports to Sentry (`SENTRY_DSN`): ERROR events become reports, WARN and INFO events
//! the breadcrumbs that go with them. Spans stay with OpenTelemetry.
//!
//! Nothing personal leaves the process: the client never adds what it could learn about a
//! user (`send_default_pii: false`), and [`scrub`] runs on every report before it is sent.
//! It drops request bodies, cookies, query strings, the user, and every header but a few
//! harmless ones, and blanks any field (in extras, contexts, tags, breadcrumbs) whose name
//! says buyer, name, email, phone, key, secret, token, signature, password or authorization,
//! and any value that looks like an email address or a bearer token.

use std::borrow::Cow;
use std::sync::Arc;

use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer};
use sentry::protocol::{Event, Map, Value};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// What a blanked value becomes.
pub const FILTERED: &str = "[filtered]";

/// Starts the Sentry client; keep the guard for as long as reports may be sent.
pub fn init(dsn: &str) -> anyhow::Result<sentry::ClientInitGuard> {
    // The client's TLS uses rustls on ring, like the database connections.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = sentry::ClientOptions::new();
    options.dsn = Some(dsn.parse()?);
    options.release = sentry::release_name!();
    options.environment = std::env::var("SENTRY_ENVIRONMENT").ok().map(Cow::Owned);
    options.send_default_pii = false;
    options.max_request_body_size = sentry::MaxRequestBodySize::None;
    options.before_send = Some(Arc::new(|event| Some(scrub(event))));
    options.before_breadcrumb = Some(Arc::new(|mut breadcrumb| {
        scrub_map(&mut breadcrumb.data);
        breadcrumb.message = breadcrumb.message.map(|m| scrub_text(&m));
        Some(breadcrumb)
    }));
    Ok(sentry::init(options))
}

/// The `tracing` layers that feed Sentry.
pub fn layers<S>() -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let breadcrumbs = BreadcrumbLayer::new().with_filter(filter_fn(|metadata| {
        matches!(
            *metadata.level(),
            tracing::Level::WARN | tracing::Level::INFO
        )
    }));
    let errors = ErrorLayer::new().with_filter(filter_fn(|metadata| {
        *metadata.level() == tracing::Level::ERROR
    }));
    breadcrumbs.and_then(errors)
}

/// Headers a report may keep: nothing in them identifies a buyer or grants access.
const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "user-agent",
    "x-request-id",
    "traceparent",
];

/// Removes personal data and secrets from `event` (see the module's documentation).
pub fn scrub(mut event: Event<'static>) -> Event<'static> {
    event.user = None;
    if let Some(request) = event.request.as_mut() {
        request.data = None;
        request.cookies = None;
        request.query_string = None;
        request.env.clear();
        request
            .headers
            .retain(|name, _| KEPT_HEADERS.contains(&name.to_ascii_lowercase().as_str()));
    }
    scrub_map(&mut event.extra);
    for (name, value) in event.tags.iter_mut() {
        if sensitive(name) {
            *value = FILTERED.into();
        } else {
            *value = scrub_text(value);
        }
    }
    for context in event.contexts.values_mut() {
        if let sentry::protocol::Context::Other(map) = context {
            scrub_map(map);
        }
    }
    for breadcrumb in event.breadcrumbs.values.iter_mut() {
        scrub_map(&mut breadcrumb.data);
        breadcrumb.message = breadcrumb.message.take().map(|m| scrub_text(&m));
    }
    event.message = event.message.take().map(|m| scrub_text(&m));
    if let Some(entry) = event.logentry.as_mut() {
        entry.message = scrub_text(&entry.message);
        entry.params.iter_mut().for_each(scrub_value);
    }
    for exception in event.exception.values.iter_mut() {
        exception.value = exception.value.take().map(|v| scrub_text(&v));
    }
    event
}

fn scrub_map(map: &mut Map<String, Value>) {
    for (name, value) in map.iter_mut() {
        if sensitive(name) {
            *value = Value::String(FILTERED.into());
        } else {
            scrub_value(value);
        }
    }
}

fn scrub_value(value: &mut Value) {
    match value {
        Value::String(text) => *text = scrub_text(text),
        Value::Array(items) => items.iter_mut().for_each(scrub_value),
        Value::Object(map) => {
            for (name, value) in map.iter_mut() {
                if sensitive(name) {
                    *value = Value::String(FILTERED.into());
                } else {
                    scrub_value(value);
                }
            }
        }
        _ => {}
    }
}

/// Whether a field of this name holds personal data or a secret.
fn sensitive(name: &str) -> bool {
    const WORDS: &[&str] = &[
        "buyer",
        "name",
        "email",
        "phone",
        "key",
        "secret",
        "token",
        "signature",
        "password",
        "authorization",
        "cookie",
        "body",
    ];
    let name = name.to_ascii_lowercase();
    // `key_id`, `raffle_id`… name ids, which are not secrets.
    !name.ends_with("_id") && WORDS.iter().any(|word| name.contains(word))
}

/// `text` with every word that looks like an email address or a bearer token blanked.
fn scrub_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut bearer = false;
    for (index, word) in text.split(' ').enumerate() {
        if index > 0 {
            out.push(' ');
        }
        let looks_like_email = word.contains('@') && word.contains('.');
        if bearer || looks_like_email {
            out.push_str(FILTERED);
        } else {
            out.push_str(word);
        }
        bearer = word.eq_ignore_ascii_case("bearer");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry::protocol::{Breadcrumb, Request, User};

    #[test]
    fn a_report_keeps_no_buyer_no_body_and_no_credentials() {
        let mut event = Event {
            message: Some("reserve failed for ada@example.com".into()),
            user: Some(User {
                email: Some("ada@example.com".into()),
                ..Default::default()
            }),
            request: Some(Request {
                data: Some(r#"{"buyer":{"name":"Ada Lovelace"}}"#.into()),
                cookies: Some("session=1".into()),
                query_string: Some("email=ada@example.com".into()),
                headers: [
                    ("Authorization", "Bearer tk_secret"),
                    ("Stripe-Signature", "t=1,v1=abc"),
                    ("Content-Type", "application/json"),
                    ("X-Request-Id", "req-1"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        event.extra.insert(
            "buyer".into(),
            serde_json::json!({"name": "Ada Lovelace", "phone": "+44 20 7946 0000"}),
        );
        event
            .extra
            .insert("raffle_id".into(), Value::String("r-1".into()));
        event.extra.insert(
            "detail".into(),
            serde_json::json!({"contact_email": "ada@example.com", "note": "call Bearer tk_x"}),
        );
        event.breadcrumbs.values.push(Breadcrumb {
            message: Some("mail to ada@example.com".into()),
            data: [("phone".to_owned(), Value::String("+44".into()))]
                .into_iter()
                .collect(),
            ..Default::default()
        });

        let scrubbed = scrub(event);
        let text = serde_json::to_string(&scrubbed).expect("serializes");
        for leak in [
            "Ada",
            "ada@example.com",
            "+44",
            "tk_secret",
            "tk_x",
            "v1=abc",
            "session",
        ] {
            assert!(!text.contains(leak), "{leak} leaked: {text}");
        }
        assert!(text.contains("r-1"), "ids stay: {text}");
        assert!(text.contains("req-1"), "the request id stays: {text}");
        assert!(scrubbed.user.is_none());
    }

    #[test]
    fn ids_are_not_mistaken_for_secrets() {
        assert!(!sensitive("key_id"));
        assert!(!sensitive("order_id"));
        assert!(sensitive("api_key"));
        assert!(sensitive("buyer_name"));
        assert!(sensitive("webhook_secret"));
    }
}
