//! Code senders: how a one-time code reaches its destination.
//!
//! - `log`: the code is written to the service log (development only: a log
//!   is not a delivery channel);
//! - `webhook`: the code is POSTed as JSON to `code_login.webhook_url`, for
//!   a relay that talks to an SMS or e-mail provider, signed for the purpose
//!   `code` with a delivery id ([`crate::sign`]; [`crate::sign::verify`] is
//!   the receiver's check). Any 2xx answer counts as delivered.

use std::time::Duration;

use super::{Code, Destination};
use crate::config::{CodeLoginConfig, CodeSender};
use crate::sign::{DELIVERY_ID_HEADER, Purpose, SIGNATURE_HEADER};
use crate::time::UnixMs;

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
                    .as_ref()
                    .map(crate::config::Secret::expose)
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
        let id = crate::sign::delivery_id().map_err(|e| DeliveryError::Config(format!("random source failed: {e}")))?;
        let payload = Payload {
            id: id.clone(),
            destination: dest.as_str().to_string(),
            kind: dest.kind().as_str().to_string(),
            code: code.reveal().to_string(),
            expires_at: expires.to_string(),
            ttl_seconds: expires.0.saturating_sub(now.0) / 1000,
        };
        let body = serde_json::to_vec(&payload).map_err(|e| DeliveryError::Config(format!("payload: {e}")))?;
        let signature = crate::sign::sign(&self.secret, Purpose::Code, &id, now.0 / 1000, &body);
        let req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(DELIVERY_ID_HEADER, id)
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
