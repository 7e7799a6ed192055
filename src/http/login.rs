//! The steps every way of logging in shares (password, one-time code,
//! trusted issue, re-authentication): the body extractor with its deadline,
//! the login CSRF check, session creation and its answer (JSON and both
//! cookies), cookie writing and clearing, login errors, throttling answers
//! and audit lines. `auth.rs` and `code.rs` both build on it; neither
//! imports the other's internals.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode, from_rejection};
use super::throttle::{Reason, Refused};
use super::{AppState, cookies};
use crate::config::CookiesConfig;
use crate::store::{Device, Limit};
use crate::time::UnixMs;
use crate::tokens::{ChallengeClaims, Sid, UserId};
use crate::verify::{Issued, LoginError, NewTokens};

/// CSRF check of a login-like request (password, code): a foreign origin is
/// refused; a missing one too unless the body is declared JSON, which a
/// cross-site HTML form cannot send.
pub fn check_login_origin(headers: &HeaderMap, state: &AppState) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/json"));
    cookies::check_origin(headers, &state.origins, !json)
}

/// A body in JSON or as a form, per `Content-Type`; every failure in the
/// project's error shape. The body must be complete within
/// `server.body_read_timeout` (else 408 and the connection closes): a
/// client that declares a body and stalls holds no connection for ever.
/// Every handler that reads a body reads it through this extractor.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequest<Arc<AppState>> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let read = async {
            if ct.starts_with("application/x-www-form-urlencoded") {
                axum::Form::<T>::from_request(req, state)
                    .await
                    .map(|f| Body(f.0))
                    .map_err(|e| from_rejection(e.status(), e.body_text()))
            } else if ct.starts_with("application/json") || ct.is_empty() {
                axum::Json::<T>::from_request(req, state)
                    .await
                    .map(|j| Body(j.0))
                    .map_err(|e| from_rejection(e.status(), e.body_text()))
            } else {
                Err(from_rejection(StatusCode::UNSUPPORTED_MEDIA_TYPE, String::new()))
            }
        };
        let limit = state.config.server.body_read_timeout;
        tokio::time::timeout(limit, read).await.unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(limit)
                ),
            ))
        })
    }
}

pub fn set_cookie_headers(
    resp: &mut Response,
    state: &AppState,
    short: Option<&Issued>,
    long: Option<&Issued>,
    remember: bool,
) {
    set_token_cookies(resp, &state.config.cookies, state.clock.now(), short, long, remember);
}

/// Appends `Set-Cookie` for re-issued tokens: only as cookies (`HttpOnly`),
/// never in a header page script could read. The long cookie first when
/// there is one: a gateway that forwards only the first `Set-Cookie` of an
/// auth subrequest (nginx's `$upstream_http_set_cookie`) then still hands
/// out the rotated long token, and the next request, whose short token no
/// longer matches its long token's session, gets a fresh short one.
pub fn set_token_cookies(
    resp: &mut Response,
    c: &CookiesConfig,
    now: crate::time::UnixMs,
    short: Option<&Issued>,
    long: Option<&Issued>,
    remember: bool,
) {
    let h = resp.headers_mut();
    for (issued, name) in [(long, c.long_name()), (short, c.short_name())] {
        if let Some(v) = issued.and_then(|i| cookies::set(c, name, &i.token, i.expires, now, remember)) {
            h.append(header::SET_COOKIE, v);
        }
    }
}

pub fn clear_cookies(resp: &mut Response, state: &AppState) {
    let c = &state.config.cookies;
    for name in [c.short_name(), c.long_name()] {
        if let Some(v) = cookies::clear(c, name) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
}

/// The request's `User-Agent`, for audit lines.
pub fn user_agent(h: &HeaderMap) -> Option<&str> {
    h.get(header::USER_AGENT).and_then(|v| v.to_str().ok())
}

/// An audit line about a session of `uid` seen in request `h` from `addr`;
/// login and re-authentication events are also counted
/// (`twintoken_logins_total{method,outcome}`).
pub fn audit(
    state: &AppState,
    event: &'static str,
    uid: &str,
    sid: Option<Sid>,
    h: &HeaderMap,
    addr: Option<IpAddr>,
    detail: Option<&str>,
) {
    let outcome = match event {
        "login_ok" | "reauth_ok" => Some("ok"),
        "login_failed" => Some("failed"),
        "login_throttled" => Some("throttled"),
        "reauth_failed" if detail == Some("throttled") => Some("throttled"),
        "reauth_failed" => Some("failed"),
        _ => None,
    };
    if let Some(outcome) = outcome {
        let method = if event.starts_with("reauth") {
            "reauth"
        } else {
            detail.unwrap_or("password")
        };
        state.http_metrics.login(method, outcome);
    }
    let sid = sid.map(|s| s.to_text());
    let who = crate::audit::Subject {
        user: Some(uid),
        session: sid.as_deref(),
        client: addr,
        user_agent: user_agent(h),
    };
    crate::audit::record(event, who, detail);
}

pub fn no_store(resp: &mut Response) {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The default of `remember`.
pub fn yes() -> bool {
    true
}

/// JSON of a new session (login and trusted issue).
pub fn session_json(t: &NewTokens) -> serde_json::Value {
    serde_json::json!({
        "user_id": t.uid.as_str(),
        "session_id": t.sid.to_text(),
        "long_token": t.long.token,
        "short_token": t.short.token,
        "long_expires_at": t.long.expires.to_string(),
        "short_expires_at": t.short.expires.to_string(),
    })
}

/// The `outcome` label of a refused login.
pub fn login_outcome(e: &LoginError) -> &'static str {
    match e {
        LoginError::Banned(_) => "banned",
        LoginError::Limit(_) => "limit",
        LoginError::Unavailable(e) if e.is_unavailable() => "unavailable",
        _ => "error",
    }
}

/// The answer to a login the verifier refused (`now`: for `Retry-After`).
pub fn login_error(e: LoginError, now: UnixMs) -> ApiError {
    match e {
        LoginError::Limit(Limit::MaxSessions) => {
            ApiError::new(ErrorCode::SessionLimit, "this user has the maximum number of sessions")
        }
        LoginError::Limit(Limit::Device) => ApiError::new(
            ErrorCode::SessionLimit,
            "this user already has the maximum number of sessions for this device type",
        ),
        LoginError::Banned(until) => ApiError::new(ErrorCode::Banned, format!("this user is banned until {until}"))
            .retry_after(until.0.saturating_sub(now.0).div_ceil(1000)),
        LoginError::Unavailable(e) if !e.is_unavailable() => ApiError::from(e),
        LoginError::Unavailable(e) => {
            tracing::warn!(error = %e, "login: session store unavailable");
            ApiError::unavailable("logins need the session store, which is unreachable; try again shortly")
        }
        LoginError::Token(e) => {
            tracing::error!(error = %e, "login: cannot issue tokens");
            ApiError::unavailable("cannot issue tokens (see the server log)")
        }
    }
}

pub fn check_device(device: Option<String>) -> Result<Option<Device>, ApiError> {
    match device.filter(|d| !d.is_empty()) {
        None => Ok(None),
        Some(d) => Device::new(&d)
            .map(Some)
            .map_err(|_| ApiError::bad_request("device must be 1-16 characters of [a-z0-9_-]")),
    }
}

pub fn metadata(state: &AppState, h: &HeaderMap, addr: IpAddr) -> Option<String> {
    if !state.config.login.metadata {
        return None;
    }
    let ua: String = h
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect();
    Some(serde_json::json!({ "ip": addr.to_string(), "ua": ua }).to_string())
}

/// 429 with `Retry-After` for a throttled attempt.
pub fn throttled(r: Refused) -> ApiError {
    let message = match r.reason {
        Reason::Address => "too many failed logins from this address; wait and try again",
        Reason::UserAddress | Reason::UserUnderAttack => {
            "too many failed logins for this user from this address; wait and try again"
        }
        Reason::CodeDestination => "too many wrong codes for this destination from this address; wait and try again",
        Reason::CodeSends => "too many codes requested from this address; wait and try again",
    };
    ApiError::new(ErrorCode::Throttled, message).retry_after(r.retry_after.as_secs())
}

/// Creates a session for an authenticated user and answers as every login
/// does: the session JSON and both cookies.
pub async fn start_session(
    state: &AppState,
    uid: UserId,
    device: Option<Device>,
    remember: bool,
    headers: &HeaderMap,
    addr: IpAddr,
    method: &'static str,
) -> Result<Response, ApiError> {
    let meta = metadata(state, headers, addr);
    let t = state
        .verifier
        .login_with(uid, device, meta, remember, state.clock.now())
        .await
        .map_err(|e| {
            state.http_metrics.login(method, login_outcome(&e));
            login_error(e, state.clock.now())
        })?;
    audit(
        state,
        "login_ok",
        uid.as_str(),
        Some(t.sid),
        headers,
        Some(addr),
        Some(method),
    );
    let mut resp = axum::Json(session_json(&t)).into_response();
    set_cookie_headers(&mut resp, state, Some(&t.short), Some(&t.long), remember);
    offer_registration(state, &mut resp, uid, t.sid);
    no_store(&mut resp);
    Ok(resp)
}

/// 202 `{"status": "pending"}`: the session store was unreachable; this
/// node refuses the session(s) from now on and the store gets the
/// revocation when it answers again (`store.outbox`).
pub fn pending_response() -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({
            "status": "pending",
            "detail": "the session store is unreachable: this logout is kept and applied when it answers again; this server refuses the session from now on"
        })),
    )
        .into_response()
}

/// Where the browser registers a device-bound session.
pub const DBSC_START_PATH: &str = "/v1/dbsc/start";

const DBSC_REGISTRATION: axum::http::HeaderName = axum::http::HeaderName::from_static("secure-session-registration");

/// A challenge for session `sid` of `uid`, valid for `dbsc.challenge_ttl`.
pub fn challenge(state: &AppState, uid: UserId, sid: Sid, now: UnixMs) -> Option<String> {
    let c = ChallengeClaims {
        uid,
        sid,
        iat: now,
        exp: now.plus(state.config.dbsc.challenge_ttl),
    };
    match state.verifier.keys().seal_challenge(&c, now) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %e, "dbsc: cannot seal a challenge");
            None
        }
    }
}

/// Adds the registration offer for session `sid` of `uid` to `resp` when
/// device-bound sessions are on.
pub fn offer_registration(state: &AppState, resp: &mut Response, uid: UserId, sid: Sid) {
    if !state.config.dbsc_enabled() {
        return;
    }
    let Some(c) = challenge(state, uid, sid, state.clock.now()) else {
        return;
    };
    let v = format!("(ES256 RS256);path=\"{DBSC_START_PATH}\";challenge=\"{c}\"");
    if let Ok(v) = HeaderValue::from_str(&v) {
        resp.headers_mut().append(DBSC_REGISTRATION, v);
        state.http_metrics.dbsc("offered");
    }
}
