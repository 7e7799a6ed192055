//! One-time-code login over HTTP: codes delivered to a webhook receiver the
//! test runs (and once to the log of a real `twintoken serve`), on the
//! embedded store and on a real redis-server.

use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use twintoken::config::{CodeSender, Config};

use crate::support::redis_server::RedisServer;
use crate::support::server::TestServer;
use crate::support::webhook::{Mode, Receiver};

const ALICE_PHONE: &str = "+4915112345678";
const BOB_MAIL: &str = "bob@example.com";
const SECRET: &str = "webhook secret for tests";

fn config(receiver: &Receiver) -> Config {
    let mut c = Config::for_test();
    c.code_login.enabled = true;
    c.code_login.sender = CodeSender::Webhook;
    c.code_login.webhook_url = Some(receiver.url.clone());
    c.code_login.webhook_secret = Some(SECRET.into());
    c.code_login.webhook_timeout = Duration::from_millis(500);
    c
}

async fn post(s: &TestServer, path: &str, body: Value) -> reqwest::Response {
    Client::new().post(s.url(path)).json(&body).send().await.unwrap()
}

async fn send(s: &TestServer, dest: &str) -> reqwest::Response {
    post(s, "/v1/login/code/send", json!({ "destination": dest })).await
}

async fn login(s: &TestServer, dest: &str, code: &str) -> reqwest::Response {
    post(
        s,
        "/v1/login/code",
        json!({ "destination": dest, "code": code, "device": "mobile" }),
    )
    .await
}

async fn error_of(r: reqwest::Response) -> (StatusCode, String, String, Option<String>) {
    let status = r.status();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let b: Value = r.json().await.unwrap();
    (
        status,
        b["error"].as_str().unwrap_or("").into(),
        b["message"].as_str().unwrap_or("").into(),
        retry,
    )
}

/// A code that is not `code` (for wrong guesses).
fn other(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

async fn happy_path(s: &TestServer, receiver: &Receiver) {
    let r = send(s, "+49 151 1234 5678").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["status"], "sent");
    assert_eq!(b["resend_after_seconds"], 60);
    assert!(b.get("code").is_none(), "the answer never carries the code: {b}");

    let p = receiver.next().await;
    assert_eq!((p.destination.as_str(), p.kind.as_str()), (ALICE_PHONE, "phone"));
    assert_eq!(p.ttl_seconds, 120);
    assert!(p.code.len() == 6 && p.code.bytes().all(|b| b.is_ascii_digit()), "{p:?}");

    let r = login(s, ALICE_PHONE, &p.code).await;
    assert_eq!(r.status(), StatusCode::OK);
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        cookies.len(),
        2,
        "both cookies, as a password login sets them: {cookies:?}"
    );
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["user_id"], "1001");
    for k in [
        "session_id",
        "long_token",
        "short_token",
        "long_expires_at",
        "short_expires_at",
    ] {
        assert!(b[k].is_string(), "{k} in {b}");
    }
    let who = Client::new()
        .get(s.url("/v1/verify"))
        .bearer_auth(b["long_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(who.status(), StatusCode::OK);
    assert_eq!(who.headers()["x-user-id"], "1001");

    let (status, error, _, _) = error_of(login(s, ALICE_PHONE, &p.code).await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_code"),
        "a code works once"
    );
}

#[tokio::test]
async fn a_code_from_the_webhook_logs_the_user_in_once() {
    let receiver = Receiver::start(SECRET).await;
    let s = TestServer::start(config(&receiver)).await;
    happy_path(&s, &receiver).await;

    // E-mail destinations too, case-insensitively.
    assert_eq!(send(&s, "Bob@Example.com").await.status(), StatusCode::ACCEPTED);
    let p = receiver.next().await;
    assert_eq!((p.destination.as_str(), p.kind.as_str()), ("bob@example.com", "email"));
    let r = login(&s, "bob@example.com", &p.code).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["user_id"], "1002");
}

#[tokio::test]
async fn code_login_works_on_redis_too() {
    let redis = RedisServer::start();
    let receiver = Receiver::start(SECRET).await;
    let mut c = config(&receiver);
    c.store.redis = Some(vec![redis.url().into()]);
    let s = TestServer::start(c).await;
    happy_path(&s, &receiver).await;
    // No phone number in Redis key names.
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis.conn()).unwrap();
    assert!(keys.iter().any(|k| k.starts_with("tt:c:{")), "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains("4915112345678")), "{keys:?}");
}

/// A code login from `addr` (the test's peer is a trusted proxy).
async fn login_from(s: &TestServer, addr: &str, dest: &str, code: &str) -> reqwest::Response {
    Client::new()
        .post(s.url("/v1/login/code"))
        .header("x-forwarded-for", addr)
        .json(&json!({ "destination": dest, "code": code }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn expired_codes_and_five_wrong_guesses_do_not_log_in() {
    let receiver = Receiver::start(SECRET).await;
    let mut c = config(&receiver);
    // Five wrong guesses burn a code here (from all addresses together).
    c.code_login.max_attempts_per_code = 5;
    c.server.trusted_proxies = vec!["127.0.0.1".into()];
    let s = TestServer::start(c).await;

    send(&s, ALICE_PHONE).await;
    let code = receiver.next().await.code;
    s.clock.advance(Duration::from_secs(121));
    let (status, error, _, _) = error_of(login_from(&s, "198.51.100.21", ALICE_PHONE, &code).await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_code"),
        "expired"
    );

    assert_eq!(send(&s, ALICE_PHONE).await.status(), StatusCode::ACCEPTED);
    let code = receiver.next().await.code;
    // The second review: the answers said "N attempt(s) left" and
    // `code_burned`, which told a guesser that a code was outstanding. Now
    // a wrong code, the burning guess and no code at all answer alike.
    let (_, _, nothing_outstanding, _) = error_of(login(&s, BOB_MAIL, "123456").await).await;
    for guess in 1..=5 {
        let (status, error, message, _) = error_of(login(&s, ALICE_PHONE, &other(&code)).await).await;
        assert_eq!(
            (status, error.as_str()),
            (StatusCode::UNAUTHORIZED, "invalid_code"),
            "guess {guess}"
        );
        assert_eq!(
            message, nothing_outstanding,
            "guess {guess} answers like no code at all"
        );
        assert!(!message.contains("attempt"), "{message}");
    }
    // The guessing address has used its five tries for this destination.
    let (status, error, _, _) = error_of(login(&s, ALICE_PHONE, &code).await).await;
    assert_eq!((status, error.as_str()), (StatusCode::TOO_MANY_REQUESTS, "throttled"));
    // From another address, the right code no longer works: it was burned.
    let (status, error, _, _) = error_of(login_from(&s, "198.51.100.20", ALICE_PHONE, &code).await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_code"),
        "the right code no longer works once burned"
    );
}

#[tokio::test]
async fn resending_too_soon_or_too_often_is_refused_with_retry_after() {
    let receiver = Receiver::start(SECRET).await;
    let mut c = config(&receiver);
    c.code_login.daily_limit = 3;
    c.code_login.sends_per_address = 100;
    let s = TestServer::start(c).await;

    assert_eq!(send(&s, ALICE_PHONE).await.status(), StatusCode::ACCEPTED);
    receiver.next().await;
    s.clock.advance(Duration::from_secs(20));
    let (status, error, _, retry) = error_of(send(&s, ALICE_PHONE).await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_codes")
    );
    assert_eq!(retry.as_deref(), Some("40"));
    assert!(receiver.try_next().await.is_none(), "nothing sent while refused");

    for _ in 0..2 {
        s.clock.advance(Duration::from_secs(60));
        assert_eq!(send(&s, ALICE_PHONE).await.status(), StatusCode::ACCEPTED);
        receiver.next().await;
    }
    s.clock.advance(Duration::from_secs(60));
    let (status, error, _, retry) = error_of(send(&s, ALICE_PHONE).await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_codes")
    );
    let retry: u64 = retry.unwrap().parse().unwrap();
    assert!(retry > 23 * 3600, "the daily window ends in about a day: {retry}");
}

#[tokio::test]
async fn one_address_cannot_request_unbounded_codes() {
    let receiver = Receiver::start(SECRET).await;
    let mut c = config(&receiver);
    c.code_login.sends_per_address = 3;
    let s = TestServer::start(c).await;
    for i in 0..3 {
        let r = send(&s, &format!("+49151000000{i:02}")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let (status, error, _, retry) = error_of(send(&s, "+4915100000099").await).await;
    assert_eq!((status, error.as_str()), (StatusCode::TOO_MANY_REQUESTS, "throttled"));
    assert!(retry.is_some());
}

#[tokio::test]
async fn malformed_requests_get_400_and_change_nothing() {
    let receiver = Receiver::start(SECRET).await;
    let s = TestServer::start(config(&receiver)).await;
    for dest in [
        "",
        "12345",
        "+12",
        "+0049151123456",
        "+49151123456789012",
        "alice",
        "alice@",
        "alice@localhost",
        "a b@example.com",
        "<script>@example.com",
        &"a".repeat(300),
    ] {
        let (status, error, _, _) = error_of(send(&s, dest).await).await;
        assert_eq!(
            (status, error.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_destination"),
            "{dest:?}"
        );
    }
    for body in [
        json!({}),
        json!({ "destination": 4915112345678u64 }),
        json!({ "destination": ALICE_PHONE, "extra": 1 }),
    ] {
        let (status, error, _, _) = error_of(post(&s, "/v1/login/code/send", body.clone()).await).await;
        assert_eq!(
            (status, error.as_str()),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{body}"
        );
    }
    for code in ["", "12345", "1234567", "12345a", "１２３４５６"] {
        let (status, _, message, _) = error_of(login(&s, ALICE_PHONE, code).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{code:?}");
        assert!(message.contains("6 digits"), "{message}");
    }
    assert!(receiver.try_next().await.is_none(), "no code was sent for any of these");
}

#[tokio::test]
async fn a_failing_or_slow_receiver_is_a_clear_error_without_the_code() {
    let receiver = Receiver::start(SECRET).await;
    let s = TestServer::start(config(&receiver)).await;

    receiver.set_mode(Mode::Fail);
    let r = send(&s, ALICE_PHONE).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    assert!(text.contains("sender_failed"), "{text}");
    assert!(
        !text.chars().any(|c| c.is_ascii_digit()),
        "no code (no digits at all) in {text}"
    );

    receiver.set_mode(Mode::Slow(Duration::from_secs(10)));
    let started = std::time::Instant::now();
    let r = send(&s, ALICE_PHONE).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{text}");
    assert!(text.contains("sender_timeout"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by webhook_timeout (500ms), not the receiver's 10 s"
    );
    assert!(!text.chars().any(|c| c.is_ascii_digit()), "no code in {text}");

    // A failed delivery withdraws its code and does not make the user wait.
    receiver.set_mode(Mode::Accept);
    let _late = tokio::time::timeout(Duration::from_secs(4), receiver.next()).await; // the slow one
    assert_eq!(send(&s, ALICE_PHONE).await.status(), StatusCode::ACCEPTED);
    let code = receiver.next().await.code;
    assert_eq!(login(&s, ALICE_PHONE, &code).await.status(), StatusCode::OK);

    // A receiver that is down altogether.
    let mut c = config(&receiver);
    c.code_login.webhook_url = Some(format!(
        "http://127.0.0.1:{}/send",
        crate::support::redis_server::free_port()
    ));
    let down = TestServer::start(c).await;
    let (status, error, _, _) = error_of(send(&down, ALICE_PHONE).await).await;
    assert_eq!((status, error.as_str()), (StatusCode::BAD_GATEWAY, "sender_failed"));
}

#[tokio::test]
async fn unknown_destinations_answer_like_known_ones_and_get_nothing() {
    let receiver = Receiver::start(SECRET).await;
    let s = TestServer::start(config(&receiver)).await;

    let known = send(&s, ALICE_PHONE).await;
    let known_status = known.status();
    let known_body: Value = known.json().await.unwrap();
    receiver.next().await;
    let unknown = send(&s, "+4915199999999").await;
    let unknown_status = unknown.status();
    let unknown_body: Value = unknown.json().await.unwrap();
    assert_eq!(known_status, unknown_status);
    let shape = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(shape(&known_body), shape(&unknown_body));
    assert_eq!(known_body["resend_after_seconds"], unknown_body["resend_after_seconds"]);
    assert!(
        receiver.try_next().await.is_none(),
        "no code goes to a stranger's phone"
    );

    // Guessing against either gives the same answers.
    let mut messages = Vec::new();
    for dest in [ALICE_PHONE, "+4915199999999"] {
        let (status, error, message, _) = error_of(login(&s, dest, "000000").await).await;
        assert_eq!((status, error.as_str()), (StatusCode::UNAUTHORIZED, "invalid_code"));
        messages.push(message);
    }
    assert_eq!(messages[0], messages[1]);
    // And the limits apply to both alike.
    for dest in [ALICE_PHONE, "+4915199999999"] {
        let (status, error, _, _) = error_of(send(&s, dest).await).await;
        assert_eq!(
            (status, error.as_str()),
            (StatusCode::TOO_MANY_REQUESTS, "too_many_codes"),
            "{dest}"
        );
    }
}

#[tokio::test]
async fn auto_registration_creates_a_stable_user_per_destination() {
    let receiver = Receiver::start(SECRET).await;
    let mut c = config(&receiver);
    c.code_login.auto_register = true;
    let s = TestServer::start(c).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        assert_eq!(send(&s, "new.user@example.org").await.status(), StatusCode::ACCEPTED);
        let code = receiver.next().await.code;
        let r = login(&s, "new.user@example.org", &code).await;
        assert_eq!(r.status(), StatusCode::OK);
        ids.push(
            r.json::<Value>().await.unwrap()["user_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        s.clock.advance(Duration::from_secs(61));
    }
    assert_eq!(ids[0], ids[1], "the same destination is the same user");
    assert!(ids[0].starts_with("c-") && ids[0].len() == 34, "{}", ids[0]);
    // Known destinations still map to their users.
    assert_eq!(send(&s, ALICE_PHONE).await.status(), StatusCode::ACCEPTED);
    let code = receiver.next().await.code;
    let r = login(&s, ALICE_PHONE, &code).await;
    assert_eq!(r.json::<Value>().await.unwrap()["user_id"], "1001");
}

#[tokio::test]
async fn code_login_is_absent_unless_enabled_and_guards_against_csrf() {
    let s = TestServer::start(Config::for_test()).await;
    let (status, _, _, _) = error_of(send(&s, ALICE_PHONE).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let receiver = Receiver::start(SECRET).await;
    let s = TestServer::start(config(&receiver)).await;
    let r = Client::new()
        .post(s.url("/v1/login/code/send"))
        .header("origin", "https://evil.example")
        .json(&json!({ "destination": ALICE_PHONE }))
        .send()
        .await
        .unwrap();
    let (status, error, _, _) = error_of(r).await;
    assert_eq!((status, error.as_str()), (StatusCode::FORBIDDEN, "csrf"));
    assert!(receiver.try_next().await.is_none());
}

/// The `log` sender of a real `twintoken serve`: the code is read from the
/// service log, as a developer would.
#[test]
fn the_log_sender_writes_the_code_to_the_service_log() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("twintoken.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\nlog_format = \"json\"\n[code_login]\nenabled = true\nauto_register = true\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_twintoken"))
        .args(["serve", "--config", "twintoken.toml"])
        .current_dir(d.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_log = || -> Value {
        let line = lines.next().expect("serve keeps logging").unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    let addr = loop {
        let l = next_log();
        if let Some(m) = l["fields"]["message"].as_str()
            && let Some(rest) = m.split("open http://").nth(1)
        {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = format!("http://{addr}");
    let status = rt.block_on(async {
        Client::new()
            .post(format!("{base}/v1/login/code/send"))
            .json(&json!({ "destination": "dev@example.com" }))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, StatusCode::ACCEPTED);
    let code = loop {
        let l = next_log();
        if l["fields"]["destination"] == "dev@example.com" {
            break l["fields"]["code"].as_str().unwrap().to_string();
        }
    };
    let r = rt.block_on(async {
        Client::new()
            .post(format!("{base}/v1/login/code"))
            .json(&json!({ "destination": "dev@example.com", "code": code }))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(r.status(), StatusCode::OK);
    let _ = child.kill();
    let _ = child.wait();
}

/// Review finding 7: anyone who knew a phone number could burn its
/// outstanding code with 5 wrong guesses. Wrong codes now count per
/// (destination, client address); a code survives 20 from everybody.
#[tokio::test]
async fn a_stranger_cannot_burn_the_owners_code() {
    let receiver = Receiver::start(SECRET).await;
    let mut c = config(&receiver);
    c.server.trusted_proxies = vec!["127.0.0.1".into()];
    let s = TestServer::start(c).await;
    send(&s, ALICE_PHONE).await;
    let code = receiver.next().await.code;
    for _ in 0..5 {
        let (status, error, _, _) = error_of(login_from(&s, "203.0.113.5", ALICE_PHONE, &other(&code)).await).await;
        assert_eq!((status, error.as_str()), (StatusCode::UNAUTHORIZED, "invalid_code"));
    }
    let (status, error, _, headers) = error_of(login_from(&s, "203.0.113.5", ALICE_PHONE, &other(&code)).await).await;
    assert_eq!((status, error.as_str()), (StatusCode::TOO_MANY_REQUESTS, "throttled"));
    assert!(
        headers.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)),
        "Retry-After"
    );
    let r = login_from(&s, "198.51.100.30", ALICE_PHONE, &code).await;
    assert_eq!(r.status(), StatusCode::OK, "the owner's code still works");
}
