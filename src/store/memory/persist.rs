//! Persistence of the embedded store, in the spirit of Redis' append-only
//! file: a snapshot of the whole state plus a journal of every change made
//! since, in one directory (`store.path`).
//!
//! ## Files
//!
//! - `snapshot.<gen>`: the state when generation `gen` began, written to a
//!   temporary file, fsynced and renamed (never seen half-written).
//! - `journal.<gen>`: the changes made during generation `gen`, appended.
//! - `LOCK`: held (`flock`) by the one process using the directory.
//!
//! Both data files are a header line and a sequence of frames: payload
//! length (u32 LE), CRC-32 of the payload (u32 LE), payload. A payload is
//! the whole new state of one key of the store (a user's sessions, a
//! destination's one-time code or its send counters), empty when the key is
//! gone: replaying a journal is "last write wins", independent of the
//! configuration the writes were made under.
//!
//! ## Loading
//!
//! The newest snapshot, then every journal of its generation or later in
//! order. A frame torn by a crash at the very end of the newest journal is
//! dropped (and the file truncated to the last whole frame); any other
//! damage stops the start with the file, the offset and what to do.
//!
//! ## Compaction
//!
//! When the journal outgrows the snapshot (and a floor), the background
//! writer takes the store's locks, writes out what is pending, serializes
//! the state and switches to `journal.<gen+1>`; then, without locks, it
//! writes `snapshot.<gen+1>` and removes generation `gen`'s files. A crash
//! at any point leaves a loadable set: until the new snapshot is in place,
//! the old snapshot with both journals holds everything.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{CodeRec, Codes, Rate, Rec, User};
use crate::config::Fsync;
use crate::tokens::{Kid, Sid, UserId};

const SNAPSHOT_HEADER: &[u8] = b"twintoken snapshot 1\n";
const JOURNAL_HEADER: &[u8] = b"twintoken journal 1\n";
/// No single key's state comes near this; a larger length is damage.
const MAX_FRAME: u32 = 16 << 20;
/// The journal is compacted once it is larger than the snapshot and than this.
pub const COMPACT_MIN_BYTES: u64 = 4 << 20;

/// Where and how the embedded store keeps its state.
#[derive(Clone, Debug)]
pub struct PersistOptions {
    /// The directory (`store.path`).
    pub dir: PathBuf,
    /// When writes reach the disk (`store.fsync`).
    pub fsync: Fsync,
    /// The journal is compacted when larger than the snapshot and than this.
    pub compact_min_bytes: u64,
}

impl PersistOptions {
    /// `dir` with the given policy and the default compaction floor.
    pub fn new(dir: impl Into<PathBuf>, fsync: Fsync) -> PersistOptions {
        PersistOptions {
            dir: dir.into(),
            fsync,
            compact_min_bytes: COMPACT_MIN_BYTES,
        }
    }
}

/// Why the embedded store's files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// An operating-system error on a path.
    #[error("{}: {action} failed: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store directory is writable by group or others, or readable by
    /// them and not ours to tighten.
    #[error(
        "{}: the store directory has mode {mode:04o}: group or others may read it or replace its \
         files (sessions, bans). Check what it holds, run `chmod 700 {}` (owned by the service's \
         user) and start again",
        dir.display(),
        dir.display()
    )]
    Permissions {
        /// The store directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another process holds the directory's lock.
    #[error(
        "{}: another twintoken process is using this store directory (its LOCK file is held); \
         stop it, or give this one its own store.path",
        dir.display()
    )]
    Locked {
        /// The store directory.
        dir: PathBuf,
    },
    /// A file is damaged other than by a torn last write.
    #[error(
        "{}: damaged at byte {offset} ({what}); nothing was loaded. Move this file aside to start \
         without what it holds (or the whole directory to start empty), and keep it for inspection",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where its damaged frame starts.
        offset: u64,
        /// What is wrong there.
        what: String,
    },
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> PersistError {
    let path = path.to_path_buf();
    move |source| PersistError::Io { path, action, source }
}

/// One key's new state; `None` when the key is gone.
pub(super) enum Entry<'a> {
    User(&'a UserId, Option<&'a User>),
    Code(&'a str, Option<&'a CodeRec>),
    Rate(&'a str, Option<&'a Rate>),
    Ban(&'a UserId, Option<&'a crate::store::bans::Ban>),
}

const KIND_USER: u8 = 1;
const KIND_CODE: u8 = 2;
const KIND_RATE: u8 = 3;
const KIND_BAN: u8 = 4;

/// What loading found.
pub(super) struct Loaded {
    pub users: HashMap<UserId, User>,
    pub codes: Codes,
    /// Frames applied, and torn bytes dropped (for the start log line).
    pub frames: u64,
    pub dropped: u64,
}

// ---------------------------------------------------------------------------
// Encoding

fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    // Every string the store keeps is far shorter than 4 GiB (device types,
    // metadata under the HTTP body limit, destination tags).
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s);
}

fn put_sid(out: &mut Vec<u8>, s: &Sid) {
    out.extend_from_slice(&s.0);
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends `e` as one frame to `out`.
pub(super) fn encode(e: &Entry<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    match e {
        Entry::User(uid, user) => {
            out.push(KIND_USER);
            put_str(out, uid.as_bytes());
            let recs = user.map(|u| u.len()).unwrap_or(0);
            out.extend_from_slice(&(recs as u32).to_le_bytes());
            for (sid, r) in user.iter().flat_map(|u| u.iter()) {
                put_sid(out, sid);
                let flags = u8::from(r.score.is_some())
                    | u8::from(r.pred.is_some()) << 1
                    | u8::from(r.succ.is_some()) << 2
                    | u8::from(r.bound.is_some()) << 3;
                out.push(flags);
                if let Some(s) = r.score {
                    put_u64(out, s);
                }
                put_u64(out, r.login);
                put_sid(out, &r.origin);
                if let Some(p) = &r.pred {
                    put_sid(out, p);
                }
                if let Some(s) = &r.succ {
                    put_sid(out, s);
                }
                put_u64(out, r.grace);
                put_str(out, r.device.as_bytes());
                put_str(out, r.meta.as_bytes());
                if let Some(b) = &r.bound {
                    out.extend_from_slice(b);
                }
            }
        }
        Entry::Code(tag, rec) => {
            out.push(KIND_CODE);
            put_str(out, tag.as_bytes());
            out.push(u8::from(rec.is_some()));
            if let Some(c) = rec {
                out.extend_from_slice(&c.kid.0.to_le_bytes());
                out.extend_from_slice(&c.digest);
                out.extend_from_slice(&c.attempts.to_le_bytes());
                put_u64(out, c.expires);
            }
        }
        Entry::Rate(tag, rate) => {
            out.push(KIND_RATE);
            put_str(out, tag.as_bytes());
            out.push(u8::from(rate.is_some()));
            if let Some(r) = rate {
                out.push(u8::from(r.last.is_some()));
                put_u64(out, r.last.unwrap_or(0));
                put_u64(out, r.day);
                out.extend_from_slice(&r.count.to_le_bytes());
                put_u64(out, r.expires);
            }
        }
        Entry::Ban(uid, ban) => {
            out.push(KIND_BAN);
            put_str(out, uid.as_bytes());
            out.push(u8::from(ban.is_some()));
            if let Some(b) = ban {
                put_u64(out, b.until.0);
                put_str(out, b.reason.as_bytes());
            }
        }
    }
    let len = (out.len() - start - 8) as u32;
    let crc = crc32(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A cursor over one payload; every read says what it expected.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err(format!("payload ends inside {what}"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }
    fn sid(&mut self, what: &str) -> Result<Sid, String> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16, what)?);
        Ok(Sid(a))
    }
    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.u32(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
    fn flag(&mut self, what: &str) -> Result<bool, String> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("{what}: {b} is neither 0 nor 1")),
        }
    }
}

/// Applies one payload to the state being loaded.
fn apply(payload: &[u8], users: &mut HashMap<UserId, User>, codes: &mut Codes) -> Result<(), String> {
    let mut r = Reader { b: payload };
    match r.u8("the record kind")? {
        KIND_USER => {
            let uid = r.string("the user id")?;
            let uid = UserId::new(&uid).map_err(|e| format!("user id: {e}"))?;
            let n = r.u32("the session count")?;
            let mut user = User::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                let sid = r.sid("a sid")?;
                let flags = r.u8("the record flags")?;
                if flags & !15 != 0 {
                    return Err(format!("unknown record flags {flags:#x}"));
                }
                let score = if flags & 1 != 0 { Some(r.u64("a score")?) } else { None };
                let login = r.u64("a login time")?;
                let origin = r.sid("an origin")?;
                let pred = if flags & 2 != 0 {
                    Some(r.sid("a predecessor")?)
                } else {
                    None
                };
                let succ = if flags & 4 != 0 {
                    Some(r.sid("a successor")?)
                } else {
                    None
                };
                let grace = r.u64("a grace time")?;
                let device = r.string("a device")?;
                let meta = r.string("metadata")?;
                let bound = if flags & 8 != 0 {
                    let mut b = [0u8; 32];
                    b.copy_from_slice(r.take(32, "a device key thumbprint")?);
                    Some(b)
                } else {
                    None
                };
                user.insert(
                    sid,
                    Rec {
                        score,
                        login,
                        device,
                        origin,
                        pred,
                        succ,
                        grace,
                        meta,
                        bound,
                    },
                );
            }
            if user.is_empty() {
                users.remove(&uid);
            } else {
                users.insert(uid, user);
            }
        }
        KIND_CODE => {
            let tag = r.string("a destination tag")?;
            if r.flag("the presence flag")? {
                let kid = Kid(r.u32("a kid")?);
                let mut digest = [0u8; 32];
                digest.copy_from_slice(r.take(32, "a digest")?);
                let attempts = r.u32("the attempts")?;
                let expires = r.u64("an expiry")?;
                codes.codes.insert(
                    tag,
                    CodeRec {
                        kid,
                        digest,
                        attempts,
                        expires,
                    },
                );
            } else {
                codes.codes.remove(&tag);
            }
        }
        KIND_RATE => {
            let tag = r.string("a destination tag")?;
            if r.flag("the presence flag")? {
                let has_last = r.flag("the last-send flag")?;
                let last = r.u64("the last send")?;
                let day = r.u64("the day start")?;
                let count = r.u32("the count")?;
                let expires = r.u64("an expiry")?;
                codes.rates.insert(
                    tag,
                    Rate {
                        last: has_last.then_some(last),
                        day,
                        count,
                        expires,
                    },
                );
            } else {
                codes.rates.remove(&tag);
            }
        }
        KIND_BAN => {
            let uid = r.string("the user id")?;
            let uid = UserId::new(&uid).map_err(|e| format!("user id: {e}"))?;
            if r.flag("the presence flag")? {
                let until = r.u64("the ban's end")?;
                let reason = r.string("the ban's reason")?;
                codes.bans.insert(
                    uid,
                    crate::store::bans::Ban {
                        until: crate::time::UnixMs(until),
                        reason,
                    },
                );
            } else {
                codes.bans.remove(&uid);
            }
        }
        k => return Err(format!("unknown record kind {k}")),
    }
    if !r.b.is_empty() {
        return Err(format!("{} bytes after the record", r.b.len()));
    }
    Ok(())
}

/// How reading a file ended.
enum Tail {
    /// Every byte was a whole, intact frame.
    Clean,
    /// A frame from `offset` to the end is incomplete or fails its
    /// checksum: a write torn by a crash.
    Torn { offset: u64 },
}

/// Applies every frame of `path`. A damaged frame that is not the file's
/// last is an error; the last one is reported as torn.
fn replay(
    path: &Path,
    header: &[u8],
    users: &mut HashMap<UserId, User>,
    codes: &mut Codes,
    frames: &mut u64,
) -> Result<(Tail, u64), PersistError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io(path, "reading"))?;
    let corrupt = |offset: usize, what: String| PersistError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        what,
    };
    if data.len() < header.len() {
        // Created, then the crash came before its header was whole.
        if header.starts_with(&data) {
            return Ok((Tail::Torn { offset: 0 }, data.len() as u64));
        }
        return Err(corrupt(0, "not a twintoken store file (unknown header)".into()));
    }
    if &data[..header.len()] != header {
        return Err(corrupt(0, "not a twintoken store file (unknown header)".into()));
    }
    let mut at = header.len();
    while at < data.len() {
        let rest = &data[at..];
        if rest.len() < 8 {
            return Ok((Tail::Torn { offset: at as u64 }, data.len() as u64));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let end = 8usize.saturating_add(len as usize);
        if rest.iter().all(|b| *b == 0) {
            // The file was extended by a crash before its data reached the
            // disk (some file systems leave zeros): a torn write too.
            return Ok((Tail::Torn { offset: at as u64 }, data.len() as u64));
        }
        if len == 0 || len > MAX_FRAME {
            return Err(corrupt(at, format!("frame length {len} is impossible")));
        }
        if rest.len() < end {
            return Ok((Tail::Torn { offset: at as u64 }, data.len() as u64));
        }
        let payload = &rest[8..end];
        if crc32(payload) != crc {
            if at + end == data.len() {
                return Ok((Tail::Torn { offset: at as u64 }, data.len() as u64));
            }
            return Err(corrupt(at, "checksum mismatch".into()));
        }
        apply(payload, users, codes).map_err(|what| corrupt(at, what))?;
        *frames += 1;
        at += end;
    }
    Ok((Tail::Clean, data.len() as u64))
}

/// `snapshot.<gen>` / `journal.<gen>` names in `dir`, by generation.
fn generations(dir: &Path) -> Result<(Vec<u64>, Vec<u64>), PersistError> {
    let (mut snaps, mut journals) = (Vec::new(), Vec::new());
    for entry in fs::read_dir(dir).map_err(io(dir, "listing"))? {
        let entry = entry.map_err(io(dir, "listing"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(g) = name.strip_prefix("snapshot.").and_then(|g| g.parse().ok()) {
            snaps.push(g);
        } else if let Some(g) = name.strip_prefix("journal.").and_then(|g| g.parse().ok()) {
            journals.push(g);
        } else if name.starts_with(".snapshot.") && name.contains(".tmp-") {
            // A snapshot whose writer died before the rename.
            let _ = fs::remove_file(entry.path());
        }
    }
    snaps.sort_unstable();
    journals.sort_unstable();
    Ok((snaps, journals))
}

fn snapshot_path(dir: &Path, g: u64) -> PathBuf {
    dir.join(format!("snapshot.{g}"))
}

fn journal_path(dir: &Path, g: u64) -> PathBuf {
    dir.join(format!("journal.{g}"))
}

fn sync_dir(dir: &Path) -> Result<(), PersistError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "syncing the directory"))
}

fn open_journal(path: &Path, create: bool) -> Result<File, PersistError> {
    let mut f = OpenOptions::new()
        .append(true)
        .create(create)
        .mode(0o600)
        .open(path)
        .map_err(io(path, "opening"))?;
    if create && f.metadata().map_err(io(path, "reading"))?.len() == 0 {
        f.write_all(JOURNAL_HEADER).map_err(io(path, "writing"))?;
        f.sync_all().map_err(io(path, "syncing"))?;
    }
    Ok(f)
}

// ---------------------------------------------------------------------------
// The journal writer

/// Appended frames not yet written to the file.
struct Pending {
    bytes: Vec<u8>,
    /// Bytes appended since the start (a frame's sequence number is this
    /// after its append).
    seq: u64,
}

/// The open journal file.
struct Current {
    file: File,
    path: PathBuf,
    generation: u64,
    /// Bytes in the file that are whole frames (after the last good write).
    len: u64,
    /// Size of the newest snapshot.
    snapshot_len: u64,
    /// The last write error, logged once until a write succeeds again.
    failing: bool,
}

/// How long opening waits for a held `LOCK` before refusing: longer than
/// the moment between a fork and its exec.
const LOCK_PATIENCE: Duration = Duration::from_secs(1);

/// The journal: frames are appended under the store's own locks (so the
/// file's order is the order of the changes) into a buffer; a sync writes
/// and fsyncs the buffer. The background writer syncs once a second
/// (`everysec`) and compacts.
pub(super) struct Journal {
    dir: PathBuf,
    fsync: Fsync,
    compact_min: u64,
    pending: Mutex<Pending>,
    current: Mutex<Current>,
    /// Sequence number known to be on disk (fsynced).
    synced: AtomicU64,
    stop: AtomicBool,
    /// Held for the life of the journal.
    _lock: File,
}

impl Journal {
    /// Opens (creating if need be) the directory, takes its lock, loads the
    /// state and opens the journal for appending.
    pub(super) fn open(o: &PersistOptions) -> Result<(Journal, Loaded), PersistError> {
        let dir = &o.dir;
        crate::fsutil::create_private_dir(dir).map_err(io(dir, "creating the store directory"))?;
        // Messages and logs name files absolutely: a relative path means
        // little to whoever reads them without knowing the working directory.
        let dir = &fs::canonicalize(dir).map_err(io(dir, "resolving"))?;
        // The directory holds every session and ban: nobody but the
        // service's user may put files in it (the frames' CRC catches
        // damage, not a forger; see docs/security.md), nor read it. One that
        // others could write may already hold their files: refused. One
        // that others can only read is tightened to 0700 (a systemd
        // StateDirectory or a volume is created 0755), which only its owner
        // (or root) can do; otherwise refused.
        let mode = fs::metadata(dir)
            .map_err(io(dir, "reading metadata"))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o022 != 0 {
            return Err(PersistError::Permissions {
                dir: dir.to_path_buf(),
                mode,
            });
        }
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|_| PersistError::Permissions {
                dir: dir.to_path_buf(),
                mode,
            })?;
            tracing::warn!(
                dir = %dir.display(),
                was = format!("{mode:04o}"),
                "the embedded store's directory was readable by group or others; its mode is now 0700"
            );
        }
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path, "opening the lock file"))?;
        // A lock held only for a moment is not another process using the
        // directory: a child forked by any thread of this process (or of
        // the previous owner) shares the lock file's descriptor until it
        // execs. Only a lock still held after LOCK_PATIENCE is refused.
        let asked = std::time::Instant::now();
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if asked.elapsed() < LOCK_PATIENCE => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(PersistError::Locked { dir: dir.to_path_buf() }),
                Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path, "locking")(e)),
            }
        }
        let (snaps, journals) = generations(dir)?;
        let mut loaded = Loaded {
            users: HashMap::new(),
            codes: Codes::default(),
            frames: 0,
            dropped: 0,
        };
        let base = snaps.last().copied();
        let mut snapshot_len = 0;
        if let Some(g) = base {
            let p = snapshot_path(dir, g);
            match replay(
                &p,
                SNAPSHOT_HEADER,
                &mut loaded.users,
                &mut loaded.codes,
                &mut loaded.frames,
            )? {
                (Tail::Clean, n) => snapshot_len = n,
                // Snapshots are renamed into place whole: any damage is damage.
                (Tail::Torn { offset }, _) => {
                    return Err(PersistError::Corrupt {
                        path: p,
                        offset,
                        what: "the snapshot ends inside a frame".into(),
                    });
                }
            }
        }
        let replayed: Vec<u64> = journals.into_iter().filter(|g| base.is_none_or(|b| *g >= b)).collect();
        let mut len = 0;
        for (i, g) in replayed.iter().enumerate() {
            let p = journal_path(dir, *g);
            let (tail, n) = replay(
                &p,
                JOURNAL_HEADER,
                &mut loaded.users,
                &mut loaded.codes,
                &mut loaded.frames,
            )?;
            len = n;
            if let Tail::Torn { offset } = tail {
                if i + 1 != replayed.len() {
                    return Err(PersistError::Corrupt {
                        path: p,
                        offset,
                        what: "a journal that is not the newest ends inside a frame".into(),
                    });
                }
                tracing::warn!(
                    file = %p.display(), offset, dropped_bytes = n - offset,
                    "the journal's last write was torn (a crash while writing): dropped it"
                );
                loaded.dropped = n - offset;
                let f = OpenOptions::new().write(true).open(&p).map_err(io(&p, "opening"))?;
                // A file torn inside its header is rewritten whole below.
                let keep = if offset < JOURNAL_HEADER.len() as u64 {
                    0
                } else {
                    offset
                };
                f.set_len(keep).map_err(io(&p, "truncating the torn write"))?;
                f.sync_all().map_err(io(&p, "syncing"))?;
                len = keep;
            }
        }
        let generation = replayed.last().copied().or(base).unwrap_or(0);
        let path = journal_path(dir, generation);
        let file = open_journal(&path, true)?;
        if len < JOURNAL_HEADER.len() as u64 {
            len = file.metadata().map_err(io(&path, "reading"))?.len();
        }
        sync_dir(dir)?;
        Ok((
            Journal {
                dir: dir.to_path_buf(),
                fsync: o.fsync,
                compact_min: o.compact_min_bytes,
                pending: Mutex::new(Pending {
                    bytes: Vec::new(),
                    seq: 0,
                }),
                current: Mutex::new(Current {
                    file,
                    path,
                    generation,
                    len,
                    snapshot_len,
                    failing: false,
                }),
                synced: AtomicU64::new(0),
                stop: AtomicBool::new(false),
                _lock: lock,
            },
            loaded,
        ))
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one change (the caller holds the lock of the state it
    /// changed). Returns its sequence number, for [`Journal::sync_to`].
    pub(super) fn append(&self, e: &Entry<'_>) -> u64 {
        let mut p = self.pending();
        let before = p.bytes.len();
        encode(e, &mut p.bytes);
        p.seq += (p.bytes.len() - before) as u64;
        p.seq
    }

    /// Whether every change must be on disk before it is acknowledged.
    pub(super) fn always(&self) -> bool {
        self.fsync == Fsync::Always
    }

    /// Writes and fsyncs everything appended up to `seq` (and whatever came
    /// after it in the meantime).
    pub(super) fn sync_to(&self, seq: u64) -> Result<(), PersistError> {
        if self.synced.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let mut cur = self.current();
        if self.synced.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        self.write_out(&mut cur, true)
    }

    /// Writes the pending frames to the open file (fsyncing if asked),
    /// with the `current` lock held. On a failed write the file is cut
    /// back to its last whole frame and the frames stay pending.
    fn write_out(&self, cur: &mut Current, fsync: bool) -> Result<(), PersistError> {
        let (bytes, seq) = {
            let mut p = self.pending();
            (std::mem::take(&mut p.bytes), p.seq)
        };
        let r = (|| {
            if !bytes.is_empty() {
                cur.file.write_all(&bytes).map_err(io(&cur.path, "appending to"))?;
            }
            if fsync {
                cur.file.sync_data().map_err(io(&cur.path, "syncing"))?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                cur.len += bytes.len() as u64;
                if fsync {
                    self.synced.fetch_max(seq, Ordering::AcqRel);
                }
                if cur.failing {
                    tracing::info!(file = %cur.path.display(), "the embedded store's journal is written again");
                    cur.failing = false;
                }
                Ok(())
            }
            Err(e) => {
                let _ = cur.file.set_len(cur.len);
                let mut p = self.pending();
                let mut back = bytes;
                back.extend_from_slice(&p.bytes);
                p.bytes = back;
                if !cur.failing {
                    tracing::error!(error = %e, "the embedded store cannot write its journal: changes are kept in memory and retried");
                    cur.failing = true;
                }
                Err(e)
            }
        }
    }

    fn wants_compaction(&self) -> bool {
        let cur = self.current();
        cur.len > self.compact_min && cur.len > cur.snapshot_len
    }
}

/// The state a compaction serializes: the store behind its own locks.
pub(super) trait State: Send + Sync + 'static {
    /// With the store's locks held: runs `switch`, and if it says so,
    /// encodes every key's state into `out` (with [`encode`]).
    fn snapshot(&self, switch: &mut dyn FnMut() -> bool, out: &mut Vec<u8>);
}

impl Journal {
    /// One compaction (see the module docs).
    pub(super) fn compact(&self, state: &dyn State) -> Result<(), PersistError> {
        let mut snapshot = SNAPSHOT_HEADER.to_vec();
        let mut old = None;
        let mut result = Ok(());
        let mut switch = || {
            // Under the store's locks: nothing is appended meanwhile.
            let mut cur = self.current();
            if let Err(e) = self.write_out(&mut cur, true) {
                result = Err(e);
                return false;
            }
            let next = cur.generation + 1;
            let path = journal_path(&self.dir, next);
            match open_journal(&path, true) {
                Ok(file) => {
                    old = Some(cur.generation);
                    cur.generation = next;
                    cur.file = file;
                    cur.path = path;
                    cur.len = JOURNAL_HEADER.len() as u64;
                    true
                }
                Err(e) => {
                    result = Err(e);
                    false
                }
            }
        };
        state.snapshot(&mut switch, &mut snapshot);
        result?;
        let Some(old) = old else { return Ok(()) };
        let next = old + 1;
        let path = snapshot_path(&self.dir, next);
        crate::fsutil::write_private(&path, &snapshot, false).map_err(|e| PersistError::Io {
            path: e.path,
            action: e.action,
            source: e.source,
        })?;
        self.current().snapshot_len = snapshot.len() as u64;
        let (snaps, journals) = generations(&self.dir)?;
        for g in snaps.into_iter().filter(|g| *g < next) {
            let p = snapshot_path(&self.dir, g);
            fs::remove_file(&p).map_err(io(&p, "removing"))?;
        }
        for g in journals.into_iter().filter(|g| *g < next) {
            let p = journal_path(&self.dir, g);
            fs::remove_file(&p).map_err(io(&p, "removing"))?;
        }
        sync_dir(&self.dir)
    }

    /// Writes and fsyncs everything pending (a shutdown, a drop).
    pub(super) fn flush(&self) -> Result<(), PersistError> {
        let mut cur = self.current();
        self.write_out(&mut cur, true)
    }
}

/// How often the background writer wakes: pending changes reach the disk
/// within this (well inside the one second `everysec` promises).
const WRITER_TICK: Duration = Duration::from_millis(200);

/// The background writer: a few times a second, fsyncs what is pending
/// (under `everysec`) and compacts when the journal outgrew the snapshot.
/// Stopped by [`Journal::stop`] (unpark and join the returned handle).
pub(super) fn spawn_writer(
    journal: &Arc<Journal>,
    state: Weak<dyn State>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let weak = Arc::downgrade(journal);
    std::thread::Builder::new()
        .name("twintoken-journal".into())
        .spawn(move || {
            loop {
                std::thread::park_timeout(WRITER_TICK);
                let Some(j) = weak.upgrade() else { return };
                if j.stop.load(Ordering::Acquire) {
                    return;
                }
                let due = {
                    let p = j.pending();
                    p.seq > j.synced.load(Ordering::Acquire)
                };
                if due {
                    // A failure is logged by write_out and retried next time.
                    let _ = j.flush();
                }
                if j.wants_compaction() {
                    let Some(s) = state.upgrade() else { return };
                    let start = std::time::Instant::now();
                    match j.compact(&*s) {
                        Ok(()) => tracing::info!(
                            took_ms = start.elapsed().as_millis() as u64,
                            "compacted the embedded store's journal into a new snapshot"
                        ),
                        Err(e) => tracing::error!(error = %e, "compacting the embedded store's journal failed; retrying later"),
                    }
                }
            }
        })
}

impl Journal {
    /// Stops the background writer at its next wake-up.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock held for a moment (a forked child that has not exec'd yet
    /// shares the descriptor) is waited for; one held longer is refused.
    #[test]
    fn a_briefly_held_lock_is_waited_for_and_a_held_one_refused() {
        let d = tempfile::tempdir().unwrap();
        let o = PersistOptions::new(d.path(), Fsync::Everysec);
        drop(Journal::open(&o).unwrap());
        let other = File::options().write(true).open(d.path().join("LOCK")).unwrap();
        other.lock().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(other);
        });
        let start = std::time::Instant::now();
        let (j, _) = Journal::open(&o).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(250), "waited for the holder");
        release.join().unwrap();
        let start = std::time::Instant::now();
        assert!(matches!(Journal::open(&o), Err(PersistError::Locked { .. })));
        assert!(start.elapsed() >= LOCK_PATIENCE, "refused only after its patience");
        drop(j);
    }

    #[test]
    fn a_zero_filled_tail_is_torn_but_zeros_before_a_frame_are_damage() {
        let uid = UserId::new("alice").unwrap();
        let mut frame = Vec::new();
        encode(&Entry::User(&uid, None), &mut frame);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal.0");
        let run = |bytes: &[u8]| {
            std::fs::write(&p, bytes).unwrap();
            let (mut users, mut codes, mut n) = (HashMap::new(), Codes::default(), 0);
            replay(&p, JOURNAL_HEADER, &mut users, &mut codes, &mut n)
        };
        let zeros_at_end = [JOURNAL_HEADER, &frame, &[0u8; 40]].concat();
        let good = (JOURNAL_HEADER.len() + frame.len()) as u64;
        assert!(matches!(run(&zeros_at_end), Ok((Tail::Torn { offset }, _)) if offset == good));
        let zeros_inside = [JOURNAL_HEADER, &[0u8; 16], &frame].concat();
        assert!(matches!(run(&zeros_inside), Err(PersistError::Corrupt { .. })));
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn every_entry_kind_round_trips() {
        let uid = UserId::new("alice").unwrap();
        let mut user = User::new();
        user.insert(
            Sid([1; 16]),
            Rec {
                score: Some(5),
                login: 2,
                device: "pc".into(),
                origin: Sid([1; 16]),
                pred: Some(Sid([3; 16])),
                succ: None,
                grace: 0,
                meta: "{\"ip\":\"::1\"}".into(),
                bound: Some([9; 32]),
            },
        );
        let code = CodeRec {
            kid: Kid(7),
            digest: [9; 32],
            attempts: 4,
            expires: 99,
        };
        let rate = Rate {
            last: None,
            day: 10,
            count: 2,
            expires: 20,
        };
        let mut out = Vec::new();
        encode(&Entry::User(&uid, Some(&user)), &mut out);
        encode(&Entry::Code("t", Some(&code)), &mut out);
        encode(&Entry::Rate("t", Some(&rate)), &mut out);
        let (mut users, mut codes) = (HashMap::new(), Codes::default());
        let mut at = 0;
        while at < out.len() {
            let len = u32::from_le_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]) as usize;
            apply(&out[at + 8..at + 8 + len], &mut users, &mut codes).unwrap();
            at += 8 + len;
        }
        let back = &users[&uid][&Sid([1; 16])];
        assert_eq!(
            (back.score, back.login, back.pred, back.meta.as_str()),
            (Some(5), 2, Some(Sid([3; 16])), "{\"ip\":\"::1\"}")
        );
        assert_eq!(codes.codes["t"].digest, [9; 32]);
        assert_eq!((codes.rates["t"].last, codes.rates["t"].count), (None, 2));
        // Deletions.
        let mut out = Vec::new();
        encode(&Entry::User(&uid, None), &mut out);
        apply(&out[8..], &mut users, &mut codes).unwrap();
        assert!(users.is_empty());
    }
}
