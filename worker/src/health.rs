//! `/health/live`, `/health/ready` and `/metrics` on `SLUICE_METRICS_ADDR`.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use serde_json::json;

use crate::state::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/health/live",
            get(|| async { Json(json!({"status": "alive"})) }),
        )
        .route("/health/ready", get(ready))
        .with_state(shared.clone())
        .merge(sluice_common::metrics::router(
            shared.metrics.registry.clone(),
        ))
}

/// 200 while leasing; 503 `draining` from the instant SIGTERM arrives; 503 `starting`
/// before the first lease (or while the database is unreachable); 503 `failed` once a
/// service stopped unexpectedly (the worker drains and exits non-zero). No database query.
async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    use std::sync::atomic::Ordering;
    if shared.broken.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed"})),
        )
    } else if shared.draining.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
    } else if shared.is_ready() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting"})),
        )
    }
}
