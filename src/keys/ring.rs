//! The live keyring: a [`KeySet`] snapshot behind a lock, swapped whole on
//! reload, so a running server picks up rotations without a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{KeyError, KeySet, load_dir, memo};
use crate::time::{Clock, UnixMs};
use crate::tokens::{self, LongClaims, ShortClaims, TokenError};

/// Minimum time between two reloads triggered by a token naming an unknown
/// key: a stream of forged kids cannot turn into a stream of disk reads.
pub const UNKNOWN_KID_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The keyring a server runs with. Cheap to share (`Arc<Keyring>`); every
/// token operation reads the current snapshot under a read lock that is
/// only ever taken for writing to swap in a reloaded set.
pub struct Keyring {
    dir: Option<PathBuf>,
    set: RwLock<Arc<KeySet>>,
    /// When the last unknown-kid reload ran (ms since the epoch, 0 = never).
    last_kid_reload: AtomicU64,
    /// This keyring, among all in the process (the short-token memo's
    /// entries name it).
    id: u64,
    /// Bumped, under the write lock, each time a set is swapped in: the
    /// memo's entries of older sets are ignored.
    generation: AtomicU64,
}

/// The next keyring's id.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Keyring {
    /// Loads the keyring in `dir`.
    pub fn load(dir: &Path) -> Result<Keyring, KeyError> {
        let set = KeySet::from_files(load_dir(dir)?);
        Ok(Keyring::new(Some(dir.to_path_buf()), set))
    }

    /// A keyring with a fixed set and no directory (reload is a no-op): for
    /// tests, benchmarks and in-process use with keys from elsewhere.
    pub fn fixed(set: KeySet) -> Keyring {
        Keyring::new(None, set)
    }

    fn new(dir: Option<PathBuf>, set: KeySet) -> Keyring {
        Keyring {
            dir,
            set: RwLock::new(Arc::new(set)),
            last_kid_reload: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
        }
    }

    /// The directory it loads from, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(&self.read())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Arc<KeySet>> {
        // A writer only swaps an Arc; a poisoned lock still holds a whole set.
        self.set.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the directory and swaps in the new set. On error the old set
    /// stays in force (a half-written or bad file never empties a running
    /// keyring). Returns whether the set of keys changed.
    pub fn reload(&self) -> Result<bool, KeyError> {
        let Some(dir) = &self.dir else { return Ok(false) };
        let new = KeySet::from_files(load_dir(dir)?);
        let mut guard = self.set.write().unwrap_or_else(|p| p.into_inner());
        let changed = metas(&guard) != metas(&new);
        *guard = Arc::new(new);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(changed)
    }

    /// Seals a long token with the key that is primary at `now`.
    pub fn seal_long(&self, c: &LongClaims, now: UnixMs) -> Result<String, TokenError> {
        tokens::seal_long(&**self.read(), c, now)
    }

    /// Seals the long token of a session bound to a device key
    /// ([`tokens::seal_long_bound`]).
    pub fn seal_long_bound(&self, c: &LongClaims, device: &[u8], now: UnixMs) -> Result<String, TokenError> {
        tokens::seal_long_bound(&**self.read(), c, device, now)
    }

    /// Seals a short token with the key that is primary at `now`.
    pub fn seal_short(&self, c: &ShortClaims, now: UnixMs) -> Result<String, TokenError> {
        tokens::seal_short(&**self.read(), c, now)
    }

    /// Seals a device-bound-session challenge with the key that is primary
    /// at `now`.
    pub fn seal_challenge(&self, c: &crate::tokens::ChallengeClaims, now: UnixMs) -> Result<String, TokenError> {
        tokens::seal_challenge(&**self.read(), c, now)
    }

    /// Opens a challenge; an unknown kid triggers at most one rate-limited
    /// reload and a second try.
    pub fn open_challenge(&self, token: &str, now: UnixMs) -> Result<crate::tokens::ChallengeClaims, TokenError> {
        self.with_kid_reload(now, |set| tokens::open_challenge(set, token, now))
    }

    /// Opens a long token; an unknown kid triggers at most one rate-limited
    /// reload and a second try.
    pub fn open_long(&self, token: &str, now: UnixMs) -> Result<LongClaims, TokenError> {
        self.with_kid_reload(now, |set| tokens::open_long(set, token, now))
    }

    /// [`Self::open_long`], with the device key of a bound token
    /// ([`tokens::open_long_bound`]).
    pub fn open_long_bound(&self, token: &str, now: UnixMs) -> Result<(LongClaims, Option<Vec<u8>>), TokenError> {
        self.with_kid_reload(now, |set| tokens::open_long_bound(set, token, now))
    }

    /// The session a long token names, unauthenticated (see
    /// [`tokens::peek_long_sid`]); no reload on an unknown kid.
    pub fn peek_long_sid(&self, token: &str) -> Option<crate::tokens::Sid> {
        tokens::peek_long_sid(&**self.read(), token)
    }

    /// The binding of a long token ([`tokens::long_binding`]): no
    /// decryption, `None` unless its key is accepted now.
    ///
    /// The key check is remembered per thread for the current key-set
    /// generation (`memo::kid_accepted`): the verify hot path takes no lock.
    pub fn long_binding(&self, token: &str, now: UnixMs) -> Option<crate::tokens::Binding> {
        use crate::tokens::KeyLookup as _;
        let (kid, bind) = tokens::long_binding_unchecked(token)?;
        if memo::kid_accepted(self.id, self.generation.load(Ordering::Acquire), kid) {
            return Some(bind);
        }
        let set = self.read();
        set.opening_key(kid, now).ok()?;
        // Read under the same read lock as `set`.
        memo::accept_kid(self.id, self.generation.load(Ordering::Acquire), kid);
        Some(bind)
    }

    /// Opens a short token; an unknown kid triggers at most one rate-limited
    /// reload and a second try. A text this thread opened before with the
    /// same key set is answered from the memo (`keys/memo.rs`), its time
    /// checks made again.
    pub fn open_short(&self, token: &str, now: UnixMs) -> Result<ShortClaims, TokenError> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(c) = memo::get(self.id, generation, token) {
            tokens::check_short_times(&c, now)?;
            return Ok(c);
        }
        self.with_kid_reload(now, |set| {
            let c = tokens::open_short(set, token, now)?;
            // Read under the same read lock as `set`: the generation it
            // belongs to.
            memo::put(self.id, self.generation.load(Ordering::Acquire), token, c);
            Ok(c)
        })
    }

    fn with_kid_reload<T>(&self, now: UnixMs, op: impl Fn(&KeySet) -> Result<T, TokenError>) -> Result<T, TokenError> {
        let first = op(&self.read());
        match first {
            Err(TokenError::UnknownKid(kid)) if self.dir.is_some() && self.claim_kid_reload(now) => {
                match self.reload() {
                    Ok(_) => op(&self.read()),
                    Err(e) => {
                        tracing::warn!(error = %e, "reload for unknown key {kid} failed; keeping the current keyring");
                        Err(TokenError::UnknownKid(kid))
                    }
                }
            }
            other => other,
        }
    }

    /// Takes the right to reload for an unknown kid if the last such reload
    /// was at least [`UNKNOWN_KID_RELOAD_INTERVAL`] ago.
    fn claim_kid_reload(&self, now: UnixMs) -> bool {
        let last = self.last_kid_reload.load(Ordering::Acquire);
        if last != 0 && now < UnixMs(last).plus(UNKNOWN_KID_RELOAD_INTERVAL) {
            return false;
        }
        self.last_kid_reload
            .compare_exchange(last, now.0.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

fn metas(set: &KeySet) -> Vec<super::KeyMeta> {
    set.entries().iter().map(|e| e.meta).collect()
}

/// Reloads `ring` every `every` and on SIGHUP, logging what changed and
/// keeping the old keys when a reload fails. Runs until the task is aborted.
pub fn spawn_reloader(ring: Arc<Keyring>, every: Duration, clock: Arc<dyn Clock>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading keys on the interval only");
                None
            }
        };
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let why = tokio::select! {
                _ = tick.tick() => "interval",
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            };
            match ring.reload() {
                Ok(true) => {
                    let now = clock.now();
                    let set = ring.snapshot();
                    let summary: Vec<String> = set
                        .entries()
                        .iter()
                        .filter_map(|e| set.state(e.meta.kid, now).map(|s| format!("{}={}", e.meta.kid, s)))
                        .collect();
                    tracing::info!(trigger = why, keys = %summary.join(" "), "keyring reloaded");
                }
                Ok(false) => tracing::debug!(trigger = why, "keyring unchanged"),
                Err(e) => tracing::error!(trigger = why, error = %e, "keyring reload failed; keeping the current keys"),
            }
        }
    })
}
