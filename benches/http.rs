//! HTTP throughput: `/v1/verify` answering from short tokens, against a bare
//! axum handler that returns the same headers and body without verifying
//! anything, both served in this process and measured the same way: a
//! closed loop of concurrent keep-alive clients for a fixed time, runs
//! interleaved (ours, bare, ours, bare, …) so drift hits both alike.
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

async fn bare() -> axum::response::Response {
    (
        [
            ("x-user-id", "10000042"),
            ("x-session-id", "u6MkBXy46sAQciSOhwoJpA"),
            ("x-auth-path", "short"),
            ("cache-control", "no-store"),
        ],
        axum::Json(
            serde_json::json!({ "user_id": "10000042", "session_id": "u6MkBXy46sAQciSOhwoJpA", "path": "short" }),
        ),
    )
        .into_response()
}

/// Requests per second over `dur` with `conc` concurrent clients.
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
                match rq.send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / dur.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, dur) = if full {
        (5, Duration::from_secs(3))
    } else {
        (1, Duration::from_millis(300))
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
    let ours = format!(
        "http://{}/v1/verify",
        common::serve(router(service.state.clone())).await
    );
    let bare_url = format!(
        "http://{}/v1/verify",
        common::serve(axum::Router::new().route("/v1/verify", axum::routing::any(bare))).await
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    // Warm both.
    run(&http, &ours, Some(&t.short.token), 16, Duration::from_millis(200)).await;
    run(&http, &bare_url, None, 16, Duration::from_millis(200)).await;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(run(&http, &ours, Some(&t.short.token), 16, dur).await);
        b.push(run(&http, &bare_url, None, 16, dur).await);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    let (ma, mb) = (med(&mut a), med(&mut b));
    println!(
        "runs of {:.1}s, 16 concurrent keep-alive clients, in-process load generator (2 vCPU shared)",
        dur.as_secs_f64()
    );
    println!(
        "twintoken /v1/verify (short token): {:?} req/s",
        a.iter().map(|x| x.round()).collect::<Vec<_>>()
    );
    println!(
        "bare axum handler:                  {:?} req/s",
        b.iter().map(|x| x.round()).collect::<Vec<_>>()
    );
    println!(
        "medians: twintoken {ma:.0} req/s, bare {mb:.0} req/s, ratio {:.3}",
        ma / mb
    );
}
