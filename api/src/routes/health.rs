//! `/health/live` and `/health/ready`: answered from memory, never a database round trip.

use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use serde_json::{json, Value};

use crate::state::{AppState, ReadyStatus};

/// Routes of this module (no authentication).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
}

async fn live() -> Json<Value> {
    Json(json!({ "status": "alive" }))
}

async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (code, status) = match state.readiness.status() {
        ReadyStatus::Ready => (StatusCode::OK, "ready"),
        ReadyStatus::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        ReadyStatus::DatabaseUnavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
        }
    };
    (code, Json(json!({ "status": status })))
}
