//! The Redis session store: one hash per user, every operation one Lua
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
    FeedEvent, Limit, LoginOutcome, NewSession, Revocation, SessionInfo, SessionStore, Stats, StoreError,
    StoreSettings, VerifyOutcome, VerifyRequest,
};
use crate::config::{LoginMode, Overflow};
use crate::time::{UnixMs, duration_ms};
use crate::tokens::{Kid, Sid, UserId};

const RECORD: &str = include_str!("../../lua/record.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{RECORD}\n{body}"))
}

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
    code_send: Script,
    code_check: Script,
    code_cancel: Script,
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
            code_send: Script::new(include_str!("../../lua/code_send.lua")),
            code_check: Script::new(include_str!("../../lua/code_check.lua")),
            code_cancel: Script::new(include_str!("../../lua/code_cancel.lua")),
        }
    }
}

/// A connection to a single server or to a cluster; both reconnect by
/// themselves, and neither needs Redis to be up when the store is created.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
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
        }
    }
}

/// The Redis store.
pub struct RedisStore {
    conn: Conn,
    /// For the revocation feed's pub/sub connection (any node of a cluster:
    /// PUBLISH reaches every node).
    pubsub: redis::Client,
    /// Every node URL, for cluster-wide statistics.
    urls: Vec<String>,
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
        urls: &[String],
        prefix: &str,
        timeout: Duration,
        settings: StoreSettings,
    ) -> Result<RedisStore, StoreError> {
        let first = urls
            .first()
            .ok_or_else(|| StoreError::Malformed("no Redis URL given".into()))?;
        let pubsub = redis::Client::open(first.as_str()).map_err(StoreError::Redis)?;
        let conn = if urls.len() == 1 {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Conn::Single(ConnectionManager::new_lazy_with_config(pubsub.clone(), config).map_err(StoreError::Redis)?)
        } else {
            let client = ClusterClient::builder(urls.iter().map(String::as_str))
                .connection_timeout(timeout.max(Duration::from_millis(100)))
                .build()
                .map_err(StoreError::Redis)?;
            Conn::Cluster(Arc::new(LazyCluster {
                client,
                conn: OnceCell::new(),
            }))
        };
        Ok(RedisStore {
            conn,
            pubsub,
            urls: urls.to_vec(),
            scripts: Scripts::load(),
            prefix: prefix.to_string(),
            settings,
            timeout,
        })
    }

    /// The user's one key (a hash of session records, `lua/record.lua`),
    /// `<prefix>{UID}`: the hash tag puts it in one cluster slot.
    fn key(&self, uid: &UserId) -> String {
        format!("{}{{{}}}", self.prefix, uid)
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
            Ok(r) => r.map_err(StoreError::Redis),
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }

    async fn run(&self, inv: &mut redis::ScriptInvocation<'_>) -> Result<Value, StoreError> {
        self.bounded(
            self.timeout,
            |mut c| async move { inv.invoke_async::<Value>(&mut c).await },
        )
        .await
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
            Some(r) => self.tx.send(FeedEvent::Revoked(r)).await.is_ok(),
            None => {
                tracing::warn!(?id, "revocation feed: malformed entry skipped");
                true
            }
        }
    }

    /// One subscription: subscribe, catch up, then forward until it breaks.
    async fn session(&mut self) -> Result<(), StoreError> {
        let t = self.timeout;
        let mut ps = within(t, self.client.get_async_pubsub()).await?;
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
                    .key(self.key(&s.uid))
                    .arg(now.0)
                    .arg(&s.sid.0[..])
                    .arg(now.0)
                    .arg(exp.0)
                    .arg(s.device.as_deref().unwrap_or(""))
                    .arg(if p.mode == LoginMode::Single { "s" } else { "m" })
                    .arg(p.max_sessions)
                    .arg(p.device_cap(s.device.as_deref()))
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
            _ => Err(malformed("login", &Value::Array(a))),
        }
    }

    async fn verify(&self, q: &VerifyRequest, now: UnixMs) -> Result<VerifyOutcome, StoreError> {
        let l = &self.settings.lifetimes;
        let reply = self
            .run(
                self.scripts
                    .verify
                    .key(self.key(&q.uid))
                    .arg(now.0)
                    .arg(&q.sid.0[..])
                    .arg(q.iat.0)
                    .arg(duration_ms(l.idle))
                    .arg(duration_ms(l.renew_window))
                    .arg(duration_ms(l.rotate_interval))
                    .arg(duration_ms(l.rotate_grace))
                    .arg(&q.candidate.0[..])
                    .arg(q.login.plus(l.absolute).0),
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
            _ => Err(malformed("verify", &Value::Array(a))),
        }
    }

    async fn revoke(&self, uid: &UserId, s: &Sid, _now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        let a = array(
            self.run(self.scripts.revoke.key(self.key(uid)).arg(&s.0[..])).await?,
            "revoke",
        )?;
        let revoked = sids(&a, "revoke")?;
        self.broadcast_sids(*uid, &revoked).await;
        Ok(revoked)
    }

    async fn revoke_all(&self, uid: &UserId, _now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        let a = array(
            self.run(self.scripts.revoke_all.key(self.key(uid)).arg(0)).await?,
            "revoke_all",
        )?;
        let revoked = sids(&a, "revoke_all")?;
        self.broadcast(Revocation::User { uid: *uid }).await;
        Ok(revoked)
    }

    async fn list(&self, uid: &UserId, now: UnixMs) -> Result<Vec<SessionInfo>, StoreError> {
        let a = array(self.run(self.scripts.list.key(self.key(uid)).arg(now.0)).await?, "list")?;
        a.chunks(5)
            .map(|c| {
                let bad = || malformed("list", &Value::Array(c.to_vec()));
                let [s, e, l, d, m] = c else { return Err(bad()) };
                Ok(SessionInfo {
                    sid: sid(s).ok_or_else(bad)?,
                    idle_expires: UnixMs(int(e).and_then(|x| u64::try_from(x).ok()).ok_or_else(bad)?),
                    login: UnixMs(int(l).and_then(|x| u64::try_from(x).ok()).ok_or_else(bad)?),
                    device: text(d).filter(|x| !x.is_empty()),
                    meta: text(m).filter(|x| !x.is_empty()),
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
                let mut c = redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
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
                        let n: u64 = self.scripts.count.key(&h).arg(now.0).invoke_async(&mut c).await?;
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

    async fn code_cancel(&self, tag: &str, digest: &Digest, _now: UnixMs) -> Result<bool, StoreError> {
        let (code, rate) = self.code_keys(tag);
        let n = self
            .run(self.scripts.code_cancel.key(code).key(rate).arg(&digest[..]))
            .await?;
        match int(&n) {
            Some(x) => Ok(x == 1),
            None => Err(malformed("code_cancel", &n)),
        }
    }
}

impl RedisStore {
    /// The URLs of the masters: the one server, or every cluster master
    /// (from `CLUSTER NODES` of the first node that answers).
    async fn masters(&self) -> Result<Vec<String>, RedisError> {
        if let Conn::Single(_) = self.conn {
            return Ok(self.urls.clone());
        }
        let mut last = None;
        for url in &self.urls {
            let attempt = async {
                let mut c = redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                redis::cmd("CLUSTER").arg("NODES").query_async::<String>(&mut c).await
            };
            match attempt.await {
                Ok(nodes) => {
                    let scheme = if url.starts_with("rediss://") {
                        "rediss"
                    } else {
                        "redis"
                    };
                    return Ok(nodes
                        .lines()
                        .filter(|l| {
                            l.split(' ')
                                .nth(2)
                                .is_some_and(|f| f.contains("master") && !f.contains("fail"))
                        })
                        .filter_map(|l| l.split(' ').nth(1))
                        .map(|addr| format!("{scheme}://{}", addr.split('@').next().unwrap_or(addr)))
                        .collect());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| RedisError::from((redis::ErrorKind::Io, "no cluster node answered"))))
    }
}
