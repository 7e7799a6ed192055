//! One-time-code login endpoints (present only with `code_login.enabled`):
//! `POST /v1/login/code/send` and `POST /v1/login/code`. The flow, limits
//! and webhook contract are in `docs/code-login.md`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::client_addr::ClientAddr;
use super::error::ErrorCode;
use super::login::{Body, audit, check_device, check_login_origin, start_session, throttled};
use super::throttle::{self, Account};
use super::{ApiError, AppState};
use crate::codes::sender::DeliveryError;
use crate::codes::{Code, CodeLogin, Destination, SendError};
use crate::store::StoreError;
use crate::store::codes::CheckOutcome;
use crate::tokens::UserId;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    destination: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeLoginRequest {
    destination: String,
    code: String,
    device: Option<String>,
    /// "Remember me": persistent cookies (default) or browser-session ones.
    #[serde(default = "super::login::yes")]
    remember: bool,
}

/// The one answer to every code that does not log in: a wrong code, the
/// last wrong guess that burned it, and no code outstanding look alike, so
/// an answer tells neither that a code is outstanding nor how many guesses
/// it has left.
const CODE_REFUSED: &str = "wrong code, or no code is outstanding for this destination (expired, used, or burned by wrong guesses); request a new one";

fn service(state: &AppState) -> Result<&CodeLogin, ApiError> {
    state
        .codes
        .as_ref()
        .ok_or_else(|| ApiError::not_found("one-time-code login is disabled (code_login.enabled)"))
}

fn destination(s: &str) -> Result<Destination, ApiError> {
    Destination::parse(s).map_err(|e| ApiError::new(ErrorCode::InvalidDestination, e.0))
}

fn store_down(e: &StoreError) -> ApiError {
    if !e.is_unavailable() {
        tracing::error!(error = %e, "one-time code: session store call failed");
        return ApiError::internal();
    }
    tracing::warn!(error = %e, "one-time code: session store unavailable");
    ApiError::unavailable("code login needs the session store, which is unreachable; try again shortly")
}

/// `POST /v1/login/code/send` `{destination}`: 202 whether or not the
/// destination belongs to a user.
pub async fn send(
    State(state): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Body(req): Body<SendRequest>,
) -> Result<Response, ApiError> {
    let codes = service(&state)?;
    check_login_origin(&headers, &state)?;
    let dest = destination(&req.destination)?;
    let v = &state.verifier;
    state
        .throttle
        .admit_send(v, addr, state.clock.now())
        .await
        .map_err(throttled)?;
    v.store_available().map_err(|e| store_down(&e))?;
    // Unknown destinations are stored and limited alike, but nothing is
    // sent to them (no codes to strangers' phones).
    let deliver = state.config.code_login.auto_register || state.users.find_by_destination(&dest).is_some();
    let now = state.clock.now();
    let r = codes.send(v.store().as_ref(), v.keys(), &dest, deliver, now).await;
    match &r {
        Err(SendError::Store(e)) => v.note_store_error(e),
        _ => v.note_store_result(&Ok::<(), StoreError>(())),
    }
    match r {
        Ok(sent) => {
            let body = serde_json::json!({
                "status": "sent",
                "expires_at": sent.expires.to_string(),
                "resend_after_seconds": sent.resend_after.as_secs(),
            });
            Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
        }
        Err(SendError::Limited(wait)) => Err(ApiError::new(
            ErrorCode::TooManyCodes,
            format!(
                "a code was sent to this destination too recently or too often; try again in {}s",
                wait.as_secs().max(1)
            ),
        )
        .retry_after(wait.as_secs())),
        Err(SendError::Store(e)) => Err(store_down(&e)),
        Err(SendError::Internal(m)) => {
            tracing::error!(error = %m, "one-time code: cannot create a code");
            Err(ApiError::unavailable("cannot create a code (see the server log)"))
        }
        Err(SendError::Delivery(e)) => {
            tracing::warn!(error = %e, destination = %dest, "one-time code: delivery failed; code withdrawn");
            Err(match e {
                DeliveryError::Timeout(_) => ApiError::new(
                    ErrorCode::SenderTimeout,
                    "the code could not be sent: the delivery service did not answer in time; request a new code",
                ),
                _ => ApiError::new(
                    ErrorCode::SenderFailed,
                    "the code could not be sent: the delivery service failed; request a new code",
                ),
            })
        }
    }
}

/// `POST /v1/login/code` `{destination, code, device?}`: a session, exactly
/// as a password login creates one.
pub async fn login(
    State(state): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Body(req): Body<CodeLoginRequest>,
) -> Result<Response, ApiError> {
    check_login_origin(&headers, &state)?;
    let device = check_device(req.device)?;
    let uid = match check(&state, addr, &req.destination, &req.code).await {
        Ok(uid) => uid,
        Err(e) => {
            let event = match e.status {
                StatusCode::TOO_MANY_REQUESTS => "login_throttled",
                StatusCode::UNAUTHORIZED => "login_failed",
                _ => return Err(e),
            };
            audit(&state, event, "", None, &headers, Some(addr), Some("code"));
            return Err(e);
        }
    };
    start_session(&state, uid, device, req.remember, &headers, addr, "code").await
}

/// Checks a one-time code for a destination (throttled like passwords):
/// the user it logs in. Shared by code login and re-authentication.
pub async fn check(
    state: &Arc<AppState>,
    addr: IpAddr,
    destination_text: &str,
    code_text: &str,
) -> Result<UserId, ApiError> {
    service(state)?;
    let dest = destination(destination_text)?;
    let code = Code::parse(code_text).ok_or_else(|| ApiError::bad_request("code must be 6 digits"))?;
    // Counted before the check, per (destination, address) and per address,
    // like passwords; each code also survives only
    // code_login.max_attempts_per_code wrong guesses from all addresses.
    let account = Account::Destination(dest.tag());
    let (r, dest) = throttle::attempt(state, account, addr, move |st| async move {
        let r = check_code(&st, &dest, &code).await;
        let right = matches!(r, Ok(CheckOutcome::Accepted));
        ((r, dest), right)
    })
    .await?
    .map_err(throttled)?;
    let refused = || ApiError::new(ErrorCode::InvalidCode, CODE_REFUSED);
    let uid = match r? {
        CheckOutcome::Accepted => state.users.find_by_destination(&dest).or_else(|| {
            state
                .config
                .code_login
                .auto_register
                .then(|| dest.auto_user_id().ok())
                .flatten()
        }),
        CheckOutcome::Wrong { .. } | CheckOutcome::Missing => return Err(refused()),
    };
    // A right code for a destination that is nobody's (auto-registration
    // off) cannot happen through the API (no code is delivered to it), and
    // answers like a missing code.
    uid.ok_or_else(refused)
}

/// One code check against the store.
async fn check_code(state: &AppState, dest: &Destination, code: &Code) -> Result<CheckOutcome, ApiError> {
    let codes = service(state)?;
    let v = &state.verifier;
    v.store_available().map_err(|e| store_down(&e))?;
    let r = codes
        .check(v.store().as_ref(), v.keys(), dest, code, state.clock.now())
        .await;
    v.note_store_result(&r);
    r.map_err(|e| store_down(&e))
}
