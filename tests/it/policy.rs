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

/// One `/v1/verify` with `long` as bearer, optionally a short token, a
/// query string and one extra header: the status and the JSON body.
async fn ask(
    s: &TestServer,
    long: &str,
    short: Option<&str>,
    query: &str,
    header: Option<(&str, &str)>,
) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new()
        .get(s.url(&format!("/v1/verify{query}")))
        .bearer_auth(long);
    if let Some(t) = short {
        r = r.header("x-short-token", t);
    }
    if let Some((name, value)) = header {
        r = r.header(name, value);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The status of a verify with the long token alone (`short: false`, the
/// store is asked) or with both (the short token answers when valid).
async fn verify(s: &TestServer, t: &Session, short: bool) -> (StatusCode, Value) {
    ask(s, &t.long, short.then_some(t.short.as_str()), "", None).await
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
    c.store.redis = Some(vec![redis.url().into()]);
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

/// A node that starts (or reconnects) catches up from the revocation log.
/// A user-wide revocation found there covers the sessions that began
/// before it was made, not the user's later logins. Found by the chaos run
/// (`scripts/chaos`): a node restarted after alice's logout-all counted it
/// from its own start and refused her newer sessions as revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_catching_up_keeps_the_sessions_opened_after_a_logout_all() {
    let redis = RedisServer::start();
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url().into()]);
    let a = TestServer::start(c.clone()).await;
    c.keys.dir = a.state().config.keys.dir.clone();
    let old = login(&a, "alice").await;
    let r = reqwest::Client::new()
        .post(a.url("/v1/logout-all"))
        .bearer_auth(&old.long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Each test server's clock starts at the real time and stands still:
    // a node started later logs in later.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let b = TestServer::start(c.clone()).await;
    let new = login(&b, "alice").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let late = TestServer::start(c).await;
    let start = Instant::now();
    while !late.state().verifier.caught_up() {
        assert!(start.elapsed() < Duration::from_secs(5), "feed caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for node in [&b, &late] {
        assert_eq!(
            verify(node, &new, false).await.0,
            StatusCode::OK,
            "the newer session lives"
        );
        assert_eq!(verify(node, &new, true).await.0, StatusCode::OK);
        assert_eq!(
            verify(node, &old, false).await.0,
            StatusCode::UNAUTHORIZED,
            "the ended one stays ended"
        );
    }
}

/// A verify with both tokens, `query`, and `X-Verify-Strict: header`.
async fn verify_with(s: &TestServer, t: &Session, query: &str, header: Option<&str>) -> (StatusCode, Value) {
    ask(
        s,
        &t.long,
        Some(&t.short),
        query,
        header.map(|h| ("x-verify-strict", h)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_verify_asks_redis_past_a_valid_short_token_and_never_falls_back() {
    use axum::middleware::from_fn_with_state;
    use axum::routing::get;
    use twintoken::http::{CurrentUser, Guard, guard};

    let mut redis = RedisServer::start();
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url().into()]);
    c.store.timeout = Duration::from_millis(200);
    let s = TestServer::start(c).await;
    let alice = login(&s, "alice").await;
    let (status, body) = verify_with(&s, &alice, "", None).await;
    assert_eq!((status, body["path"].as_str()), (StatusCode::OK, Some("short")));
    for (query, header) in [("?strict=true", None), ("?strict=1", None), ("", Some("true"))] {
        let (status, body) = verify_with(&s, &alice, query, header).await;
        assert_eq!(
            (status, body["path"].as_str()),
            (StatusCode::OK, Some("long")),
            "{query} {header:?}"
        );
    }
    let (status, _) = verify_with(&s, &alice, "?strict=false", Some("false")).await;
    assert_eq!(status, StatusCode::OK);
    // A typo never turns strictness off silently; neither does an empty
    // value (found by schemathesis: both used to read as false).
    for (query, header) in [
        ("?strict=yes", None),
        ("", Some("maybe")),
        ("?strict=", None),
        ("", Some("")),
    ] {
        let (status, body) = verify_with(&s, &alice, query, header).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{body}"
        );
    }
    // Strict needs the long token: a short token alone is not enough.
    let r = reqwest::Client::new()
        .get(s.url("/v1/verify?strict=true"))
        .header("x-short-token", &alice.short)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The in-process guard, strict for a sensitive route.
    let g = Guard::new(
        s.state().verifier.clone(),
        s.state().config.cookies.clone(),
        s.clock.clone(),
    )
    .strict();
    let app = axum::Router::new()
        .route(
            "/pay",
            get(|CurrentUser(v): CurrentUser| async move { v.path.as_str().to_string() }),
        )
        .layer(from_fn_with_state(g, guard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let pay = || {
        reqwest::Client::new()
            .get(format!("{base}/pay"))
            .bearer_auth(&alice.long)
            .header("x-short-token", &alice.short)
            .send()
    };
    let r = pay().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "long");

    // Redis gone: the normal verify answers from the short token, the
    // strict one (and the strict guard) 503, never the fallback.
    redis.kill();
    for _ in 0..3 {
        let (status, body) = verify_with(&s, &alice, "?strict=true", None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
            "{body}"
        );
    }
    let (status, body) = verify_with(&s, &alice, "", None).await;
    assert_eq!((status, body["path"].as_str()), (StatusCode::OK, Some("short")));
    let r = pay().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Breaker open: the long-only normal verify falls back, strict does not.
    let r = reqwest::Client::new()
        .get(s.url("/v1/verify"))
        .bearer_auth(&alice.long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-auth-path"], "fallback");
    let (status, _) = verify_with(&s, &alice, "", Some("true")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    task.abort();
}

fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn remember_me_off_gives_browser_session_cookies_and_keeps_them_so() {
    remember_me(&TestServer::start(Config::for_test()).await).await;
}

#[tokio::test]
async fn remember_me_on_redis() {
    let redis = RedisServer::start();
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url().into()]);
    remember_me(&TestServer::start(c).await).await;
}

async fn remember_me(s: &TestServer) {
    let http = reqwest::Client::new();
    for (remember, persistent) in [(None, true), (Some(true), true), (Some(false), false)] {
        let mut body = json!({ "username": "alice", "password": "correct horse" });
        if let Some(r) = remember {
            body["remember"] = json!(r);
        }
        let r = http.post(s.url("/v1/login")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let set = set_cookies(&r);
        assert_eq!(set.len(), 2);
        for c in &set {
            assert_eq!(c.contains("Max-Age="), persistent, "remember {remember:?}: {c}");
        }
        // The choice travels in the tokens: a refreshed short cookie (a
        // verify with the long cookie alone) keeps it.
        let long = set.iter().find(|c| c.starts_with("tt_long=")).unwrap();
        let long = long.split(';').next().unwrap();
        let r = http
            .get(s.url("/v1/verify"))
            .header("cookie", long)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-auth-path"], "long");
        let refreshed = set_cookies(&r);
        assert!(refreshed.iter().any(|c| c.starts_with("tt_short=")), "{refreshed:?}");
        for c in &refreshed {
            assert_eq!(
                c.contains("Max-Age="),
                persistent,
                "refreshed, remember {remember:?}: {c}"
            );
        }
    }
    let r = http
        .post(s.url("/v1/login"))
        .json(&json!({ "username": "alice", "password": "correct horse", "remember": "yes" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "remember is a boolean");
}

async fn reauth(s: &TestServer, long: &str, body: Value) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(s.url("/v1/reauth"))
        .bearer_auth(long)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A verify with the long token alone, `query`, and `X-Max-Auth-Age: header`.
async fn verify_aged(s: &TestServer, long: &str, query: &str, header: Option<&str>) -> (StatusCode, Value) {
    ask(s, long, None, query, header.map(|h| ("x-max-auth-age", h))).await
}

/// Step-up on one store: `max_auth_age` refuses a session whose login is
/// too old with `reauth_required`; `POST /v1/reauth` with the password
/// issues tokens carrying the new authentication time.
async fn step_up(s: &TestServer) {
    use twintoken::time::Clock as _;
    let alice = login(s, "alice").await;
    let login_at = s.clock.now().0 / 1000;
    let (status, body) = verify_aged(s, &alice.long, "?max_auth_age=3600", None).await;
    assert_eq!(
        (status, body["auth_time"].as_u64()),
        (StatusCode::OK, Some(login_at)),
        "{body}"
    );
    s.clock.advance(Duration::from_secs(2 * 3600 - 600));
    for (query, header) in [
        ("?max_auth_age=3600", None),
        ("", Some("3600")),
        ("?max_auth_age=99999", Some("60")),
    ] {
        let (status, body) = verify_aged(s, &alice.long, query, header).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("reauth_required")),
            "{query} {header:?}"
        );
    }
    let (status, body) = verify_aged(s, &alice.long, "", None).await;
    assert_eq!(
        (status, body["auth_time"].as_u64()),
        (StatusCode::OK, Some(login_at)),
        "without a demand"
    );

    let (status, body) = reauth(s, &alice.long, json!({ "password": "wrong" })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
    );
    let (status, body) = reauth(s, &alice.long, json!({ "password": "correct horse" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let now = s.clock.now().0 / 1000;
    assert_eq!(body["auth_time"].as_u64(), Some(now));
    let fresh = Session {
        long: body["long_token"].as_str().unwrap().into(),
        short: body["short_token"].as_str().unwrap().into(),
    };
    let (status, body) = verify_aged(s, &fresh.long, "?max_auth_age=3600", None).await;
    assert_eq!(
        (status, body["auth_time"].as_u64()),
        (StatusCode::OK, Some(now)),
        "{body}"
    );
    let r = reqwest::Client::new()
        .get(s.url("/v1/verify?max_auth_age=3600"))
        .bearer_auth(&fresh.long)
        .header("x-short-token", &fresh.short)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), r.headers()["x-auth-path"].to_str().unwrap()),
        (StatusCode::OK, "short")
    );
    assert_eq!(r.headers()["x-auth-time"].to_str().unwrap(), now.to_string());
    // The old token names the same session, still with its old login.
    let (status, _) = verify_aged(s, &alice.long, "?max_auth_age=3600", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_up_asks_for_a_fresh_authentication_on_the_embedded_store() {
    step_up(&TestServer::start(Config::for_test()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_up_asks_for_a_fresh_authentication_on_redis() {
    let redis = RedisServer::start();
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url().into()]);
    step_up(&TestServer::start(c).await).await;
}

#[tokio::test]
async fn step_up_and_reauth_refuse_bad_input_with_clear_errors() {
    const ADMIN: &str = "policy-test-admin-token-of-32-bytes!";
    let mut c = Config::for_test();
    c.server.admin_token = Some(ADMIN.into());
    let s = TestServer::start(c).await;
    let alice = login(&s, "alice").await;
    for bad in ["-1", "abc", "1.5", "99999999999", ""] {
        let (status, body) = verify_aged(&s, &alice.long, &format!("?max_auth_age={bad}"), None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{bad}: {body}"
        );
        let (status, _) = verify_aged(&s, &alice.long, "", Some(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "header {bad}");
    }
    // Neither a password nor a code, both, or unknown fields.
    for body in [
        json!({}),
        json!({ "password": "correct horse", "code": "123456", "destination": "+4915112345678" }),
        json!({ "code": "123456" }),
        json!({ "password": "x", "extra": 1 }),
    ] {
        let (status, answer) = reauth(&s, &alice.long, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
    }
    // Without a session.
    let r = reqwest::Client::new()
        .post(s.url("/v1/reauth"))
        .json(&json!({ "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // With cookies, the CSRF rules apply.
    let r = reqwest::Client::new()
        .post(s.url("/v1/reauth"))
        .header("cookie", format!("tt_long={}", alice.long))
        .json(&json!({ "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A user without a password here (a session issued for an outside user)
    // is told to use a one-time code.
    let r = reqwest::Client::new()
        .post(s.url("/v1/admin/sessions"))
        .bearer_auth(ADMIN)
        .json(&json!({ "user_id": "outside-42" }))
        .send()
        .await
        .unwrap();
    let long = r.json::<Value>().await.unwrap()["long_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = reauth(&s, &long, json!({ "password": "correct horse" })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("no_password")),
        "{body}"
    );
    // Wrong passwords count toward the login throttle (5 per user and address).
    for _ in 0..5 {
        assert_eq!(
            reauth(&s, &alice.long, json!({ "password": "nope" })).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, body) = reauth(&s, &alice.long, json!({ "password": "correct horse" })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("throttled")),
        "{body}"
    );
}

#[tokio::test]
async fn reauth_by_one_time_code() {
    use crate::support::webhook::Receiver;
    const SECRET: &str = "webhook secret for the policy tests";
    let receiver = Receiver::start(SECRET).await;
    let mut c = Config::for_test();
    c.code_login.enabled = true;
    c.code_login.sender = twintoken::config::CodeSender::Webhook;
    c.code_login.webhook_url = Some(receiver.url.clone());
    c.code_login.webhook_secret = Some(SECRET.into());
    let s = TestServer::start(c).await;
    let (alice, bob) = (login(&s, "alice").await, login(&s, "bob").await);
    let send = |dest: &'static str| {
        reqwest::Client::new()
            .post(s.url("/v1/login/code/send"))
            .json(&json!({ "destination": dest }))
            .send()
    };
    assert_eq!(send("+4915112345678").await.unwrap().status(), StatusCode::ACCEPTED);
    let code = receiver.next().await.code;
    // Alice's code does not re-authenticate Bob.
    let (status, body) = reauth(&s, &bob.long, json!({ "destination": "+4915112345678", "code": code })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_code")),
        "{body}"
    );
    assert_eq!(
        send("+4915112345678").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS,
        "resend wait"
    );
    s.clock.advance(Duration::from_secs(61));
    assert_eq!(send("+4915112345678").await.unwrap().status(), StatusCode::ACCEPTED);
    let code = receiver.next().await.code;
    let (status, body) = reauth(
        &s,
        &alice.long,
        json!({ "destination": "+4915112345678", "code": code }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    use twintoken::time::Clock as _;
    assert_eq!(body["auth_time"].as_u64(), Some(s.clock.now().0 / 1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lines_say_who_did_what_from_where() {
    const ADMIN: &str = "audit-test-admin-token-of-32-bytes!!";
    let d = tempfile::tempdir().unwrap();
    let mut users = Users::default();
    users.add("alice", Some("1001"), "correct horse").unwrap();
    users.save(&d.path().join("users.toml")).unwrap();
    let config = d.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN}\"\nlog_format = \"json\"\n\
             [store]\npath = \"\"\n[users]\nfile = \"users.toml\"\n[cookies]\nsecure = false\n"
        ),
    )
    .unwrap();
    let node = crate::support::node::Node::start(d.path(), &config);
    let http = reqwest::Client::builder().user_agent("audit-test/1.0").build().unwrap();
    let login = |password: &'static str| {
        http.post(node.url("/v1/login"))
            .json(&json!({ "username": "alice", "password": password }))
            .send()
    };
    assert_eq!(login("wrong").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let r = login("correct horse").await.unwrap();
    let b: Value = r.json().await.unwrap();
    let (long, sid) = (b["long_token"].as_str().unwrap(), b["session_id"].as_str().unwrap());
    let r = http
        .post(node.url("/v1/logout"))
        .bearer_auth(long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .delete(node.url("/v1/admin/users/1001/sessions"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // The log is written as it happens; wait for the last line.
    let start = Instant::now();
    let events = loop {
        let events: Vec<Value> = node
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["target"] == "audit")
            .map(|l| l["fields"].clone())
            .collect();
        if events.len() >= 4 || start.elapsed() > Duration::from_secs(5) {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names, ["login_failed", "login_ok", "logout", "kick"], "{events:?}");
    for e in &events {
        assert_eq!(e["client"], "127.0.0.1", "{e}");
        assert_eq!(e["user_agent"], "audit-test/1.0", "{e}");
        assert!(e["node"].as_str().is_some_and(|n| n.contains(':')), "{e}");
    }
    assert_eq!(
        (events[0]["user"].as_str(), events[0]["detail"].as_str()),
        (Some("alice"), Some("password"))
    );
    for e in &events[1..] {
        assert_eq!(e["user"], "1001", "{e}");
    }
    assert_eq!(
        (events[1]["session"].as_str(), events[2]["session"].as_str()),
        (Some(sid), Some(sid))
    );
    // No secrets in audit lines.
    let log = node.log();
    assert!(
        !log.contains("correct horse") && !log.contains(long),
        "no password or token in the log"
    );
}

const BAN_ADMIN: &str = "ban-test-admin-token-of-32-bytes!!!!";

async fn admin(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value, Option<String>) {
    let mut r = reqwest::Client::new()
        .request(method, s.url(path))
        .bearer_auth(BAN_ADMIN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, r.json().await.unwrap_or(Value::Null), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_ends_sessions_on_every_node_and_refuses_logins_until_it_ends_or_is_lifted() {
    use reqwest::Method;
    let redis = RedisServer::start();
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url().into()]);
    c.server.admin_token = Some(BAN_ADMIN.into());
    let a = TestServer::start(c.clone()).await;
    c.keys.dir = a.state().config.keys.dir.clone();
    let b = TestServer::start(c).await;
    let alice = login(&a, "alice").await;
    for node in [&a, &b] {
        assert_eq!(verify(node, &alice, true).await.0, StatusCode::OK);
    }
    let (status, body, _) = admin(
        &a,
        Method::POST,
        "/v1/admin/users/1001/ban",
        Some(json!({ "duration": "2h", "reason": "chargeback" })),
    )
    .await;
    assert_eq!(
        (status, body["sessions_ended"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    // Short tokens too, on the node that did not ban (the broadcast).
    let took = until_refused(&[(&a, &alice, true), (&b, &alice, true), (&b, &alice, false)]).await;
    assert!(
        took < Duration::from_secs(1),
        "refused everywhere within 1 s, took {took:?}"
    );
    // Logins (password and trusted issue) refused with Retry-After, on both nodes.
    for node in [&a, &b] {
        let r = reqwest::Client::new()
            .post(node.url("/v1/login"))
            .json(&json!({ "username": "alice", "password": "correct horse" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((7100..=7200).contains(&retry), "{retry}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "banned");
    }
    let (status, body, _) = admin(
        &b,
        Method::POST,
        "/v1/admin/sessions",
        Some(json!({ "user_id": "1001" })),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("banned"))
    );
    let (status, body, _) = admin(&b, Method::GET, "/v1/admin/users/1001", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["sessions"].as_u64(), body["ban"]["reason"].as_str()),
        (Some(0), Some("chargeback")),
        "{body}"
    );
    // Bob is not affected.
    login(&b, "bob").await;
    // Lifted: logins work again; lifting again is a 404.
    let (status, _, _) = admin(&b, Method::DELETE, "/v1/admin/users/1001/ban", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = admin(&b, Method::DELETE, "/v1/admin/users/1001/ban", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    a.clock.advance(Duration::from_secs(1));
    let again = login(&a, "alice").await;
    assert_eq!(verify(&a, &again, false).await.0, StatusCode::OK);
    let (_, body, _) = admin(&a, Method::GET, "/v1/admin/users/1001", None).await;
    assert_eq!(
        (body["sessions"].as_u64(), body["ban"].is_null()),
        (Some(1), true),
        "{body}"
    );
}

#[tokio::test]
async fn bans_end_by_themselves_on_the_embedded_store_and_bad_input_is_refused() {
    use reqwest::Method;
    let mut c = Config::for_test();
    c.server.admin_token = Some(BAN_ADMIN.into());
    let s = TestServer::start(c).await;
    for (body, what) in [
        (json!({ "duration": "soon" }), "not a duration"),
        (json!({ "duration": "0s" }), "more than 0"),
        (json!({ "duration": "400d" }), "at most 366d"),
        (
            json!({ "duration": "1h", "reason": "x".repeat(501) }),
            "at most 500 bytes",
        ),
        (json!({ "duration": "1h", "reason": "a\nb" }), "control characters"),
        (json!({ "reason": "no duration" }), "duration"),
        (json!({ "duration": "1h", "until": "tomorrow" }), "until"),
    ] {
        let (status, answer, _) = admin(&s, Method::POST, "/v1/admin/users/1001/ban", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(
            answer["message"].as_str().is_some_and(|m| m.contains(what)),
            "{body}: {answer}"
        );
    }
    // A ban may precede the account.
    let (status, _, _) = admin(
        &s,
        Method::POST,
        "/v1/admin/users/not-yet-42/ban",
        Some(json!({ "duration": "1h" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = admin(&s, Method::DELETE, "/v1/admin/users/1002/ban", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "bob is not banned");
    let (status, _, _) = admin(
        &s,
        Method::POST,
        "/v1/admin/users/1001/ban",
        Some(json!({ "duration": "30m" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let r = reqwest::Client::new()
        .post(s.url("/v1/login"))
        .json(&json!({ "username": "alice", "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    s.clock.advance(Duration::from_secs(30 * 60));
    login(&s, "alice").await;
}

#[tokio::test]
async fn strict_verify_on_the_embedded_store_checks_the_long_token() {
    let s = TestServer::start(Config::for_test()).await;
    let alice = login(&s, "alice").await;
    let (status, body) = verify_with(&s, &alice, "?strict=true", None).await;
    assert_eq!((status, body["path"].as_str()), (StatusCode::OK, Some("long")));
    // A logout is seen at once by a strict verify of the same tokens.
    let r = reqwest::Client::new()
        .post(s.url("/v1/logout"))
        .bearer_auth(&alice.long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, _) = verify_with(&s, &alice, "?strict=true", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A webhook receiver for audit events: records every body whose signature
/// checks out; `delay` holds each answer back.
pub(crate) async fn event_receiver(
    secret: &'static str,
    delay: Duration,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use axum::http::HeaderMap;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |h: HeaderMap, body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                tokio::time::sleep(delay).await;
                let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
                let (sig, id) = (header("x-twintoken-signature"), header("x-twintoken-delivery-id"));
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let tolerance = Duration::from_secs(300);
                let code = twintoken::sign::Purpose::Code;
                if twintoken::sign::verify(secret.as_bytes(), code, sig, id, &body, now, tolerance) {
                    panic!("an audit event verified as a code delivery");
                }
                let audit = twintoken::sign::Purpose::Audit;
                if !twintoken::sign::verify(secret.as_bytes(), audit, sig, id, &body, now, tolerance) {
                    return StatusCode::UNAUTHORIZED;
                }
                keep.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_are_posted_signed_to_the_events_webhook() {
    const SECRET: &str = "events webhook secret for tests";
    let (url, got) = event_receiver(SECRET, Duration::ZERO).await;
    let mut c = Config::for_test();
    c.events.webhook_url = Some(url);
    c.events.webhook_secret = Some(SECRET.into());
    let s = TestServer::start(c).await;
    let http = reqwest::Client::builder()
        .user_agent("events-test/1.0")
        .build()
        .unwrap();
    for password in ["wrong", "correct horse"] {
        http.post(s.url("/v1/login"))
            .json(&json!({ "username": "alice", "password": password }))
            .send()
            .await
            .unwrap();
    }
    // Other tests in this process may post events too: ours carry our agent.
    let start = Instant::now();
    let ours = loop {
        let ours: Vec<Value> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["user_agent"] == "events-test/1.0")
            .cloned()
            .collect();
        if ours.len() >= 2 {
            break ours;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "events posted: {ours:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (ours[0]["event"].as_str(), ours[0]["user"].as_str()),
        (Some("login_failed"), Some("alice"))
    );
    assert_eq!(
        (ours[1]["event"].as_str(), ours[1]["user"].as_str()),
        (Some("login_ok"), Some("1001"))
    );
    assert!(
        ours[1]["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{}",
        ours[1]
    );
    assert_eq!(ours[1]["client"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_events_webhook_drops_events_instead_of_slowing_requests() {
    const SECRET: &str = "events webhook secret for tests";
    let (url, _got) = event_receiver(SECRET, Duration::from_secs(3)).await;
    let mut c = Config::for_test();
    c.events.webhook_url = Some(url);
    c.events.webhook_secret = Some(SECRET.into());
    c.events.queue = 1;
    c.throttle.per_address = 1000;
    c.throttle.per_user_address = 1000;
    let s = TestServer::start(c).await;
    let http = reqwest::Client::new();
    let start = Instant::now();
    for _ in 0..10 {
        let r = http
            .post(s.url("/v1/login"))
            .json(&json!({ "username": "nobody-here", "password": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // Ten password checks, not ten times the receiver's 3 s.
    assert!(start.elapsed() < Duration::from_secs(8), "took {:?}", start.elapsed());
    let metrics = http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("twintoken_audit_events_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(dropped >= 8, "{dropped} dropped");
}

#[test]
fn events_settings_that_do_not_hold_together_are_refused_naming_the_key() {
    type Case = (fn(&mut Config), &'static str, &'static str);
    let cases: [Case; 4] = [
        (
            |c| c.events.webhook_url = Some("ftp://x".into()),
            "events.webhook_url",
            "https://",
        ),
        (
            |c| c.events.webhook_url = Some("https://x".into()),
            "events.webhook_secret",
            "required",
        ),
        (
            |c| {
                c.events.webhook_url = Some("https://x".into());
                c.events.webhook_secret = Some("short".into());
            },
            "events.webhook_secret",
            "at least 16",
        ),
        (|c| c.events.queue = 0, "events.queue", "1 to 100000"),
    ];
    for (set, key, what) in cases {
        let mut c = Config::for_test();
        set(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(what), "want {key} / {what}: {e}");
    }
}
