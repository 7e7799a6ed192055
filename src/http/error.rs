//! The one error type of the HTTP layer: every failure, including axum's
//! own rejections (bad JSON, wrong content type, oversized body), becomes
//! `{"error": "<code>", "message": "<human text>"}` with the right status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::verify::Reject;

/// Every error code the HTTP API answers with: it owns its status and its
/// wire name (the `error` field; `docs/http-api.md` and the OpenAPI
/// document list the same set). Handlers name codes only through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// `bad_request` (bad request).
    BadRequest,
    /// `no_password` (bad request).
    NoPassword,
    /// `invalid_destination` (bad request).
    InvalidDestination,
    /// `missing` (unauthorized).
    Missing,
    /// `invalid` (unauthorized).
    Invalid,
    /// `expired` (unauthorized).
    Expired,
    /// `revoked` (unauthorized).
    Revoked,
    /// `unknown_session` (unauthorized).
    UnknownSession,
    /// `reauth_required` (unauthorized).
    ReauthRequired,
    /// `proof_required` (unauthorized).
    ProofRequired,
    /// `invalid_proof` (unauthorized): a device-bound-session proof that
    /// does not verify, is not for this session, or answers no challenge of
    /// ours.
    InvalidProof,
    /// `challenge_required` (forbidden): a device-bound-session refresh
    /// without a proof over a fresh challenge; the answer carries one.
    ChallengeRequired,
    /// `already_bound` (conflict): the session is bound to a device key.
    AlreadyBound,
    /// `invalid_credentials` (unauthorized).
    InvalidCredentials,
    /// `invalid_code` (unauthorized).
    InvalidCode,
    /// `unauthorized` (unauthorized).
    Unauthorized,
    /// `csrf` (forbidden).
    Csrf,
    /// `session_limit` (forbidden).
    SessionLimit,
    /// `banned` (forbidden).
    Banned,
    /// `not_found` (not found).
    NotFound,
    /// `method_not_allowed` (method not allowed).
    MethodNotAllowed,
    /// `request_timeout` (request timeout): the body did not arrive in time.
    RequestTimeout,
    /// `too_large` (payload too large).
    TooLarge,
    /// `unsupported_media_type` (unsupported media type).
    UnsupportedMediaType,
    /// `throttled` (too many requests).
    Throttled,
    /// `too_many_codes` (too many requests).
    TooManyCodes,
    /// `headers_too_large` (request header fields too large).
    HeadersTooLarge,
    /// `internal` (internal server error).
    Internal,
    /// `sender_failed` (bad gateway).
    SenderFailed,
    /// `unavailable` (service unavailable).
    Unavailable,
    /// `sender_timeout` (gateway timeout).
    SenderTimeout,
}

impl ErrorCode {
    /// Every code, for documentation checks.
    pub const ALL: [ErrorCode; 31] = [
        ErrorCode::BadRequest,
        ErrorCode::NoPassword,
        ErrorCode::InvalidDestination,
        ErrorCode::Missing,
        ErrorCode::Invalid,
        ErrorCode::Expired,
        ErrorCode::Revoked,
        ErrorCode::UnknownSession,
        ErrorCode::ReauthRequired,
        ErrorCode::ProofRequired,
        ErrorCode::InvalidProof,
        ErrorCode::ChallengeRequired,
        ErrorCode::AlreadyBound,
        ErrorCode::InvalidCredentials,
        ErrorCode::InvalidCode,
        ErrorCode::Unauthorized,
        ErrorCode::Csrf,
        ErrorCode::SessionLimit,
        ErrorCode::Banned,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTimeout,
        ErrorCode::TooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Throttled,
        ErrorCode::TooManyCodes,
        ErrorCode::HeadersTooLarge,
        ErrorCode::Internal,
        ErrorCode::SenderFailed,
        ErrorCode::Unavailable,
        ErrorCode::SenderTimeout,
    ];

    /// The HTTP status this code is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::NoPassword => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidDestination => StatusCode::BAD_REQUEST,
            ErrorCode::Missing => StatusCode::UNAUTHORIZED,
            ErrorCode::Invalid => StatusCode::UNAUTHORIZED,
            ErrorCode::Expired => StatusCode::UNAUTHORIZED,
            ErrorCode::Revoked => StatusCode::UNAUTHORIZED,
            ErrorCode::UnknownSession => StatusCode::UNAUTHORIZED,
            ErrorCode::ReauthRequired | ErrorCode::ProofRequired => StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidProof => StatusCode::UNAUTHORIZED,
            ErrorCode::ChallengeRequired => StatusCode::FORBIDDEN,
            ErrorCode::AlreadyBound => StatusCode::CONFLICT,
            ErrorCode::InvalidCredentials => StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidCode => StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Csrf => StatusCode::FORBIDDEN,
            ErrorCode::SessionLimit => StatusCode::FORBIDDEN,
            ErrorCode::Banned => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::Throttled => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyCodes => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::SenderFailed => StatusCode::BAD_GATEWAY,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::SenderTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The wire name (`{"error": "<name>"}`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NoPassword => "no_password",
            ErrorCode::InvalidDestination => "invalid_destination",
            ErrorCode::Missing => "missing",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Expired => "expired",
            ErrorCode::Revoked => "revoked",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::ReauthRequired => "reauth_required",
            ErrorCode::ProofRequired => "proof_required",
            ErrorCode::InvalidProof => "invalid_proof",
            ErrorCode::ChallengeRequired => "challenge_required",
            ErrorCode::AlreadyBound => "already_bound",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::InvalidCode => "invalid_code",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Csrf => "csrf",
            ErrorCode::SessionLimit => "session_limit",
            ErrorCode::Banned => "banned",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Throttled => "throttled",
            ErrorCode::TooManyCodes => "too_many_codes",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::Internal => "internal",
            ErrorCode::SenderFailed => "sender_failed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::SenderTimeout => "sender_timeout",
        }
    }
}

/// An HTTP error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human-readable text (never secrets).
    pub message: String,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
    /// Extra headers (e.g. `Set-Cookie` to clear cookies with a 401).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: code.status(),
            code,
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(ErrorCode::Unavailable, message);
        e.retry_after = Some(1);
        e
    }

    /// 500 `internal`: a failure on our side that the client cannot fix;
    /// the details are in the server log.
    pub fn internal() -> ApiError {
        ApiError::new(
            ErrorCode::Internal,
            "the server failed to handle this request (see the server log)",
        )
    }

    /// With a `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// With an extra header.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }
}

impl From<Reject> for ApiError {
    fn from(r: Reject) -> ApiError {
        let message = match &r {
            Reject::Missing => "no login token: send the cookies, or Authorization: Bearer <long token>".to_string(),
            Reject::Invalid(e) => {
                tracing::debug!(reason = %e, "invalid token");
                "the token is not valid".to_string()
            }
            Reject::Expired => "the login has expired; log in again".to_string(),
            Reject::Revoked => "the session was ended; log in again".to_string(),
            Reject::UnknownSession => "the session is not known (it ended, or never existed); log in again".to_string(),
            Reject::Unavailable(why) => return ApiError::unavailable(*why),
            Reject::Internal => return ApiError::internal(),
            Reject::ReauthRequired => {
                "the session's last authentication is older than this route allows: re-authenticate with POST /v1/reauth"
                    .to_string()
            }
            Reject::ProofRequired => {
                "this session is bound to a device key: its long token alone is not enough; the browser renews the short token with a proof"
                    .to_string()
            }
        };
        let code = match r {
            Reject::Missing => ErrorCode::Missing,
            Reject::Invalid(_) => ErrorCode::Invalid,
            Reject::Expired => ErrorCode::Expired,
            Reject::Revoked => ErrorCode::Revoked,
            Reject::UnknownSession => ErrorCode::UnknownSession,
            Reject::ReauthRequired => ErrorCode::ReauthRequired,
            Reject::ProofRequired => ErrorCode::ProofRequired,
            Reject::Unavailable(_) => ErrorCode::Unavailable,
            Reject::Internal => ErrorCode::Internal,
        };
        ApiError::new(code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code.as_str(), "message": self.message });
        let mut resp = (self.status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            let v = format!(
                "Bearer realm=\"twintoken\", error=\"invalid_token\", error_description=\"{}\"",
                self.code.as_str()
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still arrive: this connection cannot
            // carry another request (hyper leaves the header out on HTTP/2).
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        for (k, v) in self.headers {
            h.append(k, v);
        }
        resp
    }
}

impl From<crate::store::StoreError> for ApiError {
    /// An unreachable store is 503 (try again shortly); any other store
    /// error is this request's failure, 500, logged with its cause.
    fn from(e: crate::store::StoreError) -> ApiError {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "session store unavailable");
            ApiError::unavailable("the session store is unreachable; try again shortly")
        } else {
            tracing::error!(error = %e, "session store call failed");
            ApiError::internal()
        }
    }
}

/// Maps axum's body rejections (JSON, form, bytes) to the project's shape.
pub fn from_rejection(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            ErrorCode::TooLarge,
            "the request body is larger than the 16 KiB allowed",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send application/json or application/x-www-form-urlencoded",
        ),
        _ => ApiError::bad_request(text),
    }
}
