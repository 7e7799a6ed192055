//! The two tokens: their byte layout, sealing and opening.
//!
//! Layout (big-endian; every byte before the nonce is associated data):
//! `version:u8 (=1) | kind:u8 ('L'|'S') | kid:u32 | nonce[24] | ciphertext | tag[16]`,
//! as base64url without padding. See `docs/token-format.md`.
//!
//! This module never reads the clock, touches the network or picks a key by
//! itself: `now` is a parameter and keys come through [`KeyLookup`].

mod codec;
mod types;

pub use codec::{
    BINDING_LEN, Binding, ChallengeClaims, KeyLookup, LongClaims, MAX_CLOCK_SKEW, MAX_DEVICE_KEY_LEN,
    MAX_TOKEN_TEXT_LEN, ShortClaims, check_short_times, long_binding, long_binding_unchecked, open_challenge,
    open_long, open_long_bound, open_short, peek_long_sid, seal_challenge, seal_long, seal_long_bound, seal_short,
};
pub use types::{Kid, MAX_UID_LEN, Sid, TokenKind, UserId};

/// The AEAD every token is sealed with.
pub type Cipher = chacha20poly1305::XChaCha20Poly1305;

/// Every way a token (or a value destined for one) can be bad. Each variant
/// is a distinct, testable outcome; none of them panics on the way.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_TEXT_LEN`] characters; rejected before decoding.
    #[error("token is {0} characters long, more than the {MAX_TOKEN_TEXT_LEN} allowed")]
    TooLong(usize),
    /// Not base64url without padding.
    #[error("token is not valid base64url (no padding)")]
    Base64,
    /// Decoded bytes too few or too many for any token.
    #[error("token is {0} bytes, not a length any token can have")]
    Length(usize),
    /// The version byte is not one we know.
    #[error("unknown token version {0}")]
    Version(u8),
    /// The kind byte is none of `L`, `S`, `C`.
    #[error("unknown token kind byte 0x{0:02x}")]
    Kind(u8),
    /// A valid kind, but not the one expected here (a short token presented
    /// as long, or the reverse).
    #[error("a {found} token was presented where a {expected} token is expected")]
    WrongKind {
        /// What the caller asked for.
        expected: TokenKind,
        /// What the header says.
        found: TokenKind,
    },
    /// No key with this id in the keyring.
    #[error("token names key {0}, which this keyring does not have")]
    UnknownKid(Kid),
    /// The key exists but was retired: tokens sealed with it are no longer
    /// accepted.
    #[error("token was sealed with key {0}, which has been retired")]
    RetiredKid(Kid),
    /// The authentication tag does not match: tampered, truncated, or sealed
    /// with another key that happens to share the id.
    #[error("token failed authentication (tampered or sealed with another key)")]
    Tag,
    /// Authentic, but the plaintext does not follow the layout.
    #[error("token plaintext does not follow the layout: {0}")]
    Layout(&'static str),
    /// The user id is not 1..=64 bytes.
    #[error("user id is {0} bytes; it must be 1 to {MAX_UID_LEN}")]
    UidLength(usize),
    /// The user id is not UTF-8.
    #[error("user id is not valid UTF-8")]
    UidUtf8,
    /// A session id in text form that is not 22 characters of base64url.
    #[error("session id must be 22 characters of base64url")]
    BadSid,
    /// A short token past its `exp`.
    #[error("token expired at {exp_ms} ms, now is {now_ms} ms")]
    Expired {
        /// Its expiry, ms since the epoch.
        exp_ms: u64,
        /// The time it was checked at.
        now_ms: u64,
    },
    /// Issued further in the future than clock skew explains.
    #[error("token issued at {iat_ms} ms, in the future of {now_ms} ms beyond the allowed clock skew")]
    NotYetValid {
        /// Its issue time, ms since the epoch.
        iat_ms: u64,
        /// The time it was checked at.
        now_ms: u64,
    },
    /// The keyring has no key that may sign at this time.
    #[error("no key may sign now: the keyring has no active key (run `twintoken keys init` or `keys rotate`)")]
    NoSigningKey,
    /// The OS random source failed.
    #[error("the OS random number generator failed: {0}")]
    Rng(getrandom::Error),
}

impl TokenError {
    /// The stable code a client sees for this rejection: `expired` for an
    /// expired token, `invalid` for every other defect of the token. (The
    /// server logs the precise variant.)
    pub fn client_code(&self) -> &'static str {
        match self {
            TokenError::Expired { .. } => "expired",
            _ => "invalid",
        }
    }
}
