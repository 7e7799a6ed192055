//! The HTTP service (axum): the only module that knows HTTP. Endpoints,
//! cookies, CSRF, login throttling, the admin API, health, metrics and the
//! demo page; `serve` wires configuration, keyring, store, verifier and
//! users together and runs until SIGTERM.

mod admin;
mod auth;
pub(crate) mod client_addr;
mod code;
pub mod cookies;
mod dbsc;
mod error;
mod guard;
pub mod listener;
mod login;
pub mod metrics;
mod ops;
mod throttle;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};

pub use client_addr::{ClientAddr, Proxies};
pub use error::{ApiError, ErrorCode};
pub use guard::{CurrentUser, Guard, guard};
pub use throttle::{Account, REASON_LABELS, Throttle};

use crate::config::Config;
use crate::store::Store;
use crate::time::Clock;
use crate::users::UserDb;
use crate::verify::Verifier;

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// Largest total size of request headers accepted.
pub const MAX_HEADERS: usize = 16 * 1024;

/// Everything a handler needs, shared as `Arc<AppState>`.
pub struct AppState {
    /// The verifier (and through it the store and keys).
    pub verifier: Arc<Verifier<Store>>,
    /// Who may log in.
    pub users: Arc<UserDb>,
    /// The configuration.
    pub config: Arc<Config>,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// Failed-login throttle.
    pub throttle: Throttle,
    /// One-time-code login, when enabled.
    pub codes: Option<crate::codes::CodeLogin>,
    /// Trusted reverse proxies: who the client is.
    pub proxies: client_addr::Proxies,
    /// Origins allowed to send cookie-borne state changes (CSRF).
    pub origins: cookies::Origins,
    /// The events webhook's queue, when `[events] webhook_url` is set.
    pub events: Option<Arc<crate::audit::EventSink>>,
    /// Requests per route and status, logins per method and outcome.
    pub http_metrics: Arc<metrics::HttpMetrics>,
}

/// The router with every endpoint of the HTTP contract.
pub fn router(state: Arc<AppState>) -> Router {
    let mut r = Router::new();
    if state.codes.is_some() {
        r = r
            .route("/v1/login/code/send", post(code::send))
            .route("/v1/login/code", post(code::login));
    }
    // With a separate metrics listener (`server.metrics_listen`), the
    // public one does not answer these (404): [`ops_router`] does.
    if state.config.server.metrics_listen.is_none() {
        r = r
            .route("/metrics", get(ops::metrics))
            .route("/openapi.json", get(ops::openapi));
    }
    r.route("/", get(ops::demo_page))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/v1/login", post(auth::login))
        .route("/v1/verify", any(auth::verify))
        .route("/v1/reauth", post(auth::reauth))
        .route("/v1/dbsc/start", post(dbsc::start))
        .route("/v1/dbsc/refresh", post(dbsc::refresh))
        .route("/v1/logout", post(auth::logout))
        .route("/v1/logout-all", post(auth::logout_all))
        .route("/v1/sessions", get(auth::list_sessions))
        .route("/v1/sessions/{sid}", delete(auth::delete_session))
        .route("/v1/admin/sessions", post(admin::issue))
        .route("/v1/admin/stats", get(admin::stats))
        .route(
            "/v1/admin/users/{uid}/sessions",
            get(admin::list).delete(admin::kick_user),
        )
        .route("/v1/admin/users/{uid}/sessions/{sid}", delete(admin::kick_session))
        .route("/v1/admin/users/{uid}", get(admin::user))
        .route("/v1/admin/users/{uid}/ban", post(admin::ban).delete(admin::unban))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("this endpoint does not answer {method} (see the Allow header)"),
            )
        })
        // One composed layer, not three `.layer`/`route_layer` calls: axum
        // boxes each call's layer around every route again, and each box
        // costs a service clone, an allocation and a moved future per
        // request (docs/benchmarks.md, "Verify at the framework's limit").
        // Outermost first: the header limit answers before anything else;
        // requests the router does not route are measured as route `other`.
        .layer(
            tower::ServiceBuilder::new()
                .layer(HeaderLimitLayer)
                .layer(DefaultBodyLimit::max(MAX_BODY))
                .layer(metrics::MeasureLayer(state.http_metrics.clone())),
        )
        .with_state(state)
}

/// The router of the operators' listener (`server.metrics_listen`):
/// `/metrics` and `/openapi.json` only, for a scraper on an internal
/// address; the public listener then answers both with 404.
pub fn ops_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(|| async { ApiError::not_found("this listener serves only /metrics and /openapi.json") })
        .layer(HeaderLimitLayer)
        .with_state(state)
}

/// Refuses requests whose headers total more than [`MAX_HEADERS`] bytes
/// with the project's JSON error (431), and marks every answer
/// `X-Content-Type-Options: nosniff` (a browser never guesses a type other
/// than the one we declare). A plain tower layer with a named future rather
/// than `middleware::from_fn`: it runs on every request, and `from_fn`
/// boxes a future per request (measured ~8 % of `/v1/verify` throughput).
#[derive(Clone, Copy)]
struct HeaderLimitLayer;

impl<S> tower::Layer<S> for HeaderLimitLayer {
    type Service = HeaderLimit<S>;
    fn layer(&self, inner: S) -> HeaderLimit<S> {
        HeaderLimit(inner)
    }
}

#[derive(Clone)]
struct HeaderLimit<S>(S);

impl<S> tower::Service<Request> for HeaderLimit<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Nosniff<futures_util::future::Either<std::future::Ready<Result<Response, S::Error>>, S::Future>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let size: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        if size > MAX_HEADERS {
            let resp = ApiError::new(
                ErrorCode::HeadersTooLarge,
                format!("request headers total {size} bytes, more than the {MAX_HEADERS} allowed"),
            )
            .into_response();
            return Nosniff {
                inner: futures_util::future::Either::Left(std::future::ready(Ok(resp))),
            };
        }
        Nosniff {
            inner: futures_util::future::Either::Right(self.0.call(req)),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's future that adds `X-Content-Type-Options: nosniff` to
    /// the answer.
    struct Nosniff<F> {
        #[pin]
        inner: F,
    }
}

impl<F, E> std::future::Future for Nosniff<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let mut out = std::task::ready!(self.project().inner.poll(cx));
        if let Ok(resp) = &mut out {
            resp.headers_mut().insert(
                axum::http::header::X_CONTENT_TYPE_OPTIONS,
                axum::http::HeaderValue::from_static("nosniff"),
            );
        }
        std::task::Poll::Ready(out)
    }
}
