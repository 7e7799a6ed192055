//! Regression tests for the second outside review's findings, one test per
//! finding, against the production router and accept loop on a listening
//! socket and a real redis-server.

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use twintoken::config::Config;

use crate::support::redis_server::RedisServer;
use crate::support::server::TestServer;

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A client that speaks HTTP/2 (prior knowledge, cleartext): one
/// connection, and dropping a request's future resets its stream
/// (`RST_STREAM`).
fn h2_client() -> Client {
    Client::builder().http2_prior_knowledge().build().unwrap()
}

async fn code_of(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let b: Value = r.json().await.unwrap_or(Value::Null);
    (status, b["error"].as_str().unwrap_or("").to_string())
}

/// A server on `redis` under `store.fallback = crypto` whose revocation
/// feed has caught up (so the fallback would accept on crypto alone).
async fn crypto_fallback_server(redis: &RedisServer, timeout: Duration) -> TestServer {
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url()]);
    c.store.timeout = timeout;
    let s = TestServer::start(c).await;
    let start = Instant::now();
    while !s.state().verifier.caught_up() {
        assert!(start.elapsed() < Duration::from_secs(5), "revocation feed caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s
}

/// Logs alice in and ends the session behind the node's back (the whole
/// user key deleted in Redis: no revocation reaches any revoked cache,
/// as when a logout's broadcast was forgotten): only the store knows.
async fn ended_session(s: &TestServer, redis: &RedisServer) -> String {
    let login = s.login_json("alice").await;
    let long = login["long_token"].as_str().unwrap().to_string();
    let r = client()
        .get(s.url("/v1/verify"))
        .bearer_auth(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "live before it ends");
    let _: () = redis::cmd("DEL").arg("tt:{1001}").query(&mut redis.conn()).unwrap();
    long
}

/// One HTTP/1.1 race: the leader's request is written on one connection,
/// the follower's on another, then the leader's connection is reset (RST)
/// while its store call is in flight. The follower's status line.
async fn h1_race(addr: &str, path: &str, long: &str, hold: Option<&RedisServer>) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {long}\r\n\r\n");
    let mut leader = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut follower = tokio::net::TcpStream::connect(addr).await.unwrap();
    if let Some(r) = hold {
        r.freeze();
    }
    leader.write_all(request.as_bytes()).await.unwrap();
    if hold.is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    follower.write_all(request.as_bytes()).await.unwrap();
    if hold.is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    leader.set_zero_linger().unwrap();
    drop(leader);
    if let Some(r) = hold {
        tokio::time::sleep(Duration::from_millis(50)).await;
        r.thaw();
    }
    let mut status = String::new();
    tokio::io::BufReader::new(follower).read_line(&mut status).await.unwrap();
    status
}

/// One HTTP/2 race on one connection: the leader's stream is reset
/// (`RST_STREAM`) while its store call is in flight. The follower's status.
async fn h2_race(h2: &Client, url: &str, long: &str, hold: Option<&RedisServer>) -> StatusCode {
    if let Some(r) = hold {
        r.freeze();
    }
    let leader = tokio::spawn(h2.get(url).bearer_auth(long).send());
    if hold.is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        tokio::task::yield_now().await;
    }
    let follower = tokio::spawn(h2.get(url).bearer_auth(long).send());
    if hold.is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        tokio::task::yield_now().await;
    }
    leader.abort();
    if let Some(r) = hold {
        tokio::time::sleep(Duration::from_millis(50)).await;
        r.thaw();
    }
    follower.await.unwrap().unwrap().status()
}

/// Finding 1 (high): a request sharing another request's store call (single
/// flight) whose leader was cancelled (TCP RST on HTTP/1.1, `RST_STREAM` on
/// HTTP/2) took the missing answer for an outage and accepted an ended
/// session on the crypto fallback while Redis was healthy; `GET
/// /v1/sessions` then listed the user's sessions to the ended token. Now a
/// waiter whose leader vanished asks the store itself. First with Redis held
/// while the leader is reset (the race won every time), then 500 free races
/// per protocol as an attacker runs them: 0 accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_never_makes_another_accept_an_ended_session() {
    let redis = RedisServer::start();
    let s = crypto_fallback_server(&redis, Duration::from_secs(3)).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let h2 = h2_client();
    for path in ["/v1/verify", "/v1/sessions"] {
        let long = ended_session(&s, &redis).await;
        let status = h1_race(&addr, path, &long, Some(&redis)).await;
        assert!(status.starts_with("HTTP/1.1 401"), "HTTP/1.1 {path}, held: {status}");
        let long = ended_session(&s, &redis).await;
        let status = h2_race(&h2, &s.url(path), &long, Some(&redis)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "HTTP/2 {path}, held");
    }
    let long = ended_session(&s, &redis).await;
    let mut accepted = (0, 0);
    for i in 0..500 {
        let path = if i % 5 == 0 { "/v1/sessions" } else { "/v1/verify" };
        let status = h1_race(&addr, path, &long, None).await;
        assert!(status.starts_with("HTTP/1.1 "), "{status:?}");
        accepted.0 += usize::from(!status.starts_with("HTTP/1.1 401"));
        let status = h2_race(&h2, &s.url(path), &long, None).await;
        accepted.1 += usize::from(status != StatusCode::UNAUTHORIZED);
    }
    assert_eq!(accepted, (0, 0), "ended session accepted in 500 races (HTTP/1.1, HTTP/2)");
    let r = client().get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "Redis stayed healthy throughout");
}
