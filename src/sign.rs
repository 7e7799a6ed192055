//! Signatures of the requests twintoken sends to webhooks (one-time-code
//! deliveries and audit events), and lower-case hex. Below `codes` and
//! `audit`, which both use it; it knows nothing of either.
//!
//! Every delivery carries
//! - `X-Twintoken-Delivery-Id: <32 hex digits>`, random per delivery, and
//! - `X-Twintoken-Signature: t=<unix seconds>,v2=<hex>`, where `<hex>` is
//!   HMAC-SHA256 with the webhook secret over
//!   `"<purpose>.<delivery id>.<t>." + <raw body>`, `<purpose>` being
//!   `code` or `audit`.
//!
//! The purpose in the signed bytes means that a delivery of one kind never
//! verifies as the other, even where both share one secret; the delivery id
//! lets a receiver drop replays: remember the ids seen within the timestamp
//! tolerance and refuse one seen before ([`verify`] checks the rest).

use std::time::Duration;

use hmac::{KeyInit as _, Mac as _};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-twintoken-signature";
/// The delivery id header.
pub const DELIVERY_ID_HEADER: &str = "x-twintoken-delivery-id";

/// What a signed delivery is for: part of the signed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A one-time code for the code webhook.
    Code,
    /// An audit event for the events webhook.
    Audit,
}

impl Purpose {
    /// `code` or `audit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Code => "code",
            Purpose::Audit => "audit",
        }
    }
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter().fold(String::with_capacity(2 * b.len()), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// A new random delivery id (32 hex digits).
pub fn delivery_id() -> Result<String, getrandom::Error> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)?;
    Ok(hex(&id))
}

fn mac(secret: &[u8], purpose: Purpose, id: &str, timestamp: u64, body: &[u8]) -> Option<hmac::Hmac<sha2::Sha256>> {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).ok()?;
    m.update(purpose.as_str().as_bytes());
    m.update(b".");
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    Some(m)
}

/// The signature header value for delivery `id` of `body` for `purpose`,
/// sent at `timestamp` (seconds).
pub fn sign(secret: &[u8], purpose: Purpose, id: &str, timestamp: u64, body: &[u8]) -> String {
    let hex = mac(secret, purpose, id, timestamp, body)
        .map(|m| hex(&m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("t={timestamp},v2={hex}")
}

/// A receiver's check of a delivery: the signature header is well-formed,
/// made with `secret` over `purpose`, the delivery `id` (a 32-hex-digit
/// `X-Twintoken-Delivery-Id`) and `body`, and `t` is within `tolerance` of
/// `now_secs`. Constant-time comparison. Dropping replays within the
/// tolerance (an id seen before) is the receiver's part.
pub fn verify(
    secret: &[u8],
    purpose: Purpose,
    header: &str,
    id: &str,
    body: &[u8],
    now_secs: u64,
    tolerance: Duration,
) -> bool {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let mut t = None;
    let mut v2 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", x)) => t = x.parse::<u64>().ok(),
            Some(("v2", x)) => v2 = Some(x),
            _ => {}
        }
    }
    let (Some(t), Some(v2)) = (t, v2) else { return false };
    if now_secs.abs_diff(t) > tolerance.as_secs() {
        return false;
    }
    let Some(expected) = mac(secret, purpose, id, t, body) else {
        return false;
    };
    let expected = hex(&expected.finalize().into_bytes());
    crate::ct::eq(expected.as_bytes(), v2.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5b1f0c6a0e8b4f0a9d6c3e2b1a0f9e8d";

    #[test]
    fn signatures_verify_and_reject_tampering_staleness_and_other_secrets() {
        let body = br#"{"code":"123456"}"#;
        let h = sign(b"secret", Purpose::Code, ID, 1_700_000_000, body);
        let ok = |h: &str, id: &str, body: &[u8], now: u64, secret: &[u8]| {
            verify(secret, Purpose::Code, h, id, body, now, Duration::from_secs(300))
        };
        assert!(ok(&h, ID, body, 1_700_000_100, b"secret"));
        assert!(!ok(&h, ID, br#"{"code":"123457"}"#, 1_700_000_100, b"secret"));
        assert!(!ok(&h, ID, body, 1_700_000_100, b"other"));
        assert!(!ok(&h, ID, body, 1_700_000_400, b"secret"), "stale");
        assert!(
            !ok(&h, "5b1f0c6a0e8b4f0a9d6c3e2b1a0f9e8e", body, 1_700_000_100, b"secret"),
            "another delivery's id"
        );
        assert!(!ok(&h, "", body, 1_700_000_100, b"secret"));
        assert!(!ok("t=1700000000", ID, body, 1_700_000_000, b"secret"));
        assert!(!ok("garbage", ID, body, 1_700_000_000, b"secret"));
        let forged = h.replace("t=1700000000", "t=1700000300");
        assert!(!ok(&forged, ID, body, 1_700_000_300, b"secret"));
    }

    /// The second review: code deliveries and audit events were signed in
    /// the same format, so with one shared secret an audit event was a
    /// validly signed code delivery.
    #[test]
    fn one_purpose_never_verifies_as_the_other() {
        let body = br#"{"event":"login_ok"}"#;
        let audit = sign(b"shared secret!!!", Purpose::Audit, ID, 1_700_000_000, body);
        let tol = Duration::from_secs(300);
        assert!(verify(
            b"shared secret!!!",
            Purpose::Audit,
            &audit,
            ID,
            body,
            1_700_000_000,
            tol
        ));
        assert!(!verify(
            b"shared secret!!!",
            Purpose::Code,
            &audit,
            ID,
            body,
            1_700_000_000,
            tol
        ));
    }
}
