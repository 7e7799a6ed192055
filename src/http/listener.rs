//! The accept loop (instead of `axum::serve`, which sets no header-read
//! timeout and no connection limit): HTTP/1.1 and HTTP/2 through hyper-util,
//! with
//! - a header-read timeout: a client that does not finish a request's
//!   headers within `server.header_read_timeout` is disconnected (slow
//!   loris; at the latest one more timeout later if it ignores the close);
//! - a connection limit: at `server.max_connections` open connections the
//!   loop stops accepting until one closes (the kernel backlog holds the
//!   rest), so file descriptors and memory stay bounded;
//! - an idle timeout for both protocols: a connection with no request in
//!   flight for `server.header_read_timeout` is closed (HTTP/2 included);
//! - graceful shutdown: on the signal, stop accepting, let requests in
//!   flight finish (at most `DRAIN`), then return.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
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

/// What a connection is doing, for the idle check: requests in flight and
/// requests finished. The connection's own task notes when `finished` last
/// moved, so a request costs two atomic increments and one decrement, no
/// clock read.
#[derive(Default)]
struct Activity {
    inflight: AtomicUsize,
    finished: AtomicU64,
}

/// The idle check's memory, kept by the connection task.
struct IdleWatch {
    seen: u64,
    since: Instant,
}

impl IdleWatch {
    /// Idle for at least `limit`: nothing in flight, nothing finished since.
    fn idle_for(&mut self, a: &Activity, limit: Duration) -> bool {
        let finished = a.finished.load(Ordering::Relaxed);
        if finished != self.seen || a.inflight.load(Ordering::Relaxed) > 0 {
            self.seen = finished;
            self.since = Instant::now();
            return false;
        }
        self.since.elapsed() >= limit
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains.
/// Handlers see the peer address as `ConnectInfo<SocketAddr>`.
///
/// Every connection, HTTP/1.1 or HTTP/2, is closed (gracefully: in-flight
/// requests finish) once it has had no request in flight for
/// `header_read_timeout`, and dropped one timeout later if it does not close
/// (an HTTP/2 peer that ignores the GOAWAY, a slow-loris client in the middle
/// of its headers). This one watch is the header-read timeout, the
/// first-byte timeout and the keep-alive timeout, for HTTP/1.1 and HTTP/2.
pub async fn run(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
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
        let activity = Arc::new(Activity::default());
        let (on_start, on_end) = (activity.clone(), activity.clone());
        let service = app
            .clone()
            .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                on_start.inflight.fetch_add(1, Ordering::Relaxed);
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req.map(axum::body::Body::new)
            })
            .map_response(move |resp| {
                on_end.inflight.fetch_sub(1, Ordering::Relaxed);
                on_end.finished.fetch_add(1, Ordering::Relaxed);
                resp
            });
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // No hyper timers: a per-request header timer cost ~14 % of
            // /v1/verify throughput (measured against plain axum::serve).
            // The idle watch below covers what it did and more: a connection
            // that sends nothing, trickles a request's headers, or keeps
            // quiet between requests has no request in flight and none
            // finished, so it is closed after the timeout.
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
            let mut conn = std::pin::pin!(conn);
            let idle = limits.header_read_timeout;
            let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(25)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Set once graceful shutdown began: the deadline after which the
            // connection is dropped even if the peer never acknowledges
            // (an HTTP/2 GOAWAY waits for a PING answer a silent peer never
            // sends).
            let mut closing: Option<Instant> = None;
            let mut watch = IdleWatch {
                seen: 0,
                since: Instant::now(),
            };
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                        return;
                    }
                    _ = tick.tick() => match closing {
                        Some(deadline) if Instant::now() >= deadline => return,
                        Some(_) => {}
                        None if watch.idle_for(&activity, idle) => {
                            conn.as_mut().graceful_shutdown();
                            closing = Some(Instant::now() + idle);
                        }
                        None => {}
                    },
                    r = stop.changed(), if closing.is_none() => {
                        let _ = r;
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + DRAIN);
                    }
                }
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining connections");
    let _ = stop_tx.send(true);
    // Every open connection holds a slot: draining is getting them all back.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN, slots.acquire_many(all)).await.is_err() {
        tracing::warn!("connections still open after {DRAIN:?}; closing them");
    }
}
