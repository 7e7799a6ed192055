//! Protecting an application's own routes in-process: [`guard`] is an axum
//! middleware that verifies every request (except allow-listed public
//! paths) with the library's [`Verifier`], refreshes cookies, and hands the
//! answer to handlers through the [`CurrentUser`] extractor.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{Router, routing::get, middleware::from_fn_with_state};
//! use twintoken::http::{CurrentUser, Guard, guard};
//!
//! async fn me(CurrentUser(who): CurrentUser) -> String {
//!     format!("hello {} (answered by the {} path)", who.uid, who.path.as_str())
//! }
//!
//! fn app(g: Guard) -> Router {
//!     Router::new()
//!         .route("/me", get(me))
//!         .route("/login", get(|| async { "public" }))
//!         .layer(from_fn_with_state(g.public("/login"), guard))
//! }
//! ```

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::presented;
use super::error::ApiError;
use super::login::set_token_cookies;
use crate::config::CookiesConfig;
use crate::store::Store;
use crate::time::Clock;
use crate::verify::{Demand, Reject, Verified, Verifier};

/// What [`guard`] needs: the verifier, the cookie names, a clock, and the
/// public path prefixes.
#[derive(Clone)]
pub struct Guard {
    verifier: Arc<Verifier<Store>>,
    cookies: Arc<CookiesConfig>,
    clock: Arc<dyn Clock>,
    public: Arc<Vec<String>>,
    demand: Demand,
}

impl Guard {
    /// A guard with no public paths.
    pub fn new(verifier: Arc<Verifier<Store>>, cookies: CookiesConfig, clock: Arc<dyn Clock>) -> Guard {
        Guard {
            verifier,
            cookies: Arc::new(cookies),
            clock,
            public: Arc::new(Vec::new()),
            demand: Demand::default(),
        }
    }

    /// A strict guard (for routes that must see a logout at once: change
    /// e-mail, pay): every request's long token is judged by the store,
    /// even beside a valid short token, and while the store is unreachable
    /// the answer is 503, never the fallback ([`Verifier::verify_strict`]).
    pub fn strict(mut self) -> Guard {
        self.demand.strict = true;
        self
    }

    /// Step-up: requests whose session last authenticated longer than
    /// `max` ago get 401 `reauth_required` (the client re-authenticates
    /// with `POST /v1/reauth`).
    pub fn max_auth_age(mut self, max: std::time::Duration) -> Guard {
        self.demand.max_auth_age = Some(max);
        self
    }

    /// Lets requests whose path is `prefix` or below it through without a
    /// login (a login page, static assets, health checks).
    pub fn public(mut self, prefix: &str) -> Guard {
        Arc::make_mut(&mut self.public).push(prefix.trim_end_matches('/').to_string());
        self
    }

    fn is_public(&self, path: &str) -> bool {
        self.public
            .iter()
            .any(|p| path == p || path.starts_with(&format!("{p}/")) || (p.is_empty() && path == "/"))
    }
}

/// The middleware: 401 (or 503) in the project's JSON shape unless the
/// request is logged in or public.
pub async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    if g.is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let now = g.clock.now();
    let (v, by_cookie) = {
        let p = match presented(req.headers(), &g.cookies) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let r = match g.demand == Demand::default() {
            true => g.verifier.verify(p.short, p.long, now).await,
            false => g.verifier.verify_demanding(p.short, p.long, now, g.demand).await,
        };
        match r {
            Ok(v) => (v, p.by_cookie),
            Err(e) => return ApiError::from(e).into_response(),
        }
    };
    let (short, long, remember) = (v.short.clone(), v.long.clone(), v.remember);
    req.extensions_mut().insert(v);
    let mut resp = next.run(req).await;
    if by_cookie {
        set_token_cookies(&mut resp, &g.cookies, now, short.as_ref(), long.as_ref(), remember);
    }
    resp
}

/// Who the request is, as [`guard`] verified it. Rejects with 401 `missing`
/// on a route the guard does not cover.
pub struct CurrentUser(pub Verified);

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Verified>()
            .cloned()
            .map(CurrentUser)
            .ok_or_else(|| ApiError::from(Reject::Missing))
    }
}
