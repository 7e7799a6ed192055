//! The one error type of the HTTP layer: every failure, including axum's
//! own rejections (bad JSON, wrong content type, oversized body), becomes
//! `{"error": "<code>", "message": "<human text>"}` with the right status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::verify::Reject;

/// An HTTP error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable text (never secrets).
    pub message: String,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
    /// Extra headers (e.g. `Set-Cookie` to clear cookies with a 401).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        e.retry_after = Some(1);
        e
    }

    /// 500 `internal`: a failure on our side that the client cannot fix;
    /// the details are in the server log.
    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
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
        };
        ApiError::new(StatusCode::UNAUTHORIZED, r.code(), message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        let mut resp = (self.status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            let v = format!(
                "Bearer realm=\"twintoken\", error=\"invalid_token\", error_description=\"{}\"",
                self.code
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
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
            status,
            "too_large",
            "the request body is larger than the 16 KiB allowed",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            "unsupported_media_type",
            "send application/json or application/x-www-form-urlencoded",
        ),
        _ => ApiError::bad_request(text),
    }
}
