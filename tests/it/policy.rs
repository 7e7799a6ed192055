//! Session policy (DESIGN section 6, issue 15): what product teams ask of a
//! login-state service beyond "who is this?".

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use twintoken::config::Config;
use twintoken::users::Users;

use crate::support::redis_server::RedisServer;
use crate::support::server::TestServer;

struct Session {
    long: String,
    short: String,
}

async fn login(s: &TestServer, user: &str) -> Session {
    let r = reqwest::Client::new()
        .post(s.url("/v1/login"))
        .json(&json!({ "username": user, "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let b: Value = r.json().await.unwrap();
    Session {
        long: b["long_token"].as_str().unwrap().into(),
        short: b["short_token"].as_str().unwrap().into(),
    }
}

/// The status of a verify with the long token alone (`short: None`, the
/// store is asked) or with both (the short token answers when valid).
async fn verify(s: &TestServer, t: &Session, short: bool) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new().get(s.url("/v1/verify")).bearer_auth(&t.long);
    if short {
        r = r.header("x-short-token", &t.short);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn set_disabled(s: &TestServer, name: &str, disabled: bool) {
    let path = &s.state().config.users.file;
    let mut users = Users::load(path).unwrap();
    if disabled {
        users.disable(name).unwrap();
    } else {
        users.enable(name).unwrap();
    }
    users.save(path).unwrap();
}

/// Polls until every (node, session, short?) verify is refused, within 5 s
/// (the file is looked at once a second); returns how long it took.
async fn until_refused(checks: &[(&TestServer, &Session, bool)]) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for (s, t, short) in checks {
            let (status, body) = verify(s, t, *short).await;
            if status == StatusCode::OK {
                all = false;
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
            }
        }
        if all {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "sessions still verify 5 s after the disable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_ends_their_sessions_on_the_embedded_store() {
    let s = TestServer::start(Config::for_test()).await;
    let (alice, bob) = (login(&s, "alice").await, login(&s, "bob").await);
    assert_eq!(verify(&s, &alice, true).await.0, StatusCode::OK);
    set_disabled(&s, "alice", true);
    // Both paths refuse: the short token (this node's revoked cache) and
    // the long token (the store ended the session).
    until_refused(&[(&s, &alice, true), (&s, &alice, false)]).await;
    assert_eq!(
        verify(&s, &bob, false).await.0,
        StatusCode::OK,
        "other users keep their sessions"
    );
    let r = reqwest::Client::new()
        .post(s.url("/v1/login"))
        .json(&json!({ "username": "alice", "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "a disabled user cannot log in");
    // Enabled again: logins work and the new session lives.
    set_disabled(&s, "alice", false);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // (The test clock stands still unless moved; a user-wide revocation
    // covers sessions that began up to its own instant.)
    s.clock.advance(Duration::from_secs(1));
    let again = login(&s, "alice").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(verify(&s, &again, false).await.0, StatusCode::OK);
    assert_eq!(verify(&s, &again, true).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_on_one_node_ends_their_sessions_on_every_node() {
    let redis = RedisServer::start();
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url()]);
    let a = TestServer::start(c.clone()).await;
    c.keys.dir = a.state().config.keys.dir.clone();
    let b = TestServer::start(c).await;
    let alice = login(&a, "alice").await;
    for node in [&a, &b] {
        assert_eq!(verify(node, &alice, true).await.0, StatusCode::OK);
    }
    // Only node a's users file says so; node b hears it from Redis.
    set_disabled(&a, "alice", true);
    let took = until_refused(&[(&a, &alice, true), (&b, &alice, true), (&b, &alice, false)]).await;
    println!("disable on node a: alice's tokens refused on both nodes after {took:?}");
}
