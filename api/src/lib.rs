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
//! - [`auth`]: bearer tokens with `enqueue` / `admin` scopes, as extractors.
//! - [`problem`]: [`problem::ApiError`], every error as `application/problem+json`.
//! - [`state`]: what handlers share, including readiness flags and metrics.
//! - [`batcher`]: concurrent enqueues coalesced into one INSERT and one commit.
//! - [`waiters`]: long-polls woken by one shared LISTEN on `sluice_done`.
//! - [`server`]: the accept loop: header-read timeout, and a drain that closes connections
//!   holding no request.

pub mod auth;
pub mod batcher;
pub mod config;
pub mod problem;
pub mod routes;
pub mod server;
pub mod state;
pub mod waiters;

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::IntoResponse,
    response::Response,
    Router,
};
use sluice_common::{db, shutdown::Signals, telemetry};
use tokio::net::TcpListener;
use tower_http::{
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

use crate::{
    config::{Config, Settings},
    state::{AppState, Readiness},
};

/// Every route with its layers.
pub fn router(state: AppState) -> Router {
    let settings = state.settings.clone();
    Router::new()
        .merge(routes::jobs::router())
        .merge(routes::kinds::router())
        .merge(routes::stats::router())
        .merge(routes::health::router())
        .merge(routes::openapi::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), track_in_flight))
        .layer(middleware::from_fn_with_state(state.clone(), detach))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            settings.request_timeout,
        ))
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
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = id);
            if let Some(tp) = req.headers().get("traceparent").and_then(|v| v.to_str().ok()) {
                if sluice_common::model::is_valid_traceparent(tp) {
                    telemetry::set_remote_parent(&span, tp);
                }
            }
            span
        }))
        .layer(SetRequestIdLayer::x_request_id(CounterId::default()))
        .with_state(state)
}

/// Request ids: process start time plus a counter, unique without a random source.
#[derive(Debug, Clone, Default)]
struct CounterId {
    /// Shared counter.
    next: std::sync::Arc<AtomicU64>,
}

impl MakeRequestId for CounterId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

async fn track_in_flight(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let _guard = state
        .in_flight
        .enter(req.method().to_string(), req.uri().path().to_string());
    // Decremented on drop too: a request whose client left must not stay counted.
    let _gauge = GaugeGuard::inc(&state.metrics.in_flight);
    next.run(req).await
}

/// Holds a gauge one higher until dropped.
struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    fn inc(gauge: &prometheus::IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs a request that may write (anything but GET/HEAD) in a task of its own, so a client
/// that goes away, or the timeout layer giving up on it, never drops its work halfway: a
/// dropped future can leave a pooled connection between `BEGIN` and `COMMIT` (or its
/// transaction depth out of step with the server's), and the next request to use that
/// connection would run in a transaction it did not open. The answer of a detached
/// request whose client left is discarded; its work completes or rolls back whole.
async fn detach(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        // Reads run single statements outside transactions, and a long-poll should end
        // with its client.
        return next.run(req).await;
    }
    match state.detached.spawn(next.run(req)).await {
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

async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.duration
        .with_label_values(&[&route, &method])
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[&route, &method, resp.status().as_str()])
        .inc();
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
        tracing::info!(api_addr = ?api_addr, metrics_addr = ?metrics_addr, "API listening");

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
                tracing::error!(budget = ?shutdown_timeout, "in-flight requests outlived the shutdown budget");
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
