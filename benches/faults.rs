//! Fault-injection latency benchmark: twintoken against the classic
//! "stored token" design (random token -> one Redis GET per request), under
//! the same open-loop load, behind the same delaying TCP proxy, in the same
//! run, through these phases of equal length:
//! healthy, +5 ms, +50 ms, blackhole (SIGSTOP), down (SIGKILL), restart
//! (AOF on, so sessions survive), healthy again.
//!
//! Two client populations per system: clients carrying both tokens (mostly
//! the short path) and clients carrying only the long token (always the
//! store path). Offered load is open loop: requests are sent on a fixed
//! schedule whatever the answers, and latency counts from the scheduled
//! time, so a stall cannot hide behind coordinated omission.
//!
//! `cargo bench --bench faults` (phases of 5 s) or `-- --quick` (1 s; also
//! what `cargo test --all-targets` runs). Writes a table to stdout and
//! docs/bench/faults.json + docs/bench/faults.svg (full runs only).

#[path = "../tests/it/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

#[path = "common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use redis::aio::ConnectionManager;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use twintoken::config::{Config, Fallback};
use twintoken::http::router;
use twintoken::time::SystemClock;
use twintoken::tokens::UserId;

const STORE_TIMEOUT: Duration = Duration::from_millis(25);
const SYSTEMS: [&str; 2] = ["twintoken", "baseline"];
const POPS: [&str; 2] = ["short+long", "long-only"];
const PHASES: [&str; 7] = [
    "healthy",
    "+5ms",
    "+50ms",
    "blackhole",
    "down",
    "restart",
    "healthy-again",
];

/// A TCP proxy that delays every chunk from the server by `delay_ms`, as a
/// delay line: each chunk is stamped on arrival and released at arrival +
/// delay, so the added latency does not serialise a multiplexed connection
/// (no head-of-line queueing the harness itself would cause).
async fn delay_proxy(listener: TcpListener, upstream: SocketAddr, delay_ms: Arc<AtomicU64>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let delay = delay_ms.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let up = tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
            let writer = tokio::spawn(async move {
                while let Some((release, chunk)) = rx.recv().await {
                    tokio::time::sleep_until(release.into()).await;
                    if cw.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            });
            let mut buf = vec![0u8; 16384];
            while let Ok(n) = sr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let release = Instant::now() + Duration::from_millis(delay.load(Ordering::Relaxed));
                if tx.send((release, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            drop(tx);
            let _ = writer.await;
            up.abort();
        });
    }
}

/// The baseline: the token is a random string; one GET per request.
#[derive(Clone)]
struct Baseline {
    conn: ConnectionManager,
}

async fn baseline_verify(State(b): State<Baseline>, headers: HeaderMap) -> axum::response::Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let mut c = b.conn.clone();
    let mut cmd = redis::cmd("GET");
    cmd.arg(format!("bl:{token}"));
    let get = cmd.query_async::<Option<String>>(&mut c);
    match tokio::time::timeout(STORE_TIMEOUT, get).await {
        Ok(Ok(Some(uid))) => ([("x-user-id", uid), ("x-auth-path", "store".to_string())], "ok").into_response(),
        Ok(Ok(None)) => StatusCode::UNAUTHORIZED.into_response(),
        _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// One answered (or failed) request.
#[derive(Clone, Copy)]
struct Sample {
    system: usize,
    pop: usize,
    /// Scheduled send time, µs since the start of the load.
    at_us: u64,
    latency_us: u64,
    ok: bool,
    /// 0 short, 1 long, 2 fallback, 3 baseline store, 4 none.
    path: u8,
}

fn path_code(h: &reqwest::header::HeaderMap) -> u8 {
    match h.get("x-auth-path").and_then(|v| v.to_str().ok()) {
        Some("short") => 0,
        Some("long") => 1,
        Some("fallback") => 2,
        Some("store") => 3,
        _ => 4,
    }
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[(((v.len() - 1) as f64) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = !std::env::args().any(|a| a == "--bench") || std::env::args().any(|a| a == "--quick");
    let phase_len = if quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let rate: u64 = if quick { 100 } else { 300 }; // requests/s per system and population
    let users = 200usize;

    // Redis with AOF, behind the delaying proxy.
    let mut redis_srv = tokio::task::spawn_blocking(|| {
        redis_server::RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "everysec"])
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let delay = Arc::new(AtomicU64::new(0));
    let proxy_l = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let proxy_addr = proxy_l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let upstream: SocketAddr = format!("127.0.0.1:{}", redis_srv.port)
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(delay_proxy(proxy_l, upstream, delay.clone()));
    let redis_url = format!("redis://{proxy_addr}/");

    // twintoken, in-process, on a real socket.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut config = Config::for_test();
    config.store.redis = Some(vec![redis_url.clone().into()]);
    config.store.timeout = STORE_TIMEOUT;
    config.store.fallback = Fallback::Crypto;
    let service = common::service(config, dir.path()).await;
    let tt_addr = common::serve(router(service.state.clone())).await;

    // The baseline, on the same Redis through the same proxy.
    let client = redis::Client::open(redis_url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let conn = ConnectionManager::new(client).await.unwrap_or_else(|e| panic!("{e}"));
    let bl_addr = common::serve(
        axum::Router::new()
            .route("/verify", axum::routing::any(baseline_verify))
            .with_state(Baseline { conn: conn.clone() }),
    )
    .await;

    // Sessions: the same users in both systems.
    let v = service.state.verifier.clone();
    while !v.caught_up() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut tt_tokens = Vec::new();
    let mut bl_tokens = Vec::new();
    let mut c = conn.clone();
    for i in 0..users {
        let uid = UserId::new(&format!("{}", 10_000_000 + i)).unwrap_or_else(|e| panic!("{e}"));
        let t = v
            .login(uid, None, None, twintoken::time::Clock::now(&SystemClock))
            .await
            .unwrap_or_else(|e| panic!("login: {e}"));
        tt_tokens.push((t.short.token, t.long.token));
        let mut b = [0u8; 24];
        getrandom::fill(&mut b).unwrap_or_else(|e| panic!("{e}"));
        let tok: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let _: () = redis::cmd("SET")
            .arg(format!("bl:{tok}"))
            .arg(uid.as_str())
            .arg("PX")
            .arg(7_200_000)
            .query_async(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        bl_tokens.push(tok);
    }
    // Let AOF reach the disk before anything is killed.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .pool_max_idle_per_host(256)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let total = phase_len * PHASES.len() as u32;
    let tt_tokens = Arc::new(tt_tokens);
    let bl_tokens = Arc::new(bl_tokens);

    // Open-loop schedulers: one per system and population.
    let mut schedulers = Vec::new();
    for system in 0..2 {
        for pop in 0..2 {
            let (http, samples, tt_tokens, bl_tokens) =
                (http.clone(), samples.clone(), tt_tokens.clone(), bl_tokens.clone());
            schedulers.push(tokio::spawn(async move {
                let every = Duration::from_micros(1_000_000 / rate);
                let mut n: u64 = 0;
                loop {
                    let due = Duration::from_micros(every.as_micros() as u64 * n);
                    if due >= total {
                        break;
                    }
                    tokio::time::sleep_until((start + due).into()).await;
                    let i = (n as usize * 7 + pop * 13) % users;
                    let rq = if system == 0 {
                        let (short, long) = &tt_tokens[i];
                        let rq = http.get(format!("http://{tt_addr}/v1/verify")).bearer_auth(long);
                        if pop == 0 {
                            rq.header("x-short-token", short)
                        } else {
                            rq
                        }
                    } else {
                        http.get(format!("http://{bl_addr}/verify")).bearer_auth(&bl_tokens[i])
                    };
                    let samples = samples.clone();
                    tokio::spawn(async move {
                        let r = rq.send().await;
                        let latency_us = (start + due).elapsed().as_micros() as u64;
                        let (ok, path) = match &r {
                            Ok(resp) => (resp.status() == 200, path_code(resp.headers())),
                            Err(_) => (false, 4),
                        };
                        if let Ok(mut s) = samples.lock() {
                            s.push(Sample {
                                system,
                                pop,
                                at_us: due.as_micros() as u64,
                                latency_us,
                                ok,
                                path,
                            });
                        }
                    });
                    n += 1;
                }
            }));
        }
    }

    // The fault script.
    let mut boundaries = Vec::new();
    for (i, name) in PHASES.iter().enumerate() {
        boundaries.push(start.elapsed());
        match *name {
            "healthy" | "healthy-again" => delay.store(0, Ordering::Relaxed),
            "+5ms" => delay.store(5, Ordering::Relaxed),
            "+50ms" => delay.store(50, Ordering::Relaxed),
            "blackhole" => {
                delay.store(0, Ordering::Relaxed);
                redis_srv.freeze();
            }
            "down" => redis_srv.kill(),
            "restart" => {
                redis_srv = tokio::task::spawn_blocking(move || {
                    redis_srv.restart();
                    redis_srv
                })
                .await
                .unwrap_or_else(|e| panic!("{e}"))
            }
            _ => {}
        }
        let end = start + phase_len * (i as u32 + 1);
        while Instant::now() < end {
            let sent = samples.lock().map(|s| s.len()).unwrap_or(0);
            eprint!(
                "\r[{:>2}/{}] {:<14} {:>5.1}s  {:>7} answers ",
                i + 1,
                PHASES.len(),
                name,
                start.elapsed().as_secs_f64(),
                sent
            );
            tokio::time::sleep(Duration::from_millis(200).min(end.saturating_duration_since(Instant::now()))).await;
        }
    }
    for s in schedulers {
        s.await.unwrap_or_else(|e| panic!("a load scheduler failed: {e}"));
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // let the last requests finish
    eprintln!();
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let phase_us = phase_len.as_micros() as u64;

    // The table.
    let mut out = String::new();
    let mut json_rows = Vec::new();
    let _ = writeln!(
        out,
        "offered load: {rate} req/s per system and population; phases of {}s; store timeout {}ms; Redis behind a delaying proxy",
        phase_len.as_secs(),
        STORE_TIMEOUT.as_millis()
    );
    let _ = writeln!(
        out,
        "{:<14} {:<10} {:<11} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6} {:>6}",
        "phase",
        "system",
        "clients",
        "n",
        "success",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "short",
        "long",
        "fallbk",
        "store"
    );
    for (pi, phase) in PHASES.iter().enumerate() {
        for (system, system_name) in SYSTEMS.iter().enumerate() {
            for (pop, pop_name) in POPS.iter().enumerate() {
                let rows: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| s.system == system && s.pop == pop && (s.at_us / phase_us) as usize == pi)
                    .collect();
                let n = rows.len().max(1) as f64;
                let mut lat: Vec<u64> = rows.iter().map(|s| s.latency_us).collect();
                let ok = rows.iter().filter(|s| s.ok).count() as f64 / n * 100.0;
                let share = |c: u8| rows.iter().filter(|s| s.ok && s.path == c).count() as f64 / n * 100.0;
                // Within the phase: the first second, and after it.
                let first: Vec<u64> = rows
                    .iter()
                    .filter(|s| s.at_us % phase_us < 1_000_000)
                    .map(|s| s.latency_us)
                    .collect();
                let later: Vec<u64> = rows
                    .iter()
                    .filter(|s| s.at_us % phase_us >= 1_000_000)
                    .map(|s| s.latency_us)
                    .collect();
                let (p50, p99, p999, max) = (
                    pct(&mut lat, 0.5),
                    pct(&mut lat, 0.99),
                    pct(&mut lat, 0.999),
                    pct(&mut lat, 1.0),
                );
                let ms = |us: u64| us as f64 / 1000.0;
                let _ = writeln!(
                    out,
                    "{:<14} {:<10} {:<11} {:>6} {:>7.2}% {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>6.1}% {:>5.1}% {:>5.1}% {:>5.1}%",
                    phase,
                    system_name,
                    pop_name,
                    rows.len(),
                    ok,
                    ms(p50),
                    ms(p99),
                    ms(p999),
                    ms(max),
                    share(0),
                    share(1),
                    share(2),
                    share(3)
                );
                json_rows.push(serde_json::json!({
                    "phase": phase, "system": system_name, "clients": pop_name, "n": rows.len(),
                    "success_pct": ok, "p50_ms": ms(p50), "p99_ms": ms(p99), "p999_ms": ms(p999), "max_ms": ms(max),
                    "p999_first_second_ms": ms(pct(&mut first.clone(), 0.999)), "p999_after_first_second_ms": ms(pct(&mut later.clone(), 0.999)),
                    "share_short_pct": share(0), "share_long_pct": share(1), "share_fallback_pct": share(2), "share_store_pct": share(3),
                }));
            }
        }
    }
    println!("{out}");
    // What the benchmark claims, checked in both modes: twintoken answers at
    // least 99 % of requests for valid sessions in every phase and
    // population (and every phase and population was actually measured).
    let mut missed = Vec::new();
    for (pi, phase) in PHASES.iter().enumerate() {
        for (pop, pop_name) in POPS.iter().enumerate() {
            let rows: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.system == 0 && s.pop == pop && (s.at_us / phase_us) as usize == pi)
                .collect();
            let ok = rows.iter().filter(|s| s.ok).count();
            if rows.is_empty() || (ok as f64) < 0.99 * rows.len() as f64 {
                missed.push(format!("{phase}/{pop_name}: {ok} of {} answered", rows.len()));
            }
        }
    }
    let verdict = |missed: &[String]| {
        if !missed.is_empty() {
            eprintln!(
                "twintoken answered fewer than 99 % of valid requests in: {}",
                missed.join("; ")
            );
            std::process::exit(1);
        }
    };
    if quick {
        let failures = samples.iter().filter(|s| s.system == 0 && !s.ok).count();
        println!(
            "quick run: {} answers; twintoken failures: {failures} (figures are written by the full run only)",
            samples.len()
        );
        drop(redis_srv); // exit skips destructors: stop redis-server first
        verdict(&missed);
        return;
    }
    let doc = serde_json::json!({
        "machine": "2 vCPU, 24 GiB (the project's standard machine)",
        "rate_per_system_and_population": rate, "phase_seconds": phase_len.as_secs(),
        "store_timeout_ms": STORE_TIMEOUT.as_millis() as u64, "rows": json_rows,
    });
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/bench");
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(
        format!("{dir}/faults.json"),
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    );
    let _ = std::fs::write(format!("{dir}/faults.txt"), &out);
    let _ = std::fs::write(
        format!("{dir}/faults.svg"),
        svg(&samples, phase_us, total.as_micros() as u64),
    );
    println!("wrote docs/bench/faults.json, faults.txt and faults.svg");
    drop(redis_srv);
    verdict(&missed);
}

/// Latency over time (p99 per 100 ms, log scale), one line per system and
/// population, phases shaded.
fn svg(samples: &[Sample], phase_us: u64, total_us: u64) -> String {
    let (w, h, left, top, bottom) = (1000.0, 460.0, 70.0, 30.0, 60.0);
    let plot_w = w - left - 20.0;
    let plot_h = h - top - bottom;
    let x = |us: u64| left + plot_w * us as f64 / total_us as f64;
    // y: log10(ms) from 0.1 ms to 3000 ms.
    let y = |us: u64| {
        let ms = (us as f64 / 1000.0).clamp(0.1, 3000.0);
        top + plot_h * (1.0 - (ms.log10() + 1.0) / (3000f64.log10() + 1.0))
    };
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    s.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, name) in PHASES.iter().enumerate() {
        let (x0, x1) = (x(i as u64 * phase_us), x((i as u64 + 1) * phase_us));
        let fill = if i % 2 == 0 { "#f2f2f2" } else { "#e6e6e6" };
        let _ = write!(
            s,
            r#"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{plot_h}" fill="{fill}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{name}</text>"#,
            x1 - x0,
            (x0 + x1) / 2.0,
            top - 8.0
        );
        // Success rate per system in this phase, at the bottom of the band.
        for system in 0..2 {
            let rows: Vec<&Sample> = samples
                .iter()
                .filter(|p| p.system == system && (p.at_us / phase_us) as usize == i)
                .collect();
            let ok = rows.iter().filter(|p| p.ok).count() as f64 / rows.len().max(1) as f64 * 100.0;
            let color = if system == 0 { "#1f77b4" } else { "#d62728" };
            let label = if system == 0 { "twintoken" } else { "baseline" };
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{color}">{label} {ok:.0}% ok</text>"#,
                (x0 + x1) / 2.0,
                top + plot_h - 22.0 + 14.0 * system as f64
            );
        }
    }
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0] {
        let yy = y((ms * 1000.0) as u64);
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#bbb" stroke-dasharray="3,3"/><text x="{:.1}" y="{:.1}" text-anchor="end">{ms} ms</text>"##,
            left + plot_w,
            left - 6.0,
            yy + 4.0
        );
    }
    let colors = [["#1f77b4", "#17becf"], ["#d62728", "#ff7f0e"]];
    let bucket = 100_000u64;
    for (system, system_colors) in colors.iter().enumerate() {
        for (pop, color) in system_colors.iter().enumerate() {
            let mut pts = Vec::new();
            let mut t = 0;
            while t < total_us {
                let mut v: Vec<u64> = samples
                    .iter()
                    .filter(|p| p.system == system && p.pop == pop && p.at_us >= t && p.at_us < t + bucket)
                    .map(|p| p.latency_us)
                    .collect();
                if !v.is_empty() {
                    pts.push(format!("{:.1},{:.1}", x(t + bucket / 2), y(pct(&mut v, 0.99))));
                }
                t += bucket;
            }
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/>"#,
                color,
                pts.join(" ")
            );
        }
    }
    for (i, (system, pop)) in [(0, 0), (0, 1), (1, 0), (1, 1)].iter().enumerate() {
        let lx = left + 10.0 + 215.0 * i as f64;
        let ly = h - 20.0;
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{:.1}" width="14" height="4" fill="{}"/><text x="{:.1}" y="{ly}">{} {}</text>"#,
            ly - 5.0,
            colors[*system][*pop],
            lx + 20.0,
            SYSTEMS[*system],
            POPS[*pop]
        );
    }
    let _ = write!(
        s,
        r#"<text x="{left}" y="{:.1}">p99 latency per 100 ms, log scale; baseline answers at ~28 ms are failures (503 after the 25 ms store timeout)</text>"#,
        h - 38.0
    );
    s.push_str("</svg>");
    s
}
