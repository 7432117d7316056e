//! `/v1/kinds`: list, pause, resume.

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};
use sluice_common::model::Actor;

use crate::{
    auth::{Admin, Reader},
    problem::ApiError,
    routes::jobs::{action_reason, ActionQuery},
    state::AppState,
};

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/kinds", get(list))
        .route("/v1/kinds/{kind}/pause", post(pause))
        .route("/v1/kinds/{kind}/resume", post(resume))
}

async fn list(
    State(state): State<AppState>,
    Reader(_who): Reader,
) -> Result<Json<Value>, ApiError> {
    let kinds = state.client.kinds().await?;
    Ok(Json(json!({ "kinds": kinds })))
}

async fn pause(
    State(state): State<AppState>,
    Admin(who): Admin,
    Path(kind): Path<String>,
    query: Result<Query<ActionQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let reason = action_reason(query, &body)?;
    let actor = Actor {
        name: &who.name,
        reason: reason.as_deref(),
    };
    let jobs = state.client.pause_kind(&kind, &actor).await?;
    Ok(Json(json!({ "kind": kind, "paused": true, "jobs": jobs })))
}

async fn resume(
    State(state): State<AppState>,
    Admin(who): Admin,
    Path(kind): Path<String>,
    query: Result<Query<ActionQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let reason = action_reason(query, &body)?;
    let actor = Actor {
        name: &who.name,
        reason: reason.as_deref(),
    };
    let jobs = state.client.resume_kind(&kind, &actor).await?;
    Ok(Json(json!({ "kind": kind, "paused": false, "jobs": jobs })))
}
