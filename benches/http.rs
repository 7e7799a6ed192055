//! HTTP throughput: the shipped `/v1/verify` (production router, middleware
//! and accept loop) answering a cookie client's two cookies, against a bare
//! handler that returns the same headers and body without verifying
//! anything, served by plain `axum::serve` (what a user compares with) and
//! by our accept loop (what the loop costs). Load from outside the process:
//! `wrk -t1 -c64` (installed by scripts/test; without it, in-process
//! clients), runs interleaved so drift hits all alike, medians.
//!
//! Then the same requests in process (no network): the twintoken router
//! and the bare one called directly, and the verifier's share, so the gap
//! can be split into crypto and HTTP work.
//!
//! `cargo bench --bench http`; without `--bench` (under `cargo test`) a
//! short smoke run.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use twintoken::config::Config;
use twintoken::http::router;
use twintoken::time::{Clock, SystemClock};
use twintoken::tokens::UserId;

/// The same answer as twintoken's short path: the same five headers (plus
/// axum's content type) and the same JSON body, built the way a plain axum
/// handler would build it.
async fn bare() -> axum::response::Response {
    (
        [
            ("x-user-id", "10000042"),
            ("x-session-id", "u6MkBXy46sAQciSOhwoJpA"),
            ("x-auth-path", "short"),
            ("x-auth-time", "1796158186"),
            ("cache-control", "no-store"),
        ],
        axum::Json(serde_json::json!({
            "user_id": "10000042",
            "session_id": "u6MkBXy46sAQciSOhwoJpA",
            "path": "short",
            "auth_time": 1796158186u64,
        })),
    )
        .into_response()
}

/// Requests per second over `dur` with `conc` concurrent clients. Any
/// answer but 200 (or a transport error) fails the benchmark: a throughput
/// of failures is no figure.
async fn run(http: &reqwest::Client, url: &str, short: Option<&str>, conc: usize, dur: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (http, url, done) = (http.clone(), url.to_string(), done.clone());
        let short = short.map(str::to_string);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let mut rq = http.get(&url);
                if let Some(s) = &short {
                    rq = rq.header("x-short-token", s);
                }
                let r = rq.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
                assert_eq!(r.status(), 200, "{url} answered {}", r.status());
                r.bytes().await.unwrap_or_else(|e| panic!("{url}: {e}"));
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("a load task failed: {e}"));
    }
    let rate = done.load(Ordering::Relaxed) as f64 / dur.as_secs_f64();
    assert!(rate > 0.0, "{url}: no request answered in {dur:?}");
    rate
}

/// Requests per second of `wrk -t1 -c64` against `url` for `dur`, sending
/// `cookie`; `None` when wrk is not installed. Non-2xx answers fail the
/// benchmark.
fn wrk(url: &str, cookie: &str, dur: Duration) -> Option<f64> {
    let out = std::process::Command::new("wrk")
        .args(["-t1", "-c64", &format!("-d{}s", dur.as_secs().max(1)), "-H"])
        .arg(format!("Cookie: {cookie}"))
        .arg(url)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(!text.contains("Non-2xx"), "{url} answered errors under load: {text}");
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output: {text}"));
    assert!(rate > 0.0, "{url}: no request answered");
    Some(rate)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, dur) = if full {
        (5, Duration::from_secs(3))
    } else {
        (1, Duration::from_secs(1))
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = Config::for_test();
    let service = common::service(config, dir.path()).await;
    let uid = UserId::new("10000042").unwrap_or_else(|e| panic!("{e}"));
    let t = service
        .state
        .verifier
        .login(uid, None, None, SystemClock.now())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let c = &service.state.config.cookies;
    let cookie = format!(
        "{}={}; {}={}",
        c.long_name(),
        t.long.token,
        c.short_name(),
        t.short.token
    );
    let bare_app = || axum::Router::new().route("/v1/verify", axum::routing::any(bare));
    // The shipped server: production router, middleware and accept loop.
    let ours = format!(
        "http://{}/v1/verify",
        common::serve(router(service.state.clone())).await
    );
    // A user's comparison: plain axum::serve with the same response.
    let plain = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move { axum::serve(l, bare_app()).await });
        format!("http://{addr}/v1/verify")
    };
    // The same bare handler through our accept loop: what the loop costs.
    let own_loop = format!("http://{}/v1/verify", common::serve(bare_app()).await);

    let targets = [
        ("twintoken", &ours),
        ("bare axum::serve", &plain),
        ("bare, own accept loop", &own_loop),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut tool = "wrk -t1 -c64, two cookies";
    for _ in 0..rounds {
        for (i, (_, url)) in targets.iter().enumerate() {
            let (url, cookie) = (url.to_string(), cookie.clone());
            let r = tokio::task::spawn_blocking(move || wrk(&url, &cookie, dur))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let r = match r {
                Some(r) => r,
                None => {
                    // No wrk here: the in-process closed loop, short token header.
                    tool = "in-process clients (wrk not installed), 16 concurrent, X-Short-Token";
                    let http = reqwest::Client::builder()
                        .pool_max_idle_per_host(64)
                        .build()
                        .unwrap_or_else(|e| panic!("{e}"));
                    run(&http, targets[i].1, Some(&t.short.token), 16, dur).await
                }
            };
            rates[i].push(r);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    let m: Vec<f64> = rates.iter_mut().map(med).collect();
    println!(
        "/v1/verify, {rounds} interleaved rounds of {:.0}s, {tool}:",
        dur.as_secs_f64()
    );
    for ((name, _), (v, med)) in targets.iter().zip(rates.iter().zip(&m)) {
        println!(
            "  {name:<22} median {med:>8.0} req/s  runs {:?}",
            v.iter().map(|x| x.round()).collect::<Vec<_>>()
        );
    }
    println!(
        "ratios: twintoken / bare axum::serve {:.3}; twintoken / bare on our accept loop {:.3}; our loop / axum::serve {:.3}",
        m[0] / m[1],
        m[0] / m[2],
        m[2] / m[1]
    );

    // Where twintoken's extra time per request goes, without the network:
    // each router called in process (one thread, repeatable to a few ns),
    // and the verifier's share of it.
    let n = if full { 200_000 } else { 2_000 };
    let request = || {
        let mut r = axum::http::Request::get("/v1/verify")
            .header("host", "127.0.0.1")
            .header("cookie", &cookie)
            .body(axum::body::Body::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        r.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                4000,
            ))));
        r
    };
    let per_request = |start: Instant| start.elapsed().as_nanos() as f64 / n as f64;
    let mut ns = Vec::new();
    for app in [router(service.state.clone()), bare_app()] {
        let mut svc = app.into_service::<axum::body::Body>();
        let start = Instant::now();
        for _ in 0..n {
            use tower::{Service, ServiceExt};
            let ready = svc.ready().await.unwrap_or_else(|e| match e {});
            let resp = ready.call(request()).await.unwrap_or_else(|e| match e {});
            assert_eq!(resp.status(), 200);
            let body = axum::body::to_bytes(resp.into_body(), 4096)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            std::hint::black_box(body);
        }
        ns.push(per_request(start));
    }
    let v = &service.state.verifier;
    let now = SystemClock.now();
    let (short, long) = (Some(t.short.token.as_str()), Some(t.long.token.as_str()));
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(v.verify(short, long, now).await.unwrap_or_else(|e| panic!("{e}")));
    }
    let verify = per_request(start);
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(
            v.keys()
                .open_short(&t.short.token, now)
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let memo = per_request(start);
    let set = v.keys().snapshot();
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(
            twintoken::tokens::open_short(&*set, &t.short.token, now).unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let open_short = per_request(start);
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(v.keys().long_binding(&t.long.token, now));
    }
    let binding = per_request(start);
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(v.keys().peek_long_sid(&t.long.token));
    }
    let peek = per_request(start);
    println!(
        "in process, {n} requests: twintoken router {:.0} ns, bare router {:.0} ns, difference {:.0} ns, \
         of which Verifier::verify {verify:.0} ns (short token from the memo {memo:.0} ns, long token's binding {binding:.0} ns); \
         for comparison: a short token opened without the memo {open_short:.0} ns, the long token's session id decrypted {peek:.0} ns",
        ns[0],
        ns[1],
        ns[0] - ns[1]
    );
    assert!(ns[0] > 0.0 && ns[1] > 0.0 && verify > 0.0, "no time measured");
}
