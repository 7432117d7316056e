//! The HTTP/1.1 accept loop, with the connection handling a drain needs.
//!
//! `axum::serve` neither bounds how long a client may take to send its request head nor
//! closes, at shutdown, a connection that has sent half of one: hyper's graceful shutdown
//! closes only connections idle between requests, and a connection that never completed a
//! head counts as busy. One such client then holds the drain until the budget cuts it off.
//! This loop serves each connection with hyper directly:
//! - a request head must arrive within [`HEADER_READ_TIMEOUT`] (slowloris);
//! - at shutdown every connection is told to close after its current response, and one
//!   that holds no request being served (a half-sent head, a client that went quiet) is
//!   closed within [`QUIET_CLOSE`];
//! - requests in progress run to completion.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{body::Body, extract::Request, Router};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

/// Longest a client may take to send a whole request head (also how long a keep-alive
/// connection may sit idle before its next request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// At shutdown, how long a connection may hold no request being served before it is
/// closed. Long enough for a finished response's last bytes to be flushed.
pub const QUIET_CLOSE: Duration = Duration::from_millis(300);

/// Serves `app` on `listener` until `stop` resolves; then stops accepting, drains the
/// open connections as the module says, and returns once all of them are closed.
pub async fn serve(listener: TcpListener, app: Router, stop: impl Future<Output = ()>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((io, peer)) => {
                let _ = io.set_nodelay(true);
                connections.spawn(serve_connection(
                    builder.clone(),
                    io,
                    PeerAddr(peer.ip()),
                    app.clone(),
                    closing.clone(),
                ));
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
}

/// Counts one request being served on a connection, from the service call until its
/// response body is done (or dropped).
struct Serving(Arc<AtomicUsize>);

impl Serving {
    fn start(count: &Arc<AtomicUsize>) -> Serving {
        count.fetch_add(1, Ordering::SeqCst);
        Serving(count.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The TCP peer of the connection a request came on, as a request extension (what the UI's
/// sign-in throttle keys on). Absent for requests that did not come through [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::IpAddr);

async fn serve_connection(
    builder: hyper::server::conn::http1::Builder,
    io: TcpStream,
    peer: PeerAddr,
    app: Router,
    closing: CancellationToken,
) {
    let serving = Arc::new(AtomicUsize::new(0));
    let count = serving.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let guard = Serving::start(&count);
        let app = app.clone();
        req.extensions_mut().insert(peer);
        async move {
            let resp = app.oneshot(req.map(Body::new)).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _serving = &guard;
                    frame
                }))
            }))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            return;
        }
        _ = closing.cancelled() => {}
    }
    // No more requests on this connection: an idle one closes now, a busy one after its
    // response (hyper adds `Connection: close`).
    conn.as_mut().graceful_shutdown();
    let mut quiet_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep(QUIET_CLOSE / 3) => {}
        }
        if serving.load(Ordering::SeqCst) > 0 {
            quiet_since = None;
            continue;
        }
        let since = *quiet_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= QUIET_CLOSE {
            // A half-sent head or a silent client: nothing of ours is lost by closing.
            return;
        }
    }
}
