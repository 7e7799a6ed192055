//! One-time-code login: a 6-digit code sent to a phone number or an e-mail
//! address, exchanged for a session like a password login.
//!
//! - [`Destination`] parses and normalises where a code goes, and names it
//!   in the store by a [tag](Destination::tag) (no phone number or address
//!   in Redis key names);
//! - [`Code`] draws a code from the OS CSPRNG; the store only ever holds its
//!   [digest], HMAC-SHA256 under the current key's one-time-code subkey
//!   (see [`crate::keys::KeySet::code_key`]), so reading Redis does not
//!   reveal codes and a million guesses offline need the key;
//! - [`sender::Sender`] delivers it (`log` for development, `webhook` with
//!   an HMAC signature);
//! - [`CodeLogin`] ties those to the store's [`CodeStore`] operations.
//!
//! The HTTP endpoints are in `http/code.rs`; the flow and the webhook
//! contract are in `docs/code-login.md`.

pub mod sender;

use std::fmt;
use std::time::Duration;

use hmac::{KeyInit as _, Mac as _};
use sha2::Digest as _;

use crate::config::CodeLoginConfig;
use crate::keys::Keyring;
use crate::store::StoreError;
use crate::store::codes::{CheckOutcome, CodeLimits, CodeStore, Digest, SendOutcome};
use crate::time::UnixMs;
use crate::tokens::{Kid, UserId};

pub use crate::sign::hex;

/// Number of digits of a code.
pub const CODE_DIGITS: usize = 6;

/// What kind of address a destination is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationKind {
    /// A phone number in E.164 form (`+` and 8 to 15 digits).
    Phone,
    /// An e-mail address.
    Email,
}

impl DestinationKind {
    /// `phone` or `email`, as in the webhook payload.
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Phone => "phone",
            DestinationKind::Email => "email",
        }
    }
}

/// A validated, normalised destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    kind: DestinationKind,
    text: String,
}

/// Why a destination was refused (the message is for the client).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadDestination(pub &'static str);

impl Destination {
    /// Parses a phone number in E.164 form (`+4915112345678`; spaces,
    /// hyphens, dots and parentheses between digits are dropped) or an
    /// e-mail address (lower-cased; at most 254 bytes, a local part of at
    /// most 64, a domain of dot-separated labels of letters, digits and
    /// hyphens).
    pub fn parse(s: &str) -> Result<Destination, BadDestination> {
        let s = s.trim();
        if s.len() > 254 {
            return Err(BadDestination("destination is longer than 254 bytes"));
        }
        if let Some(rest) = s.strip_prefix('+') {
            let digits: String = rest.chars().filter(|c| !" -.()".contains(*c)).collect();
            if !(8..=15).contains(&digits.len())
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || digits.starts_with('0')
            {
                return Err(BadDestination(
                    "phone numbers must be in E.164 form: + and 8 to 15 digits, e.g. +4915112345678",
                ));
            }
            return Ok(Destination {
                kind: DestinationKind::Phone,
                text: format!("+{digits}"),
            });
        }
        let bad =
            BadDestination("destination must be a phone number in E.164 form (+4915112345678) or an e-mail address");
        let (local, domain) = s.rsplit_once('@').ok_or(bad.clone())?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                (1..=63).contains(&l.len())
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !local_ok || !domain_ok {
            return Err(bad);
        }
        Ok(Destination {
            kind: DestinationKind::Email,
            text: s.to_ascii_lowercase(),
        })
    }

    /// Phone or e-mail.
    pub fn kind(&self) -> DestinationKind {
        self.kind
    }

    /// The normalised text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How the store names this destination: the first 16 bytes of
    /// SHA-256 of the normalised text, in hex.
    pub fn tag(&self) -> String {
        let h = sha2::Sha256::digest(self.text.as_bytes());
        hex(h.get(..16).unwrap_or(&h))
    }

    /// The user id an auto-registered destination gets: `c-` and its
    /// [tag](Self::tag) (34 characters, the same on every node and every
    /// restart; an app that knows the phone number can compute it).
    pub fn auto_user_id(&self) -> Result<UserId, crate::tokens::TokenError> {
        UserId::new(&format!("c-{}", self.tag()))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A fresh code. Its `Debug` form does not show the digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Code(******)")
    }
}

impl Code {
    /// Six uniformly random digits from the OS CSPRNG (rejection sampling,
    /// no modulo bias).
    pub fn generate() -> Result<Code, getrandom::Error> {
        // The largest multiple of 10^6 below 2^32.
        const LIMIT: u32 = u32::MAX - u32::MAX % 1_000_000;
        loop {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b)?;
            let n = u32::from_le_bytes(b);
            if n < LIMIT {
                return Ok(Code(format!("{:06}", n % 1_000_000)));
            }
        }
    }

    /// A code as typed by a user: exactly six ASCII digits (surrounding
    /// spaces dropped); `None` otherwise.
    pub fn parse(s: &str) -> Option<Code> {
        let s = s.trim();
        (s.len() == CODE_DIGITS && s.bytes().all(|b| b.is_ascii_digit())).then(|| Code(s.to_string()))
    }

    /// The digits (to hand to a sender; never log or return them).
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

/// The digest the store keeps: HMAC-SHA256(subkey, destination || 0 || code).
pub fn digest(subkey: &[u8; 32], dest: &Destination, code: &Code) -> Digest {
    match hmac::Hmac::<sha2::Sha256>::new_from_slice(subkey) {
        Ok(mut m) => {
            m.update(dest.as_str().as_bytes());
            m.update(&[0]);
            m.update(code.0.as_bytes());
            m.finalize().into_bytes().into()
        }
        // HMAC takes keys of any length; unreachable, and a zero digest
        // would simply never match a real one.
        Err(_) => [0; 32],
    }
}

/// Why a code could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The destination's resend wait or daily limit.
    #[error("too many codes for this destination; try again in {}s", .0.as_secs().max(1))]
    Limited(Duration),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No key to digest with, or the CSPRNG failed.
    #[error("cannot create a code: {0}")]
    Internal(String),
    /// The sender failed; the code was withdrawn.
    #[error(transparent)]
    Delivery(#[from] sender::DeliveryError),
}

/// What a successful send tells the client (the same whether or not the
/// destination belongs to a user).
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// When the code stops working.
    pub expires: UnixMs,
    /// When the next code may be requested.
    pub resend_after: Duration,
}

/// The code-login service: limits, keys and the sender.
pub struct CodeLogin {
    limits: CodeLimits,
    sender: sender::Sender,
}

impl CodeLogin {
    /// From `[code_login]` (validated).
    pub fn from_config(c: &CodeLoginConfig) -> Result<CodeLogin, sender::DeliveryError> {
        Ok(CodeLogin {
            limits: CodeLimits {
                ttl: c.code_ttl,
                max_attempts: c.max_attempts_per_code,
                resend_interval: c.resend_interval,
                daily_limit: c.daily_limit,
            },
            sender: sender::Sender::from_config(c)?,
        })
    }

    /// The limits codes are stored with.
    pub fn limits(&self) -> &CodeLimits {
        &self.limits
    }

    /// Creates a code for `dest`, stores its digest and, if `deliver`,
    /// hands it to the sender. A destination that belongs to nobody is
    /// stored and rate-limited alike but not delivered to (`deliver` false),
    /// so the answer does not tell whether it is known. When delivery
    /// fails, the code is withdrawn and the resend wait lifted.
    pub async fn send<S: CodeStore>(
        &self,
        store: &S,
        keys: &Keyring,
        dest: &Destination,
        deliver: bool,
        now: UnixMs,
    ) -> Result<Sent, SendError> {
        let code = Code::generate().map_err(|e| SendError::Internal(format!("random source failed: {e}")))?;
        let (kid, d) = {
            let set = keys.snapshot();
            let (kid, subkey) = set
                .code_key(now)
                .ok_or_else(|| SendError::Internal("the keyring has no active key".into()))?;
            (kid, digest(subkey, dest, &code))
        };
        let tag = dest.tag();
        match store.code_send(&tag, kid, &d, &self.limits, now).await? {
            SendOutcome::Stored => {}
            SendOutcome::TooSoon(wait) | SendOutcome::DailyLimit(wait) => return Err(SendError::Limited(wait)),
        }
        let expires = now.plus(self.limits.ttl);
        if deliver && let Err(e) = self.sender.deliver(dest, &code, expires, now).await {
            if let Err(c) = store.code_cancel(&tag, &d, now).await {
                tracing::warn!(error = %c, "one-time code: delivery failed and the code could not be withdrawn; it expires by itself");
            }
            return Err(e.into());
        }
        Ok(Sent {
            expires,
            resend_after: self.limits.resend_interval,
        })
    }

    /// Checks `code` for `dest`.
    pub async fn check<S: CodeStore>(
        &self,
        store: &S,
        keys: &Keyring,
        dest: &Destination,
        code: &Code,
        now: UnixMs,
    ) -> Result<CheckOutcome, StoreError> {
        let candidates: Vec<(Kid, Digest)> = keys
            .snapshot()
            .code_keys()
            .map(|(kid, k)| (kid, digest(k, dest, code)))
            .collect();
        store.code_check(&dest.tag(), &candidates, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_normalised_and_validated() {
        let d = Destination::parse(" +49 151 1234-5678 ").map(|d| d.to_string());
        assert_eq!(d.as_deref(), Ok("+4915112345678"));
        for bad in [
            "+12345",
            "+0123456789",
            "+1234567890123456",
            "+49abc12345678",
            "4915112345678",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_are_normalised_and_validated() {
        let d = Destination::parse("Alice.B+x@Example.COM").map(|d| (d.kind(), d.to_string()));
        assert_eq!(d, Ok((DestinationKind::Email, "alice.b+x@example.com".to_string())));
        let long_local = format!("{}@example.com", "a".repeat(65));
        for bad in [
            "alice",
            "alice@",
            "@example.com",
            "alice@example",
            "al ice@example.com",
            "alice@-example.com",
            "alice@exa_mple.com",
            ".alice@example.com",
            "al..ice@example.com",
            "alice@example..com",
            long_local.as_str(),
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn codes_are_six_digits_and_vary() {
        let codes: Vec<String> = (0..50)
            .filter_map(|_| Code::generate().ok())
            .map(|c| c.reveal().to_string())
            .collect();
        assert_eq!(codes.len(), 50);
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()))
        );
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert!(
            distinct.len() > 40,
            "50 random codes should rarely collide: {distinct:?}"
        );
        assert_eq!(
            Code::parse("123456").map(|c| format!("{c:?}")).as_deref(),
            Some("Code(******)")
        );
        assert!(Code::parse("12345").is_none() && Code::parse("12345a").is_none());
    }

    #[test]
    fn digests_depend_on_key_destination_and_code() {
        let a = Destination::parse("+4915112345678").unwrap_or_else(|e| panic!("{e}"));
        let b = Destination::parse("+4915112345679").unwrap_or_else(|e| panic!("{e}"));
        let c1 = Code::parse("123456").unwrap_or_else(|| panic!("code"));
        let c2 = Code::parse("123457").unwrap_or_else(|| panic!("code"));
        let d = digest(&[1; 32], &a, &c1);
        assert_eq!(d, digest(&[1; 32], &a, &c1));
        assert_ne!(d, digest(&[2; 32], &a, &c1));
        assert_ne!(d, digest(&[1; 32], &b, &c1));
        assert_ne!(d, digest(&[1; 32], &a, &c2));
        assert_eq!(a.tag().len(), 32);
        assert_eq!(
            a.auto_user_id().ok().map(|u| u.as_str().to_string()),
            Some(format!("c-{}", a.tag()))
        );
    }
}
