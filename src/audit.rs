//! Audit events: one structured log line per security event, under the log
//! target `audit`, so operators can route them apart (`RUST_LOG=audit=info`,
//! or a collector filtering on `target`). Fields: `event` (below), `user`,
//! `session`, `client` (the client address as [`crate::http::ClientAddr`]
//! resolves it), `user_agent`, `node` (host name and process id), and the
//! log line's own RFC 3339 timestamp.
//!
//! Events: `login_ok`, `login_failed`, `login_throttled` (password or code
//! login: `detail` says which), `reauth_ok`, `reauth_failed`, `logout`,
//! `logout_all`, `session_ended` (a user ended one of their sessions),
//! `kick`, `kick_session`, `ban`, `unban` (admin), `theft_detected`,
//! `disable`.
//!
//! With `[events] webhook_url`, each event is also POSTed there as one JSON
//! object, signed like the code webhook (`X-Twintoken-Signature`). Events
//! wait in a bounded queue (`events.queue`); when it is full they are
//! dropped and counted (`twintoken_audit_events_dropped_total`), never
//! slowing a request.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::mpsc;

use crate::config::EventsConfig;
use crate::sign::{DELIVERY_ID_HEADER, Purpose, SIGNATURE_HEADER};
use crate::time::{Clock, SystemClock};

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

/// Where a service's events go besides the log: the webhook sender's queue.
pub struct EventSink {
    tx: mpsc::Sender<Vec<u8>>,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Deliveries that failed (the receiver refused, timed out, or was down).
    pub failed: AtomicU64,
}

/// The sinks of the services of this process (normally one). Held weakly:
/// a service that ends stops receiving.
static SINKS: Mutex<Vec<Weak<EventSink>>> = Mutex::new(Vec::new());

/// A running events webhook: its sink and the task delivering the queue.
pub type Webhook = (Arc<EventSink>, tokio::task::JoinHandle<()>);

/// Starts the webhook sender of `[events]` (when `webhook_url` is set): a
/// sink that [`record`] feeds from now on, and the task that delivers its
/// queue. Keep the sink for as long as events should be sent; abort the
/// task when done.
pub fn start_webhook(c: &EventsConfig) -> Result<Option<Webhook>, String> {
    // The secret moves into the delivery task as the zeroizing `Secret`
    // it is; it is never copied into a plain string.
    let (Some(url), Some(secret)) = (c.webhook_url.clone(), c.webhook_secret.clone()) else {
        return Ok(None);
    };
    let client = reqwest::Client::builder()
        .timeout(c.webhook_timeout)
        .connect_timeout(c.webhook_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("events webhook: cannot build the HTTP client: {e}"))?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(c.queue.max(1));
    let sink = Arc::new(EventSink {
        tx,
        dropped: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    SINKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arc::downgrade(&sink));
    let weak = Arc::downgrade(&sink);
    let task = tokio::spawn(async move {
        while let Some(body) = rx.recv().await {
            let t = SystemClock.now().0 / 1000;
            let Ok(id) = crate::sign::delivery_id() else {
                tracing::warn!("events webhook: the random source failed; event dropped");
                continue;
            };
            let signature = crate::sign::sign(secret.expose().as_bytes(), Purpose::Audit, &id, t, &body);
            let r = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(DELIVERY_ID_HEADER, id)
                .header(SIGNATURE_HEADER, signature)
                .body(body)
                .send()
                .await;
            let ok = matches!(&r, Ok(resp) if resp.status().is_success());
            if !ok {
                if let Some(s) = weak.upgrade() {
                    s.failed.fetch_add(1, Ordering::Relaxed);
                }
                match r {
                    Ok(resp) => tracing::warn!(status = %resp.status(), "events webhook refused an event"),
                    Err(e) => tracing::warn!(error = %e, "events webhook: delivery failed"),
                }
            }
        }
    });
    Ok(Some((sink, task)))
}

/// Records `event` about `who`, with `detail` (the method, a count, a
/// reason) when there is one.
pub fn record(event: &'static str, who: Subject<'_>, detail: Option<&str>) {
    let client = who.client.map(|c| c.to_string());
    {
        let mut sinks = SINKS.lock().unwrap_or_else(|p| p.into_inner());
        sinks.retain(|s| s.strong_count() > 0);
        if !sinks.is_empty() {
            let body = serde_json::json!({
                "event": event,
                "time": SystemClock.now().to_string(),
                "user": who.user,
                "session": who.session,
                "client": client,
                "user_agent": who.user_agent,
                "node": node(),
                "detail": detail,
            })
            .to_string()
            .into_bytes();
            for s in sinks.iter().filter_map(Weak::upgrade) {
                if s.tx.try_send(body.clone()).is_err() {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
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
