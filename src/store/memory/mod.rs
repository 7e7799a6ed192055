//! The embedded in-memory session store: the default when no Redis is
//! configured, for newcomers and single-node setups. Same semantics as the
//! Redis store step for step (it mirrors `lua/*.lua`, layout v3): the
//! conformance suite runs against both, and a randomized differential test
//! (`tests/it/differential.rs`) compares them reply for reply.
//!
//! With a directory ([`MemoryStore::open`], `store.path`) every change is
//! journaled and the state survives restarts ([`persist`]); without one
//! ([`MemoryStore::new`]) nothing does.

pub mod persist;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use persist::{Entry, Journal, PersistError, PersistOptions};

use tokio::sync::{broadcast, mpsc};

use super::bans::{Ban, BanStore};
use super::codes::{CheckOutcome, CodeLimits, CodeStore, DAY, Digest, SendOutcome};
use super::{
    BindOutcome, BindRequest, DeviceThumb, FeedEvent, Limit, LoginOutcome, NewSession, Revocation, SessionInfo,
    SessionStore, Stats, StoreError, StoreSettings, VerifyOutcome, VerifyRequest,
};
use crate::config::{LoginMode, Overflow};
use crate::time::{UnixMs, duration_ms};
use crate::tokens::{Kid, Sid, UserId};

/// One sid's state: the union of its sorted-set entry (`score`) and its
/// record (see `lua/record.lua`).
#[derive(Clone, Debug)]
struct Rec {
    /// Idle expiry; `None` once it left the live set (a theft tombstone).
    score: Option<u64>,
    login: u64,
    device: String,
    origin: Sid,
    pred: Option<Sid>,
    succ: Option<Sid>,
    grace: u64,
    meta: String,
    /// Thumbprint of the device key the session is bound to.
    bound: Option<DeviceThumb>,
}

type User = HashMap<Sid, Rec>;

/// The store's state, behind its locks (always taken users first, then
/// codes): shared with the journal's background writer for compaction.
struct Data {
    users: Mutex<HashMap<UserId, User>>,
    codes: Mutex<Codes>,
}

impl Data {
    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, User>> {
        // Every mutation below completes before the guard drops, so a
        // poisoned lock (a panic elsewhere) still holds consistent data.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn codes(&self) -> std::sync::MutexGuard<'_, Codes> {
        self.codes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl persist::State for Data {
    fn snapshot(&self, switch: &mut dyn FnMut() -> bool, out: &mut Vec<u8>) {
        let users = self.users();
        let codes = self.codes();
        if !switch() {
            return;
        }
        for (uid, user) in users.iter() {
            persist::encode(&Entry::User(uid, Some(user)), out);
        }
        for (tag, c) in &codes.codes {
            persist::encode(&Entry::Code(tag, Some(c)), out);
        }
        for (tag, r) in &codes.rates {
            persist::encode(&Entry::Rate(tag, Some(r)), out);
        }
        for (uid, b) in &codes.bans {
            persist::encode(&Entry::Ban(uid, Some(b)), out);
        }
    }
}

/// The embedded store.
pub struct MemoryStore {
    data: Arc<Data>,
    /// The journal, when the store is kept on disk.
    journal: Option<Arc<Journal>>,
    /// Its background writer.
    writer: Option<std::thread::JoinHandle<()>>,
    settings: StoreSettings,
    revocations: broadcast::Sender<Revocation>,
    throttle: super::throttle::LocalCounters,
    /// When users were last swept for sessions that ended by themselves.
    last_sweep: std::sync::atomic::AtomicU64,
    sweep: bool,
}

/// How often a login sweeps every user (the Redis store's keys expire by
/// themselves; here users who never return would otherwise stay forever).
const SWEEP_EVERY_MS: u64 = 60_000;

impl MemoryStore {
    /// An empty store kept in memory only: nothing survives the process.
    pub fn new(settings: StoreSettings) -> MemoryStore {
        MemoryStore::with_data(settings, HashMap::new(), Codes::default(), None)
    }

    /// The store kept in `o.dir`: loads what the directory holds (see
    /// [`persist`]), takes the directory's lock and journals every change
    /// from now on. Fails on a locked directory, an I/O error, or damage
    /// other than a torn last write.
    pub fn open(settings: StoreSettings, o: &PersistOptions) -> Result<MemoryStore, PersistError> {
        let start = std::time::Instant::now();
        let (journal, loaded) = Journal::open(o)?;
        let sessions: usize = loaded.users.values().map(|u| u.len()).sum();
        tracing::info!(
            dir = %o.dir.display(), fsync = ?o.fsync, users = loaded.users.len(), records = sessions,
            frames = loaded.frames, torn_bytes_dropped = loaded.dropped, took_ms = start.elapsed().as_millis() as u64,
            "embedded session store loaded from disk"
        );
        let journal = Arc::new(journal);
        let mut store = MemoryStore::with_data(settings, loaded.users, loaded.codes, Some(journal.clone()));
        let state: std::sync::Weak<dyn persist::State> = Arc::downgrade(&store.data) as _;
        let writer = persist::spawn_writer(&journal, state).map_err(|source| PersistError::Io {
            path: o.dir.clone(),
            action: "starting the journal writer for",
            source,
        })?;
        store.writer = Some(writer);
        Ok(store)
    }

    fn with_data(
        settings: StoreSettings,
        users: HashMap<UserId, User>,
        codes: Codes,
        journal: Option<Arc<Journal>>,
    ) -> MemoryStore {
        let (revocations, _) = broadcast::channel(4096);
        MemoryStore {
            data: Arc::new(Data {
                users: Mutex::new(users),
                codes: Mutex::new(codes),
            }),
            journal,
            writer: None,
            settings,
            revocations,
            throttle: super::throttle::LocalCounters::default(),
            last_sweep: std::sync::atomic::AtomicU64::new(0),
            sweep: true,
        }
    }

    /// Revocations made through this store, as [`FeedEvent`]s: `CaughtUp`
    /// at once (an embedded store has no history to replay on this node),
    /// then each revocation. A receiver that falls more than the channel's
    /// capacity behind gets `Lost` then `CaughtUp` (with the revocations it
    /// skipped unknown to it, which the store itself still enforces).
    pub fn revocation_feed(&self) -> mpsc::Receiver<FeedEvent> {
        let mut rx = self.revocations.subscribe();
        let (tx, out) = mpsc::channel(4096);
        tokio::spawn(async move {
            if tx.send(FeedEvent::CaughtUp).await.is_err() {
                return;
            }
            loop {
                let ev = match rx.recv().await {
                    Ok(r) => FeedEvent::Revoked(r, None),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "revocation feed fell behind");
                        if tx.send(FeedEvent::Lost).await.is_err() {
                            return;
                        }
                        FeedEvent::CaughtUp
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, User>> {
        self.data.users()
    }

    /// Journals a change (with the lock of the state it changed held);
    /// returns its sequence number for [`MemoryStore::durable`] (0 without
    /// a journal).
    fn journal(&self, e: &Entry<'_>) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.append(e))
    }

    /// Journals a user's whole state (gone when it has no records left).
    fn journal_user(&self, users: &HashMap<UserId, User>, uid: &UserId) -> u64 {
        self.journal(&Entry::User(uid, users.get(uid).filter(|u| !u.is_empty())))
    }

    /// Waits until change `seq` is on disk when it must be before it is
    /// acknowledged: always for an ending session (`ends`: logout, kick,
    /// eviction, theft, a used code), and for every change under
    /// `store.fsync = "always"`. Called without the store's locks.
    async fn durable(&self, seq: u64, ends: bool) -> Result<(), StoreError> {
        let Some(j) = &self.journal else { return Ok(()) };
        if seq == 0 || !(ends || j.always()) {
            return Ok(());
        }
        let j = j.clone();
        match tokio::task::spawn_blocking(move || j.sync_to(seq)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Disk(e.to_string())),
            Err(e) => Err(StoreError::Disk(format!("the journal sync did not finish: {e}"))),
        }
    }

    /// Writes and fsyncs every pending change (graceful shutdown). A no-op
    /// without a journal.
    pub fn flush(&self) -> Result<(), PersistError> {
        match &self.journal {
            Some(j) => j.flush(),
            None => Ok(()),
        }
    }

    /// At most once a minute: forgets users none of whose sids is live any
    /// more (what key expiry does in Redis, where a user's keys expire with
    /// their latest idle expiry). Users with anything live are left as they
    /// are: they are pruned by their own next login or list, as in Redis.
    fn maybe_sweep(&self, users: &mut HashMap<UserId, User>, now: u64) {
        use std::sync::atomic::Ordering;
        if !self.sweep || now.saturating_sub(self.last_sweep.load(Ordering::Relaxed)) < SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep.store(now, Ordering::Relaxed);
        let gone: Vec<UserId> = users
            .iter()
            .filter(|(_, user)| !user.values().any(|r| r.score.is_some_and(|s| s > now)))
            .map(|(uid, _)| *uid)
            .collect();
        for uid in gone {
            users.remove(&uid);
            self.journal(&Entry::User(&uid, None));
        }
    }

    /// The same store without the sweep, for comparing it reply for reply
    /// with Redis under a test clock: Redis expires keys by the real clock,
    /// which a test that moves `now` by hours does not advance.
    pub fn without_sweep(mut self) -> MemoryStore {
        self.sweep = false;
        self
    }

    /// The whole state as sorted text, for tests that compare a store with
    /// itself reloaded from disk. One-time codes and send counters expired
    /// at `now` are left out (gone or not, they answer alike).
    #[doc(hidden)]
    pub fn dump(&self, now: UnixMs) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let users = self.lock();
        let mut uids: Vec<&UserId> = users.keys().collect();
        uids.sort_by_key(|u| u.as_str());
        for uid in uids {
            let mut recs: Vec<(&Sid, &Rec)> = users[uid].iter().collect();
            recs.sort_by_key(|(s, _)| **s);
            for (sid, r) in recs {
                let _ = writeln!(out, "{uid} {sid:?} {r:?}");
            }
        }
        drop(users);
        let codes = self.codes();
        let mut c: Vec<String> = codes
            .codes
            .iter()
            .filter(|(_, c)| c.expires > now.0)
            .map(|(t, c)| format!("code {t} {} {:?} {} {}", c.kid, c.digest, c.attempts, c.expires))
            .chain(
                codes
                    .rates
                    .iter()
                    .filter(|(_, r)| r.expires > now.0)
                    .map(|(t, r)| format!("rate {t} {:?} {} {} {}", r.last, r.day, r.count, r.expires)),
            )
            .chain(
                codes
                    .bans
                    .iter()
                    .filter(|(_, b)| b.until > now)
                    .map(|(u, b)| format!("ban {u} {} {:?}", b.until.0, b.reason)),
            )
            .collect();
        c.sort();
        for line in c {
            let _ = writeln!(out, "{line}");
        }
        out
    }

    /// Users with any record (live sessions or theft tombstones): for tests
    /// of the sweep.
    pub fn users_held(&self) -> usize {
        self.lock().len()
    }

    fn publish(&self, uid: UserId, sids: &[Sid]) {
        if !sids.is_empty() {
            // No receiver is fine: nobody caches revocations then.
            let _ = self.revocations.send(Revocation::Sessions {
                uid,
                sids: sids.to_vec(),
            });
        }
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        if let Some(j) = &self.journal {
            // The writer first (it may be mid-compaction), so that when this
            // drop returns the files are complete and the lock is released.
            j.stop();
            if let Some(w) = self.writer.take() {
                w.thread().unpark();
                let _ = w.join();
            }
            if let Err(e) = j.flush() {
                tracing::error!(error = %e, "the embedded store's last changes could not be written");
            }
        }
    }
}

/// Ends expired sids (`prune` in `lua/record.lua`); says whether anything
/// changed.
fn prune(user: &mut User, now: u64) -> bool {
    let mut changed = false;
    for r in user.values_mut() {
        if r.score.is_some_and(|s| s <= now) {
            r.score = None;
            changed = true;
        }
    }
    let live: Vec<Sid> = user.values().filter(|r| r.score.is_some()).map(|r| r.origin).collect();
    let before = user.len();
    user.retain(|_, r| r.score.is_some() || (r.succ.is_some() && live.contains(&r.origin)));
    changed || user.len() != before
}

/// Rotated-away sids a session keeps for theft detection: the newest
/// [`MAX_ROTATED`] (mirrors `trim_lineage` in `lua/record.lua`).
pub const MAX_ROTATED: usize = 8;

fn trim_lineage(user: &mut User, origin: Sid) {
    let mut rotated: Vec<(u64, Sid)> = user
        .iter()
        .filter(|(_, r)| r.origin == origin && r.succ.is_some())
        .map(|(s, r)| (if r.grace == 0 { u64::MAX } else { r.grace }, *s))
        .collect();
    if rotated.len() <= MAX_ROTATED {
        return;
    }
    rotated.sort();
    for (_, s) in &rotated[..rotated.len() - MAX_ROTATED] {
        user.remove(s);
    }
}

/// The current sids of the live sessions, least recently active first
/// (lowest idle expiry, then sid: the order of `ZRANGEBYSCORE` in
/// `heads` of `lua/record.lua`), with their idle expiry.
fn heads(user: &User) -> Vec<(Sid, u64)> {
    let mut h: Vec<(Sid, u64)> = user
        .iter()
        .filter(|(_, r)| r.succ.is_none())
        .filter_map(|(s, r)| Some((*s, r.score?)))
        .collect();
    h.sort_by_key(|(s, exp)| (*exp, *s));
    h
}

/// Whether Redis keeps a companion record for this sid (layout v3): a
/// plain session is one sorted-set member, and its login time is known
/// only from its token.
fn has_record(sid: &Sid, r: &Rec) -> bool {
    !r.device.is_empty()
        || !r.meta.is_empty()
        || r.origin != *sid
        || r.pred.is_some()
        || r.succ.is_some()
        || r.bound.is_some()
}

fn remove_session(user: &mut User, origin: Sid) -> Vec<Sid> {
    let gone: Vec<Sid> = user
        .iter()
        .filter(|(_, r)| r.origin == origin)
        .map(|(s, _)| *s)
        .collect();
    for s in &gone {
        user.remove(s);
    }
    gone
}

/// `verify` on one user's records (mirrors `lua/verify.lua`); says whether
/// it changed anything (to be journaled).
fn verify_user(user: &mut User, q: &VerifyRequest, now_ms: u64, l: &super::Lifetimes) -> (VerifyOutcome, bool) {
    let deadline = q.login.plus(l.absolute).0;
    let cap = |t: u64| t.min(deadline);
    let Some(r) = user.get(&q.sid).cloned() else {
        return (VerifyOutcome::NotFound, false);
    };
    let theft = r.succ.is_some() && r.grace > 0 && now_ms > r.grace;
    if theft {
        let revoked = remove_session(user, r.origin);
        return (VerifyOutcome::Theft { revoked }, true);
    }
    let Some(score) = r.score else {
        return (VerifyOutcome::NotFound, false);
    };
    if score <= now_ms || now_ms >= deadline {
        if r.succ.is_none() {
            user.remove(&q.sid);
        } else if let Some(e) = user.get_mut(&q.sid) {
            e.score = None;
        }
        return (VerifyOutcome::Expired, true);
    }
    // No downgrade: a bound session answers only to its key's proof.
    if r.bound != q.device {
        return (VerifyOutcome::KeyMismatch, false);
    }
    if let Some(succ) = r.succ {
        let Some(sexp) = user.get(&succ).and_then(|s| s.score) else {
            return (VerifyOutcome::Expired, false);
        };
        if r.grace == 0 {
            return (
                VerifyOutcome::Rotated {
                    successor: succ,
                    idle_expires: UnixMs(sexp),
                },
                false,
            );
        }
        return (
            VerifyOutcome::Valid {
                idle_expires: UnixMs(score),
            },
            false,
        );
    }
    let mut changed = false;
    if let Some(pred) = r.pred {
        if let Some(p) = user.get_mut(&pred).filter(|p| p.grace == 0) {
            p.grace = now_ms + duration_ms(l.rotate_grace);
            if p.score.is_some_and(|s| s > p.grace) {
                p.score = Some(p.grace);
            }
        }
        if let Some(me) = user.get_mut(&q.sid) {
            me.pred = None;
        }
        changed = true;
    }
    if now_ms.saturating_sub(q.iat.0) >= duration_ms(l.rotate_interval) && !user.contains_key(&q.candidate) {
        let exp = cap(now_ms.saturating_add(duration_ms(l.idle)));
        user.insert(
            q.candidate,
            Rec {
                score: Some(exp),
                login: r.login,
                device: r.device.clone(),
                origin: r.origin,
                pred: Some(q.sid),
                succ: None,
                grace: 0,
                meta: r.meta.clone(),
                bound: r.bound,
            },
        );
        if let Some(me) = user.get_mut(&q.sid) {
            me.succ = Some(q.candidate);
        }
        trim_lineage(user, r.origin);
        return (
            VerifyOutcome::Rotated {
                successor: q.candidate,
                idle_expires: UnixMs(exp),
            },
            true,
        );
    }
    let mut score = score;
    if score.saturating_sub(now_ms) <= duration_ms(l.renew_window) {
        let exp = cap(now_ms.saturating_add(duration_ms(l.idle)));
        if exp > score {
            score = exp;
            if let Some(me) = user.get_mut(&q.sid) {
                me.score = Some(exp);
            }
            changed = true;
        }
    }
    (
        VerifyOutcome::Valid {
            idle_expires: UnixMs(score),
        },
        changed,
    )
}

/// `bind` on one user's records (mirrors `lua/bind.lua`); `Err` when the
/// new sid is taken (nothing changed).
fn bind_user(user: &mut User, b: &BindRequest, now_ms: u64, l: &super::Lifetimes) -> Result<BindOutcome, StoreError> {
    let deadline = b.login.plus(l.absolute).0;
    let Some(r) = user.get(&b.sid).cloned() else {
        return Ok(BindOutcome::NotFound);
    };
    let Some(score) = r.score else {
        return Ok(BindOutcome::NotFound);
    };
    if score <= now_ms || now_ms >= deadline {
        return Ok(BindOutcome::Expired);
    }
    if r.succ.is_some() {
        return Ok(BindOutcome::NotFound);
    }
    if r.bound.is_some() {
        return Ok(BindOutcome::AlreadyBound);
    }
    if user.contains_key(&b.successor) {
        return Err(StoreError::SidTaken);
    }
    let ended = remove_session(user, r.origin);
    let exp = now_ms.saturating_add(duration_ms(l.idle)).min(deadline);
    user.insert(
        b.successor,
        Rec {
            score: Some(exp),
            login: if has_record(&b.sid, &r) { r.login } else { b.login.0 },
            device: r.device,
            origin: b.successor,
            pred: None,
            succ: None,
            grace: 0,
            meta: r.meta,
            bound: Some(b.device),
        },
    );
    Ok(BindOutcome::Bound {
        idle_expires: UnixMs(exp),
        ended,
    })
}

impl SessionStore for MemoryStore {
    async fn login(&self, s: &NewSession, now: UnixMs) -> Result<LoginOutcome, StoreError> {
        let l = &self.settings.lifetimes;
        let policy = &self.settings.login;
        let exp = now.plus(l.idle).min(now.plus(l.absolute));
        let device = s.device.as_ref().map(|d| d.as_str().to_string()).unwrap_or_default();
        let cap = policy.device_cap(s.device.as_ref());
        let (seq, evicted) = {
            let mut users = self.lock();
            // Under the users lock, as a ban is set: a login either ends
            // before the ban (and the ban's revoke-all ends it) or sees it.
            if let Some(b) = self.codes().bans.get(&s.uid).filter(|b| b.until > now) {
                return Ok(LoginOutcome::Banned { until: b.until });
            }
            self.maybe_sweep(&mut users, now.0);
            let user = users.entry(s.uid).or_default();
            let pruned = prune(user, now.0);
            if user.contains_key(&s.sid) {
                return Err(StoreError::SidTaken);
            }
            let mut live = heads(user);
            let mut evicted = Vec::new();
            if policy.mode == LoginMode::Single {
                for (sid, _) in live.drain(..) {
                    let origin = user.get(&sid).map(|r| r.origin).unwrap_or(sid);
                    evicted.extend(remove_session(user, origin));
                }
            } else {
                let same = |user: &User, live: &[(Sid, u64)]| -> Vec<Sid> {
                    live.iter()
                        .filter(|(sid, _)| user.get(sid).is_some_and(|r| r.device == device))
                        .map(|(s, _)| *s)
                        .collect()
                };
                let has_cap = cap > 0 && !device.is_empty();
                if policy.overflow == Overflow::Reject {
                    if has_cap && same(user, &live).len() >= cap as usize {
                        if pruned {
                            self.journal(&Entry::User(&s.uid, Some(&*user)));
                        }
                        return Ok(LoginOutcome::Rejected(Limit::Device));
                    }
                    if live.len() >= policy.max_sessions as usize {
                        if pruned {
                            self.journal(&Entry::User(&s.uid, Some(&*user)));
                        }
                        return Ok(LoginOutcome::Rejected(Limit::MaxSessions));
                    }
                }
                while has_cap && same(user, &live).len() >= cap as usize {
                    let Some(victim) = same(user, &live).first().copied() else {
                        break;
                    };
                    let origin = user.get(&victim).map(|r| r.origin).unwrap_or(victim);
                    evicted.extend(remove_session(user, origin));
                    live.retain(|(s, _)| *s != victim);
                }
                while live.len() >= policy.max_sessions as usize && !live.is_empty() {
                    let (victim, _) = live.remove(0);
                    let origin = user.get(&victim).map(|r| r.origin).unwrap_or(victim);
                    evicted.extend(remove_session(user, origin));
                }
            }
            user.insert(
                s.sid,
                Rec {
                    score: Some(exp.0),
                    login: now.0,
                    device,
                    origin: s.sid,
                    pred: None,
                    succ: None,
                    grace: 0,
                    meta: s.meta.clone().unwrap_or_default(),
                    bound: None,
                },
            );
            (self.journal_user(&users, &s.uid), evicted)
        };
        self.durable(seq, !evicted.is_empty()).await?;
        self.publish(s.uid, &evicted);
        Ok(LoginOutcome::Created {
            idle_expires: exp,
            evicted,
        })
    }

    async fn verify(&self, q: &VerifyRequest, now: UnixMs) -> Result<VerifyOutcome, StoreError> {
        let (outcome, seq) = {
            let mut users = self.lock();
            let Some(user) = users.get_mut(&q.uid) else {
                return Ok(VerifyOutcome::NotFound);
            };
            let (outcome, changed) = verify_user(user, q, now.0, &self.settings.lifetimes);
            if !changed {
                return Ok(outcome);
            }
            (outcome, self.journal_user(&users, &q.uid))
        };
        if let VerifyOutcome::Theft { revoked } = &outcome {
            self.durable(seq, true).await?;
            self.publish(q.uid, revoked);
        } else {
            self.durable(seq, false).await?;
        }
        Ok(outcome)
    }

    async fn revoke(&self, uid: &UserId, sid: &Sid, _now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        let (revoked, seq) = {
            let mut users = self.lock();
            let revoked = match users.get_mut(uid) {
                Some(user) => match user.get(sid).map(|r| r.origin) {
                    Some(origin) => remove_session(user, origin),
                    None => Vec::new(),
                },
                None => Vec::new(),
            };
            if revoked.is_empty() {
                return Ok(revoked);
            }
            if users.get(uid).is_some_and(|u| u.is_empty()) {
                users.remove(uid);
            }
            (revoked, self.journal_user(&users, uid))
        };
        self.durable(seq, true).await?;
        self.publish(*uid, &revoked);
        Ok(revoked)
    }

    async fn revoke_all(&self, uid: &UserId, _now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        let (revoked, seq) = {
            let mut users = self.lock();
            let revoked: Vec<Sid> = users.remove(uid).map(|u| u.into_keys().collect()).unwrap_or_default();
            (revoked, self.journal(&Entry::User(uid, None)))
        };
        self.durable(seq, true).await?;
        let _ = self.revocations.send(Revocation::User { uid: *uid });
        Ok(revoked)
    }

    async fn bind(&self, b: &BindRequest, now: UnixMs) -> Result<BindOutcome, StoreError> {
        let (outcome, seq) = {
            let mut users = self.lock();
            let Some(user) = users.get_mut(&b.uid) else {
                return Ok(BindOutcome::NotFound);
            };
            let outcome = bind_user(user, b, now.0, &self.settings.lifetimes)?;
            if !matches!(outcome, BindOutcome::Bound { .. }) {
                return Ok(outcome);
            }
            (outcome, self.journal_user(&users, &b.uid))
        };
        self.durable(seq, true).await?;
        if let BindOutcome::Bound { ended, .. } = &outcome {
            self.publish(b.uid, ended);
        }
        Ok(outcome)
    }

    async fn list(&self, uid: &UserId, now: UnixMs) -> Result<Vec<SessionInfo>, StoreError> {
        let mut users = self.lock();
        let Some(user) = users.get_mut(uid) else {
            return Ok(Vec::new());
        };
        let pruned = prune(user, now.0);
        let out = heads(user)
            .into_iter()
            .filter_map(|(sid, _)| {
                let r = user.get(&sid)?;
                Some(SessionInfo {
                    sid,
                    idle_expires: UnixMs(r.score?),
                    login: has_record(&sid, r).then_some(UnixMs(r.login)),
                    device: Some(r.device.clone()).filter(|d| !d.is_empty()),
                    meta: Some(r.meta.clone()).filter(|m| !m.is_empty()),
                    bound: r.bound.is_some(),
                })
            })
            .collect();
        if user.is_empty() {
            users.remove(uid);
        }
        if pruned {
            // Expiry on disk too (not waited for: replayed, it would expire again).
            self.journal_user(&users, uid);
        }
        Ok(out)
    }

    async fn stats(&self, now: UnixMs) -> Result<Stats, StoreError> {
        let users = self.lock();
        let mut st = Stats::default();
        for user in users.values() {
            let n = user
                .values()
                .filter(|r| r.score.is_some_and(|s| s > now.0) && r.succ.is_none())
                .count() as u64;
            if n > 0 {
                st.users += 1;
                st.sessions += n;
            }
        }
        Ok(st)
    }

    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// One-time codes (mirrors `lua/code_*.lua`): per destination tag, the
/// outstanding code and the send counters, each with its expiry; and the
/// users' bans (`<prefix>{UID}:ban` in Redis), the other keyed state kept
/// apart from the sessions.
#[derive(Default)]
struct Codes {
    codes: HashMap<String, CodeRec>,
    rates: HashMap<String, Rate>,
    bans: HashMap<UserId, Ban>,
    /// Sends since the last sweep of expired entries.
    since_sweep: u32,
}

struct CodeRec {
    kid: Kid,
    digest: Digest,
    attempts: u32,
    expires: u64,
}

struct Rate {
    last: Option<u64>,
    day: u64,
    count: u32,
    expires: u64,
}

impl Codes {
    fn code(&mut self, tag: &str, now: u64) -> Option<&mut CodeRec> {
        if self.codes.get(tag).is_some_and(|c| c.expires <= now) {
            self.codes.remove(tag);
        }
        self.codes.get_mut(tag)
    }

    fn rate(&mut self, tag: &str, now: u64) -> Option<&mut Rate> {
        if self.rates.get(tag).is_some_and(|r| r.expires <= now) {
            self.rates.remove(tag);
        }
        self.rates.get_mut(tag)
    }

    /// Drops expired entries now and then, so memory follows live codes.
    fn maybe_sweep(&mut self, now: u64) {
        self.since_sweep += 1;
        if self.since_sweep >= 1024 {
            self.since_sweep = 0;
            self.codes.retain(|_, c| c.expires > now);
            self.rates.retain(|_, r| r.expires > now);
        }
    }
}

impl MemoryStore {
    fn codes(&self) -> std::sync::MutexGuard<'_, Codes> {
        self.data.codes()
    }
}

impl BanStore for MemoryStore {
    async fn ban_set(&self, uid: &UserId, ban: &Ban, _now: UnixMs) -> Result<(), StoreError> {
        let seq = {
            let _users = self.lock();
            let mut c = self.codes();
            c.bans.insert(*uid, ban.clone());
            self.journal(&Entry::Ban(uid, Some(ban)))
        };
        // On disk before it is acknowledged, like a logout.
        self.durable(seq, true).await
    }

    async fn ban_lift(&self, uid: &UserId, now: UnixMs) -> Result<bool, StoreError> {
        let (was, seq) = {
            let mut c = self.codes();
            let was = c.bans.remove(uid).is_some_and(|b| b.until > now);
            (was, self.journal(&Entry::Ban(uid, None)))
        };
        self.durable(seq, false).await?;
        Ok(was)
    }

    async fn ban_get(&self, uid: &UserId, now: UnixMs) -> Result<Option<Ban>, StoreError> {
        Ok(self.codes().bans.get(uid).filter(|b| b.until > now).cloned())
    }
}

impl CodeStore for MemoryStore {
    async fn code_send(
        &self,
        tag: &str,
        kid: Kid,
        digest: &Digest,
        limits: &CodeLimits,
        now: UnixMs,
    ) -> Result<SendOutcome, StoreError> {
        let now = now.0;
        let interval = duration_ms(limits.resend_interval);
        let day_ms = duration_ms(DAY);
        let seq = {
            let mut c = self.codes();
            c.maybe_sweep(now);
            let (day, count) = match c.rate(tag, now) {
                Some(r) => {
                    if let Some(last) = r.last
                        && now.saturating_sub(last) < interval
                    {
                        let wait = (interval - now.saturating_sub(last)).min(interval);
                        return Ok(SendOutcome::TooSoon(std::time::Duration::from_millis(wait)));
                    }
                    if now.saturating_sub(r.day) >= day_ms {
                        (now, 0)
                    } else {
                        (r.day, r.count)
                    }
                }
                None => (now, 0),
            };
            if count >= limits.daily_limit {
                return Ok(SendOutcome::DailyLimit(std::time::Duration::from_millis(
                    (day + day_ms).saturating_sub(now),
                )));
            }
            c.rates.insert(
                tag.to_string(),
                Rate {
                    last: Some(now),
                    day,
                    count: count + 1,
                    expires: (day + day_ms).max(now + interval),
                },
            );
            c.codes.insert(
                tag.to_string(),
                CodeRec {
                    kid,
                    digest: *digest,
                    attempts: limits.max_attempts,
                    expires: now + duration_ms(limits.ttl),
                },
            );
            self.journal(&Entry::Rate(tag, c.rates.get(tag)));
            self.journal(&Entry::Code(tag, c.codes.get(tag)))
        };
        self.durable(seq, false).await?;
        Ok(SendOutcome::Stored)
    }

    async fn code_check(
        &self,
        tag: &str,
        candidates: &[(Kid, Digest)],
        now: UnixMs,
    ) -> Result<CheckOutcome, StoreError> {
        let (outcome, seq, used) = {
            let mut c = self.codes();
            let Some(rec) = c.code(tag, now.0) else {
                return Ok(CheckOutcome::Missing);
            };
            // A candidate for another kid is no candidate: compare against
            // zeros, so the work is the same either way.
            let candidate = candidates
                .iter()
                .find(|(k, _)| *k == rec.kid)
                .map(|(_, d)| *d)
                .unwrap_or([0; 32]);
            if crate::ct::eq(&candidate, &rec.digest) {
                c.codes.remove(tag);
                (CheckOutcome::Accepted, self.journal(&Entry::Code(tag, None)), true)
            } else {
                rec.attempts = rec.attempts.saturating_sub(1);
                let attempts_left = rec.attempts;
                if attempts_left == 0 {
                    c.codes.remove(tag);
                }
                (
                    CheckOutcome::Wrong { attempts_left },
                    self.journal(&Entry::Code(tag, c.codes.get(tag))),
                    false,
                )
            }
        };
        // A used code stays used: on disk before it is acknowledged.
        self.durable(seq, used).await?;
        Ok(outcome)
    }

    async fn code_cancel(&self, tag: &str, digest: &Digest, now: UnixMs) -> Result<bool, StoreError> {
        let seq = {
            let mut c = self.codes();
            // An expired code is gone, whatever its digest (as in code_cancel.lua).
            if c.codes.get(tag).is_some_and(|r| r.expires <= now.0) {
                c.codes.remove(tag);
            }
            let ours = c.codes.get(tag).is_some_and(|r| crate::ct::eq(&r.digest, digest));
            if ours {
                c.codes.remove(tag);
                if let Some(r) = c.rate(tag, now.0) {
                    r.last = None;
                }
                self.journal(&Entry::Code(tag, None));
                self.journal(&Entry::Rate(tag, c.rates.get(tag)))
            } else {
                return Ok(false);
            }
        };
        self.durable(seq, false).await?;
        Ok(true)
    }
}

impl super::throttle::ThrottleStore for MemoryStore {
    async fn throttle_admit(
        &self,
        c: super::throttle::Counter<'_>,
        limits: &super::throttle::AdmitLimits,
        now: UnixMs,
    ) -> Result<super::throttle::Admit, StoreError> {
        Ok(self.throttle.admit(c, limits, now))
    }
    async fn throttle_release(
        &self,
        c: super::throttle::Counter<'_>,
        clear: bool,
        now: UnixMs,
    ) -> Result<(), StoreError> {
        self.throttle.release(c, clear, now);
        Ok(())
    }
}
