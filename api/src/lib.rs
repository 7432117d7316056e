//! `sluice-api`: jobs over HTTP, readiness that flips on SIGTERM, a drain that drops nothing.
//!
//! # Layout
//!
//! - [`config`]: the command line / environment ([`config::Config`]) and the part the
//!   router needs ([`config::Settings`]).
//! - [`Application`]: binds the listeners, then [`Application::run_until_stopped`] serves
//!   until a signal and drains in the order SPEC.md §4 gives.
//! - [`router`]: every route, merged from one module per resource in [`routes`], wrapped in
//!   the request id, tracing, timeout, body limit and metrics layers.
//! - [`auth`]: bearer tokens with `read` / `enqueue` / `admin` scopes, as extractors.
//! - [`ui`]: the operator web UI under `/ui` (server-rendered, sessions, CSRF, actions).
//! - [`problem`]: [`problem::ApiError`], every error as `application/problem+json`.
//! - [`state`]: what handlers share, including readiness flags and metrics.
//! - [`batcher`]: concurrent enqueues coalesced into one INSERT and one commit.
//! - [`waiters`]: long-polls woken by one shared LISTEN on `sluice_done`.

pub mod auth;
pub mod batcher;
pub mod config;
pub mod problem;
pub mod routes;
pub mod server;
pub mod state;
pub mod ui;
pub mod waiters;

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{header, HeaderValue, Method},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
use prometheus::IntGauge;
use sluice_common::{db, shutdown::Signals, telemetry};
use tokio::net::TcpListener;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};
use tracing::{field::Empty, Span};

use crate::{
    config::{Config, Settings},
    problem::ApiError,
    state::{AppState, Readiness},
};

/// Every route with its layers, outermost first: a request id (a UUID unless the caller
/// sent one), the server span, the id echoed on the response, `Connection: close` while
/// draining, readiness told of lost database connections, every error as problem+json,
/// then [`observe`] (in-flight register, request timeout, metrics and the status on the
/// span and in the log), [`detach`] (writes run to the end whatever the client does),
/// the body limit and the routes.
pub fn router(state: AppState) -> Router {
    let settings = state.settings.clone();
    Router::new()
        .merge(routes::jobs::router())
        .merge(routes::kinds::router())
        .merge(routes::periodic::router())
        .merge(routes::stats::router())
        .merge(routes::health::router())
        .merge(routes::openapi::router())
        .merge(ui::router())
        .route_layer(middleware::from_fn(note_route))
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), detach))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn(problem::problem_documents))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            report_database_trouble,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            close_connections_while_draining,
        ))
        .layer(PropagateRequestIdLayer::x_request_id())
        // TraceLayer's own failure log is off: it would log every 5xx at ERROR, the
        // readiness probe's 503 during a drain included. `observe` classifies instead.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(server_span)
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// The server span of one request (OpenTelemetry HTTP server conventions). The route is
/// not known yet (routing happens inside): [`note_route`] fills in `http.route` and the
/// `METHOD /route` name, [`observe`] the status.
fn server_span(req: &Request) -> Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!(
        "request",
        otel.name = %req.method(),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %req.method(),
        http.route = Empty,
        http.response.status_code = Empty,
        url.path = %req.uri().path(),
        request_id = id,
    );
    if let Some(tp) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        if sluice_common::model::is_valid_traceparent(tp) {
            telemetry::set_remote_parent(&span, tp);
        }
    }
    span
}

/// The matched route, handed from inside the router (where axum knows it) out to
/// [`observe`] (which also sees the 404s, 405s and 408s the router never answers).
#[derive(Debug, Clone, Default)]
struct RouteSlot(Arc<OnceLock<String>>);

/// Route label of requests no route matched, so a scan of random paths adds one series.
const UNMATCHED: &str = "unmatched";

/// Runs for matched routes only: names the server span after the route and tells
/// [`observe`] which route it was.
async fn note_route(req: Request, next: Next) -> Response {
    note_matched_route(&req);
    next.run(req).await
}

/// Records the route axum matched for `req` (if any) on the server span and for
/// [`observe`]. Also called by the 405 fallback, which `route_layer` does not wrap.
pub(crate) fn note_matched_route(req: &Request) {
    if let Some(path) = req.extensions().get::<MatchedPath>() {
        let route = path.as_str();
        let span = Span::current();
        span.record("http.route", route);
        telemetry::set_span_name(&span, format!("{} {route}", req.method()));
        if let Some(slot) = req.extensions().get::<RouteSlot>() {
            let _ = slot.0.set(route.to_string());
        }
    }
}

/// `sluice_http_requests_in_flight` held up for as long as the request's future lives:
/// a request the client abandons is dropped mid-await, and only a drop guard sees that.
#[derive(Debug)]
struct InFlightGauge(IntGauge);

impl InFlightGauge {
    fn enter(gauge: &IntGauge) -> Self {
        gauge.inc();
        InFlightGauge(gauge.clone())
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Around every request, matched or not: the in-flight register and gauge (both drop
/// guards), the request timeout (408 as a problem document), then one count and latency
/// observation per response, the status on the server span, and a log line for 5xx.
async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let _register = state
        .in_flight
        .enter(method.to_string(), req.uri().path().to_string());
    let _gauge = InFlightGauge::enter(&state.metrics.in_flight);
    let slot = RouteSlot::default();
    req.extensions_mut().insert(slot.clone());
    let start = Instant::now();
    let resp = match tokio::time::timeout(state.settings.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::RequestTimeout.into_response(),
    };
    let elapsed = start.elapsed();
    let route = slot.0.get().map(String::as_str).unwrap_or(UNMATCHED);
    let status = resp.status();
    let m = &state.metrics;
    m.duration
        .with_label_values(&[route, method.as_str()])
        .observe(elapsed.as_secs_f64());
    m.requests
        .with_label_values(&[route, method.as_str(), status.as_str()])
        .inc();

    let span = Span::current();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    // A probe's 503 is an answer ("draining", "database down"), not a failed request; the
    // state change behind it is logged once where it happens.
    let probe = route.starts_with("/health/");
    if status.is_server_error() && !probe {
        span.record("otel.status_code", "error");
        let latency_ms = elapsed.as_millis() as u64;
        if status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(
                status = status.as_u16(),
                route,
                latency_ms,
                "request answered unavailable"
            );
        } else {
            tracing::error!(
                status = status.as_u16(),
                route,
                latency_ms,
                "request failed"
            );
        }
    }
    resp
}

/// Runs a request that may write (anything but GET/HEAD) in a task of its own, so a client
/// that goes away, or the timeout giving up on it, never drops its work halfway: a dropped
/// future can leave a pooled connection between `BEGIN` and `COMMIT` (or its transaction
/// depth out of step with the server's), and the next request to use that connection would
/// run in a transaction it did not open. The answer of a detached request whose client left
/// is discarded; its work completes or rolls back whole. The task keeps the server span, so
/// the route, the status and the traceparent stored with an enqueued job stay this
/// request's.
async fn detach(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        // Reads run single statements outside transactions, and a long-poll should end
        // with its client.
        return next.run(req).await;
    }
    let work = tracing::Instrument::instrument(next.run(req), Span::current());
    match state.detached.spawn(work).await {
        Ok(resp) => resp,
        Err(err) => {
            tracing::error!(error = %err, "request task failed");
            problem::ApiError::Internal.into_response()
        }
    }
}

/// Tells readiness when a request met a lost database connection, so `/health/ready`
/// turns 503 at once instead of at the next periodic check.
async fn report_database_trouble(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let resp = next.run(req).await;
    if let Some(problem::DatabaseTrouble(failure)) = resp.extensions().get() {
        state.readiness.report(*failure);
    }
    resp
}

/// During the drain every response carries `Connection: close`: a keep-alive client
/// reconnects (to another replica, readiness being 503) after its answer, instead of
/// finding its connection closed under its next request.
async fn close_connections_while_draining(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    if state.readiness.is_draining() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The bound listeners and state, ready to serve.
#[derive(Debug)]
pub struct Application {
    /// Public listener.
    listener: TcpListener,
    /// `/metrics` listener.
    metrics_listener: TcpListener,
    /// Shared state.
    state: AppState,
    /// Serving time after readiness flips.
    drain_delay: Duration,
    /// In-flight budget once we stop accepting.
    shutdown_timeout: Duration,
}

impl Application {
    /// Binds both listeners and builds the state (the pool connects lazily).
    pub async fn build(config: Config, settings: Settings) -> anyhow::Result<Application> {
        let pool = db::connect_lazy(&config.db, "sluice-api", 32)?;
        let listener = TcpListener::bind(config.api_addr).await?;
        let metrics_listener = TcpListener::bind(config.metrics_addr).await?;
        let state = AppState::new(pool, settings);
        Ok(Application {
            listener,
            metrics_listener,
            state,
            drain_delay: config.drain_delay,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The readiness flags, for the signal handler.
    pub fn readiness(&self) -> Readiness {
        self.state.readiness.clone()
    }

    /// The bound API address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `signals.soft`, drains, and says how it ended: 0 clean, 1 when the
    /// budget cut requests off, 130 on a second signal.
    pub async fn run_until_stopped(self, signals: Signals) -> ExitCode {
        let Application {
            listener,
            metrics_listener,
            state,
            drain_delay,
            shutdown_timeout,
        } = self;
        let api_addr = listener.local_addr().ok();
        let metrics_addr = metrics_listener.local_addr().ok();
        tracing::info!(
            api_addr = %display_addr(api_addr),
            metrics_addr = %display_addr(metrics_addr),
            "API listening"
        );

        let metrics_stop = tokio_util::sync::CancellationToken::new();
        let metrics_app = sluice_common::metrics::router(state.metrics.registry.clone());
        let ms = metrics_stop.clone();
        let metrics_task = tokio::spawn(async move {
            let _ = axum::serve(metrics_listener, metrics_app)
                .with_graceful_shutdown(async move { ms.cancelled().await })
                .await;
        });

        let soft = signals.soft.clone();
        let stop_accepting = async move {
            soft.cancelled().await;
            tracing::info!("Shutting down API...");
            tokio::time::sleep(drain_delay).await;
            tracing::info!("drain delay over; no longer accepting connections");
        };
        let in_flight = state.in_flight.clone();
        let pool = state.client.pool().clone();
        let background = state.background.clone();
        let detached = state.detached.clone();
        let app = router(state);
        let server = async move {
            server::serve(listener, app, stop_accepting).await;
            // Requests whose clients left still finish before the pool closes.
            detached.close();
            detached.wait().await;
            Ok::<(), std::io::Error>(())
        };
        tokio::pin!(server);

        let soft = signals.soft.clone();
        let budget = async move {
            soft.cancelled().await;
            tokio::time::sleep(drain_delay + shutdown_timeout).await;
        };
        let code = tokio::select! {
            res = &mut server => match res {
                Ok(()) => 0,
                Err(err) => {
                    tracing::error!(error = %err, "server failed");
                    1
                }
            },
            _ = budget => {
                for r in in_flight.snapshot() {
                    tracing::error!(method = %r.method, path = %r.path, age_ms = r.started.elapsed().as_millis() as u64,
                        "request cut off by the shutdown budget");
                }
                tracing::error!(budget_ms = shutdown_timeout.as_millis() as u64, "in-flight requests outlived the shutdown budget");
                1
            }
            _ = signals.hard.cancelled() => {
                tracing::warn!("second signal; exiting now");
                return ExitCode::from(130);
            }
        };
        background.cancel();
        metrics_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), metrics_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), pool.close()).await;
        if code == 0 {
            tracing::info!("API stopped cleanly");
        }
        ExitCode::from(code)
    }
}

/// A bound address for the log: `127.0.0.1:8080`, not `Some(127.0.0.1:8080)`.
fn display_addr(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "unknown".to_string(), |a| a.to_string())
}
