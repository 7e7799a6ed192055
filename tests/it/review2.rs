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
    c.store.redis = Some(vec![redis.url().into()]);
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
    tokio::io::BufReader::new(follower)
        .read_line(&mut status)
        .await
        .unwrap();
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
    assert_eq!(
        accepted,
        (0, 0),
        "ended session accepted in 500 races (HTTP/1.1, HTTP/2)"
    );
    let r = client().get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "Redis stayed healthy throughout");
}

/// A server whose bodies must arrive within 1 s while headers may take 10 s
/// (so the body deadline, not the idle watch, is what acts).
async fn body_deadline_server(max_connections: u32) -> TestServer {
    let mut c = Config::for_test();
    c.server.body_read_timeout = Duration::from_secs(1);
    c.server.header_read_timeout = Duration::from_secs(10);
    c.server.max_connections = max_connections;
    TestServer::start(c).await
}

/// An HTTP/1.1 login whose body declares 1000 bytes and sends `sent`.
async fn stalled_login(addr: &str, sent: &[u8]) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(sent).await.unwrap();
    conn
}

/// Reads a connection to its end (the server closed it); the text read.
async fn read_to_close(conn: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&all).into_owned())
}

/// Finding 3 (medium): the idle watch paused while a request was in flight
/// and nothing bounded a body: a POST declaring 1000 bytes that sent 6, a
/// body trickled at 2 B/s and an HTTP/2 stream without END_STREAM were all
/// open after 70 s, and five of them held every connection. Now each gets
/// 408 `request_timeout` after `server.body_read_timeout` and the
/// connection closes (HTTP/2: the stream ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_are_cut_off_at_the_body_read_timeout() {
    let s = body_deadline_server(100).await;
    let addr = s.base.trim_start_matches("http://").to_string();

    // HTTP/1.1: 6 bytes of 1000, then silence.
    let start = Instant::now();
    let mut conn = stalled_login(&addr, b"{\"user").await;
    let answer = read_to_close(&mut conn, Duration::from_secs(8))
        .await
        .expect("the server closes a stalled body's connection");
    let took = start.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(took >= Duration::from_millis(900), "not before the timeout: {took:?}");

    // HTTP/1.1: a body trickled at 2 bytes a second never completes in time.
    let mut conn = stalled_login(&addr, b"{").await;
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if conn.write_all(b"  ").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    let answer = read_to_close(&mut conn, Duration::from_secs(8)).await.expect("closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // HTTP/2: HEADERS without END_STREAM, then nothing.
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = axum::http::Request::post(s.url("/v1/login"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let start = Instant::now();
    let (response, _stream) = h2.send_request(req, false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(8), response)
        .await
        .expect("an HTTP/2 stream with a stalled body is answered")
        .unwrap();
    assert_eq!(response.status(), 408);
    assert!(start.elapsed() >= Duration::from_millis(900));
}

/// Finding 3, the consequence: with `max_connections = 5`, five stalled
/// bodies made `/healthz` time out. Now their connections end at the body
/// deadline and the next client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_cannot_hold_every_connection() {
    let s = body_deadline_server(5).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stalled = Vec::new();
    for _ in 0..5 {
        stalled.push(stalled_login(&addr, b"{\"user").await);
    }
    let r = tokio::time::timeout(Duration::from_secs(8), client().get(s.url("/healthz")).send())
        .await
        .expect("healthz answers once the stalled bodies are cut off")
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for mut conn in stalled {
        let answer = read_to_close(&mut conn, Duration::from_secs(8)).await.expect("closed");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Finding 5 (info): `/metrics` and `/openapi.json` were public on the only
/// listener. With `server.metrics_listen` (the real binary) they are served
/// only there, and the public listener answers 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_moves_metrics_and_the_contract_off_the_public_listener() {
    let d = tempfile::tempdir().unwrap();
    let ops = free_port();
    let config = d.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:{ops}\"\n\
             [store]\npath = \"{store}\"\n[keys]\ndir = \"{keys}\"\n[users]\nfile = \"{users}\"\n\
             [cookies]\nsecure = false\n",
            store = d.path().join("sessions").display(),
            keys = d.path().join("keys").display(),
            users = d.path().join("users.toml").display(),
        ),
    )
    .unwrap();
    let node = crate::support::node::Node::start(d.path(), &config);
    for path in ["/metrics", "/openapi.json"] {
        let r = client().get(node.url(path)).send().await.unwrap();
        assert_eq!(
            code_of(r).await,
            (StatusCode::NOT_FOUND, "not_found".into()),
            "public {path}"
        );
        let r = client()
            .get(format!("http://127.0.0.1:{ops}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "metrics listener {path}");
    }
    let r = client().get(node.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the rest stays on the public listener");
    let r = client()
        .get(format!("http://127.0.0.1:{ops}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the metrics listener serves nothing else"
    );
}

/// A login from behind a trusted proxy (the test's loopback peer) with the
/// given extra headers.
async fn login_via_proxy(s: &TestServer, headers: &[(&str, &[u8])], user: &str, password: &str) -> StatusCode {
    let mut r = client().post(s.url("/v1/login"));
    for (k, v) in headers {
        r = r.header(*k, reqwest::header::HeaderValue::from_bytes(v).unwrap());
    }
    r.json(&json!({ "username": user, "password": password }))
        .send()
        .await
        .unwrap()
        .status()
}

/// Finding 2 (high): `Forwarded` was believed before `X-Forwarded-For`, and
/// proxies that set only the latter pass the client's own `Forwarded`
/// through: 20 failed logins naming 203.0.113.77 locked the real
/// 203.0.113.77 out. Now only `server.forwarded_header` counts. And an
/// `X-Forwarded-For` with non-ASCII client garbage was unreadable and
/// counted at the proxy's own address (locking every client of the proxy
/// out); now the entry the proxy appended is what counts.
#[tokio::test]
async fn a_client_cannot_choose_its_address_through_a_header_the_proxy_does_not_set() {
    let mut c = Config::for_test();
    c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
    let s = TestServer::start(c).await;
    for i in 0..20 {
        let forged: &[(&str, &[u8])] = &[
            ("forwarded", b"for=203.0.113.77"),
            ("x-real-ip", b"203.0.113.77"),
            ("x-forwarded-for", b"198.51.100.5"),
        ];
        let status = login_via_proxy(&s, forged, &format!("nobody{i}"), "x").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let owner: &[(&str, &[u8])] = &[("x-forwarded-for", b"203.0.113.77")];
    assert_eq!(
        login_via_proxy(&s, owner, "bob", "correct horse").await,
        StatusCode::OK,
        "the address named in the forged headers is not locked out"
    );
    let guesser: &[(&str, &[u8])] = &[("x-forwarded-for", b"198.51.100.5")];
    assert_eq!(
        login_via_proxy(&s, guesser, "bob", "correct horse").await,
        StatusCode::TOO_MANY_REQUESTS,
        "the guesser's real address is"
    );

    for i in 0..20 {
        let garbage: &[(&str, &[u8])] = &[("x-forwarded-for", b"\xff\xfe, 198.51.100.6")];
        let status = login_via_proxy(&s, garbage, &format!("nobody{i}"), "x").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let other: &[(&str, &[u8])] = &[("x-forwarded-for", b"198.51.100.7")];
    assert_eq!(
        login_via_proxy(&s, other, "bob", "correct horse").await,
        StatusCode::OK,
        "the proxy's other clients are not locked out"
    );
    let bad_proxy: &[(&str, &[u8])] = &[("x-forwarded-for", b"198.51.100.7, not-an-address")];
    assert_eq!(
        login_via_proxy(&s, bad_proxy, "bob", "correct horse").await,
        StatusCode::BAD_REQUEST,
        "an entry the trusted proxy wrote must be readable"
    );
}

/// The demo page declares a Content-Security-Policy that allows only its
/// own two inline blocks (by hash) and forbids framing, with
/// `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`; every answer
/// — page, JSON, error, refusal before routing — says `nosniff`. (The
/// browser test drives the page under the policy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_answers_carry_a_content_security_policy_and_every_answer_says_nosniff() {
    let s = TestServer::start(Config::for_test()).await;
    let c = client();
    let page = c.get(s.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let h = page.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap().to_string();
    for part in [
        "default-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(part), "{part} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let body = page.text().await.unwrap();
    assert!(!body.contains("{{"), "the page's blocks are filled in");
    // The hashes name exactly the page's one script and one style block.
    use base64::Engine as _;
    use sha2::Digest as _;
    for (open, close, directive) in [
        ("<script>", "</script>", "script-src"),
        ("<style>", "</style>", "style-src"),
    ] {
        assert_eq!(body.matches(open).count(), 1, "one {open} block");
        let block = &body[body.find(open).unwrap() + open.len()..body.find(close).unwrap()];
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(block.as_bytes()));
        assert!(
            csp.contains(&format!("{directive} 'sha256-{hash}'")),
            "{directive} names the block: {csp}"
        );
    }

    let long_header = "x".repeat(40 * 1024);
    let answers = [
        c.get(s.url("/healthz")).send().await.unwrap(),
        c.get(s.url("/v1/verify")).send().await.unwrap(),
        c.get(s.url("/no/such/page")).send().await.unwrap(),
        c.post(s.url("/v1/login"))
            .body("{")
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap(),
        c.get(s.url("/v1/verify"))
            .header("x-big", long_header)
            .send()
            .await
            .unwrap(),
    ];
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [200, 401, 404, 400, 431]);
    for r in &answers {
        assert_eq!(
            r.headers().get("x-content-type-options").map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{}",
            r.url()
        );
    }
}

/// Seven right-password attempts by alice (more than the 5 per user and
/// address), each made by `attempt` once the breaker is closed, on a
/// server over a real Redis with a 100 ms store timeout; then, after two
/// seconds for retried give-backs to land, seven logins that must all pass.
async fn seven_right_attempts_leave_no_count(
    attempt: impl AsyncFn(&TestServer, &RedisServer, twintoken::http::Account, std::net::IpAddr, twintoken::time::UnixMs),
) {
    use twintoken::verify::BreakerState;
    let redis = RedisServer::start();
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url().into()]);
    c.store.timeout = Duration::from_millis(100);
    let s = TestServer::start(c).await;
    let st = s.state();
    let addr: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let now = twintoken::time::Clock::now(&*s.clock);
    for _ in 0..7 {
        let start = Instant::now();
        while st.verifier.breaker_state() != BreakerState::Closed {
            assert!(start.elapsed() < Duration::from_secs(5), "breaker closes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        attempt(&s, &redis, twintoken::http::Account::User("alice".into()), addr, now).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in 0..7 {
        let r = client()
            .post(s.url("/v1/login"))
            .json(&json!({ "username": "alice", "password": "correct horse" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "login {n} with the right password");
    }
}

/// Found by the chaos run (not the review): a store blip between a right
/// password and the give-back of its throttle count left the count in the
/// store, and a few blips locked the user (or everybody behind one
/// address) out with 429. The give-back the store missed is now retried
/// until it lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_give_back_the_store_missed_is_retried_until_it_lands() {
    // Each admitted by Redis and given back while Redis is frozen.
    seven_right_attempts_leave_no_count(async |s, redis, account, addr, now| {
        let st = s.state();
        let t = st
            .throttle
            .admit(&st.verifier, &account, addr, now)
            .await
            .expect("admitted");
        redis.freeze();
        st.throttle.succeeded(&st.verifier, t, now).await;
        redis.thaw();
    })
    .await;
}

/// A count made in process (the breaker was open) is given back in
/// process, never to Redis, where it would erase a failure someone else
/// made: Redis keeps alice's three failures through her right-password
/// login during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_count_made_in_process_is_given_back_in_process() {
    use twintoken::http::Account;
    use twintoken::verify::BreakerState;
    let redis = RedisServer::start();
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url().into()]);
    c.store.timeout = Duration::from_millis(100);
    let s = TestServer::start(c).await;
    let st = s.state();
    let wrong = || async {
        client()
            .post(s.url("/v1/login"))
            .json(&json!({ "username": "alice", "password": "wrong horse" }))
            .send()
            .await
            .unwrap()
            .status()
    };
    for _ in 0..3 {
        assert_eq!(wrong().await, StatusCode::UNAUTHORIZED);
    }
    let bob = s.login_json("bob").await;
    let long = bob["long_token"].as_str().unwrap();
    redis.freeze();
    for _ in 0..twintoken::verify::FAILURES_TO_OPEN {
        let r = client()
            .get(s.url("/v1/verify"))
            .bearer_auth(long)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "fallback");
    }
    assert_eq!(st.verifier.breaker_state(), BreakerState::Open);
    let addr: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let now = twintoken::time::Clock::now(&*s.clock);
    let t = st
        .throttle
        .admit(&st.verifier, &Account::User("alice".into()), addr, now)
        .await
        .expect("admitted in process");
    redis.thaw();
    // The probe half-opens the breaker; a store call that succeeds closes it.
    let start = Instant::now();
    while st.verifier.breaker_state() != BreakerState::Closed {
        assert!(start.elapsed() < Duration::from_secs(5), "breaker closes");
        let _ = client()
            .get(s.url("/v1/verify?strict=true"))
            .bearer_auth(long)
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    st.throttle.succeeded(&st.verifier, t, now).await;
    // 5 per user and address: two more failures, then refused.
    for _ in 0..2 {
        assert_eq!(wrong().await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(wrong().await, StatusCode::TOO_MANY_REQUESTS);
}

/// Found by the chaos run in CI: a right-password login whose client went
/// away between the throttle's count and its give-back (a reset connection)
/// left a failure counted against its address; enough of them and every
/// login from that address was refused. The attempt now runs to its end
/// whatever the client does. Each login here is reset while its hash is
/// being computed, after Redis holds its count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_reset_mid_attempt_gives_its_count_back() {
    use redis::Commands;
    let redis = RedisServer::start();
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url().into()]);
    let s = TestServer::start(c).await;
    let mut conn = redis.conn();
    let addr = s
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let body = r#"{"username":"alice","password":"correct horse"}"#;
    let request = format!(
        "POST /v1/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let counted = |conn: &mut redis::Connection| -> i64 {
        let keys: Vec<String> = conn.keys("*t:{a:*").unwrap();
        keys.iter()
            .map(|k| conn.hget::<_, _, Option<i64>>(k, "n").unwrap().unwrap_or(0))
            .sum()
    };
    // More than the 5 per user and address, each reset once Redis holds
    // its count.
    for n in 0..7 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let start = Instant::now();
        while counted(&mut conn) == 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "login {n} is counted");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tcp.set_zero_linger().unwrap();
        drop(tcp);
        // The attempt finishes on its own: its count is given back.
        let start = Instant::now();
        while counted(&mut conn) != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "login {n}'s count is given back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let r = client()
        .post(s.url("/v1/login"))
        .json(&json!({ "username": "alice", "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Found by the chaos run: a throttle count sent to a frozen Redis timed
/// out, so the attempt was counted in process, but Redis made the count
/// when it woke up and nothing gave it back; a right password each time
/// still locked the user out. Such counts are now given back in both
/// places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_count_that_timed_out_is_given_back_in_the_store_too() {
    // Each sent to Redis while it is frozen (the count is made when it
    // wakes up).
    seven_right_attempts_leave_no_count(async |s, redis, account, addr, now| {
        let st = s.state();
        redis.freeze();
        let t = st
            .throttle
            .admit(&st.verifier, &account, addr, now)
            .await
            .expect("admitted in process");
        redis.thaw();
        st.throttle.succeeded(&st.verifier, t, now).await;
    })
    .await;
}
