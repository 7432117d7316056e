//! `/v1/periodic`: the periodic jobs the workers keep, with their next run.
//!
//! The definitions live in the workers' handlers files; each worker records its tables
//! in `periodic_jobs` at start and after every tick, which is what this lists.

use axum::{extract::State, routing::get, Json, Router};
use serde_json::{json, Value};
use sluice_common::storage;

use crate::{auth::Reader, problem::ApiError, state::AppState};

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/periodic", get(list))
}

async fn list(
    State(state): State<AppState>,
    Reader(_who): Reader,
) -> Result<Json<Value>, ApiError> {
    let periodic = storage::list_periodic_status(state.client.pool()).await?;
    Ok(Json(json!({ "periodic": periodic })))
}
