//! What this node knows was revoked: sids, and whole users (with the time
//! this node learned it). Bounded moka caches hold the truth; a negative
//! filter in front of them answers the common case ("nothing revoked for
//! this user or sid") with a hash and two atomic loads, so the short path
//! does not pay a moka lookup (~1 µs here) per request.
//!
//! The filter: two bitsets; an insert sets its bits in both; a lookup asks
//! whether a bit is set in either. Every `REBUILD_EVERY` one bitset (in
//! turn) is cleared and refilled from the caches, dropping bits of expired
//! entries. While one is being rebuilt, the other still holds every live
//! entry, so a revoked sid or user is never missed (no false negatives);
//! false positives only cost a moka lookup.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use moka::sync::Cache;

use crate::store::Revocation;
use crate::time::UnixMs;
use crate::tokens::{Sid, UserId};

/// Bits per filter half: 2^20 (128 KiB each).
const FILTER_BITS: usize = 1 << 20;
const WORDS: usize = FILTER_BITS / 64;

/// How often one half of the filter is rebuilt.
pub const REBUILD_EVERY: Duration = Duration::from_secs(60);

struct Filter {
    halves: [Box<[AtomicU64]>; 2],
    /// Which half the next rebuild clears.
    next: AtomicUsize,
}

impl Filter {
    fn new() -> Filter {
        let half = || {
            (0..WORDS)
                .map(|_| AtomicU64::new(0))
                .collect::<Vec<_>>()
                .into_boxed_slice()
        };
        Filter {
            halves: [half(), half()],
            next: AtomicUsize::new(0),
        }
    }

    fn slot(h: u64) -> (usize, u64) {
        let bit = (h as usize) % FILTER_BITS;
        (bit / 64, 1u64 << (bit % 64))
    }

    fn insert(&self, h: u64) {
        let (w, m) = Self::slot(h);
        for half in &self.halves {
            half[w].fetch_or(m, Ordering::Release);
        }
    }

    fn maybe(&self, h: u64) -> bool {
        let (w, m) = Self::slot(h);
        self.halves.iter().any(|half| half[w].load(Ordering::Acquire) & m != 0)
    }
}

/// FNV-1a: a fast, allocation-free hash for the filter. Not a security
/// boundary: a crafted collision only costs a cache lookup.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn sid_hash(sid: &Sid) -> u64 {
    // 128 random bits: any 64 of them are a fine hash.
    let mut b = [0u8; 8];
    b.copy_from_slice(&sid.0[..8]);
    u64::from_le_bytes(b)
}

fn uid_hash(uid: &UserId) -> u64 {
    // Domain-separated from sid hashes.
    fnv(uid.as_bytes()) ^ 0x5555_5555_5555_5555
}

/// The revoked cache.
pub struct Revoked {
    sids: Cache<Sid, ()>,
    /// User id -> when this node learned that all its sessions were revoked.
    users: Cache<UserId, UnixMs>,
    filter: Filter,
}

impl Revoked {
    /// Caches holding up to `capacity` sids and `capacity / 4` users, each
    /// for `ttl` after insertion.
    pub fn new(capacity: u64, ttl: Duration) -> Revoked {
        Revoked {
            sids: Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
            users: Cache::builder()
                .max_capacity((capacity / 4).max(1))
                .time_to_live(ttl)
                .build(),
            filter: Filter::new(),
        }
    }

    /// Records a revocation made at `at`: a user-wide one covers the
    /// sessions that began before then. The latest user-wide revocation
    /// counts: an older one replayed from the log never narrows it.
    pub fn apply(&self, r: &Revocation, at: UnixMs) {
        match r {
            Revocation::Sessions { sids, .. } => {
                for s in sids {
                    self.sids.insert(*s, ());
                    self.filter.insert(sid_hash(s));
                }
            }
            Revocation::User { uid } => {
                let at = self.users.get(uid).map_or(at, |t| t.max(at));
                self.users.insert(*uid, at);
                self.filter.insert(uid_hash(uid));
            }
        }
    }

    /// Whether the session `sid` of `uid`, which began at `since` (a long
    /// token's login time, or a short token's issue time), is known to be
    /// revoked. A user-wide revocation covers sessions that began before
    /// this node learned of it, not later logins.
    pub fn is_revoked(&self, uid: &UserId, sid: &Sid, since: UnixMs) -> bool {
        let (sh, uh) = (sid_hash(sid), uid_hash(uid));
        if !self.filter.maybe(sh) && !self.filter.maybe(uh) {
            return false;
        }
        self.sids.contains_key(sid) || self.users.get(uid).is_some_and(|at| since <= at)
    }

    /// Clears one half of the filter and refills it from the caches (see
    /// the module docs for why this never loses an entry).
    pub fn rebuild_filter(&self) {
        let i = self.filter.next.fetch_add(1, Ordering::AcqRel) % 2;
        let half = &self.filter.halves[i];
        for w in half.iter() {
            w.store(0, Ordering::Release);
        }
        let set = |h: u64| {
            let (w, m) = Filter::slot(h);
            half[w].fetch_or(m, Ordering::Release);
        };
        for (sid, ()) in self.sids.iter() {
            set(sid_hash(&sid));
        }
        for (uid, _) in self.users.iter() {
            set(uid_hash(&uid));
        }
    }

    /// Entries held (approximate, for metrics).
    pub fn len(&self) -> u64 {
        self.sids.entry_count() + self.users.entry_count()
    }

    /// Whether it holds nothing (approximate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn sids_and_users_are_remembered_and_users_only_cover_earlier_sessions() {
        let r = Revoked::new(100, Duration::from_secs(60));
        let (a, b) = (Sid([1; 16]), Sid([2; 16]));
        assert!(!r.is_revoked(&uid("u"), &a, UnixMs(5)));
        r.apply(
            &Revocation::Sessions {
                uid: uid("u"),
                sids: vec![a],
            },
            UnixMs(10),
        );
        assert!(r.is_revoked(&uid("u"), &a, UnixMs(5)));
        assert!(!r.is_revoked(&uid("u"), &b, UnixMs(5)));
        r.apply(&Revocation::User { uid: uid("v") }, UnixMs(100));
        assert!(
            r.is_revoked(&uid("v"), &b, UnixMs(100)),
            "a session from before the revocation"
        );
        assert!(!r.is_revoked(&uid("v"), &b, UnixMs(101)), "a login after it");
    }

    #[test]
    fn rebuilding_the_filter_never_forgets_a_live_entry() {
        let r = Revoked::new(10_000, Duration::from_secs(60));
        let sids: Vec<Sid> = (0..500u16)
            .map(|i| {
                Sid([
                    (i % 251) as u8,
                    (i / 251) as u8,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                ])
            })
            .collect();
        for s in &sids {
            r.apply(
                &Revocation::Sessions {
                    uid: uid("w"),
                    sids: vec![*s],
                },
                UnixMs(1),
            );
        }
        for _ in 0..4 {
            r.rebuild_filter();
            assert!(sids.iter().all(|s| r.is_revoked(&uid("w"), s, UnixMs(0))));
        }
    }
}
