//! The embedded in-memory session store: the default when no Redis is
//! configured, for newcomers and single-node setups. Same semantics as the
//! Redis store step for step (it mirrors `lua/*.lua`); the conformance suite
//! runs against both. Nothing survives a restart.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{broadcast, mpsc};

use super::codes::{CheckOutcome, CodeLimits, CodeStore, DAY, Digest, SendOutcome};
use super::{
    FeedEvent, Limit, LoginOutcome, NewSession, Revocation, SessionInfo, SessionStore, Stats, StoreError,
    StoreSettings, VerifyOutcome, VerifyRequest,
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
}

type User = HashMap<Sid, Rec>;

/// The embedded store.
pub struct MemoryStore {
    users: Mutex<HashMap<UserId, User>>,
    settings: StoreSettings,
    revocations: broadcast::Sender<Revocation>,
    codes: Mutex<Codes>,
    /// When users were last swept for sessions that ended by themselves.
    last_sweep: std::sync::atomic::AtomicU64,
}

/// How often a login sweeps every user (the Redis store's keys expire by
/// themselves; here users who never return would otherwise stay forever).
const SWEEP_EVERY_MS: u64 = 60_000;

impl MemoryStore {
    /// An empty store.
    pub fn new(settings: StoreSettings) -> MemoryStore {
        let (revocations, _) = broadcast::channel(4096);
        MemoryStore {
            users: Mutex::new(HashMap::new()),
            settings,
            revocations,
            codes: Mutex::new(Codes::default()),
            last_sweep: std::sync::atomic::AtomicU64::new(0),
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
                    Ok(r) => FeedEvent::Revoked(r),
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
        // Every mutation below completes before the guard drops, so a
        // poisoned lock (a panic elsewhere) still holds consistent data.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// At most once a minute: prunes every user and forgets those with
    /// nothing left (what key expiry does in Redis).
    fn maybe_sweep(&self, users: &mut HashMap<UserId, User>, now: u64) {
        use std::sync::atomic::Ordering;
        if now.saturating_sub(self.last_sweep.load(Ordering::Relaxed)) < SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep.store(now, Ordering::Relaxed);
        users.retain(|_, user| {
            prune(user, now);
            !user.is_empty()
        });
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

fn prune(user: &mut User, now: u64) {
    for r in user.values_mut() {
        if r.score.is_some_and(|s| s <= now) {
            r.score = None;
        }
    }
    let live: Vec<Sid> = user.values().filter(|r| r.score.is_some()).map(|r| r.origin).collect();
    user.retain(|_, r| r.score.is_some() || (r.succ.is_some() && live.contains(&r.origin)));
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

fn heads(user: &User) -> Vec<(Sid, u64)> {
    let mut h: Vec<(Sid, u64)> = user
        .iter()
        .filter(|(_, r)| r.score.is_some() && r.succ.is_none())
        .map(|(s, r)| (*s, r.login))
        .collect();
    h.sort_by_key(|(s, login)| (*login, *s));
    h
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

impl SessionStore for MemoryStore {
    async fn login(&self, s: &NewSession, now: UnixMs) -> Result<LoginOutcome, StoreError> {
        let l = &self.settings.lifetimes;
        let policy = &self.settings.login;
        let exp = now.plus(l.idle).min(now.plus(l.absolute));
        let device = s.device.clone().unwrap_or_default();
        let cap = policy.device_cap(s.device.as_deref());
        let mut users = self.lock();
        self.maybe_sweep(&mut users, now.0);
        let user = users.entry(s.uid).or_default();
        prune(user, now.0);
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
                    return Ok(LoginOutcome::Rejected(Limit::Device));
                }
                if live.len() >= policy.max_sessions as usize {
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
            },
        );
        drop(users);
        self.publish(s.uid, &evicted);
        Ok(LoginOutcome::Created {
            idle_expires: exp,
            evicted,
        })
    }

    async fn verify(&self, q: &VerifyRequest, now: UnixMs) -> Result<VerifyOutcome, StoreError> {
        let l = &self.settings.lifetimes;
        let now_ms = now.0;
        let deadline = q.login.plus(l.absolute).0;
        let cap = |t: u64| t.min(deadline);
        let mut users = self.lock();
        let Some(user) = users.get_mut(&q.uid) else {
            return Ok(VerifyOutcome::NotFound);
        };
        let Some(r) = user.get(&q.sid).cloned() else {
            return Ok(VerifyOutcome::NotFound);
        };
        let theft = r.succ.is_some() && r.grace > 0 && now_ms > r.grace;
        if theft {
            let revoked = remove_session(user, r.origin);
            drop(users);
            self.publish(q.uid, &revoked);
            return Ok(VerifyOutcome::Theft { revoked });
        }
        let Some(score) = r.score else {
            return Ok(VerifyOutcome::NotFound);
        };
        if score <= now_ms || now_ms >= deadline {
            if r.succ.is_none() {
                user.remove(&q.sid);
            } else if let Some(e) = user.get_mut(&q.sid) {
                e.score = None;
            }
            return Ok(VerifyOutcome::Expired);
        }
        if let Some(succ) = r.succ {
            let Some(sexp) = user.get(&succ).and_then(|s| s.score) else {
                return Ok(VerifyOutcome::Expired);
            };
            if r.grace == 0 {
                return Ok(VerifyOutcome::Rotated {
                    successor: succ,
                    idle_expires: UnixMs(sexp),
                });
            }
            return Ok(VerifyOutcome::Valid {
                idle_expires: UnixMs(score),
            });
        }
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
                },
            );
            if let Some(me) = user.get_mut(&q.sid) {
                me.succ = Some(q.candidate);
            }
            trim_lineage(user, r.origin);
            return Ok(VerifyOutcome::Rotated {
                successor: q.candidate,
                idle_expires: UnixMs(exp),
            });
        }
        let mut score = score;
        if score.saturating_sub(now_ms) <= duration_ms(l.renew_window) {
            let exp = cap(now_ms.saturating_add(duration_ms(l.idle)));
            if exp > score {
                score = exp;
                if let Some(me) = user.get_mut(&q.sid) {
                    me.score = Some(exp);
                }
            }
        }
        Ok(VerifyOutcome::Valid {
            idle_expires: UnixMs(score),
        })
    }

    async fn revoke(&self, uid: &UserId, sid: &Sid, _now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        let mut users = self.lock();
        let revoked = match users.get_mut(uid) {
            Some(user) => match user.get(sid).map(|r| r.origin) {
                Some(origin) => remove_session(user, origin),
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        drop(users);
        self.publish(*uid, &revoked);
        Ok(revoked)
    }

    async fn revoke_all(&self, uid: &UserId, _now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        let revoked: Vec<Sid> = self
            .lock()
            .remove(uid)
            .map(|u| u.into_keys().collect())
            .unwrap_or_default();
        let _ = self.revocations.send(Revocation::User { uid: *uid });
        Ok(revoked)
    }

    async fn list(&self, uid: &UserId, now: UnixMs) -> Result<Vec<SessionInfo>, StoreError> {
        let mut users = self.lock();
        let Some(user) = users.get_mut(uid) else {
            return Ok(Vec::new());
        };
        prune(user, now.0);
        let out = heads(user)
            .into_iter()
            .filter_map(|(sid, _)| {
                let r = user.get(&sid)?;
                Some(SessionInfo {
                    sid,
                    idle_expires: UnixMs(r.score?),
                    login: UnixMs(r.login),
                    device: Some(r.device.clone()).filter(|d| !d.is_empty()),
                    meta: Some(r.meta.clone()).filter(|m| !m.is_empty()),
                })
            })
            .collect();
        if user.is_empty() {
            users.remove(uid);
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
/// outstanding code and the send counters, each with its expiry.
#[derive(Default)]
struct Codes {
    codes: HashMap<String, CodeRec>,
    rates: HashMap<String, Rate>,
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
        self.codes.lock().unwrap_or_else(|p| p.into_inner())
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
        Ok(SendOutcome::Stored)
    }

    async fn code_check(
        &self,
        tag: &str,
        candidates: &[(Kid, Digest)],
        now: UnixMs,
    ) -> Result<CheckOutcome, StoreError> {
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
            return Ok(CheckOutcome::Accepted);
        }
        rec.attempts = rec.attempts.saturating_sub(1);
        let attempts_left = rec.attempts;
        if attempts_left == 0 {
            c.codes.remove(tag);
        }
        Ok(CheckOutcome::Wrong { attempts_left })
    }

    async fn code_cancel(&self, tag: &str, digest: &Digest, now: UnixMs) -> Result<bool, StoreError> {
        let mut c = self.codes();
        let ours = c.codes.get(tag).is_some_and(|r| crate::ct::eq(&r.digest, digest));
        if ours {
            c.codes.remove(tag);
            if let Some(r) = c.rate(tag, now.0) {
                r.last = None;
            }
        }
        Ok(ours)
    }
}
