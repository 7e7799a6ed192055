//! The verifier: what happens on every request.
//!
//! 1. A short token that opens, has not expired and is not known revoked is
//!    accepted with no I/O and no allocation ([`Verifier::verify_short`]).
//! 2. Otherwise the long token is opened, its absolute lifetime and the
//!    revoked cache are checked, and the store is asked (one round trip);
//!    on success a fresh short token is issued (and a new long token when
//!    the store rotated the session).
//! 3. Store timeouts and connection errors feed a circuit breaker; while it
//!    is open nothing waits on the store, and long tokens are judged by the
//!    fallback policy (`store.fallback`): `crypto`, `known` or `off`.
//! 4. One store call per session at a time on a node (`flight.rs`): verifies
//!    of a session whose store verify is in flight wait for that answer; one
//!    whose answer does not come asks the store itself.
//! 5. Accept, refuse or fall back is decided in one place, [`decide`]; the
//!    breaker, single flight and the caches only feed it.
//!
//! This module never touches Redis directly (only through
//! [`SessionStore`]) and never reads the clock (callers pass `now`; the
//! background tasks take a [`Clock`]).

mod breaker;
mod decide;
mod flight;
mod metrics;
mod outbox;
mod revoked;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use tokio::sync::mpsc;

pub use breaker::{Breaker, BreakerState, FAILURES_TO_OPEN, PROBE_EVERY};
pub use decide::{Decision, StoreAnswer, decide};
use flight::{Flights, Joined};
pub use metrics::{BUCKETS_US, Histogram, Metrics, PATH_LABELS, REJECT_LABELS};
pub use outbox::{Outbox, OutboxError, Pending};
pub use revoked::{REBUILD_EVERY, Revoked};

use crate::config::{Config, Fallback};
use crate::dbsc::DeviceKey;
use crate::keys::Keyring;
use crate::store::{
    BindOutcome, BindRequest, FeedEvent, Limit, LoginOutcome, NewSession, SessionStore, StoreError, VerifyOutcome,
    VerifyRequest,
};
use crate::time::{Clock, UnixMs};
use crate::tokens::{Binding, LongClaims, ShortClaims, Sid, TokenError, UserId};

/// Which check answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The short token, by crypto alone.
    Short,
    /// The long token, confirmed by the store.
    Long,
    /// The long token, judged without the store (breaker open).
    Fallback,
}

impl Path {
    /// `short`, `long` or `fallback` (the `X-Auth-Path` header value).
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Short => "short",
            Path::Long => "long",
            Path::Fallback => "fallback",
        }
    }
}

/// A token the verifier issued, with its expiry (for cookie `Max-Age`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The token text.
    pub token: String,
    /// When it stops being accepted.
    pub expires: UnixMs,
}

/// A successful verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Who.
    pub uid: UserId,
    /// Which session (after a rotation: the successor).
    pub sid: Sid,
    /// Which check answered.
    pub path: Path,
    /// A fresh short token, after a long check.
    pub short: Option<Issued>,
    /// A new long token, after the store rotated the session.
    pub long: Option<Issued>,
    /// When the user last authenticated (login or re-authentication);
    /// `None` when only a version 1 short token answered (it does not say).
    pub auth: Option<UnixMs>,
    /// Persistent cookies ("remember me") or browser-session cookies.
    pub remember: bool,
}

/// The answer of a short token.
fn short_verified(c: &ShortClaims) -> Verified {
    Verified {
        uid: c.uid,
        sid: c.sid,
        path: Path::Short,
        short: None,
        long: None,
        auth: c.auth,
        remember: c.remember,
    }
}

/// The claims of the long token a session continues with under `sid`
/// (after a rotation or a binding): issued `now`, everything else kept.
fn successor_claims(c: &LongClaims, sid: Sid, device_bound: bool, now: UnixMs) -> LongClaims {
    LongClaims {
        sid,
        iat: now,
        device_bound,
        ..*c
    }
}

/// What a verify demands beyond a valid session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    /// Judge the long token by the store, never by the short token or the
    /// fallback ([`Verifier::verify_strict`]).
    pub strict: bool,
    /// The session's last authentication must be at most this old, else
    /// [`Reject::ReauthRequired`] (step-up authentication).
    pub max_auth_age: Option<Duration>,
}

/// Why a request is not authenticated. [`Reject::code`] is the stable code
/// clients see; the variant's details go to the log.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    /// No token at all.
    #[error("no token presented")]
    Missing,
    /// A token that does not open, or is malformed.
    #[error("invalid token")]
    Invalid(#[source] TokenError),
    /// Past its lifetime.
    #[error("token or session expired")]
    Expired,
    /// The session is known to have been ended (logout, kick, eviction,
    /// single-login, theft): the revoked cache holds it, or the store just
    /// ended it.
    #[error("session revoked")]
    Revoked,
    /// The store does not know the session: it expired and was pruned, was
    /// ended so long ago that no revocation is remembered, was lost with
    /// the store's data, or never existed.
    #[error("session unknown to the store")]
    UnknownSession,
    /// The store cannot be reached and the fallback policy does not allow
    /// judging this token without it.
    #[error("session store unavailable: {0}")]
    Unavailable(&'static str),
    /// The store answered this request with an error of its own (a key of
    /// the wrong type, a malformed record): neither accepted on the fallback
    /// nor counted against the store's availability. Details are logged.
    #[error("session store error on this session")]
    Internal,
    /// Valid, but the last authentication is older than the request's
    /// `max_auth_age`: re-authenticate (`POST /v1/reauth`).
    #[error("re-authentication required")]
    ReauthRequired,
    /// The session is bound to a device key (device-bound sessions): its
    /// long token alone earns nothing; only a proof by that key gets a
    /// short token.
    #[error("device-bound session: a proof of the device key is required")]
    ProofRequired,
}

impl Reject {
    /// `missing`, `invalid`, `expired`, `revoked`, `unknown_session`, `unavailable` or `internal`.
    pub fn code(&self) -> &'static str {
        match self {
            Reject::Missing => "missing",
            Reject::Invalid(_) => "invalid",
            Reject::Expired => "expired",
            Reject::Revoked => "revoked",
            Reject::UnknownSession => "unknown_session",
            Reject::Unavailable(_) => "unavailable",
            Reject::Internal => "internal",
            Reject::ReauthRequired => "reauth_required",
            Reject::ProofRequired => "proof_required",
        }
    }

    fn from_token(e: TokenError) -> Reject {
        match e {
            TokenError::Expired { .. } => Reject::Expired,
            other => Reject::Invalid(other),
        }
    }
}

/// A new session's tokens.
#[derive(Clone, Debug)]
pub struct NewTokens {
    /// The user.
    pub uid: UserId,
    /// The session.
    pub sid: Sid,
    /// The long token (expires at the absolute deadline).
    pub long: Issued,
    /// The short token.
    pub short: Issued,
}

/// Why a login did not create a session.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// `overflow = "reject"` and a cap is reached.
    #[error("session limit reached ({0:?})")]
    Limit(Limit),
    /// The store cannot be reached (or the breaker is open).
    #[error("session store unavailable")]
    Unavailable(#[source] StoreError),
    /// Sealing a token failed (no signing key, RNG failure).
    #[error("cannot issue tokens")]
    Token(#[source] TokenError),
    /// The user is banned until then.
    #[error("the user is banned")]
    Banned(UnixMs),
}

/// Why a session could not be bound to a device key.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The long token does not open, or the session has ended (expired,
    /// revoked, unknown to the store).
    #[error("the session cannot be bound: {0}")]
    Session(#[source] Reject),
    /// The session is bound already (to this key or another).
    #[error("the session is bound to a device key already")]
    AlreadyBound,
    /// The store cannot be reached (binding needs it).
    #[error("session store unavailable")]
    Unavailable(#[source] StoreError),
    /// Sealing a token failed.
    #[error("cannot issue tokens")]
    Token(#[source] TokenError),
}

/// The verifier's settings, from the configuration.
#[derive(Clone, Debug)]
pub struct VerifierSettings {
    /// Life of a short token.
    pub short_ttl: Duration,
    /// Absolute lifetime of a session.
    pub absolute_ttl: Duration,
    /// Long tokens older than this are rotated by the store.
    pub rotate_interval: Duration,
    /// Policy while the store is unreachable.
    pub fallback: Fallback,
    /// How long a confirmation counts under `known`.
    pub fallback_window: Duration,
    /// Revoked-cache capacity (sids; users get a quarter of it).
    pub revoked_capacity: u64,
    /// How long a revocation is remembered.
    pub revoked_ttl: Duration,
    /// Capacity of the recent-confirmations cache (`known`).
    pub confirmed_capacity: u64,
    /// How long a verify waits for another request's store call of the same
    /// session (`store.timeout`).
    pub store_timeout: Duration,
}

impl VerifierSettings {
    /// From the configuration. Revocations are remembered for the long
    /// tokens' idle lifetime (at least 10 × the short TTL): a revoked
    /// session's long token cannot pass the store after that, and in
    /// `crypto` fallback the cache is what keeps it out.
    pub fn from_config(c: &Config) -> VerifierSettings {
        VerifierSettings {
            short_ttl: c.tokens.short_ttl,
            absolute_ttl: c.tokens.long_absolute_ttl,
            rotate_interval: c.tokens.rotate_interval,
            fallback: c.store.fallback,
            fallback_window: c.store.fallback_window,
            revoked_capacity: 200_000,
            revoked_ttl: c.tokens.long_idle_ttl.max(c.tokens.short_ttl * 10),
            confirmed_capacity: 500_000,
            store_timeout: c.store.timeout,
        }
    }
}

/// The verifier. Share it as `Arc<Verifier<S>>`.
pub struct Verifier<S> {
    keys: Arc<Keyring>,
    store: Arc<S>,
    settings: VerifierSettings,
    revoked: Revoked,
    /// (uid, sid) -> when the store last confirmed it.
    confirmed: Cache<(UserId, Sid), UnixMs>,
    breaker: Breaker,
    /// Store verifies in flight, by session.
    flights: Flights,
    /// The revocation feed has caught up at least once since start.
    caught_up_once: AtomicBool,
    /// The feed is connected and caught up now.
    feed_live: AtomicBool,
    /// The last failure of a store call, with its causes (for `/readyz`).
    last_store_error: std::sync::Mutex<Option<String>>,
    metrics: Metrics,
    /// Revocations accepted while the store was unreachable, until it has
    /// them (`store.outbox`; none: such requests answer 503).
    outbox: Option<Outbox>,
}

/// How a logout or kick went.
#[derive(Debug)]
pub enum Ended {
    /// The store ended these sessions (and told every node).
    Now(Vec<Sid>),
    /// The store was unreachable: this node refuses the session(s) from now
    /// on and the store gets the revocation when it answers again
    /// (`store.outbox`).
    Pending,
}

impl Ended {
    /// Nothing ended: the store had no such session for this user.
    pub fn nothing(&self) -> bool {
        matches!(self, Ended::Now(sids) if sids.is_empty())
    }

    /// An audit line's detail: `pending` while the store has not got it.
    pub fn pending_detail(&self) -> Option<&'static str> {
        matches!(self, Ended::Pending).then_some("pending")
    }

    /// An audit line's detail: how many sessions ended, or `pending`.
    pub fn count_detail(&self) -> String {
        match self {
            Ended::Now(sids) => sids.len().to_string(),
            Ended::Pending => "pending".into(),
        }
    }
}

/// The verifier's background tasks; dropping this stops them.
pub struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl<S: SessionStore + 'static> Verifier<S> {
    /// A verifier over `keys` and `store`.
    pub fn new(keys: Arc<Keyring>, store: Arc<S>, settings: VerifierSettings) -> Arc<Verifier<S>> {
        Verifier::with_outbox(keys, store, settings, None)
    }

    /// A verifier with a logout outbox and what it still holds (from
    /// [`Outbox::open`]): those revocations are refused from the start
    /// and go to the store when it answers.
    pub fn with_outbox(
        keys: Arc<Keyring>,
        store: Arc<S>,
        settings: VerifierSettings,
        outbox: Option<(Outbox, Vec<Pending>)>,
    ) -> Arc<Verifier<S>> {
        let (outbox, waiting) = match outbox {
            Some((o, w)) => (Some(o), w),
            None => (None, Vec::new()),
        };
        let revoked = Revoked::new(settings.revoked_capacity, settings.revoked_ttl);
        for p in &waiting {
            revoked.apply(&p.revocation(), p.at);
        }
        if !waiting.is_empty() {
            tracing::warn!(
                waiting = waiting.len(),
                "logout outbox holds revocations from before the restart: refused here from now on, sent to the session store when it answers"
            );
        }
        Arc::new(Verifier {
            outbox,
            last_store_error: std::sync::Mutex::new(None),
            revoked,
            confirmed: Cache::builder()
                .max_capacity(settings.confirmed_capacity)
                .time_to_live(settings.fallback_window.max(Duration::from_millis(1)))
                .build(),
            keys,
            store,
            settings,
            breaker: Breaker::default(),
            flights: Flights::default(),
            caught_up_once: AtomicBool::new(false),
            feed_live: AtomicBool::new(false),
            metrics: Metrics::default(),
        })
    }

    /// Starts the background tasks: consuming the revocation `feed`, probing
    /// the store while the breaker is open, and rebuilding the revoked
    /// filter. They hold only a weak reference and end with the verifier.
    pub fn start(self: &Arc<Self>, feed: mpsc::Receiver<FeedEvent>, clock: Arc<dyn Clock>) -> Tasks {
        let mut feed = feed;
        let w = Arc::downgrade(self);
        let feed_task = tokio::spawn(async move {
            while let Some(ev) = feed.recv().await {
                let Some(v) = w.upgrade() else { return };
                v.on_feed(ev, clock.now());
            }
        });
        let w = Arc::downgrade(self);
        let probe_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(v) = w.upgrade() else { return };
                v.probe().await;
            }
        });
        let w: Weak<Self> = Arc::downgrade(self);
        let filter_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(REBUILD_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(v) = w.upgrade() else { return };
                v.revoked.rebuild_filter();
            }
        });
        Tasks(vec![feed_task, probe_task, filter_task])
    }

    fn on_feed(&self, ev: FeedEvent, now: UnixMs) {
        match ev {
            FeedEvent::Revoked(r, at) => {
                // Never later than now: a store clock ahead of ours must
                // not make the revocation cover logins made after it.
                self.revoked.apply(&r, at.map_or(now, |at| at.min(now)));
                self.metrics.revocations_applied.fetch_add(1, Ordering::Relaxed);
            }
            FeedEvent::CaughtUp => {
                if !self.caught_up_once.swap(true, Ordering::AcqRel) {
                    tracing::info!("revocation feed caught up: the revoked cache is complete");
                }
                self.feed_live.store(true, Ordering::Release);
            }
            FeedEvent::Lost => {
                if self.feed_live.swap(false, Ordering::AcqRel) {
                    tracing::warn!("revocation feed lost its connection; catching up when it returns");
                }
            }
        }
    }

    /// While the breaker is open: whether the store answers again. While
    /// the outbox holds revocations: hands them to the store, and only
    /// then lets the breaker trust the store again.
    async fn probe(&self) {
        let open = self.breaker.state() == BreakerState::Open;
        let waiting = self.outbox.as_ref().is_some_and(|o| !o.is_empty());
        if !open && !waiting {
            return;
        }
        if open && self.store.health().await.is_err() {
            return;
        }
        if waiting && !self.drain_outbox().await {
            return;
        }
        if open && let Some(t) = self.breaker.probe_succeeded() {
            self.transitioned(t);
        }
    }

    /// Applies the outbox's revocations to the store, oldest first; `true`
    /// when none waits any more.
    async fn drain_outbox(&self) -> bool {
        let Some(ob) = &self.outbox else { return true };
        ob.drain(|p| async move {
            let r = match p.sid {
                Some(sid) => self.store.revoke(&p.uid, &sid, p.at).await.map(drop),
                None => self.store.revoke_all(&p.uid, p.at).await.map(drop),
            };
            if let Err(e) = &r {
                tracing::debug!(error = %e, "logout outbox: the session store did not take a pending revocation yet");
            }
            r.is_ok()
        })
        .await
    }

    /// Revocations waiting in the outbox (metrics).
    pub fn pending_revocations(&self) -> usize {
        self.outbox.as_ref().map_or(0, Outbox::len)
    }

    fn transitioned(&self, (from, to): (BreakerState, BreakerState)) {
        let i = match to {
            BreakerState::Open => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Closed => 2,
        };
        self.metrics.breaker_transitions[i].fetch_add(1, Ordering::Relaxed);
        match to {
            BreakerState::Open => tracing::warn!(
                from = from.as_str(),
                "session store breaker open: not waiting on the store"
            ),
            _ => tracing::info!(from = from.as_str(), to = to.as_str(), "session store breaker"),
        }
    }

    fn store_ok(&self) {
        if let Some(t) = self.breaker.success() {
            self.transitioned(t);
        }
    }

    fn store_failed(&self, e: &StoreError) {
        self.metrics.store_unavailable.fetch_add(1, Ordering::Relaxed);
        let cause = crate::store::redis::error_chain(e);
        tracing::debug!(error = %cause, "session store call failed");
        if self.breaker.state() == BreakerState::Closed {
            // The call that may open the breaker: say why, once, in the
            // words `/readyz` uses.
            tracing::warn!(cause = crate::store::redis::cause_of(&cause), error = %cause, "session store call failed");
        }
        *self.last_store_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(cause);
        if let Some(t) = self.breaker.failure() {
            self.transitioned(t);
        }
    }

    /// The last store failure this node saw, with its causes.
    pub fn last_store_error(&self) -> Option<String> {
        self.last_store_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Whether the revocation feed has caught up at least once.
    pub fn caught_up(&self) -> bool {
        self.caught_up_once.load(Ordering::Acquire)
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The revoked cache (size for metrics; tests).
    pub fn revoked(&self) -> &Revoked {
        &self.revoked
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The keyring.
    pub fn keys(&self) -> &Arc<Keyring> {
        &self.keys
    }

    /// The short path alone: crypto and the revoked cache, no I/O, no
    /// allocation.
    pub fn verify_short(&self, short: &str, now: UnixMs) -> Result<Verified, Reject> {
        self.open_short(short, now).map(|c| short_verified(&c))
    }

    /// A short token opened (key, tag, layout, expiry) and not revoked.
    fn open_short(&self, short: &str, now: UnixMs) -> Result<ShortClaims, Reject> {
        let c = self.keys.open_short(short, now).map_err(Reject::from_token)?;
        if self.revoked.is_revoked(&c.uid, &c.sid, c.iat) {
            return Err(Reject::Revoked);
        }
        Ok(c)
    }

    /// Was the short token `c` issued with the long token `long`? Version 3
    /// short tokens carry the long token's binding (a byte comparison);
    /// older ones are matched by the session id the long token names.
    fn issued_with(&self, c: &ShortClaims, long: &str, now: UnixMs) -> bool {
        match c.bind {
            Some(bind) => self.keys.long_binding(long, now) == Some(bind),
            None => self.keys.peek_long_sid(long) == Some(c.sid),
        }
    }

    /// Verifies a request's tokens: the short one first, then the long one.
    pub async fn verify(&self, short: Option<&str>, long: Option<&str>, now: UnixMs) -> Result<Verified, Reject> {
        let start = Instant::now();
        let r = self.verify_inner(short, long, now, false).await;
        match &r {
            Ok(v) => self.metrics.accepted(v.path, start.elapsed()),
            Err(e) => self.metrics.rejected(e),
        }
        r
    }

    /// A strict verify (`/v1/verify?strict=true`, [`crate::http::Guard::strict`]):
    /// the long token is judged by the store even when a valid short token
    /// is present, and while the store is unreachable the answer is
    /// [`Reject::Unavailable`], never the fallback. For routes that must see
    /// a logout at once (change e-mail, pay).
    pub async fn verify_strict(&self, long: Option<&str>, now: UnixMs) -> Result<Verified, Reject> {
        let demand = Demand {
            strict: true,
            max_auth_age: None,
        };
        self.verify_demanding(None, long, now, demand).await
    }

    /// [`Self::verify`] with what the route demands: strictness (the short
    /// token is then ignored) and a maximum age of the last authentication.
    pub async fn verify_demanding(
        &self,
        short: Option<&str>,
        long: Option<&str>,
        now: UnixMs,
        demand: Demand,
    ) -> Result<Verified, Reject> {
        let start = Instant::now();
        let r = match (demand.strict, long) {
            (false, _) => self.verify_inner(short, long, now, demand.max_auth_age.is_some()).await,
            (true, None) => Err(Reject::Missing),
            (true, Some(long)) => match self.open_long(long, now) {
                Ok((c, bind)) => self.verify_long(&c, bind, now, true, None).await,
                Err(e) => Err(e),
            },
        };
        let r = r.and_then(|v| match demand.max_auth_age {
            Some(max) if v.auth.is_none_or(|a| now.since(a) > max) => Err(Reject::ReauthRequired),
            _ => Ok(v),
        });
        match &r {
            Ok(v) => self.metrics.accepted(v.path, start.elapsed()),
            Err(e) => self.metrics.rejected(e),
        }
        r
    }

    /// A short token counts only alone or beside a long token of the same
    /// session: a short token planted next to a victim's long token (cookie
    /// tossing) must not make the request someone else's. After a rotation
    /// the client may hold the new long token and the old short one; the
    /// mismatch sends it down the long path, which issues a matching short.
    /// `need_auth`: a short token that does not carry the authentication
    /// time (version 1) cannot answer; the long token then does.
    async fn verify_inner(
        &self,
        short: Option<&str>,
        long: Option<&str>,
        now: UnixMs,
        need_auth: bool,
    ) -> Result<Verified, Reject> {
        let short = short
            .map(|s| self.open_short(s, now))
            .filter(|c| !(need_auth && long.is_some() && c.as_ref().is_ok_and(|c| c.auth.is_none())));
        let Some(long) = long else {
            return short.map_or(Err(Reject::Missing), |c| c.map(|c| short_verified(&c)));
        };
        // Which long token the short one was issued with, without opening
        // the long one: the authenticated short token is what the answer
        // rests on (see `tokens::long_binding` for why that is sound).
        if let Some(Ok(c)) = &short
            && self.issued_with(c, long, now)
        {
            return Ok(short_verified(c));
        }
        let (c, bind) = self.open_long(long, now)?;
        self.verify_long(&c, bind, now, false, None).await
    }

    /// Opens a long token, with its binding (for the short token issued
    /// beside it).
    fn open_long(&self, long: &str, now: UnixMs) -> Result<(LongClaims, Binding), Reject> {
        let c = self.keys.open_long(long, now).map_err(Reject::from_token)?;
        let bind = self
            .keys
            .long_binding(long, now)
            .ok_or(Reject::Invalid(TokenError::Layout(
                "no binding in an opened long token",
            )))?;
        Ok((c, bind))
    }

    /// `strict`: no fallback while the store is unreachable.
    /// `bind`: the long token's binding.
    /// `device`: the device key the request proved possession of (a DBSC
    /// refresh, whose caller checked the proof against the key the bound
    /// long token carries): its bytes and thumbprint.
    async fn verify_long(
        &self,
        c: &LongClaims,
        bind: Binding,
        now: UnixMs,
        strict: bool,
        device: Option<(&[u8], crate::store::DeviceThumb)>,
    ) -> Result<Verified, Reject> {
        let c = *c;
        // No downgrade: a bound session's long token (copied with the
        // cookies, say) gets neither the store's answer nor the fallback
        // without a proof of its key.
        if c.device_bound != device.is_some() {
            return Err(Reject::ProofRequired);
        }
        self.not_over(&c, now)?;
        let answer = if self.breaker.allow() {
            self.ask_store(&c, device.map(|d| d.1), now).await?
        } else {
            StoreAnswer::BreakerOpen
        };
        if let StoreAnswer::Verdict(VerifyOutcome::Theft { revoked }) = &answer {
            self.on_theft(&c, revoked, now);
        }
        let confirmed = || {
            self.confirmed
                .get(&(c.uid, c.sid))
                .is_some_and(|t| now.since(t) <= self.settings.fallback_window)
        };
        match decide(&answer, strict, self.settings.fallback, self.caught_up(), confirmed) {
            Decision::Accept { successor } => self.accepted_by_store(&c, bind, successor, device.map(|d| d.0), now),
            Decision::Fallback => Ok(Verified {
                uid: c.uid,
                sid: c.sid,
                path: Path::Fallback,
                short: None,
                long: None,
                auth: Some(c.auth),
                remember: c.remember,
            }),
            Decision::Refuse(r) => Err(r),
        }
    }

    /// What a long token's session must pass before the store is asked:
    /// its absolute lifetime, and no revocation this node knows of.
    fn not_over(&self, c: &LongClaims, now: UnixMs) -> Result<(), Reject> {
        if now >= c.login.plus(self.settings.absolute_ttl) {
            return Err(Reject::Expired);
        }
        if self.revoked.is_revoked(&c.uid, &c.sid, c.login) {
            return Err(Reject::Revoked);
        }
        Ok(())
    }

    /// The store's answer about `c`, through single flight: while one store
    /// verify of this session is in flight on this node, the others wait for
    /// its answer instead of starting their own (a page load after the short
    /// token expired sends many). A request whose shared answer does not
    /// come (the leader's request was cancelled, or the leader is stalled)
    /// asks the store itself: it never takes someone else's missing answer
    /// for an outage.
    ///
    /// Sessions share a flight by (user, sid): every long token naming a
    /// sid carries the same device binding (a bound session's sids are
    /// fresh ones made by `bind`, only ever sealed into bound tokens), so
    /// the shared answer is the one this request's own call would get.
    async fn ask_store(
        &self,
        c: &LongClaims,
        device: Option<crate::store::DeviceThumb>,
        now: UnixMs,
    ) -> Result<StoreAnswer, Reject> {
        // The store uses the candidate only when rotation is due, which the
        // token's own issue time decides (same test as lua/verify.lua), so
        // the common case skips the random-number syscall.
        let candidate = if now.since(c.iat) >= self.settings.rotate_interval {
            Sid::random().map_err(Reject::from_token)?
        } else {
            Sid([0; 16])
        };
        let req = VerifyRequest {
            uid: c.uid,
            sid: c.sid,
            iat: c.iat,
            login: c.login,
            candidate,
            device,
        };
        let flight = match self.flights.join((c.uid, c.sid)) {
            Joined::Leader(flight) => Some(flight),
            Joined::Follower(mut rx) => {
                // The leader's call is bounded by the store timeout; twice
                // that is only reached when the leader itself is stalled.
                let wait = self.settings.store_timeout.saturating_mul(2);
                if let Ok(Ok(answer)) = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await
                    && let Some(answer) = answer.clone()
                {
                    self.metrics.store_verifies_shared.fetch_add(1, Ordering::Relaxed);
                    return Ok(answer);
                }
                self.metrics.store_verifies_unshared.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        let answer = match self.store.verify(&req, now).await {
            Ok(outcome) => {
                self.store_ok();
                StoreAnswer::Verdict(outcome)
            }
            Err(e) if e.is_unavailable() => {
                self.store_failed(&e);
                StoreAnswer::Unreachable
            }
            Err(e) => {
                tracing::error!(error = %e, uid = %c.uid, sid = %c.sid, "session store refused this session's verify (see the error); the request fails, the store stays trusted");
                StoreAnswer::Refused
            }
        };
        if let Some(flight) = flight {
            flight.finish(answer.clone());
        }
        Ok(answer)
    }

    /// A rotated-away long token came back after its grace: the store ended
    /// the whole session; this node remembers it and audits it.
    fn on_theft(&self, c: &LongClaims, revoked: &[Sid], now: UnixMs) {
        tracing::warn!(uid = %c.uid, sid = %c.sid, "rotated-away long token presented after its grace: session revoked as stolen");
        let sid = c.sid.to_text();
        let who = crate::audit::Subject {
            user: Some(c.uid.as_str()),
            session: Some(&sid),
            ..Default::default()
        };
        crate::audit::record("theft_detected", who, None);
        self.revoked.apply(
            &crate::store::Revocation::Sessions {
                uid: c.uid,
                sids: revoked.to_vec(),
            },
            now,
        );
    }

    /// The store accepted `c` (whose token has binding `bind`) and moved it
    /// to `successor`: a fresh short token, and a long one after a rotation.
    fn accepted_by_store(
        &self,
        c: &LongClaims,
        bind: Binding,
        successor: Option<Sid>,
        device: Option<&[u8]>,
        now: UnixMs,
    ) -> Result<Verified, Reject> {
        let (sid, short, long) = match successor {
            None => {
                let short = self.issue_short(c, c.sid, bind, now).map_err(Reject::Invalid)?;
                (c.sid, short, None)
            }
            Some(successor) => {
                self.metrics.rotations.fetch_add(1, Ordering::Relaxed);
                // A bound session's token is never sealed without its key
                // (`seal_long` refuses): fails closed, never unbinds.
                let l = successor_claims(c, successor, c.device_bound, now);
                let (long, short) = self.issue_pair(&l, device, now).map_err(Reject::Invalid)?;
                (successor, short, Some(long))
            }
        };
        self.confirmed.insert((c.uid, sid), now);
        Ok(Verified {
            uid: c.uid,
            sid,
            path: Path::Long,
            short: Some(short),
            long,
            auth: Some(c.auth),
            remember: c.remember,
        })
    }

    /// New tokens for a session whose user just proved who they are again
    /// (`POST /v1/reauth`): the presented long token's session start and
    /// cookie persistence, `current` as the sid (the successor, when the
    /// verify that identified the session rotated it), and `now` as the
    /// authentication time. The caller verified the session first.
    pub fn reissue_authenticated(&self, long: &str, current: Sid, now: UnixMs) -> Result<NewTokens, Reject> {
        let (c, device) = self.keys.open_long_bound(long, now).map_err(Reject::from_token)?;
        let claims = LongClaims {
            auth: now,
            ..successor_claims(&c, current, c.device_bound, now)
        };
        let (long, short) = self
            .issue_pair(&claims, device.as_deref(), now)
            .map_err(Reject::Invalid)?;
        Ok(NewTokens {
            uid: c.uid,
            sid: current,
            long,
            short,
        })
    }

    /// Binds the session of the unbound long token `long` to the device
    /// key `key` (a DBSC registration whose proof the caller checked): the
    /// store moves the session to a new sid bound to the key's thumbprint
    /// and ends the old sid with its lineage (broadcast to every node, and
    /// refused here at once), and the session gets a bound long token
    /// (version 4, carrying the key) and a short token issued with it.
    /// Needs the store: a binding nobody records could be undone by the
    /// copy of the unbound token it is meant to make worthless.
    pub async fn bind_device(&self, long: &str, key: &DeviceKey, now: UnixMs) -> Result<NewTokens, BindError> {
        let c = self
            .keys
            .open_long(long, now)
            .map_err(|e| BindError::Session(Reject::from_token(e)))?;
        if c.device_bound {
            return Err(BindError::AlreadyBound);
        }
        self.not_over(&c, now).map_err(BindError::Session)?;
        if !self.breaker.allow() {
            return Err(BindError::Unavailable(StoreError::Unreachable));
        }
        let successor = Sid::random().map_err(BindError::Token)?;
        let req = BindRequest {
            uid: c.uid,
            sid: c.sid,
            login: c.login,
            successor,
            device: key.thumbprint_bytes(),
        };
        let r = self.store.bind(&req, now).await;
        self.note_store_result(&r);
        match r.map_err(BindError::Unavailable)? {
            BindOutcome::Bound { ended, .. } => {
                if !ended.is_empty() {
                    self.revoked.apply(
                        &crate::store::Revocation::Sessions {
                            uid: c.uid,
                            sids: ended,
                        },
                        now,
                    );
                }
                let claims = successor_claims(&c, successor, true, now);
                let (long, short) = self
                    .issue_pair(&claims, Some(&key.to_bytes()), now)
                    .map_err(BindError::Token)?;
                self.confirmed.insert((c.uid, successor), now);
                Ok(NewTokens {
                    uid: c.uid,
                    sid: successor,
                    long,
                    short,
                })
            }
            BindOutcome::NotFound => Err(BindError::Session(Reject::UnknownSession)),
            BindOutcome::Expired => Err(BindError::Session(Reject::Expired)),
            BindOutcome::AlreadyBound => Err(BindError::AlreadyBound),
        }
    }

    /// A DBSC refresh: the bound long token `long`, presented with a proof
    /// of its device key `key` that the caller checked (signature over a
    /// fresh challenge of this session). Judged like any long token — the
    /// store, or while it is unreachable the fallback policy (one place:
    /// [`decide`]) — with the key's thumbprint, which must be the session's
    /// binding. Always answers with a short token when accepted, on the
    /// fallback too (the browser holds requests back until it has one; its
    /// revocation is still checked on every use), and a new long token when
    /// the store rotated the session.
    pub async fn refresh_bound(&self, long: &str, key: &DeviceKey, now: UnixMs) -> Result<Verified, Reject> {
        let start = Instant::now();
        let r = self.refresh_bound_inner(long, key, now).await;
        match &r {
            Ok(v) => self.metrics.accepted(v.path, start.elapsed()),
            Err(e) => self.metrics.rejected(e),
        }
        r
    }

    async fn refresh_bound_inner(&self, long: &str, key: &DeviceKey, now: UnixMs) -> Result<Verified, Reject> {
        let (c, bind) = self.open_long(long, now)?;
        let bytes = key.to_bytes();
        let mut v = self
            .verify_long(&c, bind, now, false, Some((&bytes, key.thumbprint_bytes())))
            .await?;
        if v.short.is_none() {
            v.short = Some(self.issue_short(&c, c.sid, bind, now).map_err(Reject::Invalid)?);
        }
        Ok(v)
    }

    /// A short token for session `sid` of the long token `c` (its user,
    /// authentication time and cookie persistence), bound to that long
    /// token's `bind`.
    fn issue_short(&self, c: &LongClaims, sid: Sid, bind: Binding, now: UnixMs) -> Result<Issued, TokenError> {
        let exp = now.plus(self.settings.short_ttl);
        let token = self.keys.seal_short(
            &ShortClaims {
                uid: c.uid,
                sid,
                iat: now,
                exp,
                auth: Some(c.auth),
                remember: c.remember,
                bind: Some(bind),
            },
            now,
        )?;
        Ok(Issued { token, expires: exp })
    }

    /// A new long token for `c` (bound to `device` when it is, see
    /// `tokens::seal_long_bound`) and a short token issued with it.
    fn issue_pair(&self, c: &LongClaims, device: Option<&[u8]>, now: UnixMs) -> Result<(Issued, Issued), TokenError> {
        let long = self.issue_long(c, device, now)?;
        let bind = self
            .keys
            .long_binding(&long.token, now)
            .ok_or(TokenError::Layout("no binding in a sealed long token"))?;
        let short = self.issue_short(c, c.sid, bind, now)?;
        Ok((long, short))
    }

    fn issue_long(&self, c: &LongClaims, device: Option<&[u8]>, now: UnixMs) -> Result<Issued, TokenError> {
        let token = match device {
            Some(d) => self.keys.seal_long_bound(c, d, now)?,
            None => self.keys.seal_long(c, now)?,
        };
        Ok(Issued {
            token,
            expires: c.login.plus(self.settings.absolute_ttl),
        })
    }

    /// Creates a session for `uid` (after the caller authenticated the
    /// user) and issues both tokens. Needs the store.
    pub async fn login(
        &self,
        uid: UserId,
        device: Option<crate::store::Device>,
        meta: Option<String>,
        now: UnixMs,
    ) -> Result<NewTokens, LoginError> {
        self.login_with(uid, device, meta, true, now).await
    }

    /// [`Self::login`] choosing the cookies' persistence: `remember =
    /// false` gives browser-session cookies (the choice travels in the
    /// tokens, so re-issued cookies keep it).
    pub async fn login_with(
        &self,
        uid: UserId,
        device: Option<crate::store::Device>,
        meta: Option<String>,
        remember: bool,
        now: UnixMs,
    ) -> Result<NewTokens, LoginError> {
        if !self.breaker.allow() {
            return Err(LoginError::Unavailable(StoreError::Unreachable));
        }
        let sid = Sid::random().map_err(LoginError::Token)?;
        match self.store.login(&NewSession { uid, sid, device, meta }, now).await {
            Ok(LoginOutcome::Created { evicted, .. }) => {
                self.store_ok();
                if !evicted.is_empty() {
                    self.revoked
                        .apply(&crate::store::Revocation::Sessions { uid, sids: evicted }, now);
                }
                let claims = LongClaims::new_session(uid, sid, now, remember);
                let (long, short) = self.issue_pair(&claims, None, now).map_err(LoginError::Token)?;
                self.confirmed.insert((uid, sid), now);
                Ok(NewTokens { uid, sid, long, short })
            }
            Ok(LoginOutcome::Rejected(limit)) => {
                self.store_ok();
                Err(LoginError::Limit(limit))
            }
            Ok(LoginOutcome::Banned { until }) => {
                self.store_ok();
                Err(LoginError::Banned(until))
            }
            Err(e) => {
                if e.is_unavailable() {
                    self.store_failed(&e);
                }
                Err(LoginError::Unavailable(e))
            }
        }
    }

    /// Revokes one session (logout, kick); this node rejects it at once,
    /// other nodes when the broadcast reaches them.
    pub async fn revoke(&self, uid: UserId, sid: Sid, now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        if !self.breaker.allow() {
            return Err(StoreError::Unreachable);
        }
        let r = self.store.revoke(&uid, &sid, now).await;
        self.note_store_result(&r);
        let sids = r?;
        // Only what the store actually removed (under this user's key) is
        // remembered as revoked: a sid of another user's session, or one that
        // does not exist, changes nothing on any node.
        if !sids.is_empty() {
            self.revoked.apply(
                &crate::store::Revocation::Sessions {
                    uid,
                    sids: sids.clone(),
                },
                now,
            );
        }
        Ok(sids)
    }

    /// Ends one session (logout, kick): at once in the store, or — while it
    /// is unreachable and `store.outbox` is set — on this node at once and
    /// in the store when it answers again ([`Ended::Pending`]).
    pub async fn end_session(&self, uid: UserId, sid: Sid, now: UnixMs) -> Result<Ended, StoreError> {
        match self.revoke(uid, sid, now).await {
            Ok(sids) => Ok(Ended::Now(sids)),
            Err(e) => {
                self.defer(
                    Pending {
                        uid,
                        sid: Some(sid),
                        at: now,
                    },
                    e,
                )
                .await
            }
        }
    }

    /// Ends every session of `uid` (logout-all, kick of a user); as
    /// [`Self::end_session`].
    pub async fn end_user(&self, uid: UserId, now: UnixMs) -> Result<Ended, StoreError> {
        match self.revoke_all(uid, now).await {
            Ok(sids) => Ok(Ended::Now(sids)),
            Err(e) => {
                self.defer(
                    Pending {
                        uid,
                        sid: None,
                        at: now,
                    },
                    e,
                )
                .await
            }
        }
    }

    /// A revocation the store did not take: into the outbox (fsynced)
    /// when the store is unavailable and there is one, else the error.
    async fn defer(&self, p: Pending, e: StoreError) -> Result<Ended, StoreError> {
        let Some(ob) = self.outbox.as_ref().filter(|_| e.is_unavailable()) else {
            return Err(e);
        };
        // Refused here first: from the moment the client hears "pending".
        self.revoked.apply(&p.revocation(), p.at);
        match ob.append(p).await {
            Ok(()) => {
                self.metrics.revocations_deferred.fetch_add(1, Ordering::Relaxed);
                Ok(Ended::Pending)
            }
            Err(oe) => {
                tracing::error!(error = %oe, "logout outbox: cannot keep a revocation while the session store is unreachable; answering 503");
                Err(e)
            }
        }
    }

    /// Revokes every session of `uid`.
    pub async fn revoke_all(&self, uid: UserId, now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        if !self.breaker.allow() {
            return Err(StoreError::Unreachable);
        }
        let r = self.store.revoke_all(&uid, now).await;
        self.note_store_result(&r);
        let sids = r?;
        self.revoked.apply(&crate::store::Revocation::User { uid }, now);
        Ok(sids)
    }

    /// Bans `uid` until `ban.until`: the store refuses the user's logins
    /// from now on, then every session of the user ends like a kick
    /// (broadcast to every node). The ended sessions' sids.
    pub async fn ban(&self, uid: UserId, ban: &crate::store::bans::Ban, now: UnixMs) -> Result<Vec<Sid>, StoreError>
    where
        S: crate::store::bans::BanStore,
    {
        if !self.breaker.allow() {
            return Err(StoreError::Unreachable);
        }
        let r = self.store.ban_set(&uid, ban, now).await;
        self.note_store_result(&r);
        r?;
        self.revoke_all(uid, now).await
    }

    /// Records a revocation on this node only (its revoked cache): what it
    /// refuses from now on, whether or not the store hears of it.
    pub fn revoke_locally(&self, r: &crate::store::Revocation, now: UnixMs) {
        self.revoked.apply(r, now);
    }

    /// For store calls made outside the verifier (one-time codes): `Err`
    /// at once while the circuit breaker is open, so nothing waits on an
    /// unreachable store. Report the call's result with [`Self::note_store_result`].
    pub fn store_available(&self) -> Result<(), StoreError> {
        if self.breaker.allow() {
            Ok(())
        } else {
            Err(StoreError::Unreachable)
        }
    }

    /// Feeds a store call's result to the circuit breaker.
    pub fn note_store_result<T>(&self, r: &Result<T, StoreError>) {
        match r {
            Ok(_) => self.store_ok(),
            Err(e) => self.note_store_error(e),
        }
    }

    /// Feeds a failed store call to the circuit breaker (only
    /// unavailability counts).
    pub fn note_store_error(&self, e: &StoreError) {
        if e.is_unavailable() {
            self.store_failed(e);
        }
    }
}
