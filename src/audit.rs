//! Audit events: one structured log line per security event, under the log
//! target `audit`, so operators can route them apart (`RUST_LOG=audit=info`,
//! or a collector filtering on `target`). Fields: `event` (below), `user`,
//! `session`, `client` (the client address as [`crate::http::ClientAddr`]
//! resolves it), `user_agent`, `node` (host name and process id), and the
//! log line's own RFC 3339 timestamp.
//!
//! Events: `login_ok`, `login_failed`, `login_throttled` (password or code
//! login: `method` says which), `reauth_ok`, `reauth_failed`, `logout`,
//! `logout_all`, `session_ended` (a user ended one of their sessions),
//! `kick`, `kick_session` (admin), `theft_detected`, `disable`.

use std::net::IpAddr;
use std::sync::OnceLock;

/// Who and where an event concerns; every field is optional.
#[derive(Clone, Copy, Debug, Default)]
pub struct Subject<'a> {
    /// The user id (or, for a failed password login, the user name tried).
    pub user: Option<&'a str>,
    /// The session id, as clients see it.
    pub session: Option<&'a str>,
    /// The client address.
    pub client: Option<IpAddr>,
    /// The request's `User-Agent`.
    pub user_agent: Option<&'a str>,
}

/// This process, as audit lines name it: `host:pid`.
pub fn node() -> &'static str {
    static NODE: OnceLock<String> = OnceLock::new();
    NODE.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".into());
        format!("{host}:{}", std::process::id())
    })
}

/// Records `event` about `who`, with `detail` (the method, a count, a
/// reason) when there is one.
pub fn record(event: &'static str, who: Subject<'_>, detail: Option<&str>) {
    let client = who.client.map(|c| c.to_string());
    tracing::info!(
        target: "audit",
        event,
        user = who.user.unwrap_or(""),
        session = who.session.unwrap_or(""),
        client = client.as_deref().unwrap_or(""),
        user_agent = who.user_agent.unwrap_or(""),
        node = node(),
        detail = detail.unwrap_or(""),
        "audit: {event}"
    );
}
