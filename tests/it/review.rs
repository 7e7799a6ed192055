//! Regression tests for the findings of the outside security review (one
//! test per finding, named after what it guards), against the real router
//! on a listening socket, the real binary, and a real redis-server.

use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use twintoken::config::Config;

use crate::support::redis_server::RedisServer;
use crate::support::server::TestServer;

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Session {
    long: String,
    short: String,
    sid: String,
}

async fn login(s: &TestServer, user: &str) -> Session {
    let r = client()
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
        sid: b["session_id"].as_str().unwrap().into(),
    }
}

fn cookies(s: &TestServer, pairs: &[(bool, &str)]) -> String {
    let c = &s.state().config.cookies;
    pairs
        .iter()
        .map(|(long, v)| format!("{}={v}", if *long { c.long_name() } else { c.short_name() }))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn verify_cookie(s: &TestServer, cookie: &str) -> reqwest::Response {
    client()
        .get(s.url("/v1/verify"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

async fn code_of(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let b: Value = r.json().await.unwrap_or(Value::Null);
    (status, b["error"].as_str().unwrap_or("").to_string())
}

fn redis_config(redis: &RedisServer) -> Config {
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url().into()]);
    c
}

/// Finding 1 (high): `TWINTOKEN_SERVER__ADMIN_TOKEN=` (empty) opened the
/// admin API to requests without `Authorization`.
#[test]
fn an_empty_or_short_admin_token_stops_serve_before_it_listens() {
    for token in ["", "x", "0123456789abcdef0123456789abcde"] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_twintoken"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env("TWINTOKEN_SERVER__ADMIN_TOKEN", token)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "serve started with admin token {token:?}");
        assert!(
            err.contains("server.admin_token") && err.contains("at least 32") && err.contains("openssl rand"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn the_admin_api_needs_the_configured_token() {
    let mut c = Config::for_test();
    c.server.admin_token = Some("an-admin-token-of-at-least-32-bytes".into());
    let s = TestServer::start(c).await;
    let issue = |auth: Option<&'static str>| {
        let mut rq = client()
            .post(s.url("/v1/admin/sessions"))
            .json(&json!({ "user_id": "1001" }));
        if let Some(a) = auth {
            rq = rq.header("authorization", a);
        }
        rq.send()
    };
    for auth in [
        None,
        Some("Bearer "),
        Some("Bearer x"),
        Some("an-admin-token-of-at-least-32-bytes"),
    ] {
        let (st, code) = code_of(issue(auth).await.unwrap()).await;
        assert_eq!(
            (st, code.as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{auth:?}"
        );
    }
    let r = issue(Some("Bearer an-admin-token-of-at-least-32-bytes")).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// Finding 3 (medium): a cookie-authenticated verify returned re-issued
/// tokens in `X-Long-Token` / `X-Short-Token` / `X-Set-Cookie-*`, which
/// page script can read. Seen with a rotation due.
#[tokio::test]
async fn cookie_clients_get_rotated_tokens_only_as_httponly_cookies() {
    let mut c = Config::for_test();
    c.tokens.long_idle_ttl = Duration::from_secs(3 * 86_400);
    c.tokens.renew_window = Duration::from_secs(3600);
    let s2 = TestServer::start(c).await;
    let a2 = login(&s2, "alice").await;
    s2.clock.advance(Duration::from_secs(86_400 + 60)); // rotation due, short expired
    let r = verify_cookie(&s2, &cookies(&s2, &[(true, &a2.long)])).await;
    assert_eq!(r.status(), StatusCode::OK);
    for h in [
        "x-long-token",
        "x-short-token",
        "x-set-cookie-long",
        "x-set-cookie-short",
    ] {
        assert!(r.headers().get(h).is_none(), "{h} is readable by page script");
    }
    let set = crate::support::set_cookies(&r);
    assert_eq!(set.len(), 2, "{set:?}");
    assert!(
        set[0].starts_with("tt_long=") && set[1].starts_with("tt_short="),
        "the rotated long cookie comes first (gateways that pass one Set-Cookie): {set:?}"
    );
    assert!(set.iter().all(|c| c.contains("HttpOnly")));
    // Header clients still get headers.
    let b = login(&s2, "bob").await;
    s2.clock.advance(Duration::from_secs(86_400 + 60));
    let r = client()
        .get(s2.url("/v1/verify"))
        .bearer_auth(&b.long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("x-long-token").is_some() && r.headers().get("set-cookie").is_none());
}

/// Finding 4 (medium): `DELETE /v1/sessions/{sid}` with another user's sid
/// answered 404 but put the sid into the node's revoked cache, so the
/// victim was rejected on that node.
#[tokio::test]
async fn deleting_another_users_session_changes_nothing() {
    let redis = RedisServer::start();
    for config in [Config::for_test(), redis_config(&redis)] {
        let s = TestServer::start(config).await;
        let alice = login(&s, "alice").await;
        let bob = login(&s, "bob").await;
        let r = client()
            .delete(s.url(&format!("/v1/sessions/{}", bob.sid)))
            .bearer_auth(&alice.long)
            .send()
            .await
            .unwrap();
        assert_eq!(code_of(r).await, (StatusCode::NOT_FOUND, "not_found".into()));
        assert_eq!(
            s.state().verifier.revoked().len(),
            0,
            "nothing entered the revoked cache"
        );
        for cookie in [
            cookies(&s, &[(true, &bob.long)]),
            cookies(&s, &[(true, &bob.long), (false, &bob.short)]),
        ] {
            let r = verify_cookie(&s, &cookie).await;
            assert_eq!(r.status(), StatusCode::OK, "bob's session still works on this node");
        }
    }
}

/// Finding 5 (medium): with duplicate cookie names the first won, and a
/// short token was accepted beside another session's long token.
#[tokio::test]
async fn planted_cookies_cannot_switch_the_user() {
    let s = TestServer::start(Config::for_test()).await;
    let alice = login(&s, "alice").await;
    let bob = login(&s, "bob").await;

    // bob's short token beside alice's long token: answered as alice, by
    // her long token.
    let r = verify_cookie(&s, &cookies(&s, &[(false, &bob.short), (true, &alice.long)])).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        (
            r.headers()["x-user-id"].to_str().unwrap(),
            r.headers()["x-auth-path"].to_str().unwrap()
        ),
        ("1001", "long")
    );
    // The same with bearer and X-Short-Token.
    let r = client()
        .get(s.url("/v1/verify"))
        .bearer_auth(&alice.long)
        .header("x-short-token", &bob.short)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-user-id"], "1001");

    // Any token cookie sent twice: refused.
    for pairs in [
        vec![
            (false, &bob.short),
            (true, &bob.long),
            (false, &alice.short),
            (true, &alice.long),
        ],
        vec![(true, &bob.long), (true, &alice.long)],
        vec![(false, &alice.short), (false, &alice.short)],
    ] {
        let pairs: Vec<(bool, &str)> = pairs.into_iter().map(|(l, v)| (l, v.as_str())).collect();
        let (st, code) = code_of(verify_cookie(&s, &cookies(&s, &pairs)).await).await;
        assert_eq!((st, code.as_str()), (StatusCode::UNAUTHORIZED, "invalid"), "{pairs:?}");
    }

    // With `secure`, the default names carry the __Host- prefix, which
    // browsers accept only from this host, over HTTPS, for Path=/.
    let mut c = Config::for_test();
    c.cookies.secure = true;
    let s2 = TestServer::start(c).await;
    let r = client()
        .post(s2.url("/v1/login"))
        .json(&json!({ "username": "alice", "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    let set = crate::support::set_cookies(&r);
    assert!(
        set.iter().all(|c| c.starts_with("__Host-tt_")
            && c.contains("Path=/")
            && c.contains("Secure")
            && !c.contains("Domain")),
        "{set:?}"
    );
}

/// Finding 6 (medium): idle cleartext HTTP/2 connections were never closed;
/// five of them kept `/healthz` from answering with `max_connections = 5`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_like_http1_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = Config::for_test();
    c.server.header_read_timeout = Duration::from_secs(1);
    c.server.max_connections = 5;
    let s = TestServer::start(c).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    // The HTTP/2 connection preface and an empty SETTINGS frame.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(preface).await.unwrap();
        idle.push(conn);
    }
    // Each is closed by the server (EOF) after about a second of idleness.
    for mut conn in idle {
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 256];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // the server's SETTINGS, then GOAWAY
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "an idle HTTP/2 connection is still open after 10 s");
    }
    let r = tokio::time::timeout(Duration::from_secs(10), client().get(s.url("/healthz")).send())
        .await
        .expect("healthz answers once the idle HTTP/2 connections are gone")
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Finding 7 (low), CSRF: a refused logout cleared the cookies; the Origin
/// check ignored the scheme and trusted `Host`; form logins without
/// `Origin` or `Referer` were accepted.
#[tokio::test]
async fn csrf_refusals_are_exact_and_change_nothing() {
    let s = TestServer::start(Config::for_test()).await;
    let a = login(&s, "alice").await;
    let jar = cookies(&s, &[(true, &a.long), (false, &a.short)]);
    let port = s.base.rsplit(':').next().unwrap().to_string();
    for origin in [
        "https://evil.example".to_string(),
        format!("https://127.0.0.1:{port}"),
        format!("ftp://127.0.0.1:{port}"),
        format!("x://127.0.0.1:{port}"),
    ] {
        let r = client()
            .post(s.url("/v1/logout"))
            .header("cookie", &jar)
            .header("origin", &origin)
            .send()
            .await
            .unwrap();
        assert!(
            r.headers().get("set-cookie").is_none(),
            "{origin}: cookies cleared on a refusal"
        );
        assert_eq!(code_of(r).await, (StatusCode::FORBIDDEN, "csrf".into()), "{origin}");
    }
    // A forged Host does not make a foreign origin our own.
    let r = client()
        .post(s.url("/v1/logout"))
        .header("cookie", &jar)
        .header("host", "evil.example")
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (StatusCode::FORBIDDEN, "csrf".into()));
    assert_eq!(
        verify_cookie(&s, &jar).await.status(),
        StatusCode::OK,
        "still logged in"
    );

    // A form login must name its origin; a JSON one from a non-browser
    // client need not.
    let form = |origin: Option<&str>| {
        let mut rq = client()
            .post(s.url("/v1/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("username=alice&password=correct+horse");
        if let Some(o) = origin {
            rq = rq.header("origin", o.to_string());
        }
        rq.send()
    };
    assert_eq!(
        code_of(form(None).await.unwrap()).await,
        (StatusCode::FORBIDDEN, "csrf".into())
    );
    assert_eq!(form(Some(&s.base)).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        form(Some(&format!("http://localhost:{port}"))).await.unwrap().status(),
        StatusCode::OK,
        "a loopback listener is also reached as localhost"
    );
    login(&s, "alice").await;

    // Same-origin logout works and clears both cookies.
    let r = client()
        .post(s.url("/v1/logout"))
        .header("cookie", &jar)
        .header("origin", &s.base)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
}

/// Finding 7 (low), store errors: any Redis error reply counted as "store
/// unavailable", so one user's key of the wrong type let that user's token
/// through on `fallback`, and three such requests opened the breaker.
#[tokio::test]
async fn a_store_error_reply_is_that_requests_500_not_an_outage() {
    let redis = RedisServer::start();
    let s = TestServer::start(redis_config(&redis)).await;
    let alice = login(&s, "alice").await;
    let bob = login(&s, "bob").await;
    let mut conn = redis.conn();
    let _: () = redis::cmd("DEL").arg("tt:{1001}").query(&mut conn).unwrap();
    let _: () = redis::cmd("SET")
        .arg("tt:{1001}")
        .arg("not a session set")
        .query(&mut conn)
        .unwrap();
    for _ in 0..10 {
        let r = client()
            .get(s.url("/v1/verify"))
            .bearer_auth(&alice.long)
            .send()
            .await
            .unwrap();
        assert_eq!(code_of(r).await, (StatusCode::INTERNAL_SERVER_ERROR, "internal".into()));
    }
    assert_eq!(
        s.state().verifier.breaker_state(),
        twintoken::verify::BreakerState::Closed,
        "one user's bad key is no outage"
    );
    let r = client()
        .get(s.url("/v1/verify"))
        .bearer_auth(&bob.long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-auth-path"], "long", "others still verify on the store");
    // Logins of that user fail the same way, with the JSON error shape.
    let r = client()
        .post(s.url("/v1/login"))
        .json(&json!({ "username": "alice", "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (StatusCode::INTERNAL_SERVER_ERROR, "internal".into()));
}

/// A client behind a trusted proxy (the test's loopback peer), at `addr`.
async fn login_from(s: &TestServer, addr: &str, user: &str, password: &str) -> reqwest::Response {
    client()
        .post(s.url("/v1/login"))
        .header("x-forwarded-for", addr)
        .json(&json!({ "username": user, "password": password }))
        .send()
        .await
        .unwrap()
}

fn behind_proxy(mut c: Config) -> Config {
    c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
    c
}

/// Finding 2 (high): the throttle was checked before the password hash and
/// the failure recorded after it, so a concurrent burst all passed: 60
/// concurrent wrong passwords got 60 checks. Now at most the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_burst_gets_no_more_password_checks_than_the_limit() {
    let redis = RedisServer::start();
    for config in [Config::for_test(), redis_config(&redis)] {
        let s = TestServer::start(config).await;
        let attempts = (0..100).map(|_| {
            client()
                .post(s.url("/v1/login"))
                .json(&json!({ "username": "alice", "password": "wrong" }))
                .send()
        });
        let answers = futures_util::future::join_all(attempts).await;
        let mut by_status = std::collections::BTreeMap::new();
        for r in answers {
            *by_status.entry(r.unwrap().status().as_u16()).or_insert(0) += 1;
        }
        assert_eq!(
            by_status,
            [(401, 5), (429, 95)].into_iter().collect(),
            "each 401 is one password check; the limit is 5"
        );
        let metrics = client()
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let throttled: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("twintoken_logins_throttled_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(throttled, 95, "{metrics}");
    }
}

/// Issue 13: behind a proxy every request came from the proxy's address,
/// so 20 failures from anyone locked everybody out, and 5 wrong passwords
/// locked a user out for everyone. Counted per real client address now,
/// and failures from elsewhere never refuse an address that has not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_from_other_addresses_never_lock_the_owner_out() {
    let redis = RedisServer::start();
    for config in [behind_proxy(Config::for_test()), behind_proxy(redis_config(&redis))] {
        let s = TestServer::start(config).await;
        // 20 failures with random user names from one address: that address
        // waits, everyone else logs in.
        for i in 0..20 {
            let r = login_from(&s, "203.0.113.66", &format!("nobody{i}"), "x").await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
        let r = login_from(&s, "203.0.113.66", "bob", "correct horse").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=300).contains(&wait), "{wait}");
        assert_eq!(code_of(r).await.1, "throttled");
        assert_eq!(
            login_from(&s, "198.51.100.1", "bob", "correct horse").await.status(),
            StatusCode::OK
        );

        // 5 wrong passwords for alice from one address: that address waits
        // for alice; alice logs in from her own.
        for _ in 0..5 {
            assert_eq!(
                login_from(&s, "203.0.113.77", "alice", "guess").await.status(),
                StatusCode::UNAUTHORIZED
            );
        }
        assert_eq!(
            login_from(&s, "203.0.113.77", "alice", "correct horse").await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            login_from(&s, "198.51.100.2", "alice", "correct horse").await.status(),
            StatusCode::OK
        );

        // A distributed attack on bob: 60 addresses, failures beyond the
        // account threshold (50). Each new address then gets 2 tries for bob,
        // and the owner from a fresh address still gets in at once.
        for i in 0..60 {
            let r = login_from(&s, &format!("192.0.2.{i}"), "bob", "guess").await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
        }
        let fresh = "198.51.100.3";
        assert_eq!(
            login_from(&s, "192.0.2.200", "bob", "guess").await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            login_from(&s, "192.0.2.200", "bob", "guess").await.status(),
            StatusCode::UNAUTHORIZED
        );
        let r = login_from(&s, "192.0.2.200", "bob", "guess").await;
        assert_eq!(
            r.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "under attack: 2 per new address"
        );
        assert_eq!(
            login_from(&s, fresh, "bob", "correct horse").await.status(),
            StatusCode::OK
        );
        let metrics = client()
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("twintoken_logins_throttled_total{reason=\"user_under_attack\"} 1"),
            "{metrics}"
        );

        // IPv6 clients count per /64: another address in the same /64 is
        // the same client.
        for i in 0..5 {
            let r = login_from(&s, &format!("[2001:db8:7:7::{i}]:5000"), "alice", "guess").await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
        let r = login_from(&s, "2001:db8:7:7:ffff::1", "alice", "correct horse").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            login_from(&s, "2001:db8:7:8::1", "alice", "correct horse")
                .await
                .status(),
            StatusCode::OK
        );
    }
}

/// Without a trusted proxy, `X-Forwarded-For` is the client's own word and
/// is ignored: rotating it does not escape the address's limit.
#[tokio::test]
async fn an_untrusted_peer_cannot_choose_its_address() {
    let s = TestServer::start(Config::for_test()).await;
    for i in 0..20 {
        let r = login_from(&s, &format!("198.51.100.{i}"), &format!("nobody{i}"), "x").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = login_from(&s, "198.51.100.99", "bob", "correct horse").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// Issue 13: each node counted on its own, so N nodes gave N budgets. The
/// counters live in Redis; while it is unreachable each node counts alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_the_throttle_through_redis_and_count_alone_without_it() {
    let mut redis = RedisServer::start();
    let a = TestServer::start(behind_proxy(redis_config(&redis))).await;
    let b = TestServer::start(behind_proxy(redis_config(&redis))).await;
    for node in [&a, &b, &a, &b, &a] {
        assert_eq!(
            login_from(node, "1.1.1.1", "alice", "guess").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    for node in [&a, &b] {
        let r = login_from(node, "1.1.1.1", "alice", "correct horse").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "5 failures across two nodes");
    }
    redis.kill();
    for _ in 0..5 {
        let r = login_from(&a, "2.2.2.2", "alice", "guess").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "wrong passwords are still judged");
    }
    let r = login_from(&a, "2.2.2.2", "alice", "correct horse").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "counted in process");
    let r = login_from(&a, "3.3.3.3", "alice", "correct horse").await;
    assert_eq!(
        code_of(r).await,
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable".into()),
        "a right password still needs the store for the session"
    );
}
