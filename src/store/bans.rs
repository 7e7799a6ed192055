//! Timed bans: while a ban lasts, the store refuses every login of the user
//! ([`super::LoginOutcome::Banned`], checked inside the login itself, so a
//! login racing the ban either finishes before it, and is then ended by the
//! ban's revoke-all, or is refused). Redis keeps a ban in
//! `<prefix>{UID}:ban` (a hash `u` = end in ms, `r` = reason, expiring with
//! the ban), under the user's hash tag; the embedded store keeps it in
//! memory and on disk. Time is always a parameter.

use super::{Store, StoreError};
use crate::time::UnixMs;
use crate::tokens::UserId;

/// A ban in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    /// When it ends.
    pub until: UnixMs,
    /// Why (free text from the admin, may be empty).
    pub reason: String,
}

/// The longest reason kept (bytes).
pub const MAX_REASON: usize = 500;

/// Bans, implemented by both stores.
pub trait BanStore: Send + Sync {
    /// Bans `uid` until `ban.until` (replacing an earlier ban).
    fn ban_set(&self, uid: &UserId, ban: &Ban, now: UnixMs) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Lifts the ban of `uid`; whether one was in force.
    fn ban_lift(&self, uid: &UserId, now: UnixMs) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The ban of `uid` in force at `now`, if any.
    fn ban_get(&self, uid: &UserId, now: UnixMs) -> impl Future<Output = Result<Option<Ban>, StoreError>> + Send;
}

impl BanStore for Store {
    async fn ban_set(&self, uid: &UserId, ban: &Ban, now: UnixMs) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.ban_set(uid, ban, now).await,
            Store::Redis(r) => r.ban_set(uid, ban, now).await,
        }
    }
    async fn ban_lift(&self, uid: &UserId, now: UnixMs) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => m.ban_lift(uid, now).await,
            Store::Redis(r) => r.ban_lift(uid, now).await,
        }
    }
    async fn ban_get(&self, uid: &UserId, now: UnixMs) -> Result<Option<Ban>, StoreError> {
        match self {
            Store::Memory(m) => m.ban_get(uid, now).await,
            Store::Redis(r) => r.ban_get(uid, now).await,
        }
    }
}
