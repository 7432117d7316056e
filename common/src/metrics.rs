//! Prometheus plumbing shared by the binaries: a registry that already carries
//! `sluice_build_info`, and the `/metrics` route. Each binary registers its own metrics.

use axum::{http::header, response::IntoResponse, routing::get, Router};
use prometheus::{Encoder, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// A registry with `sluice_build_info{binary,version} 1` registered.
pub fn new_registry(binary: &str) -> Registry {
    let registry = Registry::new();
    let info = IntGaugeVec::new(
        Opts::new("sluice_build_info", "Build information; always 1."),
        &["binary", "version"],
    )
    .expect("static metric definition");
    info.with_label_values(&[binary, env!("CARGO_PKG_VERSION")])
        .set(1);
    registry.register(Box::new(info)).expect("registered once");
    registry
}

/// Registers and returns `sluice_shutting_down`: 1 from the moment a termination signal
/// arrives, so dashboards can tell a drain from an outage.
pub fn shutting_down_gauge(registry: &Registry) -> IntGauge {
    let g = IntGauge::new(
        "sluice_shutting_down",
        "1 while the process drains after SIGTERM, else 0.",
    )
    .expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

/// The registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// `GET /metrics` over `registry`.
pub fn router(registry: Registry) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    encode(&registry),
                )
                    .into_response()
            }
        }),
    )
}
