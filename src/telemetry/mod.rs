//! Logs, traces, error reports and metrics, all from `tracing` and `metrics` calls.
//!
//! - Logs: text or JSON (`TOMBOLA_LOG_FORMAT=json`) on stderr, filtered by `RUST_LOG`.
//! - Traces: spans exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//!   ([`otel`]); the W3C `traceparent` of a request becomes its span's parent, and
//!   [`inject_traceparent`] carries the current trace on outbound requests.
//! - Error reports: Sentry when `SENTRY_DSN` is set ([`reporting`]), scrubbed of personal
//!   data before anything leaves the process.
//! - Metrics: the Prometheus recorder behind `/metrics` ([`init_metrics`]).
//!
//! No personal data in any of them: spans and logs carry ids (raffle, order, request,
//! payment, key id), never buyer names, emails or phones, request bodies, keys or secrets.
//! The `telemetry` integration test captures everything of a buy flow and searches it.

pub mod otel;
pub mod reporting;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use otel::{current_traceparent, inject_traceparent};

/// What the process reports, and where: read from the environment by [`Self::from_env`].
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// `TOMBOLA_LOG_FORMAT=json`.
    pub json_logs: bool,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: spans
    /// are exported; the exporter reads the rest of its `OTEL_*` settings itself.
    pub otlp: bool,
    /// `SENTRY_DSN`.
    pub sentry_dsn: Option<String>,
}

impl TelemetryConfig {
    pub fn from_env() -> Self {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        Self {
            json_logs: std::env::var("TOMBOLA_LOG_FORMAT").as_deref() == Ok("json"),
            otlp: set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            sentry_dsn: std::env::var("SENTRY_DSN")
                .ok()
                .filter(|dsn| !dsn.trim().is_empty()),
        }
    }
}

/// Keeps the exporters alive; dropping it flushes the spans and error reports still queued.
#[must_use = "dropping the guard stops exporting"]
#[derive(Default)]
pub struct TelemetryGuard {
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    sentry: Option<sentry::ClientInitGuard>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            if let Err(error) = tracer.shutdown() {
                eprintln!("tombola: spans not flushed: {error}");
            }
        }
        drop(self.sentry.take());
    }
}

/// Installs the process's subscriber: logs, and the OTLP and Sentry layers `config` asks
/// for. An exporter that cannot start is reported on stderr and left out; the server runs.
pub fn init(config: &TelemetryConfig) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = if config.json_logs {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed()
    };
    let mut guard = TelemetryGuard::default();
    let traces = if config.otlp {
        match otel::provider(None) {
            Ok(provider) => {
                let layer = otel::layer(&provider).with_filter(otel::filter());
                guard.tracer = Some(provider);
                Some(layer)
            }
            Err(error) => {
                eprintln!("tombola: OTLP export not started: {error}");
                None
            }
        }
    } else {
        None
    };
    let reports = config
        .sentry_dsn
        .as_deref()
        .and_then(|dsn| match reporting::init(dsn) {
            Ok(client) => {
                guard.sentry = Some(client);
                Some(reporting::layers())
            }
            Err(error) => {
                eprintln!("tombola: Sentry not started: {error}");
                None
            }
        });
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .with(reports)
        .try_init();
    guard
}

/// Installs the global metrics recorder (once per process).
pub fn init_metrics() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ];
            // Batch sizes and queue depths are counts: seconds' buckets would put them all
            // in +Inf.
            let counts = [
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .ok()?
                .set_buckets_for_metric(Matcher::Prefix("tombola_engine_batch_".into()), &counts)
                .ok()?
                .set_buckets_for_metric(Matcher::Full("tombola_engine_queue_depth".into()), &counts)
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("tombola_projection_batch_events".into()),
                    &counts,
                )
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}
