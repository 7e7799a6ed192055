//! HTTP metrics: requests per route and status, latency per route, logins
//! per method and outcome. Plain atomics indexed by enums' positions in
//! fixed label lists (no locks, no allocation per request); `ops::metrics`
//! renders them. The request layer ([`MeasureLayer`]) is a plain tower
//! layer with a named future: no box per request on the hot path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;

use crate::metrics::{Histogram, Striped};

/// Route templates as the router names them; anything else is `other`.
pub const ROUTES: [&str; 23] = [
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/v1/login",
    "/v1/login/code/send",
    "/v1/login/code",
    "/v1/verify",
    "/v1/reauth",
    "/v1/dbsc/start",
    "/v1/dbsc/refresh",
    "/v1/logout",
    "/v1/logout-all",
    "/v1/sessions",
    "/v1/sessions/{sid}",
    "/v1/admin/sessions",
    "/v1/admin/stats",
    "/v1/admin/users/{uid}/sessions",
    "/v1/admin/users/{uid}/sessions/{sid}",
    "/v1/admin/users/{uid}",
    "/v1/admin/users/{uid}/ban",
    "other",
];

/// Status codes the service answers with; anything else is `other`.
pub const STATUSES: [u16; 19] = [
    200, 201, 202, 204, 400, 401, 403, 404, 405, 408, 409, 413, 415, 429, 431, 500, 502, 503, 504,
];

/// Login methods (`logins_total{method}`).
pub const METHODS: [&str; 4] = ["password", "code", "admin", "reauth"];

/// Login outcomes (`logins_total{outcome}`).
pub const OUTCOMES: [&str; 7] = ["ok", "failed", "throttled", "banned", "limit", "unavailable", "error"];

/// Device-bound-session events (`dbsc_total{event}`): registrations
/// offered, registered or refused; refresh challenges, refreshes by the
/// store or on the fallback, ended sessions, proofs by another key, other
/// refused or failed refreshes.
pub const DBSC_EVENTS: [&str; 10] = [
    "offered",
    "registered",
    "registration_refused",
    "challenged",
    "refreshed",
    "refreshed_fallback",
    "ended",
    "proof_failed",
    "refused",
    "failed",
];

/// Requests per route, per status (the last column is `other`).
type Requests = [[AtomicU64; STATUSES.len() + 1]; ROUTES.len()];

/// Every HTTP counter.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// Per route, per status (striped: counted on every request).
    requests: Striped<Requests>,
    /// Latency per route, until the response head is ready.
    pub latency: [Histogram; ROUTES.len()],
    /// Per method, per outcome.
    pub logins: [[AtomicU64; OUTCOMES.len()]; METHODS.len()],
    /// Per [`DBSC_EVENTS`].
    pub dbsc: [AtomicU64; DBSC_EVENTS.len()],
}

fn route_index(path: Option<&str>) -> usize {
    path.and_then(|p| ROUTES.iter().position(|r| *r == p))
        .unwrap_or(ROUTES.len() - 1)
}

fn status_index(code: u16) -> usize {
    STATUSES.iter().position(|s| *s == code).unwrap_or(STATUSES.len())
}

impl HttpMetrics {
    /// Requests of route `route` answered with status index `status`
    /// (positions in [`ROUTES`] and [`STATUSES`]; `STATUSES.len()` is
    /// `other`).
    pub fn requests(&self, route: usize, status: usize) -> u64 {
        self.requests
            .each()
            .map(|t| t[route][status].load(Ordering::Relaxed))
            .sum()
    }

    /// Counts a login attempt of `method` (one of [`METHODS`]) with
    /// `outcome` (one of [`OUTCOMES`]).
    pub fn login(&self, method: &str, outcome: &str) {
        let (Some(m), Some(o)) = (
            METHODS.iter().position(|x| *x == method),
            OUTCOMES.iter().position(|x| *x == outcome),
        ) else {
            return;
        };
        self.logins[m][o].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a device-bound-session `event` (one of [`DBSC_EVENTS`]).
    pub fn dbsc(&self, event: &str) {
        if let Some(i) = DBSC_EVENTS.iter().position(|x| *x == event) {
            self.dbsc[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counts and times every request that reaches the router; the matched
/// route comes from axum's `MatchedPath` (absent for unknown paths, which
/// count as `other`).
#[derive(Clone)]
pub struct MeasureLayer(pub Arc<HttpMetrics>);

impl<S> tower::Layer<S> for MeasureLayer {
    type Service = Measure<S>;
    fn layer(&self, inner: S) -> Measure<S> {
        Measure(inner, self.0.clone())
    }
}

/// The service [`MeasureLayer`] makes.
#[derive(Clone)]
pub struct Measure<S>(S, Arc<HttpMetrics>);

impl<S> tower::Service<Request> for Measure<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Measured<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = route_index(req.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
        Measured {
            inner: self.0.call(req),
            metrics: self.1.clone(),
            route,
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's future, recording its route, status and latency when
    /// the response is ready.
    pub struct Measured<F> {
        #[pin]
        inner: F,
        metrics: Arc<HttpMetrics>,
        route: usize,
        start: Instant,
    }
}

impl<F, E> std::future::Future for Measured<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Ok(resp) = &out {
            let m = &this.metrics;
            m.requests.local()[*this.route][status_index(resp.status().as_u16())].fetch_add(1, Ordering::Relaxed);
            m.latency[*this.route].observe(this.start.elapsed());
        }
        Poll::Ready(out)
    }
}
