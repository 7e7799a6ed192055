//! The keyring directory: one TOML file per key (`key-<kid>.key`), written
//! atomically (temporary file, fsync, rename or link) with mode 0600.
//!
//! Only files ending in `.key` directly in the directory are keys; anything
//! else (a README, a `fixtures/` folder) is ignored.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use zeroize::Zeroizing;

use super::{KeyError, KeyMeta, KeySet, KeyState};
use crate::time::UnixMs;
use crate::tokens::Kid;

/// A key as stored on disk: metadata and, unless retired, its 32-byte secret.
#[derive(Clone)]
pub struct KeyFile {
    /// The metadata.
    pub meta: KeyMeta,
    /// The secret; erased when the key is retired, wiped from memory when
    /// dropped.
    pub secret: Option<Zeroizing<[u8; 32]>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Disk {
    kid: u32,
    created: String,
    activates_at: String,
    retired_at: Option<String>,
    secret: Option<String>,
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> KeyError {
    let path = path.to_path_buf();
    move |source| KeyError::Io { path, action, source }
}

fn file_name(kid: Kid) -> String {
    format!("key-{}.key", kid.0)
}

/// Loads every key file of `dir`. Refuses files readable by group or
/// others, malformed files and an empty keyring, each with a message naming
/// the file.
pub fn load_dir(dir: &Path) -> Result<Vec<KeyFile>, KeyError> {
    let keys = read_keys(dir)?;
    if keys.is_empty() {
        return Err(KeyError::Empty { dir: dir.to_path_buf() });
    }
    Ok(keys)
}

/// Like [`load_dir`], but an empty (or missing) directory is an empty list.
fn read_keys(dir: &Path) -> Result<Vec<KeyFile>, KeyError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir, "reading the directory")(e)),
    };
    let mut keys = Vec::new();
    for entry in rd {
        let entry = entry.map_err(io(dir, "reading the directory"))?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "key") || !path.is_file() {
            continue;
        }
        keys.push(read_key_file(&path)?);
    }
    keys.sort_by_key(|k| k.meta.kid);
    if let Some(w) = keys.windows(2).find(|w| w[0].meta.kid == w[1].meta.kid) {
        return Err(KeyError::Invalid {
            path: dir.to_path_buf(),
            reason: format!("two files hold key {}", w[0].meta.kid),
        });
    }
    Ok(keys)
}

fn read_key_file(path: &Path) -> Result<KeyFile, KeyError> {
    let md = fs::metadata(path).map_err(io(path, "reading metadata"))?;
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    // The file's text holds the secret: wiped when dropped, like the parsed copy.
    let text = Zeroizing::new(fs::read_to_string(path).map_err(io(path, "reading"))?);
    let mut disk: Disk = toml::from_str(&text).map_err(|e| KeyError::Parse {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    let invalid = |reason: String| KeyError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let time = |field: &str, v: &str| {
        UnixMs::parse_rfc3339(v).map_err(|e| invalid(format!("{field} = {v:?} is not an RFC 3339 time: {e}")))
    };
    let meta = KeyMeta {
        kid: Kid(disk.kid),
        created: time("created", &disk.created)?,
        activates_at: time("activates_at", &disk.activates_at)?,
        retired_at: disk.retired_at.as_deref().map(|v| time("retired_at", v)).transpose()?,
    };
    if path.file_name().and_then(|n| n.to_str()) != Some(file_name(meta.kid).as_str()) {
        return Err(invalid(format!(
            "holds key {} but should be named {}",
            meta.kid,
            file_name(meta.kid)
        )));
    }
    let encoded = disk.secret.take().map(Zeroizing::new);
    let secret = match (&encoded, meta.retired_at) {
        (None, None) => return Err(invalid("has no secret and is not retired".into())),
        (None, Some(_)) => None,
        (Some(s), _) => {
            let mut out = Zeroizing::new([0u8; 32]);
            match URL_SAFE_NO_PAD.decode_slice(s.as_bytes(), &mut out[..]) {
                Ok(32) if s.len() == 43 => Some(out),
                _ => return Err(invalid("secret must be 32 bytes as 43 characters of base64url".into())),
            }
        }
    };
    Ok(KeyFile { meta, secret })
}

fn render(k: &KeyFile) -> Zeroizing<String> {
    let t = |u: UnixMs| u.to_rfc3339_millis();
    let mut s = format!(
        "# twintoken key {kid}. Secret: keep this file mode 0600 and out of version control.\n\
         kid = {kid}\ncreated = \"{created}\"\nactivates_at = \"{act}\"\n",
        kid = k.meta.kid.0,
        created = t(k.meta.created),
        act = t(k.meta.activates_at),
    );
    if let Some(r) = k.meta.retired_at {
        s.push_str(&format!("retired_at = \"{}\"\n", t(r)));
    }
    let mut s = Zeroizing::new(s);
    if let Some(secret) = &k.secret {
        let encoded = Zeroizing::new(URL_SAFE_NO_PAD.encode(&secret[..]));
        s.push_str("secret = \"");
        s.push_str(&encoded);
        s.push_str("\"\n");
    }
    s
}

/// Writes `k` atomically with mode 0600. With `create_new`, fails if the
/// file exists (two concurrent `rotate`s cannot both take one kid).
fn write_key(dir: &Path, k: &KeyFile, create_new: bool) -> Result<(), KeyError> {
    crate::fsutil::write_private(&dir.join(file_name(k.meta.kid)), render(k).as_bytes(), create_new).map_err(|e| {
        KeyError::Io {
            path: e.path,
            action: e.action,
            source: e.source,
        }
    })
}

fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    crate::fsutil::create_private_dir(dir).map_err(io(dir, "creating the directory"))
}

fn new_key(kid: Kid, now: UnixMs, activates_at: UnixMs) -> Result<KeyFile, KeyError> {
    let mut secret = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut secret[..]).map_err(KeyError::Rng)?;
    Ok(KeyFile {
        meta: KeyMeta {
            kid,
            created: now,
            activates_at,
            retired_at: None,
        },
        secret: Some(secret),
    })
}

/// Creates the first key (kid 1, active at once), creating `dir` with mode
/// 0700 if needed. Refuses a keyring that already has keys.
pub fn init(dir: &Path, now: UnixMs) -> Result<KeyMeta, KeyError> {
    ensure_dir(dir)?;
    if !read_keys(dir)?.is_empty() {
        return Err(KeyError::AlreadyInitialized { dir: dir.to_path_buf() });
    }
    let k = new_key(Kid(1), now, now)?;
    write_key(dir, &k, true)?;
    Ok(k.meta)
}

/// Adds a key that starts sealing at `now + delay`. Until then every node
/// that reloads accepts it for opening, so no node sees a token sealed with
/// a key it does not know yet.
pub fn rotate(dir: &Path, now: UnixMs, delay: Duration) -> Result<KeyMeta, KeyError> {
    let keys = load_dir(dir)?;
    let next = keys
        .iter()
        .map(|k| k.meta.kid.0)
        .max()
        .unwrap_or(0)
        .checked_add(1)
        .ok_or_else(|| KeyError::Invalid {
            path: dir.to_path_buf(),
            reason: "key ids are exhausted".into(),
        })?;
    let k = new_key(Kid(next), now, now.plus(delay))?;
    write_key(dir, &k, true)?;
    Ok(k.meta)
}

/// Retires key `kid`: it stops being accepted, and its secret is erased from
/// disk. Refused, unless `force`, for the primary key and while tokens it
/// sealed may still be alive: until `max_token_life` after it was superseded.
pub fn retire(dir: &Path, kid: Kid, now: UnixMs, max_token_life: Duration, force: bool) -> Result<KeyMeta, KeyError> {
    let keys = load_dir(dir)?;
    let file = keys
        .iter()
        .find(|k| k.meta.kid == kid)
        .cloned()
        .ok_or(KeyError::NoSuchKey(kid))?;
    let set = KeySet::from_files(keys);
    let refuse = |reason: String| Err(KeyError::RetireRefused { kid, reason });
    match set.state(kid, now) {
        Some(KeyState::Retired) => return Ok(file.meta),
        Some(KeyState::Primary) if !force => {
            return refuse("it is the primary key; rotate first and wait for the new key to activate".into());
        }
        Some(KeyState::VerifyOnly) if !force => match set.superseded_at(kid) {
            Some(t) if t.plus(max_token_life) > now => {
                return refuse(format!(
                    "tokens it sealed may live until {} (superseded at {} + long-token absolute lifetime {})",
                    t.plus(max_token_life),
                    t,
                    humantime::format_duration(max_token_life)
                ));
            }
            _ => {}
        },
        _ => {}
    }
    let retired = KeyFile {
        meta: KeyMeta {
            retired_at: Some(now),
            ..file.meta
        },
        secret: None,
    };
    write_key(dir, &retired, false)?;
    Ok(retired.meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding 7: raw key bytes (the secret, the key file's text, the
    /// code subkey) were never wiped from memory. Each now lives in a buffer
    /// that zeroes itself on drop; this test fails to compile otherwise.
    #[test]
    fn key_material_lives_in_buffers_wiped_on_drop() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop + ?Sized>(_: &T) {}
        let f = new_key(Kid(1), UnixMs(0), UnixMs(0)).unwrap_or_else(|e| panic!("{e}"));
        let secret = f.secret.as_ref().unwrap_or_else(|| panic!("a new key has a secret"));
        wiped_on_drop(secret);
        let text = render(&f);
        wiped_on_drop(&text);
        assert!(text.contains("secret = \""));
        let set = KeySet::from_files(vec![f]);
        let (_, code_key) = set.code_key(UnixMs(1)).unwrap_or_else(|| panic!("a live code subkey"));
        assert_ne!(code_key, &[0u8; 32]);
        let buffer = set.entries()[0]
            .code_key_buffer()
            .unwrap_or_else(|| panic!("a code subkey"));
        wiped_on_drop(buffer);
    }
}
