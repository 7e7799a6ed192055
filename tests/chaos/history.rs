//! The chaos run's history: one JSON object per line, every request with
//! what it got and when, every fault with its window. Times are
//! milliseconds since the run started, read from one monotonic clock by
//! the driver (`ts` when the request was handed to the socket, `tr` when
//! its answer, or its failure, came back).

use serde::{Deserialize, Serialize};

/// One line of the history.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rec {
    /// The first line: what the run was, and the bounds the checker uses.
    Run(RunInfo),
    /// One request (or one cancelled request) and its answer.
    Op(Op),
    /// The session store was not answering from `start` to `end`
    /// (SIGSTOP to SIGCONT, SIGKILL to the restarted server answering).
    Outage { fault: String, start: f64, end: f64 },
    /// A node process started answering (`event = "start"`) or was killed
    /// with SIGKILL (`"kill"`).
    Node { node: usize, event: String, t: f64 },
    /// `keys rotate` or `keys retire --force` finished at `t`.
    Key { event: String, kid: u32, t: f64 },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub seed: u64,
    pub seconds: u64,
    pub nodes: usize,
    pub topology: String,
    /// `tokens.short_ttl` in ms.
    pub short_ttl: f64,
    /// `tokens.rotate_grace` in ms.
    pub rotate_grace: f64,
    /// `keys.reload_interval` in ms.
    pub key_reload: f64,
}

/// What an operation was. Sessions are the client's numbering (one per
/// successful login or issue); `user` is the user id.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Op {
    pub id: u64,
    pub actor: usize,
    pub node: usize,
    /// `login`, `issue`, `verify`, `logout`, `logout_all`, `kick`,
    /// `kick_user`, `ban`, `expire`, `list`, `replay`.
    pub op: String,
    /// For `verify`: `both` (long + short as headers), `long` (long only),
    /// `strict`, `cookie` (both as cookies), `short` (short only), `aged`
    /// (both, demanding authentication within the hour); a
    /// burst's members are `long` with `burst` set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    pub user: String,
    pub ts: f64,
    pub tr: f64,
    /// HTTP status; 0 when no answer came (connection refused, timeout,
    /// or cancelled by us).
    pub status: u16,
    /// The error code of a refusal, or the transport error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// `path` of an accepted verify: `short`, `long`, `fallback`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The session id the answer named (verify, login).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sid: String,
    /// Key ids of the long and the short token presented (0: none).
    #[serde(default)]
    pub kid_long: u32,
    #[serde(default)]
    pub kid_short: u32,
    /// The request was reset by us mid-flight (TCP RST, RST_STREAM).
    #[serde(default)]
    pub cancelled: bool,
    /// Part of a burst (concurrent requests of one session): the burst's
    /// number, 0 outside bursts.
    #[serde(default)]
    pub burst: u64,
    /// `list`: the session ids the store listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listed: Vec<String>,
    /// `logout_all`, `kick_user`, `ban`, `expire`: the client sessions of
    /// the user that the operation ends (all logged in before it was sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ends: Vec<u64>,
    /// The answer carried a new long token (rotation).
    #[serde(default)]
    pub rotated: bool,
}

impl Op {
    /// Answered at all (not cancelled, reached a node, got a status).
    pub fn answered(&self) -> bool {
        self.status != 0
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}
