//! The logout outbox: revocations a node accepted while the session store
//! was unreachable (logout, logout-all, kicks), kept in a local file until
//! the store has them.
//!
//! Each one is appended and fsynced before the client hears "pending"
//! (202), applied to this node's revoked cache at once (so this node
//! refuses the session from then on, across restarts: the file is read
//! back at start), and written to the store — which removes the sessions
//! and broadcasts the revocation to every node — as soon as the store
//! answers again, before this node's circuit breaker trusts the store.
//!
//! File: `store.outbox`, mode 0600, one JSON object per line
//! `{"uid": "...", "sid": "<22 characters>" | absent, "at": <ms>}` (absent
//! sid: every session of the user). A torn last line (a crash in the middle
//! of an append, never acknowledged) is dropped with a warning; a damaged
//! line before it stops the start, naming the file and line.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::store::Revocation;
use crate::time::UnixMs;
use crate::tokens::{Sid, UserId};

/// A revocation waiting for the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The user.
    pub uid: UserId,
    /// One session; `None`: every session of the user.
    pub sid: Option<Sid>,
    /// When it was asked for.
    pub at: UnixMs,
}

impl Pending {
    /// What the revoked cache records for it.
    pub fn revocation(&self) -> Revocation {
        match self.sid {
            Some(sid) => Revocation::Sessions {
                uid: self.uid,
                sids: vec![sid],
            },
            None => Revocation::User { uid: self.uid },
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    at: u64,
}

/// Why the outbox cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Reading, creating or writing the file.
    #[error("logout outbox {path}: {source}")]
    Io {
        /// The outbox file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A line that is not an outbox entry, before the last one.
    #[error(
        "logout outbox {path}, line {line}: {why}; the file is damaged — move it away to start without the logouts it holds, or repair the line"
    )]
    Damaged {
        /// The outbox file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// What is wrong with it.
        why: String,
    },
}

/// The outbox of one node.
pub struct Outbox {
    path: PathBuf,
    /// What the file holds, in order; the lock also orders file writes.
    pending: tokio::sync::Mutex<Vec<Pending>>,
    len: AtomicUsize,
}

impl Outbox {
    /// Opens (or creates) the outbox at `path` and returns it with the
    /// revocations it still holds.
    pub fn open(path: &Path) -> Result<(Outbox, Vec<Pending>), OutboxError> {
        let io = |source| OutboxError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::fsutil::create_private_dir(dir).map_err(io)?;
        }
        let text = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        let pending = parse(path, &text)?;
        let ob = Outbox {
            path: path.to_path_buf(),
            len: AtomicUsize::new(pending.len()),
            pending: tokio::sync::Mutex::new(pending.clone()),
        };
        // Rewritten at once: a dropped torn line goes, and the file exists
        // with its mode from the start.
        write_all(&ob.path, &pending).map_err(io)?;
        Ok((ob, pending))
    }

    /// How many revocations wait.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `p` and fsyncs before returning.
    pub async fn append(&self, p: Pending) -> Result<(), OutboxError> {
        let mut pending = self.pending.lock().await;
        let line = encode(&p);
        // In the list before the write: a request cancelled while its line
        // is being written (the blocking write finishes regardless) still
        // has its revocation applied when the store answers.
        pending.push(p);
        self.len.store(pending.len(), Ordering::Release);
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = open_private(&path, true)?;
            f.write_all(line.as_bytes())?;
            f.sync_data()
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(source) = written {
            // Not kept: the client hears 503, nothing is pending.
            pending.pop();
            self.len.store(pending.len(), Ordering::Release);
            return Err(OutboxError::Io {
                path: self.path.clone(),
                source,
            });
        }
        Ok(())
    }

    /// Hands every waiting revocation, oldest first, to `apply` until one
    /// fails; removes those applied (file rewritten and fsynced). `true`
    /// when nothing waits any more. Appends wait meanwhile.
    pub async fn drain<F, Fut>(&self, mut apply: F) -> bool
    where
        F: FnMut(Pending) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut pending = self.pending.lock().await;
        if pending.is_empty() {
            return true;
        }
        let mut done = 0;
        for p in pending.iter() {
            if !apply(p.clone()).await {
                break;
            }
            done += 1;
        }
        if done == 0 {
            return false;
        }
        let rest: Vec<Pending> = pending[done..].to_vec();
        let path = self.path.clone();
        let keep = rest.clone();
        let written = tokio::task::spawn_blocking(move || write_all(&path, &keep))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = written {
            // The applied ones stay in the file: applying them again later
            // is harmless (revoking what is gone changes nothing).
            tracing::error!(path = %self.path.display(), error = %e, "logout outbox: cannot rewrite after applying; will apply again");
            return false;
        }
        tracing::info!(
            applied = done,
            waiting = rest.len(),
            "logout outbox: pending revocations applied to the session store"
        );
        *pending = rest;
        self.len.store(pending.len(), Ordering::Release);
        pending.is_empty()
    }
}

fn encode(p: &Pending) -> String {
    let line = Line {
        uid: p.uid.as_str().to_string(),
        sid: p.sid.map(|s| s.to_text()),
        at: p.at.0,
    };
    let mut s = serde_json::to_string(&line).unwrap_or_default();
    s.push('\n');
    s
}

fn decode(line: &str) -> Result<Pending, String> {
    let l: Line = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let uid = UserId::new(&l.uid).map_err(|e| format!("uid: {e}"))?;
    let sid = match l.sid {
        Some(s) => Some(s.parse::<Sid>().map_err(|_| "sid: not a session id".to_string())?),
        None => None,
    };
    Ok(Pending {
        uid,
        sid,
        at: UnixMs(l.at),
    })
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Pending>, OutboxError> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = Vec::new();
    for (i, raw) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        let complete = raw.ends_with('\n');
        let line = raw.trim_end_matches('\n');
        if line.trim().is_empty() {
            continue;
        }
        match (decode(line), last && !complete) {
            // An append cut short by a crash: never acknowledged.
            (_, true) => {
                tracing::warn!(path = %path.display(), line = i + 1, "logout outbox: torn last line dropped (it was never acknowledged)");
            }
            (Ok(p), false) => out.push(p),
            (Err(why), false) => {
                return Err(OutboxError::Damaged {
                    path: path.to_path_buf(),
                    line: i + 1,
                    why,
                });
            }
        }
    }
    Ok(out)
}

fn open_private(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).write(true);
    if append {
        o.append(true);
    } else {
        o.truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(path)
}

/// Replaces the file's contents with `pending`, durably (a temporary file
/// fsynced and renamed over it, the directory fsynced).
fn write_all(path: &Path, pending: &[Pending]) -> std::io::Result<()> {
    let text: String = pending.iter().map(encode).collect();
    crate::fsutil::write_private(path, text.as_bytes(), false).map_err(|e| {
        std::io::Error::new(
            e.source.kind(),
            format!("{} {}: {}", e.action, e.path.display(), e.source),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(uid: &str, sid: Option<u8>, at: u64) -> Pending {
        Pending {
            uid: UserId::new(uid).unwrap_or_else(|e| panic!("{e}")),
            sid: sid.map(|n| Sid([n; 16])),
            at: UnixMs(at),
        }
    }

    #[tokio::test]
    async fn appended_revocations_survive_a_reopen_and_drain_in_order() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = d.path().join("state").join("outbox");
        let (ob, back) = Outbox::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(back.is_empty());
        ob.append(p("alice", Some(1), 10))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ob.append(p("bob", None, 11)).await.unwrap_or_else(|e| panic!("{e}"));
        ob.append(p("carol", Some(3), 12))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(ob);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            assert_eq!(mode, 0o600, "only the service user reads it");
        }
        let (ob, back) = Outbox::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            back,
            vec![p("alice", Some(1), 10), p("bob", None, 11), p("carol", Some(3), 12)]
        );
        // The store takes the first, fails on the second: the rest waits.
        let mut seen = Vec::new();
        let all = ob
            .drain(|x| {
                seen.push(x.clone());
                let ok = x.uid.as_str() == "alice";
                async move { ok }
            })
            .await;
        assert!(!all);
        assert_eq!(seen.len(), 2, "stops at the first failure");
        assert_eq!(ob.len(), 2);
        let (_, back) = Outbox::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, vec![p("bob", None, 11), p("carol", Some(3), 12)]);
        assert!(ob.drain(|_| async { true }).await);
        assert!(ob.is_empty());
        let (_, back) = Outbox::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(back.is_empty(), "applied revocations leave the file");
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_damaged_one_before_it_stops_the_start() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = d.path().join("outbox");
        let good = encode(&p("alice", Some(1), 10));
        std::fs::write(&path, format!("{good}{{\"uid\":\"bo")).unwrap_or_else(|e| panic!("{e}"));
        let (_, back) = Outbox::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, vec![p("alice", Some(1), 10)]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            good,
            "the torn line is gone"
        );

        std::fs::write(&path, format!("{{\"uid\":\"\",\"at\":1}}\n{good}")).unwrap_or_else(|e| panic!("{e}"));
        let e = Outbox::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("line 1") && e.contains("damaged"), "{e}");
        std::fs::write(&path, format!("{{\"uid\":\"a\",\"sid\":\"short\",\"at\":1}}\n{good}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = Outbox::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("sid"), "{e}");
        std::fs::write(&path, format!("{{\"uid\":\"a\",\"extra\":1,\"at\":1}}\n{good}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(Outbox::open(&path).is_err(), "unknown fields are refused");
    }
}
