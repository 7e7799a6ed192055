//! Logouts while Redis is unreachable: 202 pending, refused at once by the
//! node that took them (also after it restarts: the outbox is on disk),
//! applied to Redis and broadcast to every node once Redis answers again.
//! Production router and accept loop, a real redis-server frozen with
//! SIGSTOP.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::Value;
use twintoken::config::Config;

use crate::support::redis_server::RedisServer;
use crate::support::server::TestServer;

struct Session {
    long: String,
}

async fn login(s: &TestServer, user: &str) -> Session {
    let b = s.login_json(user).await;
    Session {
        long: b["long_token"].as_str().unwrap().to_string(),
    }
}

/// A long-only verify: status and path.
async fn verify(s: &TestServer, t: &Session) -> (StatusCode, String) {
    let r = Client::new()
        .get(s.url("/v1/verify"))
        .bearer_auth(&t.long)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let b: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        b["path"].as_str().or(b["error"].as_str()).unwrap_or("").to_string(),
    )
}

async fn post(s: &TestServer, path: &str, t: &Session) -> (StatusCode, Value, Vec<String>) {
    let r = Client::new()
        .post(s.url(path))
        .bearer_auth(&t.long)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let cookies = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(String::from))
        .collect();
    (status, r.json().await.unwrap_or(Value::Null), cookies)
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().count()
}

async fn until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_during_an_outage_is_kept_and_applied_when_redis_returns() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("state").join("pending-revocations");
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url().into()]);
    c.store.timeout = Duration::from_millis(100);
    c.store.outbox = outbox.clone();
    // A keyring outside the servers' own directories: node a restarts.
    c.keys.dir = dir.path().join("keys");
    let a = TestServer::start(c.clone()).await;
    let mut c_b = c.clone();
    c_b.store.outbox = dir.path().join("b-outbox");
    let b = TestServer::start(c_b).await;
    let (alice, alice2, bob, bob2) = (
        login(&a, "alice").await,
        login(&a, "alice").await,
        login(&a, "bob").await,
        login(&b, "bob").await,
    );
    for t in [&alice, &alice2, &bob, &bob2] {
        assert_eq!(verify(&b, t).await.0, StatusCode::OK);
    }

    redis.freeze();
    let (status, body, cookies) = post(&a, "/v1/logout", &alice).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "pending");
    assert!(
        cookies.iter().any(|c| c.starts_with("tt_long=;")) && cookies.iter().any(|c| c.starts_with("tt_short=;")),
        "both cookies cleared: {cookies:?}"
    );
    // Each test server's clock stands still: node a's must be past bob's
    // login on node b for a logout-all to cover it.
    a.clock.advance(Duration::from_secs(1));
    let (status, body, _) = post(&a, "/v1/logout-all", &bob).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(lines(&outbox), 2, "both on disk before the answer");
    // The node that took them refuses at once; the other cannot know yet
    // and accepts on crypto alone (store.fallback = crypto).
    assert_eq!(verify(&a, &alice).await, (StatusCode::UNAUTHORIZED, "revoked".into()));
    assert_eq!(verify(&a, &bob2).await, (StatusCode::UNAUTHORIZED, "revoked".into()));
    assert_eq!(verify(&a, &alice2).await, (StatusCode::OK, "fallback".into()));
    assert_eq!(verify(&b, &alice).await, (StatusCode::OK, "fallback".into()));
    let m = Client::new()
        .get(a.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("twintoken_pending_revocations 2"), "gauge");

    // Node a restarts while Redis is still unreachable: it reads the outbox
    // back and keeps refusing.
    drop(a);
    let a = TestServer::start(c).await;
    assert_eq!(verify(&a, &alice).await, (StatusCode::UNAUTHORIZED, "revoked".into()));
    assert_eq!(verify(&a, &bob).await, (StatusCode::UNAUTHORIZED, "revoked".into()));
    // A node started during an outage guesses nothing for the others.
    assert_eq!(
        verify(&a, &alice2).await,
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable".into())
    );

    redis.thaw();
    let took = until("the pending logouts reach node b", Duration::from_secs(5), async || {
        verify(&b, &alice).await.0 == StatusCode::UNAUTHORIZED && verify(&b, &bob2).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    println!("pending logouts applied and heard by the other node {took:?} after Redis returned");
    assert_eq!(lines(&outbox), 0, "applied revocations leave the outbox");
    // Redis has them: strict verifies (store only) refuse them everywhere;
    // the session that was not logged out lives on.
    for node in [&a, &b] {
        for (t, want) in [(&alice, 401), (&bob, 401), (&bob2, 401), (&alice2, 200)] {
            let r = Client::new()
                .get(node.url("/v1/verify?strict=true"))
                .bearer_auth(&t.long)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let b: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(status, want, "{} {b}", node.base);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_outbox_a_logout_during_an_outage_answers_503_and_changes_nothing() {
    let redis = RedisServer::start();
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url().into()]);
    c.store.timeout = Duration::from_millis(100);
    let a = TestServer::start(c).await;
    let alice = login(&a, "alice").await;
    redis.freeze();
    let (status, body, cookies) = post(&a, "/v1/logout", &alice).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(cookies.is_empty(), "cookies kept: the session lives on");
    assert_eq!(verify(&a, &alice).await, (StatusCode::OK, "fallback".into()));
    redis.thaw();
}

#[test]
fn a_damaged_outbox_stops_the_start_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox");
    std::fs::write(&path, "not json\n{\"uid\":\"a\",\"at\":1}\n").unwrap();
    let e = twintoken::verify::Outbox::open(&path)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains(&path.display().to_string()) && e.contains("line 1"), "{e}");
}
