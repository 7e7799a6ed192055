//! Sessions: the stored half of the long token.
//!
//! [`SessionStore`] is the contract; [`memory::MemoryStore`] (embedded, the
//! default without Redis) and [`redis::RedisStore`] (a sorted set of sids
//! per user plus companion records, Lua scripts in `lua/`) implement it with the same semantics, proven
//! by one conformance suite (`tests/it/store.rs`). [`Store`] picks one at
//! run time without dynamic dispatch.
//!
//! Time is always a parameter (`now`); the store never reads a clock.

pub mod bans;
pub mod codes;
pub mod memory;
pub mod redis;
pub mod throttle;

use std::time::Duration;

use crate::config::{Config, LoginMode, Overflow};
use crate::time::UnixMs;
use crate::tokens::{Sid, UserId};

/// Lifetimes the store enforces, from `[tokens]`.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    /// Sliding idle lifetime of a session.
    pub idle: Duration,
    /// Absolute lifetime from login, never extended.
    pub absolute: Duration,
    /// A verify this close to the idle expiry extends it.
    pub renew_window: Duration,
    /// A long token older than this rotates to a new sid.
    pub rotate_interval: Duration,
    /// How long a rotated-away sid stays valid after its successor's first use.
    pub rotate_grace: Duration,
}

/// Who may hold how many sessions, from `[login]`.
#[derive(Clone, Debug)]
pub struct LoginPolicy {
    /// `multi` or `single`.
    pub mode: LoginMode,
    /// Cap in `multi` mode.
    pub max_sessions: u32,
    /// Evict the oldest, or reject, at a cap.
    pub overflow: Overflow,
    /// Per-device-type caps.
    pub devices: std::collections::BTreeMap<String, u32>,
}

impl LoginPolicy {
    fn device_cap(&self, device: Option<&Device>) -> u32 {
        device.and_then(|d| self.devices.get(d.as_str()).copied()).unwrap_or(0)
    }
}

/// Everything a store needs to know besides its connection.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// Lifetimes.
    pub lifetimes: Lifetimes,
    /// Login modes and caps.
    pub login: LoginPolicy,
}

impl StoreSettings {
    /// From the configuration.
    pub fn from_config(c: &Config) -> StoreSettings {
        let t = &c.tokens;
        StoreSettings {
            lifetimes: Lifetimes {
                idle: t.long_idle_ttl,
                absolute: t.long_absolute_ttl,
                renew_window: t.renew_window,
                rotate_interval: t.rotate_interval,
                rotate_grace: t.rotate_grace,
            },
            login: LoginPolicy {
                mode: c.login.mode,
                max_sessions: c.login.max_sessions,
                overflow: c.login.overflow,
                devices: c.login.devices.clone(),
            },
        }
    }
}

/// A device type (`pc`, `mobile`, …): 1 to 16 characters of `[a-z0-9_-]`.
/// Only built valid, so no caller can smuggle a record separator (`|`) or
/// anything else into the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Device(String);

/// A device type that is not 1-16 characters of `[a-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("device {0:?}: device types are 1-16 characters of [a-z0-9_-]")]
pub struct BadDevice(pub String);

impl Device {
    /// Validates `s`.
    pub fn new(s: &str) -> Result<Device, BadDevice> {
        if crate::config::valid_device(s) {
            Ok(Device(s.to_string()))
        } else {
            Err(BadDevice(s.to_string()))
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A session to create.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// Its user.
    pub uid: UserId,
    /// Its first sid (random).
    pub sid: Sid,
    /// Device type, if the client said; subject to caps.
    pub device: Option<Device>,
    /// Optional small metadata (e.g. JSON of IP and user agent), opaque to
    /// the store.
    pub meta: Option<String>,
}

/// Which cap refused a login under `overflow = "reject"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `login.max_sessions`.
    MaxSessions,
    /// A `login.devices` cap.
    Device,
}

/// What a login did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Created; `evicted` are the sids of sessions it pushed out (single
    /// mode, or a cap with `evict_oldest`), to be broadcast as revoked.
    Created {
        /// Idle expiry of the new session.
        idle_expires: UnixMs,
        /// Sids revoked to make room.
        evicted: Vec<Sid>,
    },
    /// Refused by a cap; nothing was changed.
    Rejected(Limit),
    /// Refused: the user is banned until then ([`bans`]); nothing changed.
    Banned {
        /// When the ban ends.
        until: UnixMs,
    },
}

/// A long token's session to check, from the opened token.
#[derive(Clone, Copy, Debug)]
pub struct VerifyRequest {
    /// The user.
    pub uid: UserId,
    /// The sid the token names.
    pub sid: Sid,
    /// The token's issue time (rotation is due when it is old).
    pub iat: UnixMs,
    /// The session's login time (absolute lifetime counts from it).
    pub login: UnixMs,
    /// A fresh random sid the store uses if it rotates the session now.
    pub candidate: Sid,
    /// The thumbprint of the device key the presenter proved possession of
    /// (a device-bound session's refresh); `None` for an unbound long
    /// token. Must equal the session's binding, else
    /// [`VerifyOutcome::KeyMismatch`].
    pub device: Option<DeviceThumb>,
}

/// The SHA-256 JWK thumbprint (RFC 7638) of the device key a session is
/// bound to (device-bound sessions), as the store keeps it.
pub type DeviceThumb = [u8; 32];

/// A session to bind to a device key ([`SessionStore::bind`]).
#[derive(Clone, Copy, Debug)]
pub struct BindRequest {
    /// The user.
    pub uid: UserId,
    /// The sid the registering (unbound) long token names.
    pub sid: Sid,
    /// The session's login time, from that token.
    pub login: UnixMs,
    /// The sid the bound session continues under (random).
    pub successor: Sid,
    /// The device key's thumbprint.
    pub device: DeviceThumb,
}

/// What binding did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindOutcome {
    /// Bound: the session continues as `successor`; `ended` are the sids
    /// removed (the old sid and its rotation lineage), to be broadcast as
    /// revoked.
    Bound {
        /// The new sid's idle expiry.
        idle_expires: UnixMs,
        /// Sids that ended.
        ended: Vec<Sid>,
    },
    /// No such session, or the sid was rotated away (the client must
    /// present its current long token).
    NotFound,
    /// Idle or absolute lifetime over.
    Expired,
    /// Already bound to a device key (a session is bound once).
    AlreadyBound,
}

/// The store's answer about a long token's session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// Valid; its idle expiry (after any renewal).
    Valid {
        /// Idle expiry.
        idle_expires: UnixMs,
    },
    /// Valid, and the client must switch to `successor` (every presenter of
    /// the old token gets the same one).
    Rotated {
        /// The successor sid.
        successor: Sid,
        /// The successor's idle expiry.
        idle_expires: UnixMs,
    },
    /// No such session: never existed, revoked, or long gone.
    NotFound,
    /// Idle or absolute lifetime over.
    Expired,
    /// A rotated-away sid presented after its grace period: the whole
    /// session was revoked (its sids listed, for broadcast).
    Theft {
        /// Revoked sids.
        revoked: Vec<Sid>,
    },
    /// The session's device binding is not the request's: a bound session
    /// presented without a proof of its key (or an unbound one with a
    /// bound token). Nothing changed.
    KeyMismatch,
}

/// One live session, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Its current sid.
    pub sid: Sid,
    /// Idle expiry.
    pub idle_expires: UnixMs,
    /// Login time, when recorded: sessions with a device type, metadata or
    /// a rotation keep a record with it; a plain session is one sorted-set
    /// member and its login time is only in its long token.
    pub login: Option<UnixMs>,
    /// Device type.
    pub device: Option<String>,
    /// Metadata, as stored at login.
    pub meta: Option<String>,
    /// Bound to a device key (device-bound sessions).
    pub bound: bool,
}

/// Online counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Users with at least one live session.
    pub users: u64,
    /// Live sessions.
    pub sessions: u64,
}

/// A revocation, as broadcast to every node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// These sids of this user.
    Sessions {
        /// The user.
        uid: UserId,
        /// The sids.
        sids: Vec<Sid>,
    },
    /// Every session of this user.
    User {
        /// The user.
        uid: UserId,
    },
}

impl Revocation {
    /// The user it concerns.
    pub fn uid(&self) -> &UserId {
        match self {
            Revocation::Sessions { uid, .. } | Revocation::User { uid } => uid,
        }
    }

    /// Wire form, as published and logged in Redis:
    /// `kind:u8 ('s'|'u') | uid_len:u8 | uid | sid[16]*` (sids only for `s`).
    pub fn encode(&self) -> Vec<u8> {
        let (kind, uid, sids): (u8, &UserId, &[Sid]) = match self {
            Revocation::Sessions { uid, sids } => (b's', uid, sids),
            Revocation::User { uid } => (b'u', uid, &[]),
        };
        let mut out = Vec::with_capacity(2 + uid.as_bytes().len() + 16 * sids.len());
        out.push(kind);
        // 1..=64 by construction of UserId.
        out.push(uid.as_bytes().len() as u8);
        out.extend_from_slice(uid.as_bytes());
        for s in sids {
            out.extend_from_slice(&s.0);
        }
        out
    }

    /// Parses the wire form; `None` for anything malformed.
    pub fn decode(b: &[u8]) -> Option<Revocation> {
        let (&kind, rest) = b.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let uid = UserId::from_bytes(rest.get(..usize::from(n))?).ok()?;
        let rest = &rest[usize::from(n)..];
        match kind {
            b'u' if rest.is_empty() => Some(Revocation::User { uid }),
            b's' if !rest.is_empty() && rest.len() % 16 == 0 => Some(Revocation::Sessions {
                uid,
                sids: rest
                    .chunks_exact(16)
                    .filter_map(|c| <[u8; 16]>::try_from(c).ok().map(Sid))
                    .collect(),
            }),
            _ => None,
        }
    }
}

/// What a revocation feed delivers to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedEvent {
    /// A revocation (live, or replayed during catch-up) and when it was
    /// made where the feed knows it (the Redis log entry's time; `None`:
    /// just now, as the embedded store's live events are). A user-wide
    /// revocation covers the sessions that began before that time, not
    /// the ones that began before this node heard of it: a node catching
    /// up after a restart must not end the sessions its users opened
    /// since.
    Revoked(Revocation, Option<UnixMs>),
    /// Every revocation up to now has been delivered: the node's revoked
    /// cache is complete from here on (until the next `Lost`).
    CaughtUp,
    /// The feed lost its connection; revocations may be missed until the
    /// next `CaughtUp`.
    Lost,
}

/// Why a store call failed. Redis errors and timeouts are distinct so the
/// verifier's circuit breaker can tell them from bad data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer within `store.timeout`.
    #[error("session store did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("session store (redis) failed: {0}")]
    Redis(#[source] ::redis::RedisError),
    /// Not attempted: the verifier's circuit breaker is open, so nothing
    /// waits on the store.
    #[error("session store unreachable (circuit breaker open)")]
    Unreachable,
    /// A script answered something its contract does not allow, or a
    /// stored record is malformed.
    #[error("session store returned malformed data: {0}")]
    Malformed(String),
    /// A new session's sid already exists (128 random bits: practically
    /// impossible; never overwritten).
    #[error("a session with this sid already exists")]
    SidTaken,
    /// The embedded store could not write its journal (`store.path`): the
    /// change is made in memory but not known to be on disk.
    #[error("the embedded session store could not write its journal: {0}")]
    Disk(String),
}

impl StoreError {
    /// Whether this error says the store is unavailable (feeds the circuit
    /// breaker), as opposed to a bad answer.
    ///
    /// Only a store that cannot answer counts: timeouts, connection errors,
    /// and the server saying it cannot serve now (loading, cluster down,
    /// failing over, read-only replica, wrong credentials). An error reply
    /// about one request (a key of the wrong type, a script error) is that
    /// request's failure: it must neither open the breaker for everybody
    /// nor let that request's token through on the fallback.
    pub fn is_unavailable(&self) -> bool {
        use ::redis::{ErrorKind as K, ServerErrorKind as S};
        match self {
            StoreError::Timeout(_) | StoreError::Unreachable => true,
            StoreError::Redis(e) => matches!(
                e.kind(),
                K::Io
                    | K::ClusterConnectionNotFound
                    | K::AuthenticationFailed
                    | K::MasterNameNotFoundBySentinel
                    | K::NoValidReplicasFoundBySentinel
                    | K::Server(
                        S::BusyLoading
                            | S::TryAgain
                            | S::ClusterDown
                            | S::MasterDown
                            | S::ReadOnly
                            | S::Moved
                            | S::Ask
                            | S::NoPerm
                    )
            ),
            StoreError::Malformed(_) | StoreError::SidTaken | StoreError::Disk(_) => false,
        }
    }

    /// Whether the call may have been carried out although it failed: it
    /// timed out (a frozen Redis runs it when it wakes up) or its
    /// connection broke after it was sent. Not for a refused connection,
    /// an open breaker, or an error reply (nothing was run).
    pub fn maybe_applied(&self) -> bool {
        match self {
            StoreError::Timeout(_) => true,
            StoreError::Redis(e) => e.kind() == ::redis::ErrorKind::Io && !e.is_connection_refusal(),
            _ => false,
        }
    }
}

/// The session store contract. Every method takes `now` from the caller.
///
/// Guarantees, for both implementations:
/// - `login` prunes the user's expired sessions, applies the login mode and
///   caps, and either creates the session (returning what it evicted) or,
///   under `overflow = "reject"`, changes nothing;
/// - `verify` answers in one round trip: `Valid` (sliding the idle expiry
///   when inside the renew window, never past the absolute deadline),
///   `Rotated` (same successor for every presenter until the successor is
///   first used; the old sid then stays valid for the grace period),
///   `NotFound`, `Expired`, `Theft` (old sid after grace: whole session
///   revoked), or `KeyMismatch` (the session's device binding is not the
///   one the request proved);
/// - `bind` moves a live, current, unbound session to a new sid bound to a
///   device key and ends the old sid with its lineage;
/// - `revoke` removes a session with its whole rotation lineage and returns
///   the sids removed (empty if none); `revoke_all` removes every session;
/// - `list` shows only live sessions (current sids), least recently active
///   first (lowest idle expiry, then sid);
/// - a failed call leaves no partial state.
pub trait SessionStore: Send + Sync {
    /// Creates a session.
    fn login(&self, s: &NewSession, now: UnixMs) -> impl Future<Output = Result<LoginOutcome, StoreError>> + Send;
    /// Checks a long token's session.
    fn verify(&self, r: &VerifyRequest, now: UnixMs) -> impl Future<Output = Result<VerifyOutcome, StoreError>> + Send;
    /// Revokes one session (by any of its sids).
    fn revoke(&self, uid: &UserId, sid: &Sid, now: UnixMs)
    -> impl Future<Output = Result<Vec<Sid>, StoreError>> + Send;
    /// Revokes every session of a user.
    fn revoke_all(&self, uid: &UserId, now: UnixMs) -> impl Future<Output = Result<Vec<Sid>, StoreError>> + Send;
    /// Binds a session to a device key: it continues under a new sid whose
    /// record holds the key's thumbprint, the old sid and its lineage end
    /// (`lua/bind.lua`).
    fn bind(&self, b: &BindRequest, now: UnixMs) -> impl Future<Output = Result<BindOutcome, StoreError>> + Send;
    /// Lists a user's live sessions.
    fn list(&self, uid: &UserId, now: UnixMs) -> impl Future<Output = Result<Vec<SessionInfo>, StoreError>> + Send;
    /// Counts online users and sessions.
    fn stats(&self, now: UnixMs) -> impl Future<Output = Result<Stats, StoreError>> + Send;
    /// A cheap round trip that says whether the store answers (the circuit
    /// breaker's probe, readiness checks).
    fn health(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The store a server runs with: embedded or Redis, chosen by configuration.
pub enum Store {
    /// Embedded in-memory store.
    Memory(Box<memory::MemoryStore>),
    /// Redis.
    Redis(Box<redis::RedisStore>),
}

impl Store {
    /// Every revocation, from any node, as [`FeedEvent`]s (see
    /// [`redis::RedisStore::revocation_feed`]).
    pub fn revocation_feed(&self) -> tokio::sync::mpsc::Receiver<FeedEvent> {
        match self {
            Store::Memory(m) => m.revocation_feed(),
            Store::Redis(r) => r.revocation_feed(),
        }
    }
}

/// Store operations timed in [`STORE_CALLS`] (`twintoken_store_call_duration_seconds{op}`).
pub const STORE_OPS: [&str; 7] = ["login", "verify", "revoke", "revoke_all", "list", "stats", "bind"];

/// Latency of store calls per [`STORE_OPS`], for the whole process (every
/// store of it), whatever their outcome.
pub static STORE_CALLS: std::sync::LazyLock<[crate::metrics::Histogram; 7]> =
    std::sync::LazyLock::new(Default::default);

async fn timed<T>(op: usize, f: impl Future<Output = T>) -> T {
    let start = std::time::Instant::now();
    let out = f.await;
    STORE_CALLS[op].observe(start.elapsed());
    out
}

impl SessionStore for Store {
    async fn login(&self, s: &NewSession, now: UnixMs) -> Result<LoginOutcome, StoreError> {
        match self {
            Store::Memory(m) => timed(0, m.login(s, now)).await,
            Store::Redis(r) => timed(0, r.login(s, now)).await,
        }
    }
    async fn verify(&self, q: &VerifyRequest, now: UnixMs) -> Result<VerifyOutcome, StoreError> {
        match self {
            Store::Memory(m) => timed(1, m.verify(q, now)).await,
            Store::Redis(r) => timed(1, r.verify(q, now)).await,
        }
    }
    async fn revoke(&self, uid: &UserId, sid: &Sid, now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        match self {
            Store::Memory(m) => timed(2, m.revoke(uid, sid, now)).await,
            Store::Redis(r) => timed(2, r.revoke(uid, sid, now)).await,
        }
    }
    async fn revoke_all(&self, uid: &UserId, now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        match self {
            Store::Memory(m) => timed(3, m.revoke_all(uid, now)).await,
            Store::Redis(r) => timed(3, r.revoke_all(uid, now)).await,
        }
    }
    async fn bind(&self, b: &BindRequest, now: UnixMs) -> Result<BindOutcome, StoreError> {
        match self {
            Store::Memory(m) => timed(6, m.bind(b, now)).await,
            Store::Redis(r) => timed(6, r.bind(b, now)).await,
        }
    }
    async fn list(&self, uid: &UserId, now: UnixMs) -> Result<Vec<SessionInfo>, StoreError> {
        match self {
            Store::Memory(m) => timed(4, m.list(uid, now)).await,
            Store::Redis(r) => timed(4, r.list(uid, now)).await,
        }
    }
    async fn stats(&self, now: UnixMs) -> Result<Stats, StoreError> {
        match self {
            Store::Memory(m) => timed(5, m.stats(now)).await,
            Store::Redis(r) => timed(5, r.stats(now)).await,
        }
    }
    async fn health(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.health().await,
            Store::Redis(r) => r.health().await,
        }
    }
}

impl throttle::ThrottleStore for Store {
    async fn throttle_admit(
        &self,
        c: throttle::Counter<'_>,
        limits: &throttle::AdmitLimits,
        now: UnixMs,
    ) -> Result<throttle::Admit, StoreError> {
        match self {
            Store::Memory(m) => m.throttle_admit(c, limits, now).await,
            Store::Redis(r) => r.throttle_admit(c, limits, now).await,
        }
    }
    async fn throttle_release(&self, c: throttle::Counter<'_>, clear: bool, now: UnixMs) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.throttle_release(c, clear, now).await,
            Store::Redis(r) => r.throttle_release(c, clear, now).await,
        }
    }
}
