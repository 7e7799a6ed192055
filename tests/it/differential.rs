//! The embedded store and the Redis store (the Lua scripts in `lua/`) are
//! two implementations of one contract. Besides the hand-picked conformance
//! cases (`store.rs`), this runs thousands of random operation sequences —
//! logins with and without device and metadata, verifies of current,
//! rotated and revoked tokens with the clock jumping across the renew
//! window, rotation, grace, idle and absolute expiry, revocations, lists,
//! counts, one-time codes, bans and throttle counters — against both, and
//! compares every reply. Half the sequences run the embedded store kept on
//! disk and reopen it from its files at random points (a restart): a change
//! the journal missed shows up as a reply that differs from Redis.

use std::time::Duration;

use proptest::prelude::*;
use twintoken::config::Fsync;
use twintoken::config::{Config, LoginMode, Overflow};
use twintoken::store::bans::{Ban, BanStore};
use twintoken::store::codes::{CodeLimits, CodeStore};
use twintoken::store::memory::MemoryStore;
use twintoken::store::memory::persist::PersistOptions;
use twintoken::store::redis::RedisStore;
use twintoken::store::throttle::{AdmitLimits, Counter, ThrottleStore};
use twintoken::store::{
    BindOutcome, BindRequest, Device, LoginOutcome, NewSession, SessionStore, StoreSettings, VerifyOutcome,
    VerifyRequest,
};
use twintoken::time::UnixMs;
use twintoken::tokens::{Kid, Sid, UserId};

use crate::support::redis_server::RedisServer;

const T0: UnixMs = UnixMs(1_700_000_000_000);
const MIN: u64 = 60_000;

#[derive(Clone, Debug)]
enum Op {
    Login {
        user: u8,
        device: Option<u8>,
        meta: bool,
    },
    /// Verify the `token`-th token handed out so far (modulo), with a fresh
    /// candidate or, rarely, an existing sid as the rotation candidate.
    Verify {
        token: u16,
        collide: bool,
        /// Present no device proof even for a bound token (a downgrade).
        strip: bool,
    },
    /// Bind the `token`-th token's session to device key `key`.
    Bind {
        token: u16,
        key: u8,
    },
    Advance(u64),
    Revoke {
        user: u8,
        token: u16,
        foreign: bool,
    },
    RevokeAll {
        user: u8,
    },
    List {
        user: u8,
    },
    Stats,
    CodeSend {
        dest: u8,
        code: u8,
    },
    CodeCheck {
        dest: u8,
        code: u8,
    },
    CodeCancel {
        dest: u8,
        code: u8,
    },
    Throttle {
        account: u8,
        bucket: u8,
        release: Option<bool>,
    },
    /// Drop the embedded store and load it again from its directory (only
    /// when it is kept on disk).
    Reopen,
    /// Ban a user for `mins` minutes, lift a ban, or read it.
    Ban {
        user: u8,
        mins: u8,
    },
    Unban {
        user: u8,
    },
    BanGet {
        user: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u8, proptest::option::of(0..3u8), any::<bool>())
            .prop_map(|(user, device, meta)| Op::Login { user, device, meta }),
        8 => (any::<u16>(), proptest::bool::weighted(0.05), proptest::bool::weighted(0.1))
            .prop_map(|(token, collide, strip)| Op::Verify { token, collide, strip }),
        1 => (any::<u16>(), 0..2u8).prop_map(|(token, key)| Op::Bind { token, key }),
        // Across the renew window (30 min), the rotate interval (1 h), the
        // grace (30 s), the idle lifetime (2 h) and the absolute one (4 h).
        4 => prop_oneof![Just(1_000u64), Just(20_000), Just(31_000), Just(10 * MIN), Just(31 * MIN), Just(61 * MIN), Just(121 * MIN)]
            .prop_map(Op::Advance),
        2 => (0..3u8, any::<u16>(), proptest::bool::weighted(0.2))
            .prop_map(|(user, token, foreign)| Op::Revoke { user, token, foreign }),
        1 => (0..3u8).prop_map(|user| Op::RevokeAll { user }),
        2 => (0..3u8).prop_map(|user| Op::List { user }),
        1 => Just(Op::Stats),
        1 => (0..2u8, 0..3u8).prop_map(|(dest, code)| Op::CodeSend { dest, code }),
        1 => (0..2u8, 0..3u8).prop_map(|(dest, code)| Op::CodeCheck { dest, code }),
        1 => (0..2u8, 0..3u8).prop_map(|(dest, code)| Op::CodeCancel { dest, code }),
        1 => (0..2u8, 0..2u8, proptest::option::of(any::<bool>()))
            .prop_map(|(account, bucket, release)| Op::Throttle { account, bucket, release }),
        2 => Just(Op::Reopen),
        1 => (0..3u8, 1..90u8).prop_map(|(user, mins)| Op::Ban { user, mins }),
        1 => (0..3u8).prop_map(|user| Op::Unban { user }),
        1 => (0..3u8).prop_map(|user| Op::BanGet { user }),
    ]
}

fn settings(variant: u8) -> StoreSettings {
    let mut c = Config::for_test();
    c.tokens.rotate_interval = Duration::from_secs(3600);
    c.tokens.long_absolute_ttl = Duration::from_secs(4 * 3600);
    match variant {
        0 => {
            c.login.max_sessions = 3;
            c.login.devices = [("pc".to_string(), 1), ("mobile".to_string(), 2)].into();
        }
        1 => {
            c.login.max_sessions = 2;
            c.login.overflow = Overflow::Reject;
            c.login.devices = [("pc".to_string(), 1)].into();
        }
        _ => {
            c.login.mode = LoginMode::Single;
            // Rotation later than the idle lifetime minus the renew window:
            // verifies inside the window renew instead of rotating.
            c.tokens.rotate_interval = Duration::from_secs(3 * 3600);
        }
    }
    StoreSettings::from_config(&c)
}

/// A token held by a client: enough to build a verify request.
#[derive(Clone, Copy, Debug)]
struct Token {
    uid: UserId,
    sid: Sid,
    iat: UnixMs,
    login: UnixMs,
    device: Option<[u8; 32]>,
}

fn sorted(mut v: Vec<Sid>) -> Vec<Sid> {
    v.sort();
    v
}

/// Runs `ops` on both stores; panics at the first reply that differs.
/// `on_disk`: the embedded store is kept in a directory and reopened from
/// it at each `Reopen`.
async fn run(server: &RedisServer, variant: u8, on_disk: bool, ops: &[Op]) {
    let st = settings(variant);
    let dir = tempfile::tempdir().unwrap();
    let opts = PersistOptions::new(dir.path(), Fsync::Everysec);
    let open = || match on_disk {
        true => MemoryStore::open(st.clone(), &opts).unwrap().without_sweep(),
        false => MemoryStore::new(st.clone()).without_sweep(),
    };
    let mut mem = open();
    let _: () = redis::cmd("FLUSHALL").query(&mut server.conn()).unwrap();
    // A generous timeout: this compares answers, not speed, and the suite
    // runs it beside heavy tests on two cores.
    let red = RedisStore::connect(&[server.url().into()], "tt:", Duration::from_secs(10), st.clone())
        .await
        .unwrap();
    let users: Vec<UserId> = ["ann", "bo", "cy"].iter().map(|u| UserId::new(u).unwrap()).collect();
    let mut now = T0;
    let mut tokens: Vec<Token> = Vec::new();
    let mut next_sid: u32 = 1;
    let mut fresh = || {
        let mut s = [0u8; 16];
        s[..4].copy_from_slice(&next_sid.to_be_bytes());
        s[15] = 0xAB;
        next_sid += 1;
        Sid(s)
    };
    let limits = CodeLimits {
        ttl: Duration::from_secs(120),
        max_attempts: 3,
        resend_interval: Duration::from_secs(60),
        daily_limit: 4,
    };
    for (i, op) in ops.iter().enumerate() {
        let ctx = format!("op {i} {op:?} at +{} ms", now.0 - T0.0);
        match *op {
            Op::Login { user, device, meta } => {
                let n = NewSession {
                    uid: users[usize::from(user)],
                    sid: fresh(),
                    device: device.map(|d| Device::new(["pc", "mobile", "tv"][usize::from(d)]).unwrap()),
                    meta: meta.then(|| r#"{"ip":"192.0.2.1","ua":"x | y"}"#.to_string()),
                };
                let (a, b) = (mem.login(&n, now).await.unwrap(), red.login(&n, now).await.unwrap());
                let norm = |o: LoginOutcome| match o {
                    LoginOutcome::Created { idle_expires, evicted } => LoginOutcome::Created {
                        idle_expires,
                        evicted: sorted(evicted),
                    },
                    r => r,
                };
                let (a, b) = (norm(a), norm(b));
                assert_eq!(a, b, "{ctx}");
                if matches!(a, LoginOutcome::Created { .. }) {
                    tokens.push(Token {
                        uid: n.uid,
                        sid: n.sid,
                        iat: now,
                        login: now,
                        device: None,
                    });
                }
            }
            Op::Verify { token, collide, strip } => {
                let Some(t) = (!tokens.is_empty()).then(|| tokens[usize::from(token) % tokens.len()]) else {
                    continue;
                };
                let candidate = if collide { tokens[0].sid } else { fresh() };
                let q = VerifyRequest {
                    uid: t.uid,
                    sid: t.sid,
                    iat: t.iat,
                    login: t.login,
                    candidate,
                    device: t.device.filter(|_| !strip),
                };
                let norm = |o: VerifyOutcome| match o {
                    VerifyOutcome::Theft { revoked } => VerifyOutcome::Theft {
                        revoked: sorted(revoked),
                    },
                    r => r,
                };
                let a = norm(mem.verify(&q, now).await.unwrap());
                let b = norm(red.verify(&q, now).await.unwrap());
                assert_eq!(a, b, "{ctx}");
                if let VerifyOutcome::Rotated { successor, .. } = a {
                    tokens.push(Token {
                        uid: t.uid,
                        sid: successor,
                        iat: now,
                        login: t.login,
                        device: t.device,
                    });
                }
            }
            Op::Bind { token, key } => {
                let Some(t) = (!tokens.is_empty()).then(|| tokens[usize::from(token) % tokens.len()]) else {
                    continue;
                };
                let b = BindRequest {
                    uid: t.uid,
                    sid: t.sid,
                    login: t.login,
                    successor: fresh(),
                    device: [key; 32],
                };
                let norm = |o: BindOutcome| match o {
                    BindOutcome::Bound { idle_expires, ended } => BindOutcome::Bound {
                        idle_expires,
                        ended: sorted(ended),
                    },
                    r => r,
                };
                let a = norm(mem.bind(&b, now).await.unwrap());
                let r = norm(red.bind(&b, now).await.unwrap());
                assert_eq!(a, r, "{ctx}");
                if matches!(a, BindOutcome::Bound { .. }) {
                    tokens.push(Token {
                        uid: t.uid,
                        sid: b.successor,
                        iat: now,
                        login: t.login,
                        device: Some(b.device),
                    });
                }
            }
            Op::Advance(ms) => now = UnixMs(now.0 + ms),
            Op::Revoke { user, token, foreign } => {
                let Some(t) = (!tokens.is_empty()).then(|| tokens[usize::from(token) % tokens.len()]) else {
                    continue;
                };
                // `foreign`: another user's sid under this user (changes nothing).
                let uid = if foreign { users[usize::from(user)] } else { t.uid };
                let a = sorted(mem.revoke(&uid, &t.sid, now).await.unwrap());
                let b = sorted(red.revoke(&uid, &t.sid, now).await.unwrap());
                assert_eq!(a, b, "{ctx}");
            }
            Op::RevokeAll { user } => {
                let uid = users[usize::from(user)];
                let a = sorted(mem.revoke_all(&uid, now).await.unwrap());
                let b = sorted(red.revoke_all(&uid, now).await.unwrap());
                assert_eq!(a, b, "{ctx}");
            }
            Op::List { user } => {
                let uid = users[usize::from(user)];
                let (a, b) = (mem.list(&uid, now).await.unwrap(), red.list(&uid, now).await.unwrap());
                assert_eq!(a, b, "{ctx}");
            }
            Op::Stats => {
                let (a, b) = (mem.stats(now).await.unwrap(), red.stats(now).await.unwrap());
                assert_eq!(a, b, "{ctx}");
            }
            Op::CodeSend { dest, code } => {
                let tag = format!("dest{dest}");
                let d = [code; 32];
                let a = mem.code_send(&tag, Kid(1), &d, &limits, now).await.unwrap();
                let b = red.code_send(&tag, Kid(1), &d, &limits, now).await.unwrap();
                assert_eq!(a, b, "{ctx}");
            }
            Op::CodeCheck { dest, code } => {
                let tag = format!("dest{dest}");
                let c = [(Kid(1), [code; 32])];
                let a = mem.code_check(&tag, &c, now).await.unwrap();
                let b = red.code_check(&tag, &c, now).await.unwrap();
                assert_eq!(a, b, "{ctx}");
            }
            Op::CodeCancel { dest, code } => {
                let tag = format!("dest{dest}");
                let a = mem.code_cancel(&tag, &[code; 32], now).await.unwrap();
                let b = red.code_cancel(&tag, &[code; 32], now).await.unwrap();
                assert_eq!(a, b, "{ctx}");
            }
            Op::Ban { user, mins } => {
                let uid = users[usize::from(user)];
                let b = Ban {
                    until: UnixMs(now.0 + u64::from(mins) * MIN),
                    reason: format!("r{mins} | x"),
                };
                mem.ban_set(&uid, &b, now).await.unwrap();
                red.ban_set(&uid, &b, now).await.unwrap();
            }
            Op::Unban { user } => {
                let uid = users[usize::from(user)];
                let (a, b) = (
                    mem.ban_lift(&uid, now).await.unwrap(),
                    red.ban_lift(&uid, now).await.unwrap(),
                );
                assert_eq!(a, b, "{ctx}");
            }
            Op::BanGet { user } => {
                let uid = users[usize::from(user)];
                let (a, b) = (
                    mem.ban_get(&uid, now).await.unwrap(),
                    red.ban_get(&uid, now).await.unwrap(),
                );
                assert_eq!(a, b, "{ctx}");
            }
            Op::Reopen => {
                if on_disk {
                    let before = mem.dump(now);
                    drop(mem);
                    mem = open();
                    assert_eq!(before, mem.dump(now), "{ctx}: the state reloaded from disk");
                }
            }
            // Throttle counters are not kept on disk (docs/security.md).
            Op::Throttle { .. } if on_disk => {}
            Op::Throttle {
                account,
                bucket,
                release,
            } => {
                let (acc, b) = (format!("u:{account}"), format!("192.0.2.{bucket}"));
                let c = Counter::Account {
                    account: &acc,
                    bucket: &b,
                };
                let l = AdmitLimits {
                    window: Duration::from_secs(300),
                    limit: 3,
                    reduced: 1,
                    threshold: 4,
                };
                match release {
                    None => {
                        let x = mem.throttle_admit(c, &l, now).await.unwrap();
                        let y = red.throttle_admit(c, &l, now).await.unwrap();
                        assert_eq!(x, y, "{ctx}");
                    }
                    Some(clear) => {
                        mem.throttle_release(c, clear, now).await.unwrap();
                        red.throttle_release(c, clear, now).await.unwrap();
                    }
                }
            }
        }
    }
    // Finally every user's sessions, as both stores see them.
    for uid in &users {
        let (a, b) = (mem.list(uid, now).await.unwrap(), red.list(uid, now).await.unwrap());
        assert_eq!(a, b, "final list of {uid}");
    }
}

#[test]
fn the_embedded_store_and_the_lua_scripts_answer_alike() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        // PROPTEST_CASES runs more (or fewer) sequences.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let cases = (0..3u8, any::<bool>(), proptest::collection::vec(op(), 1..40));
    if let Err(e) = runner.run(&cases, |(variant, on_disk, ops)| {
        rt.block_on(run(&server, variant, on_disk, &ops));
        Ok(())
    }) {
        panic!("{e}");
    }
}
