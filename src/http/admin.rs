//! The admin API, behind `Authorization: Bearer <server.admin_token>`
//! (compared in constant time). Absent when no admin token is configured.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::ClientAddr;
use super::auth::{Body, check_device, login_error, parse_sid, session_json, sessions_json};
use super::error::ApiError;
use crate::store::SessionStore;
use crate::tokens::UserId;

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
    // absent header never equals anything.
    if given.is_some_and(|g| !expected.is_empty() && crate::ct::eq(g.as_bytes(), expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
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
        .map_err(login_error)?;
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
    let revoked = state.verifier.revoke_all(uid(&u)?, state.clock.now()).await?;
    let n = revoked.len().to_string();
    super::auth::audit("kick", &u, None, &headers, Some(addr), Some(&n));
    Ok(axum::Json(serde_json::json!({ "status": "revoked", "sessions_ended": revoked.len() })).into_response())
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
    let revoked = state.verifier.revoke(u, sid, state.clock.now()).await?;
    if revoked.is_empty() {
        return Err(ApiError::not_found("no such session for this user"));
    }
    super::auth::audit("kick_session", u.as_str(), Some(sid), &headers, Some(addr), None);
    Ok(axum::Json(serde_json::json!({ "status": "revoked", "sessions_ended": revoked.len() })).into_response())
}

/// `GET /v1/admin/stats`: online users and sessions.
pub async fn stats(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let s = state.verifier.store().stats(state.clock.now()).await?;
    Ok(axum::Json(serde_json::json!({ "online_users": s.users, "online_sessions": s.sessions })).into_response())
}
