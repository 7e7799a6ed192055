//! Session-store figures against a real redis-server this bench starts:
//! - p50/p99 of a store verify vs a plain PING on the same connection,
//!   interleaved in rounds so drift hits both alike;
//! - Redis memory per session (`INFO memory` used_memory delta) over
//!   100 000 sessions, layout v2 vs v3, 1 and 3 sessions per user,
//!   metadata off and on;
//! - Redis CPU per long verify (`INFO commandstats`), v2 vs v3.
//!
//! `cargo bench --bench store` for the figures; without `--bench` (as under
//! `cargo test --all-targets`) it runs a quick smoke with small counts.

#[path = "../tests/it/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::time::{Duration, Instant};

use twintoken::config::Config;
use twintoken::store::redis::RedisStore;
use twintoken::store::{LoginOutcome, NewSession, SessionStore, StoreSettings, VerifyOutcome, VerifyRequest};
use twintoken::time::UnixMs;
use twintoken::tokens::{Sid, UserId};

const T0: UnixMs = UnixMs(1_800_000_000_000);

fn used_memory(c: &mut redis::Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("memory").query(c).unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, per_round, users) = if full { (20, 500, 100_000) } else { (2, 20, 500) };
    let server = redis_server::RedisServer::start();
    let settings = StoreSettings::from_config(&Config::for_test());
    let store = RedisStore::connect(&[server.url().into()], "tt:", Duration::from_secs(2), settings)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));

    // Latency: verify vs PING.
    let uid = UserId::new("10000042").unwrap_or_else(|e| panic!("{e}"));
    let sid = Sid([1; 16]);
    store
        .login(
            &NewSession {
                uid,
                sid,
                device: None,
                meta: None,
            },
            T0,
        )
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let req = VerifyRequest {
        uid,
        sid,
        iat: T0,
        login: T0,
        candidate: Sid([2; 16]),
        device: None,
    };
    let (mut v, mut p) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for _ in 0..per_round {
            let t = Instant::now();
            let out = store.verify(&req, T0).await.unwrap_or_else(|e| panic!("verify: {e}"));
            assert!(matches!(out, VerifyOutcome::Valid { .. }), "{out:?}");
            v.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            store.ping().await.unwrap_or_else(|e| panic!("ping: {e}"));
            p.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let (v50, p50) = (pct(&mut v, 0.5), pct(&mut p, 0.5));
    println!(
        "latency over {} each: store verify p50 {v50:.1} us p99 {:.1} us | PING p50 {p50:.1} us p99 {:.1} us | ratio p50 {:.2}x",
        v.len(),
        pct(&mut v, 0.99),
        pct(&mut p, 0.99),
        v50 / p50
    );

    // Memory per session against the stored-token baseline, same server,
    // same run: layout v2 (one hash per user, the previous scripts kept as
    // test fixtures) and v3 (a sorted set per user + companion records), at
    // 1 and 3 sessions per user, metadata off and on.
    let mut c = server.conn();
    let v2 = V2::load();
    let meta = r#"{"ip":"203.0.113.7","ua":"Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"}"#;
    let sessions = users; // per configuration
    println!("memory per session ({sessions} sessions each; INFO memory used_memory delta):");
    for per_user in [1usize, 3] {
        // Baseline: one `SET <token> <uid> PX <ttl>` per session, a 32-hex-digit token.
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap_or_else(|e| panic!("{e}"));
        let before = used_memory(&mut c);
        let mut pipe = redis::pipe();
        for i in 0..sessions {
            let uid = 10_000_000 + i / per_user;
            pipe.cmd("SET")
                .arg(format!("tok:{:032x}", (i as u128) * 0x9E37_79B9_7F4A_7C15 + 1))
                .arg(uid)
                .arg("PX")
                .arg(7_200_000)
                .ignore();
            if i % 1000 == 999 || i + 1 == sessions {
                let _: () = pipe.query(&mut c).unwrap_or_else(|e| panic!("{e}"));
                pipe = redis::pipe();
            }
        }
        let baseline = (used_memory(&mut c) - before) as f64 / sessions as f64;
        assert!(baseline > 0.0, "the baseline's memory was measured");
        println!("  baseline   {per_user} session(s)/user: {baseline:>6.0} B");
        // The last rows: metadata on with Redis told to keep hashes with
        // values up to 256 bytes compact (`hash-max-listpack-value 256`;
        // the default 64 turns a hash into a hashtable as soon as one
        // record carries a user agent). The service never needs CONFIG.
        for (label, device, m, listpack_value) in [
            ("metadata off", None, None, 64),
            ("metadata on ", Some("pc"), Some(meta), 64),
            ("metadata on, hash-max-listpack-value 256", Some("pc"), Some(meta), 256),
        ] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("hash-max-listpack-value")
                .arg(listpack_value)
                .query(&mut c)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut row = Vec::new();
            for layout in ["v2", "v3"] {
                let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap_or_else(|e| panic!("{e}"));
                let before = used_memory(&mut c);
                for i in 0..sessions {
                    let uid = UserId::new(&(10_000_000 + i / per_user).to_string()).unwrap_or_else(|e| panic!("{e}"));
                    let mut sid = [0u8; 16];
                    sid[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    sid[8] = 0xAB;
                    if layout == "v2" {
                        v2.login(&mut c, &uid, &Sid(sid), device.unwrap_or(""), m.unwrap_or(""));
                    } else {
                        let s = NewSession {
                            uid,
                            sid: Sid(sid),
                            device: device.and_then(|d| twintoken::store::Device::new(d).ok()),
                            meta: m.map(String::from),
                        };
                        let out = store.login(&s, T0).await.unwrap_or_else(|e| panic!("login: {e}"));
                        assert!(matches!(out, LoginOutcome::Created { .. }), "{out:?}");
                    }
                }
                let bytes = (used_memory(&mut c) - before) as f64 / sessions as f64;
                assert!(bytes > 0.0, "{layout}: memory was measured");
                row.push(format!("{layout} {bytes:>4.0} B = {:.2}x", bytes / baseline));
            }
            println!("  twintoken  {per_user} session(s)/user, {label}: {}", row.join(" | "));
        }
    }

    // Redis CPU per long verify: INFO commandstats usec_per_call of EVALSHA
    // (the script with every command it runs), v2 vs v3, plain sessions;
    // rounds interleaved so the host's noise hits both, median reported.
    let (rounds, n) = if full { (9, 5_000) } else { (2, 100) };
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap_or_else(|e| panic!("{e}"));
    let (u2, u3) = (
        UserId::new("cpu-v2").unwrap_or_else(|e| panic!("{e}")),
        UserId::new("cpu-v3").unwrap_or_else(|e| panic!("{e}")),
    );
    v2.login(&mut c, &u2, &sid, "", "");
    store
        .login(
            &NewSession {
                uid: u3,
                sid,
                device: None,
                meta: None,
            },
            T0,
        )
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let mut per_call: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, layout) in ["v2", "v3"].iter().enumerate() {
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query(&mut c)
                .unwrap_or_else(|e| panic!("{e}"));
            for _ in 0..n {
                if *layout == "v2" {
                    let req = VerifyRequest {
                        uid: u2,
                        sid,
                        iat: T0,
                        login: T0,
                        candidate: Sid([2; 16]),
                        device: None,
                    };
                    assert_eq!(v2.verify(&mut c, &req), 1, "v2 verify answers valid");
                } else {
                    let req = VerifyRequest {
                        uid: u3,
                        sid,
                        iat: T0,
                        login: T0,
                        candidate: Sid([2; 16]),
                        device: None,
                    };
                    let out = store.verify(&req, T0).await.unwrap_or_else(|e| panic!("verify: {e}"));
                    assert!(matches!(out, VerifyOutcome::Valid { .. }), "{out:?}");
                }
            }
            let stats: String = redis::cmd("INFO").arg("commandstats").query(&mut c).unwrap_or_default();
            let usec = stats
                .lines()
                .find(|l| l.starts_with("cmdstat_evalsha:"))
                .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("usec_per_call=")))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no EVALSHA in commandstats: {stats}"));
            per_call[i].push(usec);
        }
    }
    for (i, layout) in ["v2", "v3"].iter().enumerate() {
        let usec = pct(&mut per_call[i], 0.5);
        let per_core = 1e6 / usec;
        println!(
            "redis cpu per long verify, {layout}: median {usec:.2} us over {rounds} rounds of {n} (EVALSHA usec_per_call) = {per_core:.0} verifies/s per Redis core; at 1 request/s per user with 60 s short tokens (one long verify per user per minute): {:.1} M active users per shard",
            per_core * 60.0 / 1e6
        );
    }
}

/// Layout v2's login and verify scripts (kept as test fixtures), for the
/// side-by-side figures.
struct V2 {
    login: redis::Script,
    verify: redis::Script,
}

impl V2 {
    fn load() -> V2 {
        let record = include_str!("../tests/it/fixtures/store_v2/record.lua");
        let s = |body: &str| redis::Script::new(&format!("{record}\n{body}"));
        V2 {
            login: s(include_str!("../tests/it/fixtures/store_v2/login.lua")),
            verify: s(include_str!("../tests/it/fixtures/store_v2/verify.lua")),
        }
    }

    fn login(&self, c: &mut redis::Connection, uid: &UserId, sid: &Sid, device: &str, meta: &str) {
        let r: Vec<redis::Value> = self
            .login
            .key(format!("tt:{{{uid}}}"))
            .arg(T0.0)
            .arg(&sid.0[..])
            .arg(T0.0)
            .arg(T0.0 + 7_200_000)
            .arg(device)
            .arg("m")
            .arg(10)
            .arg(0)
            .arg("e")
            .arg(meta)
            .invoke(c)
            .unwrap_or_else(|e| panic!("v2 login: {e}"));
        assert_eq!(r.first(), Some(&redis::Value::Int(1)), "v2 login created");
    }

    fn verify(&self, c: &mut redis::Connection, q: &VerifyRequest) -> i64 {
        let r: Vec<redis::Value> = self
            .verify
            .key(format!("tt:{{{}}}", q.uid))
            .arg(T0.0)
            .arg(&q.sid.0[..])
            .arg(q.iat.0)
            .arg(7_200_000)
            .arg(1_800_000)
            .arg(86_400_000)
            .arg(30_000)
            .arg(&q.candidate.0[..])
            .arg(q.login.0 + 30 * 86_400_000)
            .invoke(c)
            .unwrap_or_else(|e| panic!("v2 verify: {e}"));
        match r.first() {
            Some(redis::Value::Int(i)) => *i,
            other => panic!("v2 verify: {other:?}"),
        }
    }
}
