//! The Redis session store: per user a sorted set of sids (score = idle
//! expiry) and a companion hash of records where needed (layout v3,
//! `lua/record.lua`); every operation one Lua
//! script from `lua/` (EVALSHA, NOSCRIPT handled by
//! `redis::Script`), every call bounded by `store.timeout`.
//!
//! Works against a single server (`redis://`, `rediss://`) or a Redis
//! Cluster (several node URLs): every script touches one user's keys, which
//! share the `{UID}` hash tag and so one slot.
//!
//! Revocations are appended to a capped stream and published on a channel
//! (`lua/broadcast.lua`); [`RedisStore::revocation_feed`] turns them into
//! [`FeedEvent`]s, catching up from the stream after every (re)connect.
//!
//! This is the only file that knows Redis key names and script contracts.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use tokio::sync::{OnceCell, mpsc};

use super::codes::{CheckOutcome, CodeLimits, CodeStore, DAY, Digest, SendOutcome};
use super::{
    BindOutcome, BindRequest, Device, FeedEvent, Limit, LoginOutcome, NewSession, Revocation, SessionInfo,
    SessionStore, Stats, StoreError, StoreSettings, VerifyOutcome, VerifyRequest,
};
use crate::config::Secret;
use crate::config::{LoginMode, Overflow};
use crate::time::{UnixMs, duration_ms};
use crate::tokens::{Kid, Sid, UserId};

const RECORD: &str = include_str!("../../lua/record.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{RECORD}\n{body}"))
}

/// Least time a throttle counter call may take (see
/// [`RedisStore::throttle_timeout`]).
const THROTTLE_TIMEOUT: Duration = Duration::from_millis(500);

/// How many revocations the log keeps (approximately): enough for a node
/// that was away for a while to catch up.
const REVOCATION_LOG_CAP: u64 = 100_000;

struct Scripts {
    broadcast: Script,
    count: Script,
    login: Script,
    verify: Script,
    revoke: Script,
    revoke_all: Script,
    list: Script,
    bind: Script,
    code_send: Script,
    code_check: Script,
    code_cancel: Script,
    throttle_admit: Script,
    throttle_release: Script,
}

impl Scripts {
    fn load() -> Scripts {
        Scripts {
            broadcast: Script::new(include_str!("../../lua/broadcast.lua")),
            count: script(include_str!("../../lua/count.lua")),
            login: script(include_str!("../../lua/login.lua")),
            verify: script(include_str!("../../lua/verify.lua")),
            revoke: script(include_str!("../../lua/revoke.lua")),
            revoke_all: script(include_str!("../../lua/revoke_all.lua")),
            list: script(include_str!("../../lua/list.lua")),
            bind: script(include_str!("../../lua/bind.lua")),
            code_send: Script::new(include_str!("../../lua/code_send.lua")),
            code_check: Script::new(include_str!("../../lua/code_check.lua")),
            code_cancel: Script::new(include_str!("../../lua/code_cancel.lua")),
            throttle_admit: Script::new(include_str!("../../lua/throttle_admit.lua")),
            throttle_release: Script::new(include_str!("../../lua/throttle_release.lua")),
        }
    }
}

/// A connection to a single server or to a cluster; both reconnect by
/// themselves, and neither needs Redis to be up when the store is created.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
    Sentinel(Arc<SentinelConn>),
}

/// The primary of a Sentinel-monitored group: resolved through the
/// sentinels on first use and again after any connection-level failure
/// (the old primary gone, or demoted and answering `-READONLY`).
struct SentinelConn {
    sentinel: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    current: std::sync::Mutex<Option<(redis::Client, ConnectionManager)>>,
    config: ConnectionManagerConfig,
}

impl SentinelConn {
    async fn primary(&self) -> Result<(redis::Client, ConnectionManager), RedisError> {
        if let Some(c) = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(c);
        }
        let client = self.sentinel.lock().await.async_get_client().await?;
        let cm = ConnectionManager::new_lazy_with_config(client.clone(), self.config.clone())?;
        tracing::info!(primary = ?client.get_connection_info().addr(), "session store: primary resolved through the sentinels");
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((client.clone(), cm.clone()));
        Ok((client, cm))
    }

    fn forget(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

struct LazyCluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

/// A ready connection of either kind.
enum Ready {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Ready {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Ready::Single(c) => c.req_packed_command(cmd),
            Ready::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Ready::Single(c) => c.req_packed_commands(cmd, offset, count),
            Ready::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Ready::Single(c) => c.get_db(),
            Ready::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    async fn ready(&self) -> Result<Ready, RedisError> {
        match self {
            Conn::Single(c) => Ok(Ready::Single(c.clone())),
            Conn::Cluster(lazy) => {
                let c = lazy.conn.get_or_try_init(|| lazy.client.get_async_connection()).await?;
                Ok(Ready::Cluster(c.clone()))
            }
            // Boxed: the resolution's future is deep (sentinel queries),
            // and every store call's future embeds this one.
            Conn::Sentinel(s) => Ok(Ready::Single(Box::pin(s.primary()).await?.1)),
        }
    }

    /// After a failed call: a Sentinel connection resolves the primary
    /// again on its next use (the others reconnect by themselves).
    fn failed(&self, e: Option<&RedisError>) {
        if let Conn::Sentinel(s) = self
            && e.is_none_or(|e| {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || matches!(e.kind(), redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly))
            })
        {
            s.forget();
        }
    }

    /// A client for a pub/sub connection to the node that takes writes.
    async fn pubsub_client(&self, fixed: &redis::Client) -> Result<redis::Client, RedisError> {
        match self {
            Conn::Sentinel(s) => Ok(s.primary().await?.0),
            _ => Ok(fixed.clone()),
        }
    }
}

/// The Redis store.
pub struct RedisStore {
    conn: Conn,
    /// Certificates for `rediss://` beyond the system's roots (a CA, a
    /// client certificate), for every connection this store opens.
    tls: Option<redis::TlsCertificates>,
    /// For the revocation feed's pub/sub connection (any node of a cluster:
    /// PUBLISH reaches every node).
    pubsub: redis::Client,
    /// Every node URL, for cluster-wide statistics.
    urls: Vec<Secret>,
    scripts: Scripts,
    prefix: String,
    settings: StoreSettings,
    timeout: Duration,
}

impl RedisStore {
    /// A store on one server (one URL) or a cluster (several node URLs).
    /// Connects lazily: it can be created while Redis is down, and
    /// reconnects by itself.
    pub async fn connect(
        urls: &[Secret],
        prefix: &str,
        timeout: Duration,
        settings: StoreSettings,
    ) -> Result<RedisStore, StoreError> {
        RedisStore::connect_with(urls, prefix, timeout, settings, None).await
    }

    /// A store on the primary that `sentinels` (URLs of Sentinel processes)
    /// know as `master`. Credentials in the first sentinel URL are used for
    /// the sentinels and for the data nodes alike. `rediss://` sentinels
    /// mean TLS to the sentinels and to the data nodes they name, verified
    /// with `tls` (see [`load_tls`]) or the system's roots.
    pub async fn connect_sentinel(
        sentinels: &[Secret],
        master: &str,
        prefix: &str,
        timeout: Duration,
        settings: StoreSettings,
        tls: Option<redis::TlsCertificates>,
    ) -> Result<RedisStore, StoreError> {
        use redis::IntoConnectionInfo as _;
        use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
        let first = sentinels
            .first()
            .ok_or_else(|| StoreError::Malformed("no sentinel URL given".into()))?;
        let infos = sentinels
            .iter()
            .map(|u| u.expose().into_connection_info())
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::Redis)?;
        let secure = infos
            .iter()
            .any(|i| matches!(i.addr(), redis::ConnectionAddr::TcpTls { .. }));
        let creds = infos[0].redis_settings();
        let mut b = SentinelClientBuilder::new(
            infos.iter().map(|i| i.addr().clone()),
            master,
            SentinelServerType::Master,
        )
        .map_err(StoreError::Redis)?;
        if let Some(u) = creds.username() {
            b = b.set_client_to_sentinel_username(u).set_client_to_redis_username(u);
        }
        if let Some(p) = creds.password() {
            b = b.set_client_to_sentinel_password(p).set_client_to_redis_password(p);
        }
        if secure {
            b = b
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure);
            if let Some(t) = &tls {
                b = b
                    .set_client_to_sentinel_certificates(t.clone())
                    .set_client_to_redis_certificates(t.clone());
            }
        }
        let sentinel = b.build().map_err(StoreError::Redis)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisStore {
            conn: Conn::Sentinel(Arc::new(SentinelConn {
                sentinel: tokio::sync::Mutex::new(sentinel),
                current: std::sync::Mutex::new(None),
                config,
            })),
            pubsub: client(first.expose(), tls.as_ref()).map_err(StoreError::Redis)?,
            tls,
            urls: sentinels.to_vec(),
            scripts: Scripts::load(),
            prefix: prefix.to_string(),
            settings,
            timeout,
        })
    }

    /// [`RedisStore::connect`] with TLS certificates (see [`load_tls`]).
    pub async fn connect_with(
        urls: &[Secret],
        prefix: &str,
        timeout: Duration,
        settings: StoreSettings,
        tls: Option<redis::TlsCertificates>,
    ) -> Result<RedisStore, StoreError> {
        let first = urls
            .first()
            .ok_or_else(|| StoreError::Malformed("no Redis URL given".into()))?;
        let pubsub = client(first.expose(), tls.as_ref()).map_err(StoreError::Redis)?;
        let conn = if urls.len() == 1 {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Conn::Single(ConnectionManager::new_lazy_with_config(pubsub.clone(), config).map_err(StoreError::Redis)?)
        } else {
            let mut builder = ClusterClient::builder(urls.iter().map(Secret::expose))
                .connection_timeout(timeout.max(Duration::from_millis(100)));
            if let Some(t) = &tls {
                builder = builder.certs(t.clone());
            }
            let client = builder.build().map_err(StoreError::Redis)?;
            Conn::Cluster(Arc::new(LazyCluster {
                client,
                conn: OnceCell::new(),
            }))
        };
        Ok(RedisStore {
            conn,
            tls,
            pubsub,
            urls: urls.to_vec(),
            scripts: Scripts::load(),
            prefix: prefix.to_string(),
            settings,
            timeout,
        })
    }

    /// A client for `url` with this store's TLS certificates. A node URL
    /// learnt from the cluster (no credentials) gets the configured ones.
    fn client(&self, url: &str) -> Result<redis::Client, RedisError> {
        use redis::IntoConnectionInfo as _;
        let mut info = url.into_connection_info()?;
        if info.redis_settings().username().is_none()
            && info.redis_settings().password().is_none()
            && let Some(first) = self.urls.first()
        {
            let base = first.expose().into_connection_info()?;
            info = info.set_redis_settings(base.redis_settings().clone());
        }
        client(info, self.tls.as_ref())
    }

    /// Connects to every configured node and sends `PING`, each within
    /// `limit`: what the start-up diagnostics log (and what
    /// `store.require_on_start` requires), node by node, the node's URL
    /// with its password masked and the cause as the client saw it.
    pub async fn probe_nodes(&self, limit: Duration) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::new();
        for url in &self.urls {
            let url = url.expose();
            let attempt = async {
                let mut c = self.client(url)?.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut c).await.map(|_| ())
            };
            let r = match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(error_chain(&e)),
                Err(_) => Err(format!("timed out after {limit:?}")),
            };
            out.push((mask_url(url), r));
        }
        out
    }

    /// The user's two keys (layout v3, `lua/record.lua`): the sorted set of
    /// sids `<prefix>{UID}` and the companion records `<prefix>{UID}:r`;
    /// the hash tag puts both in one cluster slot.
    fn keys(&self, uid: &UserId) -> [String; 2] {
        let z = format!("{}{{{}}}", self.prefix, uid);
        let r = format!("{z}:r");
        [z, r]
    }

    /// The user's ban (`<prefix>{UID}:ban`, the user's hash tag).
    fn ban_key(&self, uid: &UserId) -> String {
        format!("{}{{{}}}:ban", self.prefix, uid)
    }

    /// A destination's one-time-code keys: the code and its send counters,
    /// sharing the `{TAG}` hash tag (one cluster slot).
    fn code_keys(&self, tag: &str) -> (String, String) {
        (
            format!("{}c:{{{}}}:code", self.prefix, tag),
            format!("{}c:{{{}}}:rate", self.prefix, tag),
        )
    }

    fn log_key(&self) -> String {
        format!("{}revocations", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    /// Runs `work` on a ready connection within the store timeout.
    async fn bounded<T, F>(&self, limit: Duration, work: impl FnOnce(Ready) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let fut = async { work(self.conn.ready().await?).await };
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.conn.failed(Some(&e));
                Err(script_error(e))
            }
            Err(_) => {
                self.conn.failed(None);
                Err(StoreError::Timeout(limit))
            }
        }
    }

    async fn run(&self, inv: &mut redis::ScriptInvocation<'_>) -> Result<Value, StoreError> {
        self.run_within(self.timeout, inv).await
    }

    async fn run_within(&self, limit: Duration, inv: &mut redis::ScriptInvocation<'_>) -> Result<Value, StoreError> {
        self.bounded(limit, |mut c| async move { inv.invoke_async::<Value>(&mut c).await })
            .await
    }

    /// Throttle counters get more time than a verify: they sit in front of a
    /// password hash that costs more anyway, and a call that times out is
    /// counted again in process, so a busy moment must not hand out budgets.
    fn throttle_timeout(&self) -> Duration {
        self.timeout.max(THROTTLE_TIMEOUT)
    }

    /// A plain `PING` with the same timeout (health checks, and measuring the
    /// store against a bare round trip).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(self.timeout, |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await.map(|_| ())
        })
        .await
    }

    /// Records and publishes a revocation. The revocation itself has already
    /// happened in Redis; a broadcast that fails is logged (other nodes then
    /// learn it only through their own Redis checks).
    async fn broadcast(&self, rev: Revocation) {
        let payload = rev.encode();
        let mut inv = self.scripts.broadcast.prepare_invoke();
        inv.key(self.log_key())
            .arg(payload)
            .arg(REVOCATION_LOG_CAP)
            .arg(self.channel());
        if let Err(e) = self.run(&mut inv).await {
            tracing::warn!(error = %e, uid = %rev.uid(), "revocation broadcast failed; other nodes learn it on their next store check");
        }
    }

    async fn broadcast_sids(&self, uid: UserId, sids: &[Sid]) {
        if !sids.is_empty() {
            self.broadcast(Revocation::Sessions {
                uid,
                sids: sids.to_vec(),
            })
            .await;
        }
    }

    /// Starts a task that delivers every revocation to the returned channel:
    /// on each (re)connect it subscribes, replays the log from the last entry
    /// it saw (the whole log on the first connect), sends
    /// [`FeedEvent::CaughtUp`], then forwards live messages; it sends
    /// [`FeedEvent::Lost`] when the subscription breaks. The task ends when
    /// the receiver is dropped.
    pub fn revocation_feed(&self) -> mpsc::Receiver<FeedEvent> {
        let (tx, rx) = mpsc::channel(4096);
        let feed = Feed {
            client: self.pubsub.clone(),
            conn: self.conn.clone(),
            log: self.log_key(),
            channel: self.channel(),
            timeout: self.timeout.max(Duration::from_millis(500)),
            tx,
            last: None,
        };
        tokio::spawn(feed.run());
        rx
    }
}

/// A script's `TTBAD` error reply (data it cannot use: a user key of
/// another type, say) is malformed data, typed; any other error stays a
/// Redis error.
fn script_error(e: RedisError) -> StoreError {
    if e.code() == Some("TTBAD") {
        StoreError::Malformed(e.detail().unwrap_or("unusable data").to_string())
    } else {
        StoreError::Redis(e)
    }
}

async fn within<T>(t: Duration, f: impl Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
    match tokio::time::timeout(t, f).await {
        Ok(r) => r.map_err(StoreError::Redis),
        Err(_) => Err(StoreError::Timeout(t)),
    }
}

/// A stream entry id, `ms-seq`, ordered.
type EntryId = (u64, u64);

fn parse_id(s: &str) -> Option<EntryId> {
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

struct Feed {
    client: redis::Client,
    conn: Conn,
    log: String,
    channel: String,
    timeout: Duration,
    tx: mpsc::Sender<FeedEvent>,
    last: Option<EntryId>,
}

impl Feed {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.session().await {
                Ok(()) => tracing::warn!("revocation feed: subscription ended; reconnecting"),
                Err(e) => tracing::debug!(error = %e, "revocation feed: cannot subscribe; retrying"),
            }
            if self.tx.is_closed() || self.tx.send(FeedEvent::Lost).await.is_err() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn deliver(&mut self, id: EntryId, payload: &[u8]) -> bool {
        if self.last.is_some_and(|l| id <= l) {
            return true; // seen during catch-up
        }
        self.last = Some(id);
        match Revocation::decode(payload) {
            // The entry id's first part is the time Redis logged it (ms).
            Some(r) => self.tx.send(FeedEvent::Revoked(r, Some(UnixMs(id.0)))).await.is_ok(),
            None => {
                tracing::warn!(?id, "revocation feed: malformed entry skipped");
                true
            }
        }
    }

    /// One subscription: subscribe, catch up, then forward until it breaks.
    async fn session(&mut self) -> Result<(), StoreError> {
        let t = self.timeout;
        let client = within(t, self.conn.pubsub_client(&self.client)).await?;
        let mut ps = within(t, client.get_async_pubsub()).await?;
        within(t, ps.subscribe(&self.channel)).await?;

        // Catch up from the log: everything after the last entry seen.
        loop {
            let start = match self.last {
                Some((a, b)) => format!("({a}-{b}"),
                None => "-".to_string(),
            };
            let log = self.log.clone();
            let fut = async {
                let mut c = self.conn.ready().await?;
                redis::cmd("XRANGE")
                    .arg(&log)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(1000)
                    .query_async::<redis::streams::StreamRangeReply>(&mut c)
                    .await
            };
            let reply = within(t, fut).await?;
            let n = reply.ids.len();
            for e in reply.ids {
                let Some(id) = parse_id(&e.id) else { continue };
                let payload = match e.map.get("r") {
                    Some(Value::BulkString(b)) => b.clone(),
                    _ => Vec::new(),
                };
                if !self.deliver(id, &payload).await {
                    return Ok(());
                }
            }
            if n < 1000 {
                break;
            }
        }
        if self.tx.send(FeedEvent::CaughtUp).await.is_err() {
            return Ok(());
        }

        let mut messages = ps.on_message();
        while let Some(msg) = messages.next().await {
            let bytes = msg.get_payload_bytes();
            let Some(bar) = bytes.iter().position(|b| *b == b'|') else {
                continue;
            };
            let Some(id) = std::str::from_utf8(&bytes[..bar]).ok().and_then(parse_id) else {
                continue;
            };
            if !self.deliver(id, &bytes[bar + 1..]).await {
                return Ok(());
            }
        }
        Ok(())
    }
}

fn malformed(what: &str, v: &Value) -> StoreError {
    StoreError::Malformed(format!("{what}: unexpected reply {v:?}"))
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}

fn sid(v: &Value) -> Option<Sid> {
    <[u8; 16]>::try_from(bytes(v)?).ok().map(Sid)
}

fn sids(vs: &[Value], what: &str) -> Result<Vec<Sid>, StoreError> {
    vs.iter().map(|v| sid(v).ok_or_else(|| malformed(what, v))).collect()
}

fn array(v: Value, what: &str) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(malformed(what, &other)),
    }
}

fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

impl SessionStore for RedisStore {
    async fn login(&self, s: &NewSession, now: UnixMs) -> Result<LoginOutcome, StoreError> {
        let l = &self.settings.lifetimes;
        let p = &self.settings.login;
        let exp = now.plus(l.idle).min(now.plus(l.absolute));
        let reply = self
            .run(
                self.scripts
                    .login
                    .key(&self.keys(&s.uid)[..])
                    .key(self.ban_key(&s.uid))
                    .arg(now.0)
                    .arg(&s.sid.0[..])
                    .arg(now.0)
                    .arg(exp.0)
                    .arg(s.device.as_ref().map_or("", Device::as_str))
                    .arg(if p.mode == LoginMode::Single { "s" } else { "m" })
                    .arg(p.max_sessions)
                    .arg(p.device_cap(s.device.as_ref()))
                    .arg(if p.overflow == Overflow::Reject { "r" } else { "e" })
                    .arg(s.meta.as_deref().unwrap_or("")),
            )
            .await?;
        let a = array(reply, "login")?;
        match a.first().and_then(int) {
            Some(1) => {
                let evicted = sids(&a[1..], "login evicted")?;
                self.broadcast_sids(s.uid, &evicted).await;
                Ok(LoginOutcome::Created {
                    idle_expires: exp,
                    evicted,
                })
            }
            Some(0) => match a.get(1).and_then(text).as_deref() {
                Some("device") => Ok(LoginOutcome::Rejected(Limit::Device)),
                Some("max") => Ok(LoginOutcome::Rejected(Limit::MaxSessions)),
                _ => Err(malformed("login", &Value::Array(a))),
            },
            Some(-1) => Err(StoreError::SidTaken),
            Some(-2) => match a.get(1).and_then(int) {
                Some(until) if until >= 0 => Ok(LoginOutcome::Banned {
                    until: UnixMs(until as u64),
                }),
                _ => Err(malformed("login", &Value::Array(a))),
            },
            _ => Err(malformed("login", &Value::Array(a))),
        }
    }

    async fn verify(&self, q: &VerifyRequest, now: UnixMs) -> Result<VerifyOutcome, StoreError> {
        let l = &self.settings.lifetimes;
        let reply = self
            .run(
                self.scripts
                    .verify
                    .key(&self.keys(&q.uid)[..])
                    .arg(now.0)
                    .arg(&q.sid.0[..])
                    .arg(q.iat.0)
                    .arg(duration_ms(l.idle))
                    .arg(duration_ms(l.renew_window))
                    .arg(duration_ms(l.rotate_interval))
                    .arg(duration_ms(l.rotate_grace))
                    .arg(&q.candidate.0[..])
                    .arg(q.login.plus(l.absolute).0)
                    .arg(q.login.0)
                    .arg(q.device.map(|d| crate::sign::hex(&d)).unwrap_or_default()),
            )
            .await?;
        let a = array(reply, "verify")?;
        let code = a.first().and_then(int);
        let exp = a.get(1).and_then(int).and_then(|e| u64::try_from(e).ok()).map(UnixMs);
        match (code, exp) {
            (Some(1), Some(idle_expires)) => Ok(VerifyOutcome::Valid { idle_expires }),
            (Some(2), Some(idle_expires)) => match a.get(2).and_then(sid) {
                Some(successor) => Ok(VerifyOutcome::Rotated {
                    successor,
                    idle_expires,
                }),
                None => Err(malformed("verify successor", &Value::Array(a))),
            },
            (Some(0), _) => Ok(VerifyOutcome::NotFound),
            (Some(-1), _) => Ok(VerifyOutcome::Expired),
            (Some(-2), _) => {
                let revoked = sids(a.get(3..).unwrap_or(&[]), "verify revoked")?;
                self.broadcast_sids(q.uid, &revoked).await;
                Ok(VerifyOutcome::Theft { revoked })
            }
            (Some(-3), _) => Err(StoreError::Malformed(format!(
                "session record of {} for user {} is missing or malformed",
                q.sid, q.uid
            ))),
            (Some(-4), _) => Ok(VerifyOutcome::KeyMismatch),
            _ => Err(malformed("verify", &Value::Array(a))),
        }
    }

    async fn bind(&self, b: &BindRequest, now: UnixMs) -> Result<BindOutcome, StoreError> {
        let l = &self.settings.lifetimes;
        let reply = self
            .run(
                self.scripts
                    .bind
                    .key(&self.keys(&b.uid)[..])
                    .arg(now.0)
                    .arg(&b.sid.0[..])
                    .arg(&b.successor.0[..])
                    .arg(crate::sign::hex(&b.device))
                    .arg(duration_ms(l.idle))
                    .arg(b.login.plus(l.absolute).0)
                    .arg(b.login.0),
            )
            .await?;
        let a = array(reply, "bind")?;
        match a.first().and_then(int) {
            Some(1) => {
                let Some(idle_expires) = a.get(1).and_then(int).and_then(|e| u64::try_from(e).ok()).map(UnixMs) else {
                    return Err(malformed("bind expiry", &Value::Array(a)));
                };
                let ended = sids(a.get(2..).unwrap_or(&[]), "bind ended")?;
                self.broadcast_sids(b.uid, &ended).await;
                Ok(BindOutcome::Bound { idle_expires, ended })
            }
            Some(0) => Ok(BindOutcome::NotFound),
            Some(-1) => Ok(BindOutcome::Expired),
            Some(-3) => Err(StoreError::Malformed(format!(
                "session record of {} for user {} is malformed",
                b.sid, b.uid
            ))),
            Some(-4) => Ok(BindOutcome::AlreadyBound),
            Some(-5) => Err(StoreError::SidTaken),
            _ => Err(malformed("bind", &Value::Array(a))),
        }
    }

    async fn revoke(&self, uid: &UserId, s: &Sid, _now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        let a = array(
            self.run(self.scripts.revoke.key(&self.keys(uid)[..]).arg(&s.0[..]))
                .await?,
            "revoke",
        )?;
        let revoked = sids(&a, "revoke")?;
        self.broadcast_sids(*uid, &revoked).await;
        Ok(revoked)
    }

    async fn revoke_all(&self, uid: &UserId, _now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        let a = array(
            self.run(self.scripts.revoke_all.key(&self.keys(uid)[..]).arg(0))
                .await?,
            "revoke_all",
        )?;
        let revoked = sids(&a, "revoke_all")?;
        self.broadcast(Revocation::User { uid: *uid }).await;
        Ok(revoked)
    }

    async fn list(&self, uid: &UserId, now: UnixMs) -> Result<Vec<SessionInfo>, StoreError> {
        let a = array(
            self.run(self.scripts.list.key(&self.keys(uid)[..]).arg(now.0)).await?,
            "list",
        )?;
        a.chunks(6)
            .map(|c| {
                let bad = || malformed("list", &Value::Array(c.to_vec()));
                let [s, e, l, d, m, b] = c else { return Err(bad()) };
                Ok(SessionInfo {
                    sid: sid(s).ok_or_else(bad)?,
                    idle_expires: UnixMs(int(e).and_then(|x| u64::try_from(x).ok()).ok_or_else(bad)?),
                    login: match int(l).and_then(|x| u64::try_from(x).ok()).ok_or_else(bad)? {
                        0 => None,
                        ms => Some(UnixMs(ms)),
                    },
                    device: text(d).filter(|x| !x.is_empty()),
                    meta: text(m).filter(|x| !x.is_empty()),
                    bound: int(b).ok_or_else(bad)? == 1,
                })
            })
            .collect()
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.ping().await
    }

    async fn stats(&self, now: UnixMs) -> Result<Stats, StoreError> {
        // SCAN every master's users and count live current sids: O(users),
        // exact, an admin call that is never on the request path.
        let limit = self.timeout * 100;
        let work = async {
            let mut st = Stats::default();
            for url in self.masters().await? {
                let mut c = self.client(&url)?.get_multiplexed_async_connection().await?;
                // User keys are exactly `<prefix>{…}`; code keys
                // (`<prefix>c:{…}:…`) and the log do not match.
                let pattern = format!("{}{{*}}", self.prefix);
                let mut cursor: u64 = 0;
                loop {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await?;
                    for h in keys {
                        let n: u64 = self
                            .scripts
                            .count
                            .key(&h)
                            .key(format!("{h}:r"))
                            .arg(now.0)
                            .invoke_async(&mut c)
                            .await?;
                        if n > 0 {
                            st.users += 1;
                            st.sessions += n;
                        }
                    }
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
            }
            Ok::<Stats, RedisError>(st)
        };
        match tokio::time::timeout(limit, work).await {
            Ok(r) => r.map_err(StoreError::Redis),
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }
}

/// A ban key outlives its ban by this much (cleanup only: the end time in
/// the hash decides), so nodes whose clocks lag still see it.
const BAN_SLACK_MS: u64 = 60_000;

impl crate::store::bans::BanStore for RedisStore {
    async fn ban_set(&self, uid: &UserId, ban: &crate::store::bans::Ban, now: UnixMs) -> Result<(), StoreError> {
        let key = self.ban_key(uid);
        let ttl = ban.until.0.saturating_sub(now.0).saturating_add(BAN_SLACK_MS);
        self.bounded(self.timeout, |mut c| async move {
            redis::pipe()
                .atomic()
                .del(&key)
                .hset_multiple(&key, &[("u", ban.until.0.to_string()), ("r", ban.reason.clone())])
                .pexpire(&key, ttl as i64)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn ban_lift(&self, uid: &UserId, now: UnixMs) -> Result<bool, StoreError> {
        let was = crate::store::bans::BanStore::ban_get(self, uid, now).await?.is_some();
        let key = self.ban_key(uid);
        self.bounded(self.timeout, |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async::<i64>(&mut c).await
        })
        .await?;
        Ok(was)
    }

    async fn ban_get(&self, uid: &UserId, now: UnixMs) -> Result<Option<crate::store::bans::Ban>, StoreError> {
        let key = self.ban_key(uid);
        let (until, reason): (Option<u64>, Option<String>) = self
            .bounded(self.timeout, |mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("u")
                    .arg("r")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(until.filter(|u| *u > now.0).map(|u| crate::store::bans::Ban {
            until: UnixMs(u),
            reason: reason.unwrap_or_default(),
        }))
    }
}

impl CodeStore for RedisStore {
    async fn code_send(
        &self,
        tag: &str,
        kid: Kid,
        digest: &Digest,
        limits: &CodeLimits,
        now: UnixMs,
    ) -> Result<SendOutcome, StoreError> {
        let (code, rate) = self.code_keys(tag);
        let reply = self
            .run(
                self.scripts
                    .code_send
                    .key(code)
                    .key(rate)
                    .arg(now.0)
                    .arg(kid.0)
                    .arg(&digest[..])
                    .arg(duration_ms(limits.ttl))
                    .arg(limits.max_attempts)
                    .arg(duration_ms(limits.resend_interval))
                    .arg(limits.daily_limit)
                    .arg(duration_ms(DAY)),
            )
            .await?;
        let a = array(reply, "code_send")?;
        let wait = || {
            a.get(1)
                .and_then(int)
                .and_then(|w| u64::try_from(w).ok())
                .map(Duration::from_millis)
        };
        match (a.first().and_then(int), wait()) {
            (Some(0), _) => Ok(SendOutcome::Stored),
            (Some(1), Some(w)) => Ok(SendOutcome::TooSoon(w)),
            (Some(2), Some(w)) => Ok(SendOutcome::DailyLimit(w)),
            _ => Err(malformed("code_send", &Value::Array(a))),
        }
    }

    async fn code_check(
        &self,
        tag: &str,
        candidates: &[(Kid, Digest)],
        now: UnixMs,
    ) -> Result<CheckOutcome, StoreError> {
        let (code, _) = self.code_keys(tag);
        let mut inv = self.scripts.code_check.key(code);
        inv.arg(now.0);
        for (kid, d) in candidates {
            inv.arg(kid.0).arg(&d[..]);
        }
        let a = array(self.run(&mut inv).await?, "code_check")?;
        let left = a.get(1).and_then(int).and_then(|n| u32::try_from(n).ok());
        match (a.first().and_then(int), left) {
            (Some(0), _) => Ok(CheckOutcome::Missing),
            (Some(1), _) => Ok(CheckOutcome::Accepted),
            (Some(2), Some(attempts_left)) => Ok(CheckOutcome::Wrong { attempts_left }),
            _ => Err(malformed("code_check", &Value::Array(a))),
        }
    }

    async fn code_cancel(&self, tag: &str, digest: &Digest, now: UnixMs) -> Result<bool, StoreError> {
        let (code, rate) = self.code_keys(tag);
        let n = self
            .run(self.scripts.code_cancel.key(code).key(rate).arg(&digest[..]).arg(now.0))
            .await?;
        match int(&n) {
            Some(x) => Ok(x == 1),
            None => Err(malformed("code_cancel", &n)),
        }
    }
}

impl super::throttle::ThrottleStore for RedisStore {
    async fn throttle_admit(
        &self,
        c: super::throttle::Counter<'_>,
        l: &super::throttle::AdmitLimits,
        now: UnixMs,
    ) -> Result<super::throttle::Admit, StoreError> {
        let (key, account) = c.names();
        let mut inv = self.scripts.throttle_admit.key(format!("{}{key}", self.prefix));
        if let Some(a) = account {
            inv.key(format!("{}{a}", self.prefix));
        }
        inv.arg(now.0)
            .arg(duration_ms(l.window))
            .arg(l.limit)
            .arg(l.reduced)
            .arg(l.threshold);
        let a = array(
            self.run_within(self.throttle_timeout(), &mut inv).await?,
            "throttle_admit",
        )?;
        let under_attack = a.get(2).and_then(int) == Some(1);
        match (a.first().and_then(int), a.get(1).and_then(int)) {
            (Some(1), _) => Ok(super::throttle::Admit::Allowed { under_attack }),
            (Some(0), Some(ms)) => Ok(super::throttle::Admit::Refused {
                retry_after: Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
                under_attack,
            }),
            _ => Err(malformed("throttle_admit", &Value::Array(a))),
        }
    }

    async fn throttle_release(
        &self,
        c: super::throttle::Counter<'_>,
        clear: bool,
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let (key, account) = c.names();
        let mut inv = self.scripts.throttle_release.key(format!("{}{key}", self.prefix));
        if let Some(a) = account {
            inv.key(format!("{}{a}", self.prefix));
        }
        inv.arg(now.0).arg(if clear { "1" } else { "0" });
        self.run_within(self.throttle_timeout(), &mut inv).await.map(|_| ())
    }
}

impl RedisStore {
    /// The URLs of the masters: the one server, or every cluster master
    /// (from `CLUSTER NODES` of the first node that answers).
    async fn masters(&self) -> Result<Vec<String>, RedisError> {
        match &self.conn {
            Conn::Single(_) => return Ok(self.urls.iter().map(|u| u.expose().to_string()).collect()),
            Conn::Sentinel(s) => {
                let (client, _) = s.primary().await?;
                let addr = client.get_connection_info().addr();
                let scheme = match addr {
                    redis::ConnectionAddr::TcpTls { .. } => "rediss",
                    _ => "redis",
                };
                return Ok(vec![format!("{scheme}://{addr}/")]);
            }
            Conn::Cluster(_) => {}
        }
        let mut last = None;
        for url in &self.urls {
            let url = url.expose();
            let attempt = async {
                let mut c = self.client(url)?.get_multiplexed_async_connection().await?;
                redis::cmd("CLUSTER").arg("NODES").query_async::<String>(&mut c).await
            };
            match attempt.await {
                Ok(nodes) => {
                    let scheme = if url.starts_with("rediss://") {
                        "rediss"
                    } else {
                        "redis"
                    };
                    // One node's view of who is master can lag a failover
                    // (gossip); each node's view of itself (the `myself`
                    // line of its own CLUSTER NODES) does not. Ask every
                    // node that is not known to have failed. Not `ROLE`: it
                    // is in @dangerous, which the least-privilege ACL user
                    // lacks (docs/deployment.md).
                    let candidates: Vec<String> = nodes
                        .lines()
                        .filter(|l| l.split(' ').nth(2).is_some_and(|f| !f.contains("fail")))
                        .filter_map(|l| l.split(' ').nth(1))
                        .map(|addr| format!("{scheme}://{}", addr.split('@').next().unwrap_or(addr)))
                        .collect();
                    let mut masters = Vec::new();
                    for node in candidates {
                        let own = async {
                            let mut c = self.client(&node)?.get_multiplexed_async_connection().await?;
                            redis::cmd("CLUSTER").arg("NODES").query_async::<String>(&mut c).await
                        };
                        let master = own.await.is_ok_and(|nodes| {
                            nodes.lines().any(|l| {
                                l.split(' ').nth(2).is_some_and(|f| {
                                    let mut flags = f.split(',');
                                    flags.clone().any(|x| x == "myself") && flags.any(|x| x == "master")
                                })
                            })
                        });
                        if master {
                            masters.push(node);
                        }
                    }
                    return Ok(masters);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| RedisError::from((redis::ErrorKind::Io, "no cluster node answered"))))
    }
}

/// A client for one server, with TLS certificates when configured.
fn client(
    info: impl redis::IntoConnectionInfo,
    tls: Option<&redis::TlsCertificates>,
) -> Result<redis::Client, RedisError> {
    match tls {
        Some(t) => redis::Client::build_with_tls(info, t.clone()),
        None => redis::Client::open(info),
    }
}

pub use crate::config::mask_url;

/// The words the log (`cause = …`) and `/readyz` (`cause`) use for why a
/// store call failed, from the error and its causes: `refused`,
/// `authentication failed`, `TLS error`, `not a primary`, `timeout`,
/// `breaker open`, else `error`.
pub fn cause_of(chain: &str) -> &'static str {
    let l = chain.to_ascii_lowercase();
    if l.contains("refused") {
        "refused"
    } else if l.contains("wrongpass")
        || l.contains("authentication")
        || l.contains("noauth")
        || l.contains("invalid username-password")
    {
        "authentication failed"
    } else if l.contains("tls") || l.contains("certificate") || l.contains("handshake") {
        "TLS error"
    } else if l.contains("readonly")
        || l.contains("read only replica")
        || l.contains("not a primary")
        || l.contains("masterdown")
    {
        "not a primary"
    } else if l.contains("did not answer within") || l.contains("timed out") || l.contains("timeout") {
        "timeout"
    } else if l.contains("circuit breaker open") {
        "breaker open"
    } else {
        "error"
    }
}

/// `host:port` of a Redis URL, without scheme, credentials or database.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |x| x.1);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit_once('@').map_or(authority, |x| x.1).to_string()
}

impl RedisStore {
    /// `host:port` of every configured node (the sentinels under Sentinel);
    /// never credentials.
    pub fn addresses(&self) -> Vec<String> {
        self.urls.iter().map(|u| host_port(u.expose())).collect()
    }

    /// Opens a TCP connection to each configured node in turn: the first
    /// that refuses it or does not answer within `limit`, and which. What
    /// `/readyz` says when a store call only timed out (the client library
    /// was still reconnecting) and the real cause is below it.
    pub async fn tcp_probe(&self, limit: Duration) -> Option<(String, &'static str)> {
        for a in self.addresses() {
            match tokio::time::timeout(limit, tokio::net::TcpStream::connect(&a)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Some((a, "refused")),
                Ok(Err(_)) => return Some((a, "unreachable")),
                Err(_) => return Some((a, "timeout")),
            }
        }
        None
    }
}

/// An error and its causes on one line (`a: b: c`), for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// The TLS material of `[store]` (`tls_ca_file`, `tls_cert_file`,
/// `tls_key_file`), read and checked: `None` when none is configured
/// (`rediss://` then verifies against the system's roots). Every problem
/// names its key and file.
pub fn load_tls(c: &crate::config::StoreConfig) -> Result<Option<redis::TlsCertificates>, crate::config::ConfigError> {
    use crate::config::ConfigError;
    let bad = |key: &str, message: String| ConfigError::Check {
        key: key.into(),
        message,
    };
    let read = |key: &str, path: &std::path::Path, marker: &str, what: &str| -> Result<Vec<u8>, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| bad(key, format!("{}: cannot be read: {e}", path.display())))?;
        let text = String::from_utf8_lossy(&bytes);
        if !text.contains("-----BEGIN ") || !text.contains(marker) {
            return Err(bad(key, format!("{}: holds no PEM {what}", path.display())));
        }
        Ok(bytes)
    };
    let root_cert = match &c.tls_ca_file {
        Some(p) => Some(read("store.tls_ca_file", p, "CERTIFICATE-----", "certificate")?),
        None => None,
    };
    let client_tls = match (&c.tls_cert_file, &c.tls_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("store.tls_cert_file", cert, "CERTIFICATE-----", "certificate")?,
            client_key: read("store.tls_key_file", key, "PRIVATE KEY-----", "private key")?,
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(bad(
                "store.tls_key_file",
                "mutual TLS needs both store.tls_cert_file and store.tls_key_file".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(bad(
                "store.tls_cert_file",
                "mutual TLS needs both store.tls_cert_file and store.tls_key_file".into(),
            ));
        }
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    // Parsed whole now, so that damage or a key that does not belong to its
    // certificate stops the start instead of every connection.
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs_of = |key: &str, pem: &[u8]| -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(key, format!("a certificate does not parse: {e}")))
    };
    if let Some(ca) = &root_cert {
        certs_of("store.tls_ca_file", ca)?;
    }
    if let Some(ct) = &client_tls {
        let chain = certs_of("store.tls_cert_file", &ct.client_cert)?;
        let key = PrivateKeyDer::from_pem_slice(&ct.client_key)
            .map_err(|e| bad("store.tls_key_file", format!("the private key does not parse: {e}")))?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            bad(
                "store.tls_key_file",
                format!("does not match the certificate in store.tls_cert_file ({e})"),
            )
        })?;
    }
    Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
}
