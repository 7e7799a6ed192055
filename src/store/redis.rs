//! The Redis session store: one sorted set and one hash per user, every
//! operation one Lua script from `lua/` (EVALSHA, NOSCRIPT handled by
//! `redis::Script`), every call bounded by `store.timeout`.
//!
//! This is the only file that knows Redis key names and script contracts.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::{
    Limit, LoginOutcome, NewSession, SessionInfo, SessionStore, Stats, StoreError, StoreSettings, VerifyOutcome,
    VerifyRequest,
};
use crate::config::{LoginMode, Overflow};
use crate::time::{UnixMs, duration_ms};
use crate::tokens::{Sid, UserId};

const RECORD: &str = include_str!("../../lua/record.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{RECORD}\n{body}"))
}

struct Scripts {
    login: Script,
    verify: Script,
    revoke: Script,
    revoke_all: Script,
    list: Script,
}

impl Scripts {
    fn load() -> Scripts {
        Scripts {
            login: script(include_str!("../../lua/login.lua")),
            verify: script(include_str!("../../lua/verify.lua")),
            revoke: script(include_str!("../../lua/revoke.lua")),
            revoke_all: script(include_str!("../../lua/revoke_all.lua")),
            list: script(include_str!("../../lua/list.lua")),
        }
    }
}

/// The Redis store (single server).
pub struct RedisStore {
    conn: ConnectionManager,
    scripts: Scripts,
    prefix: String,
    settings: StoreSettings,
    timeout: Duration,
}

impl RedisStore {
    /// Connects lazily to `url`: the store can be created while Redis is
    /// down, and reconnects by itself.
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        settings: StoreSettings,
    ) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::Redis)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(StoreError::Redis)?;
        Ok(RedisStore {
            conn,
            scripts: Scripts::load(),
            prefix: prefix.to_string(),
            settings,
            timeout,
        })
    }

    /// The user's keys: the sorted set and the record hash. Both carry the
    /// `{UID}` hash tag, so every script touches a single cluster slot.
    fn keys(&self, uid: &UserId) -> (String, String) {
        (
            format!("{}{{{}}}:s", self.prefix, uid),
            format!("{}{{{}}}:h", self.prefix, uid),
        )
    }

    async fn run(&self, inv: &mut redis::ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async::<Value>(&mut conn)).await {
            Ok(r) => r.map_err(StoreError::Redis),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// A plain `PING` on the store's connection, with the same timeout (for
    /// health checks and for measuring the store against a bare round trip).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        match tokio::time::timeout(self.timeout, cmd.query_async::<String>(&mut conn)).await {
            Ok(r) => r.map(|_| ()).map_err(StoreError::Redis),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
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
        let (zs, h) = self.keys(&s.uid);
        let reply = self
            .run(
                self.scripts
                    .login
                    .key(zs)
                    .key(h)
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
            Some(1) => Ok(LoginOutcome::Created {
                idle_expires: exp,
                evicted: sids(&a[1..], "login evicted")?,
            }),
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
        let (zs, h) = self.keys(&q.uid);
        let reply = self
            .run(
                self.scripts
                    .verify
                    .key(zs)
                    .key(h)
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
            (Some(-2), _) => Ok(VerifyOutcome::Theft {
                revoked: sids(a.get(3..).unwrap_or(&[]), "verify revoked")?,
            }),
            (Some(-3), _) => Err(StoreError::Malformed(format!(
                "session record of {} for user {} is missing or malformed",
                q.sid, q.uid
            ))),
            _ => Err(malformed("verify", &Value::Array(a))),
        }
    }

    async fn revoke(&self, uid: &UserId, s: &Sid, _now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        let (zs, h) = self.keys(uid);
        let a = array(
            self.run(self.scripts.revoke.key(zs).key(h).arg(&s.0[..])).await?,
            "revoke",
        )?;
        sids(&a, "revoke")
    }

    async fn revoke_all(&self, uid: &UserId, _now: UnixMs) -> Result<Vec<Sid>, StoreError> {
        let (zs, h) = self.keys(uid);
        let a = array(
            self.run(self.scripts.revoke_all.key(zs).key(h).arg(0)).await?,
            "revoke_all",
        )?;
        sids(&a, "revoke_all")
    }

    async fn list(&self, uid: &UserId, now: UnixMs) -> Result<Vec<SessionInfo>, StoreError> {
        let (zs, h) = self.keys(uid);
        let a = array(self.run(self.scripts.list.key(zs).key(h).arg(now.0)).await?, "list")?;
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

    async fn stats(&self, now: UnixMs) -> Result<Stats, StoreError> {
        // SCAN the users' sorted sets and count live current sids. O(users):
        // an admin call, never on the request path.
        let mut conn = self.conn.clone();
        let pattern = format!("{}{{*}}:h", self.prefix);
        let stats_script = Script::new(include_str!("../../lua/count.lua"));
        let work = async {
            let mut cursor: u64 = 0;
            let mut st = Stats::default();
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                for h in keys {
                    let zs = format!("{}s", h.strip_suffix('h').unwrap_or(&h));
                    let n: u64 = stats_script.key(zs).key(&h).arg(now.0).invoke_async(&mut conn).await?;
                    if n > 0 {
                        st.users += 1;
                        st.sessions += n;
                    }
                }
                cursor = next;
                if cursor == 0 {
                    return Ok::<Stats, redis::RedisError>(st);
                }
            }
        };
        // Stats may take a while on a big keyspace: give it 100 timeouts.
        match tokio::time::timeout(self.timeout * 100, work).await {
            Ok(r) => r.map_err(StoreError::Redis),
            Err(_) => Err(StoreError::Timeout(self.timeout * 100)),
        }
    }
}
