//! One-time login codes: the stored half of code login.
//!
//! The store keeps, per destination (phone number or e-mail address, named
//! by its [tag](crate::codes::Destination::tag), never in clear), at most
//! one outstanding code as a keyed digest with the kid of its subkey and
//! the attempts it has left, plus the destination's send counters. Both
//! implementations ([`super::memory::MemoryStore`] and
//! [`super::redis::RedisStore`], `lua/code_*.lua`) pass one conformance
//! suite. Time is always a parameter.

use std::time::Duration;

use super::{Store, StoreError};
use crate::time::UnixMs;
use crate::tokens::Kid;

/// A code digest: HMAC-SHA256 under a key's one-time-code subkey.
pub type Digest = [u8; 32];

/// Limits a send applies, from `[code_login]`.
#[derive(Clone, Copy, Debug)]
pub struct CodeLimits {
    /// Life of a code.
    pub ttl: Duration,
    /// Wrong guesses a code survives.
    pub max_attempts: u32,
    /// Shortest time between two sends to one destination.
    pub resend_interval: Duration,
    /// Sends per destination per day window.
    pub daily_limit: u32,
}

/// The day window of `daily_limit`: it starts at the first send after the
/// previous window ended.
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// What storing a new code did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored; any earlier code of the destination is gone.
    Stored,
    /// The previous send was too recent; try again after this long.
    TooSoon(Duration),
    /// The destination had its `daily_limit` codes; the window ends after
    /// this long.
    DailyLimit(Duration),
}

/// What checking a code found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Right: the code is consumed (it works once).
    Accepted,
    /// Wrong; `attempts_left` more guesses, and at 0 the code is burned.
    Wrong {
        /// Guesses left for this code.
        attempts_left: u32,
    },
    /// No code outstanding: never sent, expired, used or burned.
    Missing,
}

/// The code-login operations of a store.
///
/// Guarantees, for both implementations:
/// - `code_send` decides from the destination's counters alone, before any
///   write: too soon, daily limit, or store (replacing an earlier code,
///   with `max_attempts` attempts and `ttl` to live);
/// - `code_check` compares the stored digest with the candidate for the
///   stored kid in constant time; right consumes the code, wrong spends an
///   attempt and the last attempt burns it;
/// - `code_cancel` removes the code with this digest (its delivery failed)
///   and lifts the resend wait, but keeps it counted against the daily limit.
pub trait CodeStore: Send + Sync {
    /// Stores a new code digest for the destination `tag`, if its limits allow.
    fn code_send(
        &self,
        tag: &str,
        kid: Kid,
        digest: &Digest,
        limits: &CodeLimits,
        now: UnixMs,
    ) -> impl Future<Output = Result<SendOutcome, StoreError>> + Send;

    /// Checks a code: `candidates` holds the candidate code's digest under
    /// every live key (a rotation may happen while a code is out).
    fn code_check(
        &self,
        tag: &str,
        candidates: &[(Kid, Digest)],
        now: UnixMs,
    ) -> impl Future<Output = Result<CheckOutcome, StoreError>> + Send;

    /// Withdraws the code with `digest` after its delivery failed; `true`
    /// if it was still there.
    fn code_cancel(
        &self,
        tag: &str,
        digest: &Digest,
        now: UnixMs,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

impl CodeStore for Store {
    async fn code_send(
        &self,
        tag: &str,
        kid: Kid,
        digest: &Digest,
        limits: &CodeLimits,
        now: UnixMs,
    ) -> Result<SendOutcome, StoreError> {
        match self {
            Store::Memory(m) => m.code_send(tag, kid, digest, limits, now).await,
            Store::Redis(r) => r.code_send(tag, kid, digest, limits, now).await,
        }
    }
    async fn code_check(
        &self,
        tag: &str,
        candidates: &[(Kid, Digest)],
        now: UnixMs,
    ) -> Result<CheckOutcome, StoreError> {
        match self {
            Store::Memory(m) => m.code_check(tag, candidates, now).await,
            Store::Redis(r) => r.code_check(tag, candidates, now).await,
        }
    }
    async fn code_cancel(&self, tag: &str, digest: &Digest, now: UnixMs) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => m.code_cancel(tag, digest, now).await,
            Store::Redis(r) => r.code_cancel(tag, digest, now).await,
        }
    }
}
