//! The admin API, behind `Authorization: Bearer <server.admin_token>`
//! (compared by SHA-256 digest in constant time). Absent when no admin token is configured.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::ClientAddr;
use super::auth::{parse_sid, sessions_json};
use super::error::{ApiError, ErrorCode};
use super::login::{Body, audit, check_device, login_error, login_outcome, pending_response, session_json};
use crate::store::SessionStore;
use crate::store::bans::{Ban, BanStore, MAX_REASON};
use crate::tokens::UserId;
use crate::verify::Ended;

fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.config.server.admin_token else {
        return Err(ApiError::not_found(
            "the admin API is disabled (set server.admin_token)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|g| !g.is_empty());
    // Compared only when a token is configured and one is given: an empty
    // configured token is refused at start (`Config::validate`), and an
    // absent header never equals anything. By digest: neither where the
    // given token differs nor the configured one's length shows in the time.
    if given.is_some_and(|g| !expected.is_empty() && crate::ct::eq_secret(g.as_bytes(), expected.expose().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Unauthorized,
            "admin endpoints need Authorization: Bearer <admin token>",
        ))
    }
}

fn uid(s: &str) -> Result<UserId, ApiError> {
    UserId::new(s).map_err(|e| ApiError::bad_request(format!("user_id: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    user_id: String,
    device: Option<String>,
}

/// `POST /v1/admin/sessions`: trusted issue for a user id (for apps that
/// check passwords themselves). No cookies: the app hands the tokens on.
pub async fn issue(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Body(req): Body<IssueRequest>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let u = uid(&req.user_id)?;
    let device = check_device(req.device)?;
    let t = state
        .verifier
        .login(u, device, None, state.clock.now())
        .await
        .map_err(|e| {
            state.http_metrics.login("admin", login_outcome(&e));
            login_error(e, state.clock.now())
        })?;
    state.http_metrics.login("admin", "ok");
    Ok((StatusCode::CREATED, axum::Json(session_json(&t))).into_response())
}

/// `GET /v1/admin/users/{uid}/sessions`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Path(u): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    Ok(axum::Json(sessions_json(&state, &uid(&u)?, None).await?).into_response())
}

/// `DELETE /v1/admin/users/{uid}/sessions`: kick a user.
pub async fn kick_user(
    State(state): State<Arc<AppState>>,
    Path(u): Path<String>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let ended = state.verifier.end_user(uid(&u)?, state.clock.now()).await?;
    audit(
        &state,
        "kick",
        &u,
        None,
        &headers,
        Some(addr),
        Some(&ended.count_detail()),
    );
    Ok(kicked(ended))
}

/// `DELETE /v1/admin/users/{uid}/sessions/{sid}`: kick one session.
pub async fn kick_session(
    State(state): State<Arc<AppState>>,
    Path((u, sid)): Path<(String, String)>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let (u, sid) = (uid(&u)?, parse_sid(&sid)?);
    let ended = state.verifier.end_session(u, sid, state.clock.now()).await?;
    if ended.nothing() {
        return Err(ApiError::not_found("no such session for this user"));
    }
    audit(
        &state,
        "kick_session",
        u.as_str(),
        Some(sid),
        &headers,
        Some(addr),
        ended.pending_detail(),
    );
    Ok(kicked(ended))
}

/// A kick's answer: how many sessions ended, or 202 pending.
fn kicked(ended: Ended) -> Response {
    match ended {
        Ended::Now(revoked) => {
            axum::Json(serde_json::json!({ "status": "revoked", "sessions_ended": revoked.len() })).into_response()
        }
        Ended::Pending => pending_response(),
    }
}

/// `GET /v1/admin/stats`: online users and sessions.
pub async fn stats(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let s = state.verifier.store().stats(state.clock.now()).await?;
    Ok(axum::Json(serde_json::json!({ "online_users": s.users, "online_sessions": s.sessions })).into_response())
}

/// The longest ban (366 days): longer is what `users disable` is for.
pub const MAX_BAN: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanRequest {
    duration: String,
    #[serde(default)]
    reason: String,
}

/// `POST /v1/admin/users/{uid}/ban` `{duration, reason?}`: refuses the
/// user's logins until the ban ends and ends every session now (like a
/// kick, on every node). A ban may precede the account (unknown ids are
/// fine). Replaces an earlier ban.
pub async fn ban(
    State(state): State<Arc<AppState>>,
    Path(u): Path<String>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Body(req): Body<BanRequest>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let user = uid(&u)?;
    let d = humantime::parse_duration(req.duration.trim()).map_err(|e| {
        ApiError::bad_request(format!(
            "duration {:?} is not a duration like 30m, 2h or 7d: {e}",
            req.duration
        ))
    })?;
    if d.is_zero() || d > MAX_BAN {
        return Err(ApiError::bad_request(format!(
            "duration must be more than 0 and at most 366d (for longer, disable the user), not {:?}",
            req.duration
        )));
    }
    if req.reason.len() > MAX_REASON || req.reason.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "reason must be at most {MAX_REASON} bytes without control characters"
        )));
    }
    let now = state.clock.now();
    let b = Ban {
        until: now.plus(d),
        reason: req.reason,
    };
    let ended = state.verifier.ban(user, &b, now).await?;
    let detail = format!("until {} ({} sessions ended) {}", b.until, ended.len(), b.reason);
    audit(&state, "ban", &u, None, &headers, Some(addr), Some(&detail));
    Ok(axum::Json(serde_json::json!({
        "status": "banned",
        "until": b.until.to_string(),
        "reason": b.reason,
        "sessions_ended": ended.len(),
    }))
    .into_response())
}

/// `DELETE /v1/admin/users/{uid}/ban`: lifts the ban (404 when none).
pub async fn unban(
    State(state): State<Arc<AppState>>,
    Path(u): Path<String>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let user = uid(&u)?;
    state.verifier.store_available()?;
    let r = state.verifier.store().ban_lift(&user, state.clock.now()).await;
    state.verifier.note_store_result(&r);
    if !r? {
        return Err(ApiError::not_found("this user is not banned"));
    }
    audit(&state, "unban", &u, None, &headers, Some(addr), None);
    Ok(axum::Json(serde_json::json!({ "status": "unbanned" })).into_response())
}

/// `GET /v1/admin/users/{uid}`: the user's live session count and ban.
pub async fn user(
    State(state): State<Arc<AppState>>,
    Path(u): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let user = uid(&u)?;
    let now = state.clock.now();
    state.verifier.store_available()?;
    let store = state.verifier.store();
    let sessions = store.list(&user, now).await;
    state.verifier.note_store_result(&sessions);
    let ban = store.ban_get(&user, now).await;
    state.verifier.note_store_result(&ban);
    let ban = ban?.map(|b: Ban| {
        serde_json::json!({
            "until": b.until.to_string(),
            "reason": b.reason,
            "retry_after_seconds": b.until.0.saturating_sub(now.0).div_ceil(1000),
        })
    });
    Ok(axum::Json(serde_json::json!({
        "user_id": user.as_str(),
        "sessions": sessions?.len(),
        "ban": ban,
    }))
    .into_response())
}
