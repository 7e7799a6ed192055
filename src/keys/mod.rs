//! Keys: their lifecycle, the keyring directory on disk, and the live,
//! reloadable keyring the server uses.
//!
//! A key's state is never stored; it is computed from its metadata and `now`
//! ([`KeySet::state`]):
//! - `pending`: `activates_at` is in the future. Accepted for opening (every
//!   node learns it before any node signs with it), never for sealing;
//! - `primary`: the active key with the latest `activates_at`; seals;
//! - `verify-only`: active but superseded; opens tokens it sealed earlier;
//! - `retired`: no longer accepted at all; its secret is erased from disk.
//!
//! This module never decides lifetimes of tokens and never touches the
//! network.

mod dir;
mod memo;
mod ring;

use std::fmt;
use std::path::PathBuf;

pub use dir::{KeyFile, init, load_dir, retire, rotate};
pub use ring::{Keyring, spawn_reloader};
use zeroize::Zeroizing;

use crate::time::UnixMs;
use crate::tokens::{Cipher, KeyLookup, Kid, TokenError};

/// The lifecycle state of a key at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// Known everywhere, opens tokens, does not seal yet.
    Pending,
    /// Seals new tokens.
    Primary,
    /// Opens the tokens it sealed while it was primary.
    VerifyOnly,
    /// Accepted nowhere.
    Retired,
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            KeyState::Pending => "pending",
            KeyState::Primary => "primary",
            KeyState::VerifyOnly => "verify-only",
            KeyState::Retired => "retired",
        })
    }
}

/// A key's metadata: everything but the secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyMeta {
    /// Its id, written into every token it seals.
    pub kid: Kid,
    /// When it was created.
    pub created: UnixMs,
    /// When it may start sealing.
    pub activates_at: UnixMs,
    /// When it was retired, if it was.
    pub retired_at: Option<UnixMs>,
}

/// One key of a [`KeySet`]: metadata and, unless retired, a ready cipher
/// and the key's one-time-code subkey.
pub struct KeyEntry {
    /// The metadata.
    pub meta: KeyMeta,
    cipher: Option<Cipher>,
    /// The secret itself, for reading a long token's sid without the full
    /// open (`tokens::peek_long_sid`).
    raw: Option<Zeroizing<[u8; 32]>>,
    code_key: Option<Zeroizing<[u8; 32]>>,
}

impl KeyEntry {
    /// The code subkey's buffer (tests check that it wipes itself).
    #[cfg(test)]
    pub(crate) fn code_key_buffer(&self) -> Option<&Zeroizing<[u8; 32]>> {
        self.code_key.as_ref()
    }
}

/// The subkey that keys one-time-code digests:
/// HMAC-SHA256(secret, "twintoken/v1/one-time-code"). A separate key, so a
/// code digest never involves the AEAD key itself.
fn derive_code_key(secret: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    use hmac::{KeyInit as _, Mac as _};
    // HMAC accepts keys of any length: new_from_slice cannot fail here.
    Zeroizing::new(match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(mut m) => {
            m.update(b"twintoken/v1/one-time-code");
            m.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    })
}

/// An immutable snapshot of the keyring: what every token operation looks
/// keys up in. Reloading builds a new one and swaps it in.
#[derive(Default)]
pub struct KeySet {
    /// Sorted by kid.
    entries: Vec<KeyEntry>,
}

impl KeySet {
    /// Builds a snapshot from loaded key files.
    pub fn from_files(files: Vec<KeyFile>) -> KeySet {
        use chacha20poly1305::KeyInit;
        let mut entries: Vec<KeyEntry> = files
            .into_iter()
            .map(|f| {
                let live = match (f.meta.retired_at, f.secret) {
                    (None, Some(secret)) => Some((Cipher::new(&(*secret).into()), derive_code_key(&secret), secret)),
                    _ => None,
                };
                let (cipher, code_key, raw) = match live {
                    Some((c, k, r)) => (Some(c), Some(k), Some(r)),
                    None => (None, None, None),
                };
                KeyEntry {
                    meta: f.meta,
                    cipher,
                    raw,
                    code_key,
                }
            })
            .collect();
        entries.sort_by_key(|e| e.meta.kid);
        KeySet { entries }
    }

    /// A one-key set, active since the epoch: for tests and benchmarks.
    pub fn single(kid: Kid, secret: [u8; 32]) -> KeySet {
        KeySet::from_files(vec![KeyFile {
            meta: KeyMeta {
                kid,
                created: UnixMs(0),
                activates_at: UnixMs(0),
                retired_at: None,
            },
            secret: Some(Zeroizing::new(secret)),
        }])
    }

    /// The keys, by kid.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    fn entry(&self, kid: Kid) -> Option<&KeyEntry> {
        self.entries
            .binary_search_by_key(&kid, |e| e.meta.kid)
            .ok()
            .and_then(|i| self.entries.get(i))
    }

    /// The key that seals at `now`: among active (activated, not retired)
    /// keys, the latest activation wins; ties go to the higher kid.
    pub fn primary(&self, now: UnixMs) -> Option<Kid> {
        self.active(now)
            .max_by_key(|e| (e.meta.activates_at, e.meta.kid))
            .map(|e| e.meta.kid)
    }

    /// The one-time-code subkey to digest new codes with at `now`: the
    /// sealing key's.
    pub fn code_key(&self, now: UnixMs) -> Option<(Kid, &[u8; 32])> {
        self.active(now)
            .max_by_key(|e| (e.meta.activates_at, e.meta.kid))
            .and_then(|e| e.code_key.as_deref().map(|k| (e.meta.kid, k)))
    }

    /// Every non-retired key's one-time-code subkey: a code digested under
    /// any of them (a rotation may happen while a code is out) can be checked.
    pub fn code_keys(&self) -> impl Iterator<Item = (Kid, &[u8; 32])> {
        self.entries
            .iter()
            .filter_map(|e| e.code_key.as_deref().map(|k| (e.meta.kid, k)))
    }

    fn active(&self, now: UnixMs) -> impl Iterator<Item = &KeyEntry> {
        self.entries
            .iter()
            .filter(move |e| e.cipher.is_some() && e.meta.activates_at <= now)
    }

    /// The state of key `kid` at `now`, or `None` if there is no such key.
    pub fn state(&self, kid: Kid, now: UnixMs) -> Option<KeyState> {
        let e = self.entry(kid)?;
        Some(if e.cipher.is_none() {
            KeyState::Retired
        } else if e.meta.activates_at > now {
            KeyState::Pending
        } else if self.primary(now) == Some(kid) {
            KeyState::Primary
        } else {
            KeyState::VerifyOnly
        })
    }

    /// When key `kid` stopped (or will stop) sealing: the activation of the
    /// first key ordered after it. `None` while nothing supersedes it.
    pub fn superseded_at(&self, kid: Kid) -> Option<UnixMs> {
        let me = self.entry(kid)?;
        let order = (me.meta.activates_at, me.meta.kid);
        self.entries
            .iter()
            .filter(|e| e.cipher.is_some() && (e.meta.activates_at, e.meta.kid) > order)
            .map(|e| e.meta.activates_at)
            .min()
    }
}

impl KeyLookup for KeySet {
    fn sealing_key(&self, now: UnixMs) -> Result<(Kid, &Cipher), TokenError> {
        self.active(now)
            .max_by_key(|e| (e.meta.activates_at, e.meta.kid))
            .and_then(|e| e.cipher.as_ref().map(|c| (e.meta.kid, c)))
            .ok_or(TokenError::NoSigningKey)
    }

    fn opening_key(&self, kid: Kid, _now: UnixMs) -> Result<&Cipher, TokenError> {
        // Pending keys open on purpose: a node that has learned a rotated
        // key accepts its tokens before its own clock says to seal with it.
        match self.entry(kid) {
            None => Err(TokenError::UnknownKid(kid)),
            Some(KeyEntry { cipher: None, .. }) => Err(TokenError::RetiredKid(kid)),
            Some(KeyEntry { cipher: Some(c), .. }) => Ok(c),
        }
    }

    fn peeking_key(&self, kid: Kid) -> Option<&[u8; 32]> {
        self.entry(kid).and_then(|e| e.raw.as_deref())
    }
}

/// Everything that can go wrong with the keyring on disk. Messages name the
/// file and say how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a file failed.
    #[error("keyring {path}: {action} failed")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A key file others can read.
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}` (or `chmod 600 {dir}/*.key`)",
        dir = path.parent().map(|p| p.display().to_string()).unwrap_or_default(),
        path = path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file that is not valid TOML of the key format.
    #[error("key file {path} is not a valid key file")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A key file whose fields are inconsistent.
    #[error("key file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory has no key files.
    #[error("keyring {dir} has no keys; run `twintoken keys init --keys-dir {dir}`", dir = dir.display())]
    Empty {
        /// The directory.
        dir: PathBuf,
    },
    /// `keys init` on a keyring that already has keys.
    #[error("keyring {dir} already has keys; use `twintoken keys rotate` to add one", dir = dir.display())]
    AlreadyInitialized {
        /// The directory.
        dir: PathBuf,
    },
    /// `keys retire` naming a kid the keyring does not have.
    #[error("keyring has no key {0}; `twintoken keys list` shows the kids")]
    NoSuchKey(Kid),
    /// `keys retire` refused because it would break live tokens.
    #[error("refusing to retire key {kid}: {reason}; pass --force to retire it anyway")]
    RetireRefused {
        /// The key.
        kid: Kid,
        /// Why.
        reason: String,
    },
    /// The OS random source failed while creating a key.
    #[error("the OS random number generator failed: {0}")]
    Rng(getrandom::Error),
}
