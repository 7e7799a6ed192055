//! The user-facing endpoints: login, verify, logout, logout-all, and the
//! user's own sessions.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

pub use super::client_addr::ClientAddr;
use super::error::{ApiError, ErrorCode};
use super::login::{
    Body, audit, check_device, check_login_origin, clear_cookies, no_store, offer_registration, pending_response,
    session_json, set_cookie_headers, start_session, throttled,
};
use super::throttle::{self, Account, Refused};
use super::{AppState, cookies};
use crate::config::CookiesConfig;
use crate::store::SessionStore;
use crate::time::UnixMs;
use crate::tokens::{Sid, UserId};
use crate::verify::Ended;
use crate::verify::{Demand, Verified};

/// Names looked up on every verify, parsed once.
const X_VERIFY_STRICT: HeaderName = HeaderName::from_static("x-verify-strict");
const X_MAX_AUTH_AGE: HeaderName = HeaderName::from_static("x-max-auth-age");

/// The tokens a request presents (borrowed from its headers: no copy on
/// the hot path), and whether they came as cookies.
pub struct Presented<'a> {
    pub short: Option<&'a str>,
    pub long: Option<&'a str>,
    pub by_cookie: bool,
}

pub(super) fn header_text<'a>(h: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ApiError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::new(ErrorCode::Invalid, format!("the {name} header is not valid text"))),
    }
}

/// `Authorization: Bearer <long>` (+ `X-Short-Token`) wins over cookies.
pub fn presented<'a>(h: &'a HeaderMap, c: &CookiesConfig) -> Result<Presented<'a>, ApiError> {
    let x_short = HeaderName::from_static("x-short-token");
    if let Some(auth) = header_text(h, &header::AUTHORIZATION)? {
        let long = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::new(ErrorCode::Invalid, "Authorization must be `Bearer <long token>`"))?;
        let short = header_text(h, &x_short)?;
        return Ok(Presented {
            short,
            long: Some(long.trim()),
            by_cookie: false,
        });
    }
    if let Some(short) = header_text(h, &x_short)? {
        return Ok(Presented {
            short: Some(short),
            long: None,
            by_cookie: false,
        });
    }
    let (short, long) = cookies::token_cookies(h, c)?;
    Ok(Presented {
        short,
        long,
        by_cookie: true,
    })
}

/// Verifies the request's tokens; on success returns the answer and
/// whether the tokens came as cookies.
pub async fn authenticate(h: &HeaderMap, state: &AppState) -> Result<(Verified, bool), ApiError> {
    let p = presented(h, &state.config.cookies)?;
    let v = state.verifier.verify(p.short, p.long, state.clock.now()).await?;
    Ok((v, p.by_cookie))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    password: String,
    device: Option<String>,
    /// "Remember me": persistent cookies (default) or browser-session ones.
    #[serde(default = "super::login::yes")]
    remember: bool,
}

/// A password checked under the throttle.
enum PasswordCheck {
    Right(UserId),
    Wrong,
    Throttled(Refused),
}

/// Checks `name`'s password, counted before the hash (a burst gets no more
/// checks than the limit) and run to its end even if the client goes away.
async fn check_password(
    state: &Arc<AppState>,
    name: String,
    password: String,
    addr: IpAddr,
) -> Result<PasswordCheck, ApiError> {
    let account = Account::User(name.clone());
    let outcome = throttle::attempt(state, account, addr, |st| async move {
        let users = st.users.clone();
        let checked = tokio::task::spawn_blocking(move || users.authenticate(&name, &password)).await;
        let right = matches!(checked, Ok(Ok(_)));
        (checked, right)
    })
    .await?;
    match outcome {
        Err(r) => Ok(PasswordCheck::Throttled(r)),
        Ok(Err(_)) => Err(ApiError::internal()),
        Ok(Ok(Err(_))) => Ok(PasswordCheck::Wrong),
        Ok(Ok(Ok(uid))) => Ok(PasswordCheck::Right(uid)),
    }
}

/// `POST /v1/login`: password login; sets both cookies.
pub async fn login(
    State(state): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Body(req): Body<LoginRequest>,
) -> Result<Response, ApiError> {
    check_login_origin(&headers, &state)?;
    if req.username.is_empty() || req.username.len() > 64 || req.password.len() > 1024 {
        return Err(ApiError::bad_request(
            "username must be 1-64 bytes and password at most 1024 bytes",
        ));
    }
    let device = check_device(req.device)?;
    let uid = match check_password(&state, req.username.clone(), req.password, addr).await? {
        PasswordCheck::Right(uid) => uid,
        PasswordCheck::Throttled(r) => {
            audit(
                &state,
                "login_throttled",
                &req.username,
                None,
                &headers,
                Some(addr),
                Some("password"),
            );
            return Err(throttled(r));
        }
        PasswordCheck::Wrong => {
            audit(
                &state,
                "login_failed",
                &req.username,
                None,
                &headers,
                Some(addr),
                Some("password"),
            );
            return Err(ApiError::new(
                ErrorCode::InvalidCredentials,
                "invalid username or password",
            ));
        }
    };
    start_session(&state, uid, device, req.remember, &headers, addr, "password").await
}

/// The longest `max_auth_age` accepted (ten years, in seconds): larger
/// values are a client's mistake, not a policy.
pub const MAX_AUTH_AGE_LIMIT: u64 = 10 * 366 * 24 * 3600;

/// What a verify demands, from its query (`strict`, `max_auth_age`) and
/// headers (`X-Verify-Strict`, `X-Max-Auth-Age`). Strict: `true`/`1` or
/// `false`/`0`; any other value is a 400, so a typo never silently turns
/// strictness off. `max_auth_age`: whole seconds, 0..=[`MAX_AUTH_AGE_LIMIT`];
/// when both give one, the smaller wins.
fn demand(h: &HeaderMap, query: Option<&str>) -> Result<Demand, ApiError> {
    let strict = |what: &str, v: &str| match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "{what} must be true or false, not {v:?}"
        ))),
    };
    let age = |what: &str, v: &str| match v.parse::<u64>() {
        Ok(n) if n <= MAX_AUTH_AGE_LIMIT => Ok(Duration::from_secs(n)),
        _ => Err(ApiError::bad_request(format!(
            "{what} must be whole seconds from 0 to {MAX_AUTH_AGE_LIMIT}, not {v:?}"
        ))),
    };
    let mut d = Demand::default();
    let mut tighten = |a: Duration| d.max_auth_age = Some(d.max_auth_age.map_or(a, |b| b.min(a)));
    let mut strict_seen = false;
    if let Some(v) = h.get(X_VERIFY_STRICT) {
        strict_seen |= strict("X-Verify-Strict", v.to_str().unwrap_or("?"))?;
    }
    if let Some(v) = h.get(X_MAX_AUTH_AGE) {
        tighten(age("X-Max-Auth-Age", v.to_str().unwrap_or("?"))?);
    }
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("strict=") {
            strict_seen |= strict("the strict parameter", v)?;
        } else if pair == "strict" {
            strict_seen = true;
        } else if let Some(v) = pair.strip_prefix("max_auth_age=") {
            tighten(age("the max_auth_age parameter", v)?);
        }
    }
    d.strict = strict_seen;
    Ok(d)
}

/// `/v1/verify`, any method: who is this? For gateways and apps. What the
/// route demands (see [`demand`]): strictness (the long token is judged by
/// the store, never by the short token or the fallback) and a maximum age
/// of the last authentication (step-up: 401 `reauth_required`).
pub async fn verify(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    // The request itself rather than `HeaderMap` and `Uri` extractors,
    // which would clone both on every gateway request.
    let headers = req.headers();
    let (v, by_cookie) = match req.uri().query() {
        None if !headers.contains_key(X_VERIFY_STRICT) && !headers.contains_key(X_MAX_AUTH_AGE) => {
            authenticate(headers, &state).await?
        }
        query => {
            let d = demand(headers, query)?;
            let p = presented(headers, &state.config.cookies)?;
            let v = state
                .verifier
                .verify_demanding(p.short, p.long, state.clock.now(), d)
                .await?;
            (v, p.by_cookie)
        }
    };
    // The hot path of every gateway request: a small struct, not a JSON tree.
    #[derive(serde::Serialize)]
    struct Who<'a> {
        user_id: &'a str,
        session_id: &'a str,
        path: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        auth_time: Option<u64>,
    }
    let mut sid_text = [0u8; 22];
    let sid = v.sid.write_text(&mut sid_text);
    let auth_time = v.auth.map(|a| a.0 / 1000);
    let mut resp = axum::Json(Who {
        user_id: v.uid.as_str(),
        session_id: sid,
        path: v.path.as_str(),
        auth_time,
    })
    .into_response();
    let h = resp.headers_mut();
    // Room for every header of the answer at once (no growth on the way).
    h.reserve(8);
    if let Ok(value) = HeaderValue::from_str(v.uid.as_str()) {
        h.insert(HeaderName::from_static("x-user-id"), value);
    }
    if let Ok(value) = HeaderValue::from_str(sid) {
        h.insert(HeaderName::from_static("x-session-id"), value);
    }
    h.insert(
        HeaderName::from_static("x-auth-path"),
        HeaderValue::from_static(v.path.as_str()),
    );
    if let Some(t) = auth_time {
        h.insert(HeaderName::from_static("x-auth-time"), HeaderValue::from(t));
    }
    // Re-issued tokens go back the way the tokens came: cookie clients get
    // them only as HttpOnly cookies (a same-origin script can read any other
    // response header), header clients as headers.
    if by_cookie {
        set_cookie_headers(&mut resp, &state, v.short.as_ref(), v.long.as_ref(), v.remember);
        // The long path answered a cookie client: an unbound session (a
        // bound one never gets here without a proof), offered registration
        // once per short token's life.
        if v.path == crate::verify::Path::Long {
            offer_registration(&state, &mut resp, v.uid, v.sid);
        }
    } else {
        for (name, issued) in [("x-short-token", &v.short), ("x-long-token", &v.long)] {
            if let Some(value) = issued.as_ref().and_then(|i| HeaderValue::from_str(&i.token).ok()) {
                h.insert(HeaderName::from_static(name), value);
            }
        }
    }
    no_store(&mut resp);
    Ok(resp)
}

/// Authenticates a state-changing request: cookie-borne ones must pass the
/// CSRF origin check.
async fn authenticate_change(headers: &HeaderMap, state: &AppState) -> Result<(Verified, bool), ApiError> {
    let p = presented(headers, &state.config.cookies)?;
    if p.by_cookie {
        cookies::check_origin(headers, &state.origins, true)?;
    }
    let v = state.verifier.verify(p.short, p.long, state.clock.now()).await?;
    Ok((v, p.by_cookie))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReauthRequest {
    password: Option<String>,
    destination: Option<String>,
    code: Option<String>,
}

/// `POST /v1/reauth` `{password}` or `{destination, code}`: the user of
/// this session proves who they are again (step-up). The session's long
/// token is needed (cookies, CSRF rules apply, or bearer); the session is
/// checked in the store first; a wrong secret is a 401 and counts toward the
/// login throttle. Answers like a login (tokens in JSON, cookies for cookie
/// clients), with `auth_time` = now carried by the new tokens.
pub async fn reauth(
    State(state): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Body(req): Body<ReauthRequest>,
) -> Result<Response, ApiError> {
    let p = presented(&headers, &state.config.cookies)?;
    let Some(long) = p.long else {
        return Err(ApiError::new(
            ErrorCode::Missing,
            "re-authentication needs the session's long token: send the cookies, or Authorization: Bearer <long token>",
        ));
    };
    if p.by_cookie {
        cookies::check_origin(&headers, &state.origins, true)?;
    }
    let v = &state.verifier;
    let who = v.verify_strict(Some(long), state.clock.now()).await?;
    match (req.password, req.destination, req.code) {
        (Some(password), None, None) => {
            if password.len() > 1024 {
                return Err(ApiError::bad_request("password must be at most 1024 bytes"));
            }
            let users = state.users.users();
            let name = users
                .entries()
                .iter()
                .find(|(_, u)| u.id == who.uid.as_str() && u.password.is_some())
                .map(|(name, _)| name.clone())
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::NoPassword,
                        "this user has no password here: re-authenticate with a one-time code {destination, code}",
                    )
                })?;
            let (detail, refused) = match check_password(&state, name, password, addr).await? {
                PasswordCheck::Right(uid) if uid == who.uid => (None, None),
                PasswordCheck::Right(_) | PasswordCheck::Wrong => (Some("password"), None),
                PasswordCheck::Throttled(r) => (Some("throttled"), Some(r)),
            };
            if let Some(detail) = detail {
                audit(
                    &state,
                    "reauth_failed",
                    who.uid.as_str(),
                    Some(who.sid),
                    &headers,
                    Some(addr),
                    Some(detail),
                );
                return Err(match refused {
                    Some(r) => throttled(r),
                    None => ApiError::new(ErrorCode::InvalidCredentials, "wrong password"),
                });
            }
        }
        (None, Some(destination), Some(code)) => {
            let uid = match super::code::check(&state, addr, &destination, &code).await {
                Ok(uid) => uid,
                Err(e) => {
                    audit(
                        &state,
                        "reauth_failed",
                        who.uid.as_str(),
                        Some(who.sid),
                        &headers,
                        Some(addr),
                        Some(e.code.as_str()),
                    );
                    return Err(e);
                }
            };
            if uid != who.uid {
                audit(
                    &state,
                    "reauth_failed",
                    who.uid.as_str(),
                    Some(who.sid),
                    &headers,
                    Some(addr),
                    Some("code"),
                );
                return Err(ApiError::new(
                    ErrorCode::InvalidCode,
                    "this code was not sent to a destination of this session's user",
                ));
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "give either {\"password\"} or {\"destination\", \"code\"}",
            ));
        }
    }
    let now = state.clock.now();
    let t = v.reissue_authenticated(long, who.sid, now)?;
    audit(
        &state,
        "reauth_ok",
        t.uid.as_str(),
        Some(t.sid),
        &headers,
        Some(addr),
        None,
    );
    // Like a login's answer, with the new authentication time.
    let mut body = session_json(&t);
    body["auth_time"] = serde_json::json!(now.0 / 1000);
    let mut resp = axum::Json(body).into_response();
    if p.by_cookie {
        set_cookie_headers(&mut resp, &state, Some(&t.short), Some(&t.long), who.remember);
    }
    no_store(&mut resp);
    Ok(resp)
}

/// Authenticates a logout or logout-all. Tokens that no longer
/// authenticate anybody (401) get both cookies cleared: the browser should
/// drop them. Not on a CSRF refusal (a cross-site form must not log the
/// victim out) nor while the store is down (the session lives on).
async fn authenticate_logout(headers: &HeaderMap, state: &AppState) -> Result<Verified, ApiError> {
    match authenticate_change(headers, state).await {
        Ok((v, _)) => Ok(v),
        Err(mut e) if e.status == StatusCode::UNAUTHORIZED => {
            let c = &state.config.cookies;
            for name in [c.short_name(), c.long_name()] {
                if let Some(v) = cookies::clear(c, name) {
                    e = e.with_header(header::SET_COOKIE, v);
                }
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// `POST /v1/logout`: ends this session and clears both cookies.
pub async fn logout(
    State(state): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let v = authenticate_logout(&headers, &state).await?;
    let ended = state.verifier.end_session(v.uid, v.sid, state.clock.now()).await?;
    audit(
        &state,
        "logout",
        v.uid.as_str(),
        Some(v.sid),
        &headers,
        Some(addr),
        ended.pending_detail(),
    );
    let mut resp = match ended {
        Ended::Now(_) => axum::Json(serde_json::json!({ "status": "logged_out" })).into_response(),
        Ended::Pending => pending_response(),
    };
    clear_cookies(&mut resp, &state);
    no_store(&mut resp);
    Ok(resp)
}

/// `POST /v1/logout-all`: ends every session of the user.
pub async fn logout_all(
    State(state): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let v = authenticate_logout(&headers, &state).await?;
    let ended = state.verifier.end_user(v.uid, state.clock.now()).await?;
    audit(
        &state,
        "logout_all",
        v.uid.as_str(),
        Some(v.sid),
        &headers,
        Some(addr),
        Some(&ended.count_detail()),
    );
    let mut resp = match ended {
        Ended::Now(revoked) => {
            axum::Json(serde_json::json!({ "status": "logged_out", "sessions_ended": revoked.len() })).into_response()
        }
        Ended::Pending => pending_response(),
    };
    clear_cookies(&mut resp, &state);
    no_store(&mut resp);
    Ok(resp)
}

/// Sessions as JSON, `current` marking `current_sid`.
pub async fn sessions_json(
    state: &AppState,
    uid: &UserId,
    current: Option<Sid>,
) -> Result<serde_json::Value, ApiError> {
    let list = state.verifier.store().list(uid, state.clock.now()).await?;
    let idle = state.config.tokens.long_idle_ttl;
    let items: Vec<serde_json::Value> = list
        .iter()
        .map(|s| {
            let meta: serde_json::Value = s
                .meta
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok())
                .unwrap_or(serde_json::Value::Null);
            serde_json::json!({
                "session_id": s.sid.to_text(),
                "device": s.device,
                // Known when the store keeps a record for the session (it
                // does whenever metadata or a device type is stored).
                "created": s.login.map(|l| l.to_string()),
                // The idle expiry slides on renewal: it was last moved one
                // idle lifetime before it ends.
                "last_seen": s.idle_expires.minus(idle).max(s.login.unwrap_or(UnixMs(0))).to_string(),
                "expires": s.idle_expires.to_string(),
                "ip": meta.get("ip"),
                "user_agent": meta.get("ua"),
                "current": current == Some(s.sid),
                // Bound to a device key (device-bound sessions): its
                // cookies are worthless off that device.
                "bound": s.bound,
            })
        })
        .collect();
    Ok(serde_json::json!({ "user_id": uid.as_str(), "sessions": items }))
}

/// `GET /v1/sessions`: the user's sessions.
pub async fn list_sessions(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let (v, _) = authenticate(&headers, &state).await?;
    let mut resp = axum::Json(sessions_json(&state, &v.uid, Some(v.sid)).await?).into_response();
    no_store(&mut resp);
    Ok(resp)
}

pub fn parse_sid(s: &str) -> Result<Sid, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request("session ids are 22 characters of base64url"))
}

/// `DELETE /v1/sessions/{sid}`: ends one of the user's own sessions.
pub async fn delete_session(
    State(state): State<Arc<AppState>>,
    Path(sid): Path<String>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sid = parse_sid(&sid)?;
    let (v, _) = authenticate_change(&headers, &state).await?;
    let ended = state.verifier.end_session(v.uid, sid, state.clock.now()).await?;
    if ended.nothing() {
        return Err(ApiError::not_found("no such session for this user"));
    }
    audit(
        &state,
        "session_ended",
        v.uid.as_str(),
        Some(sid),
        &headers,
        Some(addr),
        ended.pending_detail(),
    );
    let mut resp = match ended {
        Ended::Pending => pending_response(),
        Ended::Now(_) => {
            axum::Json(serde_json::json!({ "status": "revoked", "session_id": sid.to_text() })).into_response()
        }
    };
    if sid == v.sid {
        clear_cookies(&mut resp, &state);
    }
    no_store(&mut resp);
    Ok(resp)
}
