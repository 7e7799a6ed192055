//! The accept loop (instead of `axum::serve`, which sets no header-read
//! timeout and no connection limit): HTTP/1.1 and HTTP/2 through hyper-util,
//! with
//! - a header-read timeout: a client that does not finish a request's
//!   headers in `server.header_read_timeout` is disconnected (slow loris);
//! - a connection limit: at `server.max_connections` open connections the
//!   loop stops accepting until one closes (the kernel backlog holds the
//!   rest), so file descriptors and memory stay bounded;
//! - graceful shutdown: on the signal, stop accepting, let requests in
//!   flight finish (at most `DRAIN`), then return.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// Longest wait for requests in flight at shutdown.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Per-connection limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time allowed to send a request's headers.
    pub header_read_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
}

impl Limits {
    /// From `[server]`.
    pub fn from_config(c: &crate::config::ServerConfig) -> Limits {
        Limits {
            header_read_timeout: c.header_read_timeout,
            max_connections: usize::try_from(c.max_connections).unwrap_or(usize::MAX),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains.
/// Handlers see the peer address as `ConnectInfo<SocketAddr>`.
pub async fn run(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors or a connection reset while
                    // queued: keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = app
            .clone()
            .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req.map(axum::body::Body::new)
            });
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // hyper's header timer starts with a request's first byte: a
            // connection that never sends one would hold its slot forever.
            let mut b = [0u8; 1];
            match tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut b)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => {
                    drop(permit);
                    return;
                }
            }
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            builder.http2().timer(TokioTimer::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN:?}; closing them");
    }
}
