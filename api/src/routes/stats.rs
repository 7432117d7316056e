//! `/v1/stats`: counts by state and by kind.

use std::collections::BTreeMap;

use axum::{extract::State, routing::get, Json, Router};
use serde_json::{json, Value};
use sluice_common::JobState;

use crate::{auth::Reader, problem::ApiError, state::AppState};

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/stats", get(stats))
}

async fn stats(
    State(state): State<AppState>,
    Reader(_who): Reader,
) -> Result<Json<Value>, ApiError> {
    let counts = state.client.stats().await?;
    // Every state is present, zero included: "drained" is read from `processing == 0`.
    let zero = || {
        JobState::ALL
            .iter()
            .map(|s| (s.as_str(), 0i64))
            .collect::<BTreeMap<_, _>>()
    };
    let mut by_state = zero();
    let mut by_kind: BTreeMap<String, BTreeMap<&str, i64>> = BTreeMap::new();
    for c in &counts {
        *by_state.entry(c.state.as_str()).or_default() += c.count;
        *by_kind
            .entry(c.kind.clone())
            .or_insert_with(zero)
            .entry(c.state.as_str())
            .or_default() += c.count;
    }
    Ok(Json(json!({ "by_state": by_state, "by_kind": by_kind })))
}
