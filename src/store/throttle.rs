//! Failure counters for login throttling, kept by the store so that every
//! node counts the same attempts (`lua/throttle_admit.lua`,
//! `lua/throttle_release.lua`; [`LocalCounters`] for the embedded store and
//! as every node's fallback while Redis is unreachable).
//!
//! An attempt is counted *before* the secret is checked, and given back if
//! it succeeds: a burst of concurrent guesses gets no more checks than the
//! limit. The policy (which counters, which limits) is the HTTP layer's
//! (`http/throttle.rs`); this module only counts. Time is a parameter.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use sha2::Digest as _;

use super::StoreError;
use crate::time::{UnixMs, duration_ms};

/// A counter, named by what it counts.
#[derive(Clone, Copy, Debug)]
pub enum Counter<'a> {
    /// Failed logins (password or code) from one client address bucket.
    AddressFailures(&'a str),
    /// One-time codes requested from one client address bucket.
    AddressSends(&'a str),
    /// Failures for one account (a [`user_tag`] or [`destination_tag`])
    /// from one address bucket, counted together with the account's
    /// failures from every address.
    Account {
        /// The account's tag.
        account: &'a str,
        /// The address bucket.
        bucket: &'a str,
    },
}

impl Counter<'_> {
    /// The counter's name and, for accounts, the account-wide counter's
    /// name; both share one `{…}` hash tag (one Redis Cluster slot). The
    /// Redis store prefixes them with `store.key_prefix`.
    pub fn names(&self) -> (String, Option<String>) {
        match self {
            Counter::AddressFailures(b) => (format!("t:{{a:{b}}}"), None),
            Counter::AddressSends(b) => (format!("t:{{s:{b}}}"), None),
            Counter::Account { account, bucket } => {
                (format!("t:{{{account}}}:{bucket}"), Some(format!("t:{{{account}}}")))
            }
        }
    }
}

/// The tag of a user name among throttle counters: a digest, so names of
/// any shape (braces included) make well-formed keys and no user name is
/// written to Redis.
pub fn user_tag(name: &str) -> String {
    format!("u:{}", crate::sign::hex(&sha2::Sha256::digest(name.as_bytes())[..16]))
}

/// The tag of a one-time-code destination among throttle counters.
pub fn destination_tag(tag: &str) -> String {
    format!("d:{tag}")
}

/// The bucket a client address is counted in: the IPv4 address, or the
/// /64 an IPv6 address belongs to (one subscriber usually holds a whole
/// /64, so counting per /128 would give each of them 2^64 budgets). IPv4
/// addresses mapped into IPv6 count as IPv4.
pub fn address_bucket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Limits of one admission, from `[throttle]` and `[code_login]`.
#[derive(Clone, Copy, Debug)]
pub struct AdmitLimits {
    /// The counting window.
    pub window: Duration,
    /// Attempts the counter allows per window.
    pub limit: u32,
    /// What it allows while its account is under attack (accounts only).
    pub reduced: u32,
    /// Account-wide attempts per window at which the account counts as
    /// under attack (accounts only).
    pub threshold: u32,
}

/// What an admission decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Counted; go ahead and check the secret.
    Allowed {
        /// The account was under attack (its reduced limit applied).
        under_attack: bool,
    },
    /// At the limit; nothing was counted.
    Refused {
        /// When the counter's window ends.
        retry_after: Duration,
        /// The account was under attack (its reduced limit applied).
        under_attack: bool,
    },
}

/// Counting attempts. Both stores implement it, with one conformance suite.
pub trait ThrottleStore: Send + Sync {
    /// Counts one attempt against `c` unless it is at its limit.
    fn throttle_admit(
        &self,
        c: Counter<'_>,
        limits: &AdmitLimits,
        now: UnixMs,
    ) -> impl Future<Output = Result<Admit, StoreError>> + Send;
    /// Gives back one admitted attempt that succeeded; `clear` deletes the
    /// counter instead (an account's counter for one address, after a
    /// success from that address).
    fn throttle_release(
        &self,
        c: Counter<'_>,
        clear: bool,
        now: UnixMs,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[derive(Clone, Copy, Debug)]
struct Count {
    n: u32,
    ends: u64,
}

/// In-process counters with exactly the scripts' semantics: the embedded
/// store's, and every node's fallback while Redis is unreachable.
#[derive(Debug, Default)]
pub struct LocalCounters {
    map: Mutex<HashMap<String, Count>>,
}

/// Above this many counters, expired ones are swept before a new one is
/// added (admitted attempts are few: each is followed by a password hash).
const SWEEP_ABOVE: usize = 100_000;

impl LocalCounters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Count>> {
        // A panic while holding the lock leaves plain counters behind.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// As `lua/throttle_admit.lua`.
    pub fn admit(&self, c: Counter<'_>, l: &AdmitLimits, now: UnixMs) -> Admit {
        let (key, account) = c.names();
        let now = now.0;
        let mut map = self.lock();
        let live = |m: &HashMap<String, Count>, k: &str| m.get(k).filter(|c| c.ends > now).copied();
        let under_attack = account
            .as_deref()
            .and_then(|a| live(&map, a))
            .is_some_and(|c| c.n >= l.threshold);
        let limit = if under_attack { l.reduced } else { l.limit };
        if let Some(c) = live(&map, &key).filter(|c| c.n >= limit) {
            return Admit::Refused {
                retry_after: Duration::from_millis(c.ends - now),
                under_attack,
            };
        }
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, c| c.ends > now);
        }
        let window = duration_ms(l.window);
        for k in std::iter::once(key).chain(account) {
            match map.get_mut(&k) {
                Some(c) if c.ends > now => c.n += 1,
                _ => {
                    map.insert(
                        k,
                        Count {
                            n: 1,
                            ends: now.saturating_add(window),
                        },
                    );
                }
            }
        }
        Admit::Allowed { under_attack }
    }

    /// As `lua/throttle_release.lua`.
    pub fn release(&self, c: Counter<'_>, clear: bool, now: UnixMs) {
        let (key, account) = c.names();
        let mut map = self.lock();
        for (i, k) in std::iter::once(key).chain(account).enumerate() {
            if !map.get(&k).is_some_and(|c| c.ends > now.0 && c.n > 0) {
                continue;
            }
            if clear && i == 0 {
                map.remove(&k);
            } else if let Some(c) = map.get_mut(&k) {
                c.n -= 1;
            }
        }
    }

    /// Counters held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap_or_else(|e| panic!("{e}"));
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap_or_else(|e| panic!("{e}"));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(address_bucket(a), "2001:db8:1:2::/64");
        assert_eq!(address_bucket(a), address_bucket(b));
        assert_ne!(address_bucket(a), address_bucket(c));
        let m: IpAddr = "::ffff:192.0.2.7".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(address_bucket(m), "192.0.2.7");
    }

    #[test]
    fn user_tags_are_digests() {
        let t = user_tag("a{b}c");
        assert!(t.starts_with("u:") && t.len() == 34 && !t.contains('{'), "{t}");
        assert_ne!(user_tag("alice"), user_tag("Alice"));
    }
}
