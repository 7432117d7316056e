//! Prometheus plumbing shared by the binaries: a registry that already carries
//! `sluice_build_info` and the `process_*` collector, and the `/metrics` route. Each binary
//! registers its own metrics.

use axum::{http::header, response::IntoResponse, routing::get, Router};
use prometheus::{Encoder, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// The git revision this binary was built from (see `common/build.rs`): the
/// `SLUICE_BUILD_REVISION` build-time variable, else `git rev-parse HEAD`, else `unknown`.
pub const BUILD_REVISION: &str = env!("SLUICE_BUILD_REVISION");

/// A registry with `sluice_build_info{binary,version,revision} 1` and, on Linux, the
/// standard `process_*` metrics (CPU, resident memory, open file descriptors, start time)
/// registered.
pub fn new_registry(binary: &str) -> Registry {
    let registry = Registry::new();
    let info = IntGaugeVec::new(
        Opts::new("sluice_build_info", "Build information; always 1."),
        &["binary", "version", "revision"],
    )
    .expect("static metric definition");
    info.with_label_values(&[binary, env!("CARGO_PKG_VERSION"), BUILD_REVISION])
        .set(1);
    registry.register(Box::new(info)).expect("registered once");
    register_process_collector(&registry);
    registry
}

/// `process_*` for this process. The collector reads `/proc`, so it exists on Linux only;
/// elsewhere the registry simply lacks those series.
#[cfg(target_os = "linux")]
fn register_process_collector(registry: &Registry) {
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("registered once");
}

#[cfg(not(target_os = "linux"))]
fn register_process_collector(_registry: &Registry) {}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_carries_the_revision_and_process_metrics_are_registered() {
        let text = encode(&new_registry("sluice-test"));
        let line = text
            .lines()
            .find(|l| l.starts_with("sluice_build_info{"))
            .expect("build info exported");
        assert!(
            line.contains(&format!("revision=\"{BUILD_REVISION}\"")),
            "{line}"
        );
        assert!(!BUILD_REVISION.is_empty());
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.contains(&format!("\n{name} ")),
                "{name} missing:\n{text}"
            );
        }
    }
}
