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

/// 200 `{"status":"ready"}`; 503 `draining`, or 503 `database_unavailable` /
/// `schema_missing` / `schema_outdated` with a `reason` (e.g. `tls: …`) from the latest
/// background check.
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let status = state.readiness.status();
    let code = if status == ReadyStatus::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = match status.reason() {
        Some(reason) => json!({ "status": status.word(), "reason": reason }),
        None => json!({ "status": status.word() }),
    };
    (code, Json(body))
}
