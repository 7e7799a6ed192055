//! Device-bound sessions over HTTP (W3C Device Bound Session Credentials,
//! as Chromium speaks it; `docs/http-api.md`, "Device-bound sessions").
//!
//! - Login answers, and cookie verifies that took the long path (an unbound
//!   session, at most once per short token's life), offer registration:
//!   `Secure-Session-Registration: (ES256 RS256);path="/v1/dbsc/start";challenge="…"`.
//! - `POST /v1/dbsc/start`: the browser's registration proof over our
//!   challenge binds the session (`Verifier::bind_device`); answers the
//!   session config and both cookies (the long one now carries the key).
//! - `POST /v1/dbsc/refresh`: without a proof, 403 and a challenge; with a
//!   proof by the session's key over a fresh challenge, a new short cookie
//!   (`Verifier::refresh_bound`: the store, or the fallback policy while it
//!   is unreachable — never a 4xx for a store problem, which would end the
//!   browser's session); `{"continue": false}` once the session has ended.
//!
//! Challenges are sealed by the keyring (`tokens::seal_challenge`: user,
//! session, expiry), so any node checks any node's challenge without
//! shared state.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::auth::header_text;
use super::error::{ApiError, ErrorCode};
use super::login::{audit, challenge, clear_cookies, no_store, set_cookie_headers, user_agent};
use super::{AppState, ClientAddr, cookies};
use crate::config::OnBadProof;
use crate::dbsc::{DeviceKey, ProofError, check_refresh, check_registration};
use crate::time::UnixMs;
use crate::tokens::LongClaims;
use crate::verify::{BindError, Reject, Verified};

/// Where the browser refreshes the short cookie.
pub const REFRESH_PATH: &str = "/v1/dbsc/refresh";

const RESPONSE: HeaderName = HeaderName::from_static("secure-session-response");
const CHALLENGE: HeaderName = HeaderName::from_static("secure-session-challenge");
const SESSION_ID: HeaderName = HeaderName::from_static("sec-secure-session-id");

/// Paths a browser must never hold back waiting for a refresh (the refresh
/// path itself is out of scope by definition).
const EXCLUDED: [&str; 6] = [
    "/v1/login",
    "/v1/dbsc/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

/// The origin and host the session's scope names: `server.public_origin`,
/// else the request's `Host` over HTTPS (browsers speak DBSC only there).
fn scope_origin(state: &AppState, h: &HeaderMap) -> Option<(String, String)> {
    let origin = match &state.config.server.public_origin {
        Some(o) => crate::config::normalize_origin(o)?,
        None => {
            let host = h.get(header::HOST)?.to_str().ok()?;
            crate::config::normalize_origin(&format!("https://{host}"))?
        }
    };
    let host = crate::config::split_authority(origin.split_once("://")?.1)
        .0
        .to_string();
    Some((origin, host))
}

/// The session config the browser keeps (registration and refresh answer
/// it alike): `session_identifier` is the key's RFC 7638 thumbprint, the
/// credential is the short cookie with the attributes of its `Set-Cookie`
/// minus `Max-Age`.
fn session_config(state: &AppState, h: &HeaderMap, key: &DeviceKey) -> serde_json::Value {
    let c = &state.config.cookies;
    let mut scope = serde_json::json!({ "include_site": false });
    if let Some((origin, host)) = scope_origin(state, h) {
        scope["origin"] = origin.into();
        scope["scope_specification"] = EXCLUDED
            .iter()
            .map(|p| serde_json::json!({ "type": "exclude", "domain": host, "path": p }))
            .collect();
    }
    serde_json::json!({
        "session_identifier": key.thumbprint(),
        "refresh_url": REFRESH_PATH,
        "scope": scope,
        "credentials": [{
            "type": "cookie",
            "name": c.short_name(),
            "attributes": cookies::attributes(c),
        }],
    })
}

/// The long cookie of a DBSC request (these endpoints are for browsers:
/// cookies only).
fn long_cookie<'a>(state: &AppState, h: &'a HeaderMap) -> Result<&'a str, ApiError> {
    let (_, long) = cookies::token_cookies(h, &state.config.cookies)?;
    long.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Missing,
            "device-bound sessions need the session's cookies (the long-token cookie is missing)",
        )
    })
}

/// What both endpoints start with: 404 while device-bound sessions are
/// off, else the time and the long cookie.
fn begin<'a>(state: &AppState, h: &'a HeaderMap) -> Result<(UnixMs, &'a str), ApiError> {
    if !state.config.dbsc_enabled() {
        return Err(ApiError::not_found("device-bound sessions are off (dbsc.enabled)"));
    }
    Ok((state.clock.now(), long_cookie(state, h)?))
}

/// A proof that is not even a well-formed DBSC JWT: 400, the reason named.
fn malformed(e: &ProofError) -> ApiError {
    ApiError::bad_request(format!("Secure-Session-Response: {e}"))
}

/// `POST /v1/dbsc/start`: registration. Needs the session's cookies and a
/// `Secure-Session-Response` proof (`typ` `dbsc+jwt`, ES256 or RS256, the
/// key as `jwk`) over a challenge we issued for this session.
pub async fn start(
    State(state): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (now, long) = begin(&state, &headers)?;
    let jwt = header_text(&headers, &RESPONSE)?.ok_or_else(|| {
        ApiError::bad_request("registration needs a Secure-Session-Response header (the browser's signed proof)")
    })?;
    let reg = check_registration(jwt).map_err(|e| {
        state.http_metrics.dbsc("registration_refused");
        match e {
            ProofError::Signature => ApiError::new(
                ErrorCode::InvalidProof,
                "the registration proof's signature does not verify",
            ),
            e => malformed(&e),
        }
    })?;
    let c = state.verifier.keys().open_long(long, now).map_err(|e| {
        state.http_metrics.dbsc("registration_refused");
        ApiError::from(Reject::Invalid(e))
    })?;
    let fresh = state
        .verifier
        .keys()
        .open_challenge(&reg.jti, now)
        .is_ok_and(|ch| ch.uid == c.uid && ch.sid == c.sid);
    if !fresh {
        state.http_metrics.dbsc("registration_refused");
        return Err(ApiError::new(
            ErrorCode::InvalidProof,
            "the proof answers no current challenge of this session (stale, foreign, or not ours)",
        ));
    }
    let t = match state.verifier.bind_device(long, &reg.key, now).await {
        Ok(t) => t,
        Err(e) => {
            state.http_metrics.dbsc("registration_refused");
            return Err(match e {
                BindError::AlreadyBound => ApiError::new(
                    ErrorCode::AlreadyBound,
                    "this session is bound to a device key already; a session is bound once",
                ),
                BindError::Session(r) => ApiError::from(r),
                BindError::Unavailable(e) => ApiError::from(e),
                BindError::Token(e) => {
                    tracing::error!(error = %e, "dbsc: cannot issue tokens");
                    ApiError::unavailable("cannot issue tokens (see the server log)")
                }
            });
        }
    };
    state.http_metrics.dbsc("registered");
    let thumb = reg.key.thumbprint();
    audit(
        &state,
        "dbsc_bound",
        c.uid.as_str(),
        Some(t.sid),
        &headers,
        Some(addr),
        Some(&thumb),
    );
    let mut resp = axum::Json(session_config(&state, &headers, &reg.key)).into_response();
    set_cookie_headers(&mut resp, &state, Some(&t.short), Some(&t.long), c.remember);
    no_store(&mut resp);
    Ok(resp)
}

/// 403 with a fresh challenge for the session of `c`, named by `id`.
fn challenge_answer(state: &AppState, c: &LongClaims, id: &str, now: UnixMs) -> Result<Response, ApiError> {
    let ch = challenge(state, c.uid, c.sid, now).ok_or_else(ApiError::internal)?;
    let v = HeaderValue::from_str(&format!("\"{ch}\";id=\"{id}\"")).map_err(|_| ApiError::internal())?;
    state.http_metrics.dbsc("challenged");
    Err(ApiError::new(
        ErrorCode::ChallengeRequired,
        "sign this challenge (Secure-Session-Challenge) with the session's device key",
    )
    .with_header(CHALLENGE, v))
}

/// `{"continue": false}`: the session has ended; the browser ends its
/// device-bound session (and the cookies are cleared).
fn ended(state: &AppState) -> Response {
    state.http_metrics.dbsc("ended");
    let mut resp = axum::Json(serde_json::json!({ "continue": false })).into_response();
    clear_cookies(&mut resp, state);
    no_store(&mut resp);
    resp
}

/// `POST /v1/dbsc/refresh`: a new short cookie for a device-bound session,
/// against a proof of its key.
pub async fn refresh(
    State(state): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (now, long) = begin(&state, &headers)?;
    // Crypto only up to the verdict: nothing before it may wait on the store.
    let (c, key) = state
        .verifier
        .keys()
        .open_long_bound(long, now)
        .map_err(|e| ApiError::from(Reject::Invalid(e)))?;
    let Some(key) = key.as_deref().and_then(DeviceKey::from_bytes) else {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            "this session is not bound to a device key (register it first)",
        ));
    };
    let id = key.thumbprint();
    if header_text(&headers, &SESSION_ID)?.is_some_and(|s| s != id) {
        return Err(ApiError::not_found(
            "no device-bound session with this Sec-Secure-Session-Id belongs to these cookies",
        ));
    }
    let Some(jwt) = header_text(&headers, &RESPONSE)? else {
        return challenge_answer(&state, &c, &id, now);
    };
    let jti = match check_refresh(jwt, &key) {
        Ok(jti) => jti,
        Err(e @ (ProofError::Signature | ProofError::KeyMismatch | ProofError::Alg(_))) => {
            return Err(bad_proof(&state, &headers, addr, &c, &e, now).await);
        }
        Err(e) => {
            state.http_metrics.dbsc("refused");
            return Err(malformed(&e));
        }
    };
    let fresh = state
        .verifier
        .keys()
        .open_challenge(&jti, now)
        .is_ok_and(|ch| ch.uid == c.uid && ch.sid == c.sid);
    if !fresh {
        return challenge_answer(&state, &c, &id, now);
    }
    match state.verifier.refresh_bound(long, &key, now).await {
        Ok(v) => Ok(refreshed(&state, &headers, &key, &v)),
        Err(Reject::Revoked | Reject::UnknownSession | Reject::Expired | Reject::ProofRequired) => Ok(ended(&state)),
        Err(e) => {
            // Unavailable (the fallback policy refuses), internal: 5xx,
            // which keeps the browser's session for a later try.
            state.http_metrics.dbsc("failed");
            Err(ApiError::from(e))
        }
    }
}

fn refreshed(state: &AppState, h: &HeaderMap, key: &DeviceKey, v: &Verified) -> Response {
    state.http_metrics.dbsc(match v.path {
        crate::verify::Path::Fallback => "refreshed_fallback",
        _ => "refreshed",
    });
    let mut resp = axum::Json(session_config(state, h, key)).into_response();
    set_cookie_headers(&mut resp, state, v.short.as_ref(), v.long.as_ref(), v.remember);
    if let Ok(p) = HeaderValue::from_str(v.path.as_str()) {
        resp.headers_mut().insert(HeaderName::from_static("x-auth-path"), p);
    }
    no_store(&mut resp);
    resp
}

/// A refresh proof signed by another key than the session's: the cookies
/// were copied off the device. Audited; with `dbsc.on_bad_proof = "revoke"`
/// the session ends everywhere.
async fn bad_proof(
    state: &Arc<AppState>,
    h: &HeaderMap,
    addr: std::net::IpAddr,
    c: &LongClaims,
    e: &ProofError,
    now: UnixMs,
) -> ApiError {
    state.http_metrics.dbsc("proof_failed");
    // The revocation and its audit line run in a task of their own: a
    // client that goes away (or resets the connection) while the store is
    // slow cannot leave the session alive or the event unrecorded.
    let mut agent = HeaderMap::new();
    if let Some(v) = h.get(header::USER_AGENT) {
        agent.insert(header::USER_AGENT, v.clone());
    }
    let task = tokio::spawn(judge_bad_proof(state.clone(), agent, addr, *c, e.to_string(), now));
    if let Err(err) = task.await {
        tracing::error!(error = %err, "dbsc: the bad-proof task failed");
    }
    ApiError::new(
        ErrorCode::InvalidProof,
        "the proof is not signed by this session's device key",
    )
}

/// [`bad_proof`]'s work: the revocation (with `on_bad_proof = "revoke"`)
/// and the audit line.
async fn judge_bad_proof(
    state: Arc<AppState>,
    h: HeaderMap,
    addr: std::net::IpAddr,
    c: LongClaims,
    e: String,
    now: UnixMs,
) {
    let revoke = state.config.dbsc.on_bad_proof == OnBadProof::Revoke;
    let detail = if revoke {
        match state.verifier.end_session(c.uid, c.sid, now).await {
            Ok(ended) => format!(
                "{e}; session revoked{}",
                if ended.nothing() { " (already gone)" } else { "" }
            ),
            Err(err) => {
                // At least this node refuses it from now on.
                let sids = vec![c.sid];
                state
                    .verifier
                    .revoke_locally(&crate::store::Revocation::Sessions { uid: c.uid, sids }, now);
                tracing::error!(error = %err, uid = %c.uid, sid = %c.sid, "dbsc: a bad proof's session could not be revoked in the store (unreachable, and no outbox took it); refused on this node only");
                format!("{e}; revoked on this node only (the store was unreachable)")
            }
        }
    } else {
        format!("{e}; refused")
    };
    tracing::warn!(uid = %c.uid, sid = %c.sid, user_agent = user_agent(&h).unwrap_or(""), "dbsc: refresh proof by another key than the session's");
    audit(
        &state,
        "dbsc_proof_failed",
        c.uid.as_str(),
        Some(c.sid),
        &h,
        Some(addr),
        Some(&detail),
    );
}
