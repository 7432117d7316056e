//! `GET /openapi.json`: the OpenAPI 3 document of the API, built here beside the routes
//! (and checked in as `docs/openapi.json`; a test keeps the two equal).

use axum::{routing::get, Json, Router};
use serde_json::{json, Value};

use crate::state::AppState;

/// Routes of this module (no authentication: the document is not a secret).
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(document()) }))
}

fn problem(desc: &str) -> Value {
    json!({ "description": desc, "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } })
}

fn ok(desc: &str, schema: Value) -> Value {
    json!({ "description": desc, "content": { "application/json": { "schema": schema } } })
}

fn errors(codes: &[&str]) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for c in codes {
        let desc = match *c {
            "400" => "Malformed input",
            "401" => "Missing or unknown bearer token",
            "403" => "Token lacks the admin scope",
            "404" => "Not found",
            "408" => "Not answered within SLUICE_API_REQUEST_TIMEOUT",
            "409" => "The job's state does not allow this",
            "413" => "Body over the size limit",
            "415" => "Body is not JSON",
            "422" => "Input breaks a rule",
            "503" => "Temporarily unavailable (database down, failing over or overloaded): retry after Retry-After seconds",
            _ => "Error",
        };
        let mut p = problem(desc);
        if *c == "503" {
            p["headers"] = json!({ "Retry-After": {
                "description": "Seconds to wait before retrying",
                "schema": { "type": "integer" } } });
        }
        m.insert(c.to_string(), p);
    }
    m
}

/// `codes` plus 408, which any route answers when it outlives the request timeout.
fn responses(success: &[(&str, Value)], codes: &[&str]) -> Value {
    let mut m = errors(codes);
    m.extend(errors(&["408"]));
    for (code, v) in success {
        m.insert(code.to_string(), v.clone());
    }
    Value::Object(m)
}

fn job_ref() -> Value {
    json!({ "$ref": "#/components/schemas/Job" })
}

fn id_param() -> Value {
    json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "integer", "format": "int64" } })
}

fn reason_param() -> Value {
    json!({ "name": "reason", "in": "query", "required": false, "schema": { "type": "string" } })
}

fn action_body() -> Value {
    json!({ "required": false, "content": { "application/json": { "schema": {
        "type": "object", "additionalProperties": false,
        "properties": { "reason": { "type": "string", "nullable": true } } } } } })
}

fn job_action(summary: &str) -> Value {
    json!({ "post": {
        "summary": summary, "security": [{ "bearer": [] }],
        "parameters": [id_param(), reason_param()],
        "requestBody": action_body(),
        "responses": responses(&[("200", ok("The job after the action", job_ref()))],
                               &["400", "401", "403", "404", "409", "413", "422", "503"]),
    } })
}

fn kind_action(summary: &str) -> Value {
    json!({ "post": {
        "summary": summary, "security": [{ "bearer": [] }],
        "parameters": [
            { "name": "kind", "in": "path", "required": true, "schema": { "type": "string" } },
            reason_param()],
        "requestBody": action_body(),
        "responses": responses(&[("200", ok("Done", json!({ "$ref": "#/components/schemas/KindAction" })))],
                               &["400", "401", "403", "404", "413", "422", "503"]),
    } })
}

/// One entry of `GET /v1/periodic` (`storage::PeriodicStatus`).
fn periodic_item() -> Value {
    let nts = json!({ "type": "string", "format": "date-time", "nullable": true });
    let ts = json!({ "type": "string", "format": "date-time" });
    let ns = json!({ "type": "string", "nullable": true });
    let nint = json!({ "type": "integer", "nullable": true });
    let string = json!({ "type": "string" });
    json!({ "type": "object",
        "required": ["name", "schedule", "timezone", "kind", "payload", "priority", "max_attempts",
                     "next_run_at", "last_tick_at", "last_enqueued_at", "updated_by",
                     "updated_at", "created_at", "overdue"],
        "properties": { "name": string, "schedule": string, "timezone": string, "kind": string,
            "payload": {}, "priority": nint, "max_attempts": nint,
            "next_run_at": nts, "last_tick_at": nts, "last_enqueued_at": nts,
            "updated_by": ns, "updated_at": ts, "created_at": ts,
            "overdue": { "type": "boolean" } } })
}

fn counts() -> Value {
    let props: serde_json::Map<String, Value> = sluice_common::JobState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), json!({ "type": "integer" })))
        .collect();
    let required: Vec<&str> = sluice_common::JobState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    json!({ "type": "object", "properties": props, "required": required })
}

/// The document.
pub fn document() -> Value {
    let ts = json!({ "type": "string", "format": "date-time" });
    let nts = json!({ "type": "string", "format": "date-time", "nullable": true });
    let ns = json!({ "type": "string", "nullable": true });
    let new_job = json!({
        "type": "object", "additionalProperties": false, "required": ["kind", "payload"],
        "properties": {
            "kind": { "type": "string", "minLength": 1, "maxLength": 200 },
            "payload": {},
            "priority": { "type": "integer", "minimum": -1000, "maximum": 1000, "nullable": true },
            "run_at": nts,
            "max_attempts": { "type": "integer", "minimum": 1, "maximum": 1000, "nullable": true },
            "idempotency_key": { "type": "string", "minLength": 1, "maxLength": 255, "nullable": true },
        }
    });
    let job = json!({
        "type": "object",
        "required": ["id", "kind", "payload", "state", "priority", "run_at", "attempts", "max_attempts",
                     "idempotency_key", "leased_by", "leased_at", "lease_expires_at", "last_error",
                     "created_at", "updated_at", "finished_at", "traceparent"],
        "properties": {
            "id": { "type": "integer", "format": "int64" },
            "kind": { "type": "string" },
            "payload": {},
            "state": { "type": "string", "enum": ["queued", "processing", "paused", "completed", "failed", "cancelled"] },
            "priority": { "type": "integer" },
            "run_at": ts, "attempts": { "type": "integer" }, "max_attempts": { "type": "integer" },
            "idempotency_key": ns, "leased_by": ns, "leased_at": nts, "lease_expires_at": nts,
            "last_error": ns, "created_at": ts, "updated_at": ts, "finished_at": nts, "traceparent": ns,
        }
    });
    let status = json!({ "type": "object", "required": ["status"], "properties": { "status": { "type": "string" } } });
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Sluice API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Jobs over HTTP. Errors are application/problem+json (RFC 9457)." },
        "paths": {
            "/v1/jobs": {
                "post": {
                    "summary": "Enqueue a job", "security": [{ "bearer": [] }],
                    "parameters": [{ "name": "traceparent", "in": "header", "required": false,
                        "description": "W3C trace context; stored on the job so the worker's span continues the trace",
                        "schema": { "type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$" } }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/NewJob" } } } },
                    "responses": responses(&[("201", ok("Created", job_ref())), ("200", ok("Existing job with this idempotency key", job_ref()))],
                                           &["400", "401", "403", "413", "415", "422", "503"]),
                },
                "get": {
                    "summary": "List jobs, newest first", "security": [{ "bearer": [] }],
                    "parameters": [
                        { "name": "state", "in": "query", "required": false, "schema": { "type": "string", "enum": ["queued", "processing", "paused", "completed", "failed", "cancelled"] } },
                        { "name": "kind", "in": "query", "required": false, "schema": { "type": "string" } },
                        { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } },
                        { "name": "cursor", "in": "query", "required": false, "schema": { "type": "string" } }],
                    "responses": responses(&[("200", ok("A page of jobs", json!({
                        "type": "object", "required": ["jobs", "next_cursor"],
                        "properties": { "jobs": { "type": "array", "items": job_ref() }, "next_cursor": ns } })))],
                        &["400", "401", "403", "503"]),
                }
            },
            "/v1/jobs/batch": { "post": {
                "summary": "Enqueue up to 1000 jobs, all or nothing", "security": [{ "bearer": [] }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "additionalProperties": false, "required": ["jobs"],
                    "properties": { "jobs": { "type": "array", "minItems": 1, "maxItems": 1000, "items": { "$ref": "#/components/schemas/NewJob" } } } } } } },
                "responses": responses(&[("201", ok("Created (or existing, per idempotency key)", json!({
                    "type": "object", "required": ["jobs"], "properties": { "jobs": { "type": "array", "items": job_ref() } } })))],
                    &["400", "401", "403", "413", "415", "422", "503"]),
            } },
            "/v1/jobs/{id}": { "get": {
                "summary": "One job; ?wait= long-polls for a terminal state", "security": [{ "bearer": [] }],
                "parameters": [id_param(),
                    { "name": "wait", "in": "query", "required": false, "schema": { "type": "string", "pattern": "^[0-9]+(ms|s|m)$" } }],
                "responses": responses(&[("200", ok("The job", job_ref()))], &["400", "401", "403", "404", "503"]),
            } },
            "/v1/jobs/{id}/cancel": job_action("Cancel a job that has not finished"),
            "/v1/jobs/{id}/retry": job_action("Run a failed or cancelled job again"),
            "/v1/jobs/{id}/release": job_action("Put a processing job back in the queue"),
            "/v1/stats": { "get": {
                "summary": "Counts by state and by kind", "security": [{ "bearer": [] }],
                "responses": responses(&[("200", ok("Counts", json!({
                    "type": "object", "required": ["by_state", "by_kind"],
                    "properties": { "by_state": counts(), "by_kind": { "type": "object", "additionalProperties": counts() } } })))],
                    &["401", "403", "503"]),
            } },
            "/v1/kinds": { "get": {
                "summary": "Known kinds", "security": [{ "bearer": [] }],
                "responses": responses(&[("200", ok("Kinds", json!({
                    "type": "object", "required": ["kinds"],
                    "properties": { "kinds": { "type": "array", "items": { "type": "object",
                        "required": ["kind", "paused", "paused_at", "paused_by", "reason"],
                        "properties": { "kind": { "type": "string" }, "paused": { "type": "boolean" },
                            "paused_at": nts, "paused_by": ns, "reason": ns } } } } })))],
                    &["401", "403", "503"]),
            } },
            "/v1/periodic": { "get": {
                "summary": "Periodic jobs the workers keep, with their next run", "security": [{ "bearer": [] }],
                "responses": responses(&[("200", ok("Periodic jobs", json!({
                    "type": "object", "required": ["periodic"],
                    "properties": { "periodic": { "type": "array", "items": periodic_item() } } })))],
                    &["401", "403", "503"]),
            } },
            "/v1/kinds/{kind}/pause": kind_action("Pause a kind"),
            "/v1/kinds/{kind}/resume": kind_action("Resume a kind"),
            "/health/live": { "get": { "summary": "Liveness", "responses": { "200": ok("Alive", status.clone()) } } },
            "/health/ready": { "get": { "summary": "Readiness (503 from the moment SIGTERM arrives)",
                "responses": { "200": ok("Ready", status.clone()), "503": ok("Draining or database unavailable", status) } } },
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Job": job,
                "NewJob": new_job,
                "KindAction": { "type": "object", "required": ["kind", "paused", "jobs"],
                    "properties": { "kind": { "type": "string" }, "paused": { "type": "boolean" }, "jobs": { "type": "integer" } } },
                "Problem": { "type": "object", "required": ["type", "title", "status", "detail"],
                    "properties": { "type": { "type": "string" }, "title": { "type": "string" },
                        "status": { "type": "integer" }, "detail": { "type": "string" } } },
            }
        }
    })
}
