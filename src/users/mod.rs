//! Who may log in: the built-in users file (argon2id hashes) and the
//! authenticator that checks passwords against it.
//!
//! File format (TOML, mode 0600, written atomically):
//!
//! ```toml
//! [users.alice]
//! id = "1001"
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."   # optional: without it, code login only
//! phone = "+4915112345678"                           # optional, for one-time-code login
//! email = "alice@example.com"                        # optional, for one-time-code login
//! disabled = false
//! ```
//!
//! An unknown name costs the same argon2 work as a wrong password, and both
//! produce the same error, so neither the answer nor its timing tells
//! whether a name exists.

pub mod disabled;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use argon2::Argon2;
use argon2::password_hash::PasswordHasher;
use argon2::password_hash::phc::PasswordHash;
use serde::{Deserialize, Serialize};

use crate::codes::{Destination, DestinationKind};
use crate::tokens::UserId;

/// One user as stored.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The user id that goes into tokens.
    pub id: String,
    /// PHC string of the argon2id hash; without one, the user logs in by
    /// one-time code only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Phone number (E.164) for one-time-code login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// E-mail address for one-time-code login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// A disabled user cannot log in.
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    users: BTreeMap<String, UserEntry>,
}

/// Problems with the users file or a users command.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// Reading or writing failed.
    #[error("users file {path}: {action} failed")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML of the users format.
    #[error("users file {path} is not valid")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A user entry that cannot work.
    #[error("users file {path}: user {name:?}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The user's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// `users add` for a name that exists.
    #[error("user {0:?} already exists; use `twintoken users passwd` to change the password")]
    Exists(String),
    /// A command naming a user that does not exist.
    #[error("no user {0:?} in the users file")]
    NoSuchUser(String),
    /// A name or password that cannot be used.
    #[error("{0}")]
    Rejected(String),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> UsersError {
    let path = path.to_path_buf();
    move |source| UsersError::Io { path, action, source }
}

/// The users file's contents.
#[derive(Clone, Debug, Default)]
pub struct Users {
    users: BTreeMap<String, UserEntry>,
}

impl Users {
    /// Loads `path`; a missing file is an empty set of users.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Users::default()),
            Err(e) => return Err(io(path, "reading")(e)),
        };
        let f: FileFormat = toml::from_str(&text).map_err(|e| UsersError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        for (name, u) in &f.users {
            let invalid = |reason: String| UsersError::Invalid {
                path: path.to_path_buf(),
                name: name.clone(),
                reason,
            };
            UserId::new(&u.id).map_err(|e| invalid(format!("id: {e}")))?;
            if let Some(p) = &u.password {
                PasswordHash::new(p).map_err(|e| invalid(format!("password is not a PHC hash string: {e}")))?;
            }
            for (field, value) in [("phone", &u.phone), ("email", &u.email)] {
                let Some(v) = value else { continue };
                let d = Destination::parse(v).map_err(|e| invalid(format!("{field}: {e}")))?;
                let want = if field == "phone" {
                    DestinationKind::Phone
                } else {
                    DestinationKind::Email
                };
                if d.kind() != want || d.as_str() != v {
                    return Err(invalid(format!(
                        "{field}: {v:?} is not a normalised {field} (expected {:?})",
                        d.as_str()
                    )));
                }
                if let Some(other) = f
                    .users
                    .iter()
                    .find(|(n, o)| *n != name && (o.phone.as_ref() == Some(v) || o.email.as_ref() == Some(v)))
                {
                    return Err(invalid(format!("{field} {v:?} is also user {:?}'s", other.0)));
                }
            }
        }
        Ok(Users { users: f.users })
    }

    /// Writes the file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let f = FileFormat {
            users: self.users.clone(),
        };
        let text = toml::to_string(&f).map_err(|e| UsersError::Rejected(format!("cannot serialize users: {e}")))?;
        let text = format!("# twintoken users: argon2id hashes. Keep this file mode 0600.\n{text}");
        crate::fsutil::write_private(path, text.as_bytes(), false).map_err(|e| UsersError::Io {
            path: e.path,
            action: e.action,
            source: e.source,
        })
    }

    /// The users, by name.
    pub fn entries(&self) -> &BTreeMap<String, UserEntry> {
        &self.users
    }

    /// Adds a user; the id defaults to the name.
    pub fn add(&mut self, name: &str, id: Option<&str>, password: &str) -> Result<(), UsersError> {
        check_name(name)?;
        if self.users.contains_key(name) {
            return Err(UsersError::Exists(name.into()));
        }
        let id = id.unwrap_or(name);
        let password = Some(hash_password(password)?);
        self.insert(name, id, password)
    }

    /// Adds a user without a password: one-time-code login only (set a
    /// phone number or e-mail address with [`Users::set_contact`]).
    pub fn add_without_password(&mut self, name: &str, id: Option<&str>) -> Result<(), UsersError> {
        self.insert(name, id.unwrap_or(name), None)
    }

    fn insert(&mut self, name: &str, id: &str, password: Option<String>) -> Result<(), UsersError> {
        check_name(name)?;
        if self.users.contains_key(name) {
            return Err(UsersError::Exists(name.into()));
        }
        UserId::new(id).map_err(|e| UsersError::Rejected(format!("user id {id:?}: {e}")))?;
        if self.users.values().any(|u| u.id == id) {
            return Err(UsersError::Rejected(format!("user id {id:?} is already taken")));
        }
        self.users.insert(
            name.into(),
            UserEntry {
                id: id.into(),
                password,
                phone: None,
                email: None,
                disabled: false,
            },
        );
        Ok(())
    }

    /// Sets (or, with an empty string, removes) a user's phone number and
    /// e-mail address for one-time-code login; `None` leaves one as it is.
    /// Values are normalised and must not belong to another user.
    pub fn set_contact(&mut self, name: &str, phone: Option<&str>, email: Option<&str>) -> Result<(), UsersError> {
        if !self.users.contains_key(name) {
            return Err(UsersError::NoSuchUser(name.into()));
        }
        let mut normalised = [None, None];
        for (i, (value, want)) in [(phone, DestinationKind::Phone), (email, DestinationKind::Email)]
            .into_iter()
            .enumerate()
        {
            let Some(v) = value else { continue };
            if v.is_empty() {
                normalised[i] = Some(None);
                continue;
            }
            let d = Destination::parse(v).map_err(|e| UsersError::Rejected(format!("{v:?}: {e}")))?;
            if d.kind() != want {
                return Err(UsersError::Rejected(format!("{v:?} is not a {}", want.as_str())));
            }
            let taken = self.users.iter().find(|(n, u)| {
                *n != name && (u.phone.as_deref() == Some(d.as_str()) || u.email.as_deref() == Some(d.as_str()))
            });
            if let Some((other, _)) = taken {
                return Err(UsersError::Rejected(format!("{d} already belongs to user {other:?}")));
            }
            normalised[i] = Some(Some(d.as_str().to_string()));
        }
        let [p, e] = normalised;
        let u = self
            .users
            .get_mut(name)
            .ok_or_else(|| UsersError::NoSuchUser(name.into()))?;
        if let Some(p) = p {
            u.phone = p;
        }
        if let Some(e) = e {
            u.email = e;
        }
        Ok(())
    }

    /// Sets a new password (and re-enables nothing: `disabled` stays).
    pub fn passwd(&mut self, name: &str, password: &str) -> Result<(), UsersError> {
        let hash = hash_password(password)?;
        let u = self
            .users
            .get_mut(name)
            .ok_or_else(|| UsersError::NoSuchUser(name.into()))?;
        u.password = Some(hash);
        Ok(())
    }

    /// Disables a user: logins are refused from now on, and a running
    /// service ends the user's sessions ([`disabled`]).
    pub fn disable(&mut self, name: &str) -> Result<(), UsersError> {
        self.set_disabled(name, true)
    }

    /// Enables a disabled user again (their ended sessions stay ended).
    pub fn enable(&mut self, name: &str) -> Result<(), UsersError> {
        self.set_disabled(name, false)
    }

    fn set_disabled(&mut self, name: &str, disabled: bool) -> Result<(), UsersError> {
        let u = self
            .users
            .get_mut(name)
            .ok_or_else(|| UsersError::NoSuchUser(name.into()))?;
        u.disabled = disabled;
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), UsersError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(UsersError::Rejected(format!(
            "user name {name:?} must be 1-64 bytes without spaces or control characters"
        )));
    }
    Ok(())
}

/// Hashes a password with argon2id and a random salt (default parameters:
/// m = 19 MiB, t = 2, p = 1, as OWASP recommends).
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    if password.len() < 8 || password.len() > 1024 {
        return Err(UsersError::Rejected("passwords must be 8 to 1024 bytes".into()));
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// Why a password check failed. Deliberately one variant for "no such
/// user" and "wrong password".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown name, wrong password, or disabled user.
    #[error("invalid username or password")]
    BadCredentials,
}

/// Argon2 working memory, reused: at most `max` checks run at once, each in
/// a buffer taken from the pool. Bounds the memory (and CPU) that password
/// checks can take however many logins arrive, and keeps the process RSS
/// flat (the allocator does not hand fresh 19 MiB blocks back reliably).
struct Hashers {
    pool: Mutex<(Vec<Vec<argon2::Block>>, usize)>,
    free: std::sync::Condvar,
    max: usize,
}

impl Hashers {
    fn new() -> Hashers {
        let max = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        Hashers {
            pool: Mutex::new((Vec::new(), 0)),
            free: std::sync::Condvar::new(),
            max,
        }
    }

    fn with_memory<T>(&self, f: impl FnOnce(&mut Vec<argon2::Block>) -> T) -> T {
        let mut buf = {
            let mut g = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(b) = g.0.pop() {
                    break b;
                }
                if g.1 < self.max {
                    g.1 += 1;
                    break Vec::new();
                }
                g = self.free.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        };
        let r = f(&mut buf);
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).0.push(buf);
        self.free.notify_one();
        r
    }
}

/// Largest argon2 memory a users file may ask for (m = 256 MiB).
const MAX_ARGON2_BLOCKS: usize = 256 * 1024;

/// Checks `password` against a PHC argon2 string using `memory` as the
/// working memory (grown as the parameters need). Constant-time comparison.
fn verify_with(memory: &mut Vec<argon2::Block>, password: &str, phc: &str) -> bool {
    let Ok(h) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (&h.salt, &h.hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(h.algorithm.as_str()) else {
        return false;
    };
    let version = match h.version.map(argon2::Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = argon2::Params::try_from(&h) else {
        return false;
    };
    let blocks = params.block_count();
    if blocks > MAX_ARGON2_BLOCKS {
        return false;
    }
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let expected: &[u8] = expected.as_ref();
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    let Some(mem) = memory.get_mut(..blocks) else {
        return false;
    };
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt.as_ref(), out, mem)
        .is_ok()
        && crate::ct::eq(out, expected)
}

/// Checks passwords against the users file, re-reading it when it changes
/// (checked at most once a second).
pub struct UserDb {
    path: PathBuf,
    users: RwLock<Arc<Users>>,
    /// (when we last looked, the file's mtime then)
    seen: Mutex<(Instant, Option<SystemTime>)>,
    /// Verified against for unknown names, so they cost what a real user costs.
    dummy: String,
    hashers: Hashers,
}

impl UserDb {
    /// Loads `path` (missing = no users).
    pub fn open(path: &Path) -> Result<UserDb, UsersError> {
        let users = Users::load(path)?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let dummy = hash_password("twintoken-timing-equaliser")?;
        Ok(UserDb {
            path: path.to_path_buf(),
            users: RwLock::new(Arc::new(users)),
            seen: Mutex::new((Instant::now(), mtime)),
            dummy,
            hashers: Hashers::new(),
        })
    }

    /// The current users.
    pub fn users(&self) -> Arc<Users> {
        self.maybe_reload();
        Arc::clone(&self.users.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn maybe_reload(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.0.elapsed() < Duration::from_secs(1) {
            return;
        }
        seen.0 = Instant::now();
        let mtime = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if mtime == seen.1 {
            return;
        }
        match Users::load(&self.path) {
            Ok(u) => {
                *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(u);
                seen.1 = mtime;
                tracing::info!(file = %self.path.display(), "users file reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "users file changed but cannot be loaded; keeping the previous users")
            }
        }
    }

    /// Checks `name` and `password`. CPU-heavy (argon2): call it from a
    /// blocking thread. At most one check per CPU runs at a time (others
    /// wait), each in reused memory.
    pub fn authenticate(&self, name: &str, password: &str) -> Result<UserId, AuthError> {
        let users = self.users();
        let entry = users.entries().get(name);
        let hash = entry.and_then(|u| u.password.as_deref()).unwrap_or(&self.dummy);
        let ok = self.hashers.with_memory(|m| verify_with(m, password, hash));
        match entry {
            Some(u) if ok && !u.disabled && u.password.is_some() => {
                UserId::new(&u.id).map_err(|_| AuthError::BadCredentials)
            }
            _ => Err(AuthError::BadCredentials),
        }
    }

    /// The enabled user whose phone number or e-mail address is `dest`.
    pub fn find_by_destination(&self, dest: &Destination) -> Option<UserId> {
        let users = self.users();
        users
            .entries()
            .values()
            .find(|u| {
                !u.disabled && (u.phone.as_deref() == Some(dest.as_str()) || u.email.as_deref() == Some(dest.as_str()))
            })
            .and_then(|u| UserId::new(&u.id).ok())
    }
}
