//! Logs to stdout (JSON or pretty) and, when the standard `OTEL_EXPORTER_OTLP_*` variables
//! are set, trace export over OTLP/HTTP (http or https); plus the W3C `traceparent` helpers
//! that carry an enqueuing request's trace into the job's span in the worker.
//!
//! The trace resource comes from the SDK's detectors, so the standard variables work:
//! `OTEL_SERVICE_NAME` and `service.name` in `OTEL_RESOURCE_ATTRIBUTES` override the
//! binary's own name, and every other `OTEL_RESOURCE_ATTRIBUTES` pair (namespace, pod,
//! environment) is exported as given.

use std::collections::HashMap;
use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{
    EnvResourceDetector, Resource, ResourceDetector, SdkProvidedResourceDetector,
    TelemetryResourceDetector,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

use crate::config::LogFormat;

/// Keeps the trace exporter alive; dropping it flushes spans still buffered (the batch
/// processor's queue), so spans of the last requests before a SIGTERM are not lost.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    /// The provider whose batch processor holds unsent spans; `None` when export is off.
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(err) = provider.shutdown() {
                eprintln!("warning: flushing traces at exit failed: {err}");
            }
        }
    }
}

/// Whether the operator asked for trace export (SPEC.md §2: unset means off), and did not
/// switch it off with the standard `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
fn otlp_configured() -> bool {
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    if env("OTEL_SDK_DISABLED").trim().eq_ignore_ascii_case("true")
        || env("OTEL_TRACES_EXPORTER")
            .trim()
            .eq_ignore_ascii_case("none")
    {
        return false;
    }
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| non_empty_env(v))
}

fn non_empty_env(name: &str) -> bool {
    std::env::var(name)
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false)
}

/// The trace resource: `service` and our version as defaults, then the SDK's detectors
/// (telemetry SDK attributes, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`), later ones
/// winning. The SDK's own service-name detector is added only when `OTEL_SERVICE_NAME` is
/// set, because without it it would replace our name with `unknown_service`.
pub fn resource(service: &'static str) -> Resource {
    let mut detectors: Vec<Box<dyn ResourceDetector>> = vec![
        Box::new(TelemetryResourceDetector),
        Box::new(EnvResourceDetector::new()),
    ];
    if non_empty_env("OTEL_SERVICE_NAME") {
        detectors.push(Box::new(SdkProvidedResourceDetector));
    }
    Resource::builder_empty()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attribute(KeyValue::new(
            "vcs.ref.head.revision",
            crate::metrics::BUILD_REVISION,
        ))
        .with_detectors(&detectors)
        .build()
}

/// Installs the global subscriber. `service` names the process in traces unless the
/// standard variables say otherwise. Call once.
pub fn init(format: LogFormat, service: &'static str) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let fmt_layer = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        // Colours only for a terminal: `SLUICE_LOG_FORMAT=pretty` into a file or journald
        // must stay plain text.
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
    };
    let mut guard = TelemetryGuard::default();
    let otel_layer = if otlp_configured() {
        // Endpoint, headers, timeout and protocol come from the standard
        // `OTEL_EXPORTER_OTLP_*` variables; an https endpoint uses rustls.
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                let provider = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource(service))
                    .build();
                let tracer = provider.tracer(service);
                guard.provider = Some(provider);
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(err) => {
                eprintln!("warning: OTLP trace export disabled: {err}");
                None
            }
        }
    } else {
        None
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init();
    guard
}

/// The `traceparent` of the current span, when trace export is on.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier
        .remove("traceparent")
        .filter(|tp| crate::model::is_valid_traceparent(tp))
}

/// Makes `span` a child of the remote span named by `traceparent` (a job's enqueuing
/// request), so the trace continues across the queue.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    // Fails only if the span was already started, which callers never do.
    let _ = span.set_parent(cx);
}

/// Renames `span` in the trace (e.g. a server span once routing knows its route). The
/// `otel.name` field only works before the span starts, so this renames the started span.
pub fn set_span_name(span: &tracing::Span, name: String) {
    use opentelemetry::trace::TraceContextExt as _;
    span.context().span().update_name(name);
}
