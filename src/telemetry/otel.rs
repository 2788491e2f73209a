//! Spans to OpenTelemetry: the OTLP/HTTP exporter, the `tracing` layer that feeds it, and
//! W3C trace context in and out.
//!
//! A trace of a reservation: `http` (the request; its parent is the caller's `traceparent`)
//! → `engine.execute` (the command's wait for its answer) → `engine.batch` (the group commit
//! that carried it; parent: its first command, linked to the others) → `commit.group` (one
//! statement for the batches of several raffles; parent: its first batch, linked to the
//! others) → `append` (the store's insert). Payment deliveries (`payments.apply`) and
//! projection batches (`projection.batch`) start traces of their own.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
pub use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// A tracer provider exporting over OTLP/HTTP (protobuf) in batches, from a thread of its
/// own. `endpoint` is the full URL of the traces resource (`…/v1/traces`); `None` leaves it
/// to the `OTEL_EXPORTER_OTLP_*` variables, as the OpenTelemetry specification defines them.
pub fn provider(endpoint: Option<&str>) -> anyhow::Result<SdkTracerProvider> {
    install_crypto_provider();
    // A blocking client must not be built on an async runtime's thread (nor dropped there):
    // it runs a runtime of its own. Exports run on the batch processor's thread.
    let client = std::thread::spawn(|| reqwest_otlp::blocking::Client::builder().build())
        .join()
        .map_err(|_| anyhow::anyhow!("building the OTLP client panicked"))??;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(client);
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("tombola");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tombola"))
        .with_tracked_inactivity(false)
}

/// What is exported: Tombola's own spans at INFO and above, and nothing of the libraries'
/// (sqlx, hyper, h2: a span per poll and per frame would drown the traces).
pub fn filter() -> Targets {
    Targets::new()
        .with_target("tombola", tracing::Level::INFO)
        .with_target("tombola_projections", tracing::Level::INFO)
}

/// The TLS client of the exporter uses rustls on ring, like the database connections.
fn install_crypto_provider() {
    // Err means a provider is installed already: that one serves.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes the caller's trace (the `traceparent` and `tracestate` headers, W3C Trace Context)
/// the parent of `span`. A missing or malformed header leaves `span` the root of a new
/// trace. Without the OpenTelemetry layer (no OTLP endpoint) this does nothing.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Adds `traceparent` (and `tracestate`, if any) for the current span to `headers`, so that
/// the receiver of an outbound request (an outbound webhook, say) can continue the trace.
/// Call it inside the span that sends the request, e.g. a delivery attempt's:
///
/// ```no_run
/// # fn send(request: &mut axum::http::HeaderMap) {
/// let attempt = tracing::info_span!("webhook.attempt");
/// let _entered = attempt.enter();
/// tombola::telemetry::inject_traceparent(request);
/// # }
/// ```
///
/// With a `reqwest::RequestBuilder`, build the headers first and pass them with
/// `.headers(map)`. Adds nothing when traces are not exported (no OTLP endpoint): there is
/// no trace to continue.
pub fn inject_traceparent(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(headers));
    }
}

/// The current span's `traceparent` header value, if traces are exported.
pub fn current_traceparent() -> Option<String> {
    let mut headers = HeaderMap::new();
    inject_traceparent(&mut headers);
    headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// Links `span` to the spans in `others` (the commands that shared its group commit, the
/// batches that shared its statement): they are in other traces, so none can be a parent.
pub fn link_all<'a>(span: &tracing::Span, others: impl IntoIterator<Item = &'a tracing::Span>) {
    for other in others {
        let context = other.context();
        let linked = context.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// A provider that exports nowhere: ids and parents are all these tests look at.
    fn subscriber() -> (impl tracing::Subscriber + Send + Sync, SdkTracerProvider) {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry().with(layer(&provider));
        (subscriber, provider)
    }

    #[test]
    fn a_request_continues_the_callers_trace_and_passes_it_on() {
        let (subscriber, _provider) = subscriber();
        tracing::subscriber::with_default(subscriber, || {
            let mut incoming = HeaderMap::new();
            incoming.insert(
                "traceparent",
                HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            );
            let request = tracing::info_span!("http");
            continue_trace(&request, &incoming);
            let _entered = request.enter();
            let mut outgoing = HeaderMap::new();
            inject_traceparent(&mut outgoing);
            let traceparent = outgoing["traceparent"].to_str().expect("ASCII");
            let parts: Vec<&str> = traceparent.split('-').collect();
            assert_eq!(parts[0], "00");
            assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
            assert_ne!(
                parts[2], "00f067aa0ba902b7",
                "our own span, not the caller's"
            );
            assert_eq!(parts[3], "01", "sampled, as the caller asked");
        });
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        let (subscriber, _provider) = subscriber();
        tracing::subscriber::with_default(subscriber, || {
            let mut incoming = HeaderMap::new();
            incoming.insert("traceparent", HeaderValue::from_static("00-zz-yy-01"));
            let request = tracing::info_span!("http");
            continue_trace(&request, &incoming);
            let _entered = request.enter();
            let traceparent = current_traceparent().expect("a trace of its own");
            assert!(!traceparent.contains("zz"), "{traceparent}");
            assert_eq!(traceparent.len(), 55, "{traceparent}");
        });
    }

    #[test]
    fn without_the_layer_nothing_is_injected() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let _entered = tracing::info_span!("http").entered();
            assert_eq!(current_traceparent(), None);
        });
    }
}
