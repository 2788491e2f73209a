//! Everything a test binary's servers say, captured: every log line and span (TRACE level,
//! all crates) written as text into memory, and every span exported over OTLP/HTTP to an
//! [`OtlpReceiver`] stand-in on loopback, as `OTEL_EXPORTER_OTLP_ENDPOINT` would in
//! production.
//!
//! The subscriber is the process's global one (the engine appends on a thread of its own,
//! which a thread-local subscriber would miss), so [`capture`] installs it once per test
//! binary and every test of that binary shares it: a binary that uses it should hold only
//! telemetry tests, and tests should pick their own spans out by ids.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tombola::telemetry::otel::SdkTracerProvider;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// A span as the receiver decoded it; ids in lowercase hex, empty parent for a root.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// String, integer and boolean attributes, as text.
    pub attributes: Vec<(String, String)>,
    /// (trace id, span id) of each linked span.
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    /// Every request body as it arrived: protobuf keeps strings as UTF-8, so a search of
    /// these bytes finds any text a span or span event carried.
    bodies: Vec<Vec<u8>>,
}

/// An OTLP/HTTP receiver stand-in: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, answered as a collector answers. It serves from a thread
/// of its own, so it outlives any one test's runtime.
pub struct OtlpReceiver {
    address: SocketAddr,
    received: Arc<Mutex<Received>>,
}

impl OtlpReceiver {
    pub fn start() -> Self {
        let received = Arc::new(Mutex::new(Received::default()));
        let store = received.clone();
        let (ready, bound) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the receiver");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind the receiver");
                    ready
                        .send(listener.local_addr().expect("an address"))
                        .expect("the test waits");
                    let app = axum::Router::new().route(
                        "/v1/traces",
                        axum::routing::post(move |body: Bytes| {
                            let store = store.clone();
                            async move { accept(&store, &body) }
                        }),
                    );
                    axum::serve(listener, app)
                        .await
                        .expect("the receiver serves");
                });
            })
            .expect("start the receiver's thread");
        Self {
            address: bound.recv().expect("the receiver binds"),
            received,
        }
    }

    /// The URL of the traces resource, as an exporter is configured with.
    pub fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.address)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.clone()
    }

    /// Every body received, lossily as text.
    pub fn raw_text(&self) -> String {
        self.lock()
            .bodies
            .iter()
            .map(|body| String::from_utf8_lossy(body).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn accept(
    store: &Mutex<Received>,
    body: &[u8],
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let protobuf = [(header::CONTENT_TYPE, "application/x-protobuf")];
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, protobuf, Vec::new());
    };
    let mut received = store.lock().unwrap_or_else(|e| e.into_inner());
    received.bodies.push(body.to_vec());
    for span in request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
    {
        received.spans.push(ReceivedSpan {
            name: span.name.clone(),
            trace_id: hex::encode(&span.trace_id),
            span_id: hex::encode(&span.span_id),
            parent_span_id: hex::encode(&span.parent_span_id),
            attributes: span
                .attributes
                .iter()
                .filter_map(|kv| {
                    let value = match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => s.clone(),
                        Value::IntValue(i) => i.to_string(),
                        Value::BoolValue(b) => b.to_string(),
                        Value::DoubleValue(d) => d.to_string(),
                        _ => return None,
                    };
                    Some((kv.key.clone(), value))
                })
                .collect(),
            links: span
                .links
                .iter()
                .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                .collect(),
        });
    }
    let response = ExportTraceServiceResponse::default().encode_to_vec();
    (StatusCode::OK, protobuf, response)
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The capture of this test binary (see the module's documentation).
pub struct Capture {
    logs: Buffer,
    pub receiver: OtlpReceiver,
    provider: SdkTracerProvider,
}

/// Installs the capturing subscriber on first use; every later call returns the same one.
pub fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let receiver = OtlpReceiver::start();
        let provider = tombola::telemetry::otel::provider(Some(&receiver.traces_url()))
            .expect("an OTLP exporter");
        let logs = Buffer::default();
        let writer = logs.clone();
        let text = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
            .with_writer(move || writer.clone())
            // Everything, but the test's own HTTP client: what it says about the requests the
            // test makes is not the server's to answer for.
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_default(tracing::Level::TRACE)
                    .with_target("reqwest", tracing_subscriber::filter::LevelFilter::OFF),
            );
        let traces = tombola::telemetry::otel::layer(&provider)
            .with_filter(tombola::telemetry::otel::filter());
        tracing_subscriber::registry()
            .with(text)
            .with(traces)
            .try_init()
            .expect("no other global subscriber in a telemetry test binary");
        Capture {
            logs,
            receiver,
            provider,
        }
    })
}

impl Capture {
    /// Every log line and span event written so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Exports every span that has ended and waits until the receiver has them.
    pub async fn flush_spans(&self) {
        let provider = self.provider.clone();
        tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .expect("the flush does not panic")
            .expect("spans exported");
    }
}
