//! Session-store figures against a real redis-server this bench starts:
//! - p50/p99 of a store verify vs a plain PING on the same connection,
//!   interleaved in rounds so drift hits both alike;
//! - Redis memory per session (`INFO memory` used_memory delta) over
//!   100 000 users x 1 session, metadata off and on.
//!
//! `cargo bench --bench store` for the figures; without `--bench` (as under
//! `cargo test --all-targets`) it runs a quick smoke with small counts.

#[path = "../tests/it/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::time::{Duration, Instant};

use twintoken::config::Config;
use twintoken::store::redis::RedisStore;
use twintoken::store::{NewSession, SessionStore, StoreSettings, VerifyRequest};
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
    let store = RedisStore::connect(&[server.url()], "tt:", Duration::from_secs(2), settings)
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
    };
    let (mut v, mut p) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for _ in 0..per_round {
            let t = Instant::now();
            store.verify(&req, T0).await.unwrap_or_else(|e| panic!("verify: {e}"));
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
    // same run: at 1 and 3 sessions per user, metadata off and on.
    let mut c = server.conn();
    let meta = r#"{"ip":"203.0.113.7","ua":"Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"}"#;
    let sessions = users; // per configuration
    let mut baseline_bytes = 0f64;
    println!("memory per session ({sessions} sessions each; INFO memory used_memory delta):");
    for per_user in [1usize, 3] {
        // Baseline: one `SET <token> <uid> PX <ttl>` per session, a 32-hex-digit token.
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap_or(());
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
            if i % 1000 == 999 {
                let _: () = pipe.query(&mut c).unwrap_or(());
                pipe = redis::pipe();
            }
        }
        let _: () = pipe.query(&mut c).unwrap_or(());
        baseline_bytes = (used_memory(&mut c) - before) as f64 / sessions as f64;
        println!("  baseline   {per_user} session(s)/user: {baseline_bytes:>6.0} B");
        // The third row: metadata on with Redis told to keep hashes with
        // values up to 256 bytes compact (`hash-max-listpack-value 256`;
        // the default 64 turns a user's hash into a hashtable as soon as
        // one record carries a user agent).
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
                .unwrap_or(());
            let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap_or(());
            let before = used_memory(&mut c);
            for i in 0..sessions {
                let uid = UserId::new(&(10_000_000 + i / per_user).to_string()).unwrap_or_else(|e| panic!("{e}"));
                let mut sid = [0u8; 16];
                sid[..8].copy_from_slice(&(i as u64).to_be_bytes());
                sid[8] = 0xAB;
                let s = NewSession {
                    uid,
                    sid: Sid(sid),
                    device: device.map(String::from),
                    meta: m.map(String::from),
                };
                store.login(&s, T0).await.unwrap_or_else(|e| panic!("login: {e}"));
            }
            let ours = (used_memory(&mut c) - before) as f64 / sessions as f64;
            println!(
                "  twintoken  {per_user} session(s)/user, {label}: {ours:>6.0} B = {:.2}x baseline",
                ours / baseline_bytes
            );
        }
    }
    let _ = baseline_bytes;
}
