//! Code senders: how a one-time code reaches its destination.
//!
//! - `log`: the code is written to the service log (development only: a log
//!   is not a delivery channel);
//! - `webhook`: the code is POSTed as JSON to `code_login.webhook_url`, for
//!   a relay that talks to an SMS or e-mail provider. The request carries
//!   `X-Twintoken-Signature: t=<unix seconds>,v1=<hex>` where the hex is
//!   HMAC-SHA256(webhook_secret, "<t>.<body>"); [`verify_signature`] is
//!   the receiver's check. Any 2xx answer counts as delivered.

use std::time::Duration;

use hmac::{KeyInit as _, Mac as _};

use super::{Code, Destination};
use crate::config::{CodeLoginConfig, CodeSender};
use crate::time::UnixMs;

/// The signature header of webhook deliveries.
pub const SIGNATURE_HEADER: &str = "x-twintoken-signature";

/// Why a code could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The receiver did not answer in time (it may still deliver).
    #[error("the code sender did not answer within {0:?}")]
    Timeout(Duration),
    /// The receiver answered with a non-2xx status.
    #[error("the code sender refused the code (HTTP {0})")]
    Refused(u16),
    /// The receiver could not be reached.
    #[error("the code sender is unreachable: {0}")]
    Unreachable(String),
    /// The sender cannot be built from the configuration.
    #[error("code sender: {0}")]
    Config(String),
}

/// A configured sender.
pub enum Sender {
    /// Writes codes to the log.
    Log,
    /// POSTs signed JSON.
    Webhook(Webhook),
}

/// The webhook sender.
pub struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: zeroize::Zeroizing<Vec<u8>>,
    timeout: Duration,
}

/// The JSON a webhook receives.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Unique per delivery (random), for the receiver's deduplication.
    pub id: String,
    /// The normalised phone number or e-mail address.
    pub destination: String,
    /// `phone` or `email`.
    pub kind: String,
    /// The six digits.
    pub code: String,
    /// RFC 3339 time after which the code no longer works.
    pub expires_at: String,
    /// Seconds the code lives.
    pub ttl_seconds: u64,
}

impl Sender {
    /// From `[code_login]` (validated: a webhook has a URL and a secret).
    pub fn from_config(c: &CodeLoginConfig) -> Result<Sender, DeliveryError> {
        match c.sender {
            CodeSender::Log => Ok(Sender::Log),
            CodeSender::Webhook => {
                let url = c
                    .webhook_url
                    .as_deref()
                    .ok_or_else(|| DeliveryError::Config("code_login.webhook_url is not set".into()))?;
                let url = reqwest::Url::parse(url)
                    .map_err(|e| DeliveryError::Config(format!("code_login.webhook_url {url:?}: {e}")))?;
                let secret = c
                    .webhook_secret
                    .as_deref()
                    .ok_or_else(|| DeliveryError::Config("code_login.webhook_secret is not set".into()))?;
                let client = reqwest::Client::builder()
                    .timeout(c.webhook_timeout)
                    .connect_timeout(c.webhook_timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| DeliveryError::Config(format!("cannot build the HTTP client: {e}")))?;
                Ok(Sender::Webhook(Webhook {
                    client,
                    url,
                    secret: zeroize::Zeroizing::new(secret.as_bytes().to_vec()),
                    timeout: c.webhook_timeout,
                }))
            }
        }
    }

    /// Delivers `code` for `dest`.
    pub async fn deliver(
        &self,
        dest: &Destination,
        code: &Code,
        expires: UnixMs,
        now: UnixMs,
    ) -> Result<(), DeliveryError> {
        match self {
            Sender::Log => {
                tracing::info!(
                    destination = %dest, code = code.reveal(), %expires,
                    "one-time code (log sender, for development: configure code_login.sender = \"webhook\" to deliver codes)"
                );
                Ok(())
            }
            Sender::Webhook(w) => w.deliver(dest, code, expires, now).await,
        }
    }
}

impl Webhook {
    async fn deliver(
        &self,
        dest: &Destination,
        code: &Code,
        expires: UnixMs,
        now: UnixMs,
    ) -> Result<(), DeliveryError> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| DeliveryError::Config(format!("random source failed: {e}")))?;
        let payload = Payload {
            id: super::hex(&id),
            destination: dest.as_str().to_string(),
            kind: dest.kind().as_str().to_string(),
            code: code.reveal().to_string(),
            expires_at: expires.to_string(),
            ttl_seconds: expires.0.saturating_sub(now.0) / 1000,
        };
        let body = serde_json::to_vec(&payload).map_err(|e| DeliveryError::Config(format!("payload: {e}")))?;
        let signature = sign(&self.secret, now.0 / 1000, &body);
        let req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send();
        // reqwest's own timeout covers the whole exchange; this one also
        // bounds anything before it (DNS included).
        let resp = match tokio::time::timeout(self.timeout, req).await {
            Err(_) => return Err(DeliveryError::Timeout(self.timeout)),
            Ok(Err(e)) if e.is_timeout() => return Err(DeliveryError::Timeout(self.timeout)),
            Ok(Err(e)) => {
                // The URL may carry credentials: report the error without it.
                return Err(DeliveryError::Unreachable(e.without_url().to_string()));
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Refused(status.as_u16()))
        }
    }
}

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Option<hmac::Hmac<sha2::Sha256>> {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).ok()?;
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    Some(m)
}

/// The signature header value for `body` sent at `timestamp` (seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let hex = mac(secret, timestamp, body)
        .map(|m| super::hex(&m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("t={timestamp},v1={hex}")
}

/// A receiver's check of a signature header: well-formed, made with
/// `secret` over `body`, and `t` within `tolerance` of `now_secs` (so a
/// captured request cannot be replayed later). Constant-time comparison.
pub fn verify_signature(secret: &[u8], header: &str, body: &[u8], now_secs: u64, tolerance: Duration) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", x)) => t = x.parse::<u64>().ok(),
            Some(("v1", x)) => v1 = Some(x),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    if now_secs.abs_diff(t) > tolerance.as_secs() {
        return false;
    }
    let Some(expected) = mac(secret, t, body) else {
        return false;
    };
    let expected = super::hex(&expected.finalize().into_bytes());
    crate::ct::eq(expected.as_bytes(), v1.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_reject_tampering_staleness_and_other_secrets() {
        let body = br#"{"code":"123456"}"#;
        let h = sign(b"secret", 1_700_000_000, body);
        assert!(h.starts_with("t=1700000000,v1="));
        let ok = |h: &str, body: &[u8], now: u64, secret: &[u8]| {
            verify_signature(secret, h, body, now, Duration::from_secs(300))
        };
        assert!(ok(&h, body, 1_700_000_100, b"secret"));
        assert!(!ok(&h, br#"{"code":"123457"}"#, 1_700_000_100, b"secret"));
        assert!(!ok(&h, body, 1_700_000_100, b"other"));
        assert!(!ok(&h, body, 1_700_000_400, b"secret"));
        assert!(!ok("t=1700000000", body, 1_700_000_000, b"secret"));
        assert!(!ok("garbage", body, 1_700_000_000, b"secret"));
        let forged = h.replace("t=1700000000", "t=1700000300");
        assert!(!ok(&forged, body, 1_700_000_300, b"secret"));
    }
}
