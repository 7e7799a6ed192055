//! Soak: a steady mixed load (password and trusted logins, short and long
//! verifies with rotation, logouts) against the real service — the
//! `twintoken serve` binary in its own process — on a real redis-server,
//! sampling the service's RSS (not the load generator's) and Redis memory.
//! Passes when no request failed, every sample was read, the revocation log
//! stayed under its cap, and the least-squares slope of RSS and of Redis
//! memory over all samples after warm-up stays within bounds.
//!
//! `cargo test --test soak` runs 60 s (as `./scripts/test` does);
//! `cargo test --release --test soak -- --duration 30m` gives the figure in
//! docs/benchmarks.md. `--rate N` sets requests per second (default 400).

#[path = "it/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const ADMIN: &str = "soak-admin-token-soak-admin-token";
const USERS: usize = 20;
const SESSIONS_PER_WORKER: usize = 50;
const WORKERS: usize = 4;
/// The revocation log's cap (entries; `REVOCATION_LOG_CAP` in
/// src/store/redis.rs; trimmed approximately).
const REVOCATION_LOG_CAP: u64 = 100_000;

#[derive(Default)]
struct Counts {
    logins: AtomicU64,
    issues: AtomicU64,
    verifies: AtomicU64,
    rotations: AtomicU64,
    logouts: AtomicU64,
    errors: AtomicU64,
}

struct Session {
    long: String,
    short: String,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The resident set of process `pid` in KiB; `None` if it cannot be read.
fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// (used_memory, memory of the revocation log, entries in it, keys); `None`
/// if any of them cannot be read.
fn redis_memory(c: &mut redis::Connection) -> Option<(u64, u64, u64, u64)> {
    let info: String = redis::cmd("INFO").arg("memory").query(c).ok()?;
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())?;
    let log: Option<u64> = redis::cmd("MEMORY").arg("USAGE").arg("tt:revocations").query(c).ok()?;
    let entries: u64 = redis::cmd("XLEN").arg("tt:revocations").query(c).ok()?;
    let keys: u64 = redis::cmd("DBSIZE").query(c).ok()?;
    Some((used, log.unwrap_or(0), entries, keys))
}

/// Least-squares slope of `y` over `t` (units of y per second).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mt, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let num: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

/// A gauge from the service's /metrics.
async fn metric(c: &Client, base: &str, name: &str) -> Option<u64> {
    let text = c.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A new session from a request that must answer `want` with the session
/// JSON; anything else (transport error, status, body) is counted as an
/// error.
async fn session_from(rq: reqwest::RequestBuilder, want: StatusCode, counts: &Counts) -> Option<Session> {
    let parsed = async {
        let r = rq.send().await.ok()?;
        if r.status() != want {
            eprintln!("session request answered {}", r.status());
            return None;
        }
        let b: Value = r.json().await.ok()?;
        Some(Session {
            long: b["long_token"].as_str()?.into(),
            short: b["short_token"].as_str()?.into(),
        })
    }
    .await;
    if parsed.is_none() {
        counts.errors.fetch_add(1, Ordering::Relaxed);
    }
    parsed
}

async fn issue(c: &Client, base: &str, uid: &str, counts: &Counts) -> Option<Session> {
    let rq = c
        .post(format!("{base}/v1/admin/sessions"))
        .bearer_auth(ADMIN)
        .json(&json!({ "user_id": uid }));
    let s = session_from(rq, StatusCode::CREATED, counts).await?;
    counts.issues.fetch_add(1, Ordering::Relaxed);
    Some(s)
}

async fn password_login(c: &Client, base: &str, n: usize, counts: &Counts) -> Option<Session> {
    let rq = c
        .post(format!("{base}/v1/login"))
        .json(&json!({ "username": format!("user{n}"), "password": "soak password" }));
    let s = session_from(rq, StatusCode::OK, counts).await?;
    counts.logins.fetch_add(1, Ordering::Relaxed);
    Some(s)
}

/// One worker: its own sessions, `rate` requests per second, open loop
/// pacing (a slow answer does not lower the offered rate for long).
async fn worker(w: usize, base: String, rate: f64, until: Instant, counts: Arc<Counts>) {
    let c = Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut sessions = Vec::new();
    for i in 0..SESSIONS_PER_WORKER {
        if let Some(s) = issue(
            &c,
            &base,
            &format!("user{}", (w * SESSIONS_PER_WORKER + i) % USERS),
            &counts,
        )
        .await
        {
            sessions.push(s);
        }
    }
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut n: u64 = 0;
    while Instant::now() < until {
        next += gap;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        n += 1;
        let i = (n as usize * 7 + w) % sessions.len();
        match n % 100 {
            // Logout, and a new session in its place (trusted issue, or every
            // fifth time a password login: argon2 is the expensive part).
            0..=3 => {
                // Walk through every session over time (the verify index
                // above would only ever pick a few for logout).
                let i = ((n / 100) as usize * 11 + (n % 100) as usize + w) % sessions.len();
                let s = &sessions[i];
                let r = c.post(format!("{base}/v1/logout")).bearer_auth(&s.long).send().await;
                match r {
                    Ok(r) if r.status() == StatusCode::OK => {
                        counts.logouts.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let uid = (n as usize + w) % USERS;
                let fresh = if n.is_multiple_of(500) {
                    password_login(&c, &base, uid, &counts).await
                } else {
                    issue(&c, &base, &format!("user{uid}"), &counts).await
                };
                if let Some(f) = fresh {
                    sessions[i] = f;
                }
            }
            // Verify: mostly with both tokens (short path), some long only
            // (Redis path; rotates sessions older than rotate_interval).
            k => {
                let s = &mut sessions[i];
                let mut rq = c.get(format!("{base}/v1/verify")).bearer_auth(&s.long);
                if k >= 15 {
                    rq = rq.header("x-short-token", &s.short);
                }
                match rq.send().await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        if let Some(t) = r.headers().get("x-short-token").and_then(|v| v.to_str().ok()) {
                            s.short = t.to_string();
                        }
                        if let Some(t) = r.headers().get("x-long-token").and_then(|v| v.to_str().ok()) {
                            s.long = t.to_string();
                            counts.rotations.fetch_add(1, Ordering::Relaxed);
                        }
                        counts.verifies.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("verify failed: {:?}", other.map(|r| r.status()));
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

fn main() {
    let duration = arg("--duration")
        .map(|d| humantime::parse_duration(&d).expect("--duration like 60s or 30m"))
        .unwrap_or(Duration::from_secs(60));
    let rate: f64 = arg("--rate").map(|r| r.parse().expect("--rate N")).unwrap_or(400.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(duration, rate));
}

/// The service under test: `twintoken serve` in its own process.
struct Service {
    child: std::process::Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_service(dir: &std::path::Path, redis_url: &str) -> Service {
    let mut users = twintoken::users::Users::default();
    for i in 0..USERS {
        users.add(&format!("user{i}"), None, "soak password").unwrap();
    }
    users.save(&dir.join("users.toml")).unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN}\"\n\
         [store]\nredis = \"{redis_url}\"\ntimeout = \"200ms\"\n\
         [tokens]\nshort_ttl = \"2s\"\nrotate_interval = \"20s\"\nrotate_grace = \"2s\"\n\
         [login]\nmax_sessions = 100\n[cookies]\nsecure = false\n"
    );
    std::fs::write(dir.join("soak.toml"), config).unwrap();
    let log = dir.join("service.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_twintoken"))
        .args(["serve", "--config", "soak.toml"])
        .current_dir(dir)
        .env("RUST_LOG", "warn,twintoken::app=info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut svc = Service {
        child,
        base: String::new(),
    };
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(rest) = text.split("open http://").nth(1) {
            svc.base = format!("http://{}", rest.split('/').next().unwrap());
            return svc;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "service did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn run(duration: Duration, rate: f64) {
    let redis = redis_server::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path(), &redis.url());
    let pid = service.child.id();
    let base = service.base.clone();
    let probe = Client::new();

    let counts = Arc::new(Counts::default());
    // Warm-up: concurrent password logins, so the service's bounded pool of
    // argon2 buffers (19 MiB each, one per CPU) is allocated before the
    // first sample rather than as a step in the middle of the run.
    let warm = Client::new();
    let logins = (0..4).map(|n| password_login(&warm, &base, n, &counts));
    for s in futures_util::future::join_all(logins).await {
        assert!(s.is_some(), "warm-up login");
    }
    let start = Instant::now();
    let until = start + duration;
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(worker(w, base.clone(), rate / WORKERS as f64, until, counts.clone())))
        .collect();

    let mut conn = redis.conn();
    let every = (duration / 12).max(Duration::from_secs(5));
    let mut samples = Vec::new();
    println!("soak: {duration:?} at {rate} req/s; sampling every {every:?}");
    println!(
        "{:>8} {:>10} {:>9} {:>12} {:>13} {:>7} {:>7} {:>13}",
        "t", "requests", "rss_kib", "redis_used", "revlog_bytes", "keys", "errors", "revoked_cache"
    );
    loop {
        let t = start.elapsed();
        // A sample that cannot be read fails the soak: a 0 would make the
        // bounds below pass by themselves.
        let (used, log, entries, keys) = redis_memory(&mut conn).expect("Redis memory sample");
        let rss = rss_kib(pid).expect("the service's RSS sample");
        let revoked = metric(&probe, &base, "twintoken_revoked_cache_entries")
            .await
            .expect("revoked-cache gauge from /metrics");
        assert!(used > 0 && rss > 0, "samples are real: rss {rss} KiB, redis {used} B");
        assert!(
            entries <= REVOCATION_LOG_CAP + REVOCATION_LOG_CAP / 10,
            "the revocation log stays under its cap: {entries} entries"
        );
        let c = &counts;
        let requests = c.verifies.load(Ordering::Relaxed)
            + c.issues.load(Ordering::Relaxed)
            + c.logins.load(Ordering::Relaxed)
            + c.logouts.load(Ordering::Relaxed);
        println!(
            "{:>7.0}s {:>10} {:>9} {:>12} {:>13} {:>7} {:>7} {:>13}",
            t.as_secs_f64(),
            requests,
            rss,
            used,
            log,
            keys,
            c.errors.load(Ordering::Relaxed),
            revoked
        );
        samples.push((t, rss, used.saturating_sub(log)));
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(every.min(until.saturating_duration_since(Instant::now()) + Duration::from_millis(50)))
            .await;
    }
    for w in workers {
        w.await.unwrap();
    }
    let c = &counts;
    let errors = c.errors.load(Ordering::Relaxed);
    println!(
        "served: {} verifies ({} rotations), {} trusted logins, {} password logins, {} logouts; errors: {errors}",
        c.verifies.load(Ordering::Relaxed),
        c.rotations.load(Ordering::Relaxed),
        c.issues.load(Ordering::Relaxed),
        c.logins.load(Ordering::Relaxed),
        c.logouts.load(Ordering::Relaxed),
    );
    // Flat after warm-up: the least-squares slope over every sample from a
    // quarter of the run on, projected over the whole run. RSS may grow by
    // the revoked-sid cache's entries (bounded at 200 000, kept for
    // long_idle_ttl; printed in the last column) and allocator noise; Redis
    // (without the capped revocation log) by little: sessions are replaced
    // one for one.
    let after: Vec<&(Duration, u64, u64)> = samples.iter().filter(|s| s.0 >= duration / 4).collect();
    assert!(after.len() >= 3, "enough samples after warm-up: {}", after.len());
    let first = after[0];
    let rss_slope = slope(
        &after
            .iter()
            .map(|s| (s.0.as_secs_f64(), s.1 as f64))
            .collect::<Vec<_>>(),
    );
    let redis_slope = slope(
        &after
            .iter()
            .map(|s| (s.0.as_secs_f64(), s.2 as f64))
            .collect::<Vec<_>>(),
    );
    let secs = duration.as_secs_f64();
    println!(
        "after warm-up ({} samples): service rss {} KiB at {:.0}s, slope {rss_slope:+.1} KiB/s ({:+.0} KiB over the run); \
         redis without the revocation log {} B, slope {redis_slope:+.0} B/s ({:+.0} B over the run)",
        after.len(),
        first.1,
        first.0.as_secs_f64(),
        rss_slope * secs,
        first.2,
        redis_slope * secs
    );
    assert_eq!(errors, 0, "no errors");
    assert!(
        rss_slope * secs <= first.1 as f64 / 10.0 + 16.0 * 1024.0,
        "service RSS grows {rss_slope:+.1} KiB/s from {} KiB",
        first.1
    );
    assert!(
        redis_slope * secs <= first.2 as f64 / 20.0 + 1024.0 * 1024.0,
        "Redis memory grows {redis_slope:+.0} B/s from {} B",
        first.2
    );
    assert!(c.rotations.load(Ordering::Relaxed) > 0 || duration < Duration::from_secs(30));
    drop(service);
}
