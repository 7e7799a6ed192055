//! Login throttling policy (password and one-time-code logins, code sends).
//! The counting is the store's (`store/throttle.rs`, shared by every node);
//! this module decides which counters an attempt touches and with which
//! limits, and falls back to in-process counters while the store is
//! unreachable.
//!
//! Per attempt, *before* the secret is checked:
//! 1. the client address (its /64 for IPv6) may have at most
//!    `throttle.per_address` failures per window;
//! 2. the account (user name, or code destination) may have at most
//!    `throttle.per_user_address` failures per window from that address
//!    (`code_login.max_attempts` for codes); while the account has
//!    `throttle.user_attack_threshold` failures from all addresses, each
//!    address gets only `throttle.per_user_address_under_attack` (never 0).
//!
//! So failures from other addresses never refuse an address that has not
//! failed: nobody can lock the owner out of their account. A success gives
//! its attempt back and clears the account's failures from that address.
//! Unknown user names are counted like known ones (no enumeration).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::AppState;
use super::error::ApiError;
use crate::config::Config;
use crate::store::Store;
use crate::store::throttle::{
    Admit, AdmitLimits, Counter, LocalCounters, ThrottleStore, address_bucket, destination_tag, user_tag,
};
use crate::time::UnixMs;
use crate::verify::Verifier;

/// Why an attempt was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Too many failures for this account from this address.
    UserAddress,
    /// The same, with the account under a distributed attack (reduced limit).
    UserUnderAttack,
    /// Too many failures from this address.
    Address,
    /// Too many wrong codes for this destination from this address.
    CodeDestination,
    /// Too many codes requested from this address.
    CodeSends,
}

/// `reason` label values of `twintoken_logins_throttled_total`, in
/// [`Reason`] order.
pub const REASON_LABELS: [&str; 5] = [
    "user_address",
    "user_under_attack",
    "address",
    "code_destination",
    "code_sends",
];

impl Reason {
    fn index(self) -> usize {
        self as usize
    }
}

/// A refused attempt: answer 429 with `Retry-After`.
#[derive(Clone, Copy, Debug)]
pub struct Refused {
    /// When the counter that refused it lets go again.
    pub retry_after: Duration,
    /// Which counter.
    pub reason: Reason,
}

/// Whose secret an attempt tries.
#[derive(Clone, Debug)]
pub enum Account {
    /// A user name (password login).
    User(String),
    /// A one-time-code destination, by its tag.
    Destination(String),
}

/// An admitted attempt; hand it back to [`Throttle::succeeded`] if the
/// secret was right.
#[derive(Debug)]
pub struct Ticket {
    account: String,
    bucket: String,
    /// Where the account's and the address's counts were made.
    account_in: Counted,
    address_in: Counted,
}

/// Where an attempt was counted: its give-back goes to the same place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counted {
    Store,
    Local,
    /// In process, after a store call that failed but may have been carried
    /// out (it timed out: a frozen Redis runs it when it wakes up). Given
    /// back in both places: a count the store made after all would
    /// otherwise stay there for the whole window (found by the chaos run:
    /// each right-password login during a Redis freeze left one failure
    /// against its address, and the address was refused after twenty).
    LocalMaybeStore,
}

/// How often a give-back the store did not take is tried again.
const RELEASE_RETRY: Duration = Duration::from_millis(500);

/// A [`Counter`] that owns its names (for a retried give-back).
enum OwnedCounter {
    AddressFailures(String),
    Account { account: String, bucket: String },
}

impl OwnedCounter {
    fn counter(&self) -> Counter<'_> {
        match self {
            OwnedCounter::AddressFailures(b) => Counter::AddressFailures(b),
            OwnedCounter::Account { account, bucket } => Counter::Account { account, bucket },
        }
    }
}

/// The throttle.
pub struct Throttle {
    window: Duration,
    per_address: AdmitLimits,
    per_user: AdmitLimits,
    per_destination: AdmitLimits,
    sends: AdmitLimits,
    /// Counters while the store is unreachable.
    local: LocalCounters,
    throttled: [AtomicU64; REASON_LABELS.len()],
    fallbacks: AtomicU64,
}

impl Throttle {
    /// From `[throttle]` and `[code_login]`.
    pub fn from_config(c: &Config) -> Throttle {
        let t = &c.throttle;
        let plain = |window, limit| AdmitLimits {
            window,
            limit,
            reduced: limit,
            threshold: u32::MAX,
        };
        Throttle {
            window: t.window,
            per_address: plain(t.window, t.per_address),
            per_user: AdmitLimits {
                window: t.window,
                limit: t.per_user_address,
                reduced: t.per_user_address_under_attack,
                threshold: t.user_attack_threshold,
            },
            per_destination: plain(t.window, c.code_login.max_attempts),
            sends: plain(Duration::from_secs(3600), c.code_login.sends_per_address),
            local: LocalCounters::default(),
            throttled: Default::default(),
            fallbacks: AtomicU64::new(0),
        }
    }

    /// The counting window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Refused attempts per reason, in [`REASON_LABELS`] order.
    pub fn throttled(&self) -> [u64; REASON_LABELS.len()] {
        std::array::from_fn(|i| self.throttled[i].load(Ordering::Relaxed))
    }

    /// Counter calls answered in process because the store was unreachable.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    async fn admit_one(&self, v: &Verifier<Store>, c: Counter<'_>, l: &AdmitLimits, now: UnixMs) -> (Admit, Counted) {
        if v.store_available().is_ok() {
            let r = v.store().throttle_admit(c, l, now).await;
            v.note_store_result(&r);
            match r {
                Ok(a) => return (a, Counted::Store),
                Err(e) => {
                    tracing::warn!(error = %e, "throttle: store unavailable; counting in process");
                    if e.maybe_applied() {
                        self.fallbacks.fetch_add(1, Ordering::Relaxed);
                        return (self.local.admit(c, l, now), Counted::LocalMaybeStore);
                    }
                }
            }
        }
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        (self.local.admit(c, l, now), Counted::Local)
    }

    /// Gives an attempt back where it was counted. A give-back the store
    /// does not take now (unreachable, or the call timed out) is retried in
    /// the background until the store takes it or the counting window has
    /// passed: otherwise a store blip between a right password and its
    /// give-back left a failure counted in the store, and a few blips
    /// locked the user, or everybody behind one address, out with 429
    /// (found by the chaos run). A give-back that reached a frozen store
    /// after all and is then retried gives back one attempt too many
    /// (counters never go below zero).
    async fn give_back(&self, v: &Arc<Verifier<Store>>, c: OwnedCounter, clear: bool, now: UnixMs, at: Counted) {
        match at {
            Counted::Store => {}
            Counted::Local => return self.local.release(c.counter(), clear, now),
            Counted::LocalMaybeStore => self.local.release(c.counter(), clear, now),
        }
        if v.store_available().is_ok() {
            let r = v.store().throttle_release(c.counter(), clear, now).await;
            v.note_store_result(&r);
            if r.is_ok() {
                return;
            }
        }
        let v = Arc::downgrade(v);
        let window = self.window;
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            while started.elapsed() < window {
                tokio::time::sleep(RELEASE_RETRY).await;
                let Some(v) = v.upgrade() else { return };
                if v.store_available().is_err() {
                    continue;
                }
                let at = UnixMs(now.0 + u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
                let r = v.store().throttle_release(c.counter(), clear, at).await;
                v.note_store_result(&r);
                if r.is_ok() {
                    return;
                }
            }
        });
    }

    fn refuse(&self, retry_after: Duration, reason: Reason) -> Refused {
        self.throttled[reason.index()].fetch_add(1, Ordering::Relaxed);
        Refused { retry_after, reason }
    }

    /// Counts an attempt on `account` from `addr`, or refuses it.
    pub async fn admit(
        &self,
        v: &Arc<Verifier<Store>>,
        account: &Account,
        addr: IpAddr,
        now: UnixMs,
    ) -> Result<Ticket, Refused> {
        let bucket = address_bucket(addr);
        let (admitted, address_in) = self
            .admit_one(v, Counter::AddressFailures(&bucket), &self.per_address, now)
            .await;
        if let Admit::Refused { retry_after, .. } = admitted {
            return Err(self.refuse(retry_after, Reason::Address));
        }
        let (tag, limits) = match account {
            Account::User(name) => (user_tag(name), &self.per_user),
            Account::Destination(tag) => (destination_tag(tag), &self.per_destination),
        };
        let c = Counter::Account {
            account: &tag,
            bucket: &bucket,
        };
        match self.admit_one(v, c, limits, now).await {
            (Admit::Allowed { .. }, account_in) => Ok(Ticket {
                account: tag,
                bucket,
                account_in,
                address_in,
            }),
            (
                Admit::Refused {
                    retry_after,
                    under_attack,
                },
                _,
            ) => {
                // Not checked, so not a failure of this address.
                self.give_back(v, OwnedCounter::AddressFailures(bucket), false, now, address_in)
                    .await;
                let reason = match (account, under_attack) {
                    (Account::Destination(_), _) => Reason::CodeDestination,
                    (Account::User(_), true) => Reason::UserUnderAttack,
                    (Account::User(_), false) => Reason::UserAddress,
                };
                Err(self.refuse(retry_after, reason))
            }
        }
    }

    /// The attempt's secret was right: give its counts back and clear the
    /// account's failures from that address.
    pub async fn succeeded(&self, v: &Arc<Verifier<Store>>, t: Ticket, now: UnixMs) {
        let account = OwnedCounter::Account {
            account: t.account,
            bucket: t.bucket.clone(),
        };
        self.give_back(v, account, true, now, t.account_in).await;
        self.give_back(v, OwnedCounter::AddressFailures(t.bucket), false, now, t.address_in)
            .await;
    }

    /// Counts a one-time-code request from `addr`, or refuses it
    /// (`code_login.sends_per_address` per hour).
    pub async fn admit_send(&self, v: &Verifier<Store>, addr: IpAddr, now: UnixMs) -> Result<(), Refused> {
        let bucket = address_bucket(addr);
        match self
            .admit_one(v, Counter::AddressSends(&bucket), &self.sends, now)
            .await
            .0
        {
            Admit::Allowed { .. } => Ok(()),
            Admit::Refused { retry_after, .. } => Err(self.refuse(retry_after, Reason::CodeSends)),
        }
    }
}

/// One throttled attempt, run to its end in a task of its own: counted, its
/// secret checked by `check` (which answers its outcome and whether the
/// secret was right), its counts given back if it was. A client that goes
/// away mid-attempt (a reset connection, a proxy's timeout) drops the
/// request's future: run inline, a right secret's give-back went with it,
/// and each such login left a failure counted against its address until
/// everybody behind that address was refused (found by the chaos run, where
/// about one request in nine is cancelled). Run to its end, cancelling buys
/// neither a check without a count nor a count without its give-back.
pub async fn attempt<T, Fut>(
    state: &Arc<AppState>,
    account: Account,
    addr: IpAddr,
    check: impl FnOnce(Arc<AppState>) -> Fut + Send + 'static,
) -> Result<Result<T, Refused>, ApiError>
where
    T: Send + 'static,
    Fut: Future<Output = (T, bool)> + Send + 'static,
{
    let state = state.clone();
    tokio::spawn(async move {
        let v = &state.verifier;
        let ticket = match state.throttle.admit(v, &account, addr, state.clock.now()).await {
            Ok(t) => t,
            Err(r) => return Err(r),
        };
        let (outcome, right) = check(state.clone()).await;
        if right {
            state.throttle.succeeded(v, ticket, state.clock.now()).await;
        }
        Ok(outcome)
    })
    .await
    .map_err(|_| ApiError::internal())
}
