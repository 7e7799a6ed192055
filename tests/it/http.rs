//! The HTTP contract, against the real listening server (and once against
//! the router directly).

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use twintoken::config::Config;

use crate::support::server::TestServer;

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Login {
    long: String,
    short: String,
    sid: String,
    set_cookies: Vec<String>,
}

async fn login(s: &TestServer, user: &str) -> Login {
    let r = client()
        .post(s.url("/v1/login"))
        .json(&json!({ "username": user, "password": "correct horse", "device": "pc" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let set_cookies = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let b: Value = r.json().await.unwrap();
    Login {
        long: b["long_token"].as_str().unwrap().into(),
        short: b["short_token"].as_str().unwrap().into(),
        sid: b["session_id"].as_str().unwrap().into(),
        set_cookies,
    }
}

fn cookie_header(l: &Login, s: &TestServer) -> String {
    let c = &s.state().config.cookies;
    format!("{}={}; {}={}", c.long_name(), l.long, c.short_name(), l.short)
}

async fn error_of(r: reqwest::Response) -> (StatusCode, String, HeaderMap) {
    let status = r.status();
    let headers = r.headers().clone();
    let b: Value = r
        .json()
        .await
        .unwrap_or_else(|e| panic!("{status}: body is not the JSON error shape: {e}"));
    assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
    (status, b["error"].as_str().unwrap_or("").to_string(), headers)
}

#[tokio::test]
async fn login_sets_both_cookies_with_the_right_attributes() {
    let s = TestServer::start(Config::for_test()).await;
    let l = login(&s, "alice").await;
    assert_eq!(l.set_cookies.len(), 2);
    let short = l.set_cookies.iter().find(|c| c.starts_with("tt_short=")).unwrap();
    let long = l.set_cookies.iter().find(|c| c.starts_with("tt_long=")).unwrap();
    for c in [short, long] {
        for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
        assert!(!c.contains("Secure"), "Config::for_test turns Secure off: {c}");
    }
    assert!(short.contains("Max-Age=60;"), "{short}");
    assert!(long.contains(&format!("Max-Age={};", 30 * 86400)), "{long}");

    let mut secure = Config::for_test();
    secure.cookies.secure = true;
    let s2 = TestServer::start(secure).await;
    assert!(
        login(&s2, "alice")
            .await
            .set_cookies
            .iter()
            .all(|c| c.ends_with("; Secure"))
    );
}

#[tokio::test]
async fn verify_by_cookies_and_by_headers() {
    let s = TestServer::start(Config::for_test()).await;
    let l = login(&s, "alice").await;
    for method in [reqwest::Method::GET, reqwest::Method::POST, reqwest::Method::DELETE] {
        let r = client()
            .request(method, s.url("/v1/verify"))
            .header("cookie", cookie_header(&l, &s))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-user-id"], "1001");
        assert_eq!(r.headers()["x-session-id"], l.sid.as_str());
        assert_eq!(r.headers()["x-auth-path"], "short");
        let auth_time: u64 = r.headers()["x-auth-time"].to_str().unwrap().parse().unwrap();
        assert_eq!(
            auth_time,
            twintoken::time::Clock::now(&*s.clock).0 / 1000,
            "the login is the last authentication"
        );
        let b: Value = r.json().await.unwrap();
        assert_eq!(
            b,
            json!({ "user_id": "1001", "session_id": l.sid, "path": "short", "auth_time": auth_time })
        );
    }
    let r = client()
        .get(s.url("/v1/verify"))
        .bearer_auth(&l.long)
        .header("x-short-token", &l.short)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-auth-path"], "short");
    assert!(r.headers().get("set-cookie").is_none(), "header clients get no cookies");

    // No short token: the long path answers and hands out a new short one.
    let r = client()
        .get(s.url("/v1/verify"))
        .bearer_auth(&l.long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-auth-path"], "long");
    assert!(r.headers().get("x-short-token").is_some());
    let c = &s.state().config.cookies;
    let r = client()
        .get(s.url("/v1/verify"))
        .header("cookie", format!("{}={}", c.long_name(), l.long))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-auth-path"], "long");
    let set: Vec<&str> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        set.len() == 1 && set[0].starts_with("tt_short=") && set[0].contains("HttpOnly"),
        "the refreshed short cookie: {set:?}"
    );
    for h in [
        "x-short-token",
        "x-long-token",
        "x-set-cookie-short",
        "x-set-cookie-long",
    ] {
        assert!(
            r.headers().get(h).is_none(),
            "cookie clients get re-issued tokens only as HttpOnly cookies, never in {h}"
        );
    }

    // An expired short token with its long token: long path again.
    s.clock.advance(Duration::from_secs(61));
    let r = client()
        .get(s.url("/v1/verify"))
        .header("cookie", cookie_header(&l, &s))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-auth-path"], "long");
    let r = client()
        .get(s.url("/v1/verify"))
        .header("x-short-token", &l.short)
        .send()
        .await
        .unwrap();
    let (status, code, headers) = error_of(r).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "expired"));
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
}

#[tokio::test]
async fn bad_tokens_get_401_with_the_right_code() {
    let s = TestServer::start(Config::for_test()).await;
    let l = login(&s, "alice").await;
    let get = |auth: Option<String>| {
        let mut rq = client().get(s.url("/v1/verify"));
        if let Some(a) = auth {
            rq = rq.header("authorization", a);
        }
        rq.send()
    };
    assert_eq!(error_of(get(None).await.unwrap()).await.1, "missing");
    let mut tampered = l.long.clone().into_bytes();
    tampered[40] = if tampered[40] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [tampered.as_str(), "garbage!", &"A".repeat(600), &l.short] {
        let (status, code, _) = error_of(get(Some(format!("Bearer {bad}"))).await.unwrap()).await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "invalid"), "{bad}");
    }
    assert_eq!(
        error_of(get(Some("Basic abc".into())).await.unwrap()).await.1,
        "invalid"
    );

    // A token sealed by another deployment's key.
    let other = TestServer::start(Config::for_test()).await;
    let foreign = login(&other, "alice").await;
    assert_eq!(
        error_of(get(Some(format!("Bearer {}", foreign.long))).await.unwrap())
            .await
            .1,
        "invalid"
    );

    // Past the absolute lifetime.
    s.clock.advance(Duration::from_secs(31 * 86400));
    assert_eq!(
        error_of(get(Some(format!("Bearer {}", l.long))).await.unwrap()).await.1,
        "expired"
    );
}

/// A logout or logout-all whose tokens no longer authenticate (401) still
/// clears both cookies, so the browser drops dead tokens; a CSRF refusal
/// does not (a cross-site form must not log anybody out).
#[tokio::test]
async fn a_logout_with_dead_tokens_clears_the_cookies_and_a_csrf_refusal_does_not() {
    let s = TestServer::start(Config::for_test()).await;
    let origin = s.base.clone();
    let dead = login(&s, "alice").await;
    let r = client()
        .post(s.url("/v1/logout"))
        .header("cookie", cookie_header(&dead, &s))
        .header("origin", &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for path in ["/v1/logout", "/v1/logout-all"] {
        let send = |origin: &str| {
            client()
                .post(s.url(path))
                .header("cookie", cookie_header(&dead, &s))
                .header("origin", origin)
                .send()
        };
        let r = send(&origin).await.unwrap();
        let cleared: Vec<String> = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(error_of(r).await.1, "revoked", "{path}");
        assert_eq!(cleared.len(), 2, "{path}: {cleared:?}");
        assert!(cleared.iter().all(|c| c.contains("Max-Age=0")), "{path}: {cleared:?}");
        let r = send("https://evil.example").await.unwrap();
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 0, "{path}");
        assert_eq!(error_of(r).await.1, "csrf", "{path}");
    }
}

#[tokio::test]
async fn logout_logout_all_and_kick_take_effect() {
    let mut config = Config::for_test();
    config.server.admin_token = Some("s3cret-admin-token-for-the-http-tests".into());
    let s = TestServer::start(config).await;
    let origin = s.base.clone();
    let a1 = login(&s, "alice").await;
    let a2 = login(&s, "alice").await;

    // Logout with cookies (same-origin): the session ends, cookies are cleared.
    let r = client()
        .post(s.url("/v1/logout"))
        .header("cookie", cookie_header(&a1, &s))
        .header("origin", &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cleared: Vec<&str> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cleared.len(), 2);
    assert!(cleared.iter().all(|c| c.contains("Max-Age=0")), "{cleared:?}");
    let r = client()
        .get(s.url("/v1/verify"))
        .header("cookie", cookie_header(&a1, &s))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1, "revoked", "even the unexpired short token");

    // The user's own sessions.
    let r = client()
        .get(s.url("/v1/sessions"))
        .bearer_auth(&a2.long)
        .send()
        .await
        .unwrap();
    let b: Value = r.json().await.unwrap();
    let list = b["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["session_id"], a2.sid.as_str());
    assert_eq!(list[0]["current"], true);
    assert_eq!(list[0]["device"], "pc");
    assert_eq!(list[0]["ip"], "127.0.0.1");

    // Logout-all by bearer (no CSRF check needed).
    let a3 = login(&s, "alice").await;
    let r = client()
        .post(s.url("/v1/logout-all"))
        .bearer_auth(&a3.long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["sessions_ended"], 2);
    for t in [&a2, &a3] {
        let r = client()
            .get(s.url("/v1/verify"))
            .bearer_auth(&t.long)
            .header("x-short-token", &t.short)
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(r).await.1, "revoked");
    }

    // Admin: issue, list, kick one, stats, kick all.
    let admin = |rq: reqwest::RequestBuilder| rq.bearer_auth("s3cret-admin-token-for-the-http-tests").send();
    let r = admin(
        client()
            .post(s.url("/v1/admin/sessions"))
            .json(&json!({ "user_id": "app-user-9" })),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let issued: Value = r.json().await.unwrap();
    let b = login(&s, "bob").await;
    let r = admin(client().get(s.url("/v1/admin/users/1002/sessions")))
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["sessions"].as_array().unwrap().len(),
        1
    );
    let r = admin(client().get(s.url("/v1/admin/stats"))).await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "online_users": 2, "online_sessions": 2 })
    );
    let r = admin(client().delete(s.url(&format!("/v1/admin/users/1002/sessions/{}", b.sid))))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client()
        .get(s.url("/v1/verify"))
        .bearer_auth(&b.long)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1, "revoked");
    let r = admin(client().delete(s.url("/v1/admin/users/app-user-9/sessions")))
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["sessions_ended"], 1);
    let r = client()
        .get(s.url("/v1/verify"))
        .bearer_auth(issued["long_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1, "revoked");
    // Wrong admin token; unknown session.
    let r = client()
        .get(s.url("/v1/admin/stats"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, StatusCode::UNAUTHORIZED);
    let r = admin(client().delete(s.url("/v1/admin/users/1002/sessions/AAAAAAAAAAAAAAAAAAAAAA")))
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1, "not_found");
}

#[tokio::test]
async fn csrf_guards_cookie_authenticated_changes() {
    let s = TestServer::start(Config::for_test()).await;
    let l = login(&s, "alice").await;
    let post = |origin: Option<&str>| {
        let mut rq = client()
            .post(s.url("/v1/logout"))
            .header("cookie", cookie_header(&l, &s));
        if let Some(o) = origin {
            rq = rq.header("origin", o);
        }
        rq.send()
    };
    assert_eq!(
        error_of(post(Some("https://evil.example")).await.unwrap()).await.1,
        "csrf"
    );
    assert_eq!(error_of(post(None).await.unwrap()).await.1, "csrf");
    let r = client()
        .delete(s.url(&format!("/v1/sessions/{}", l.sid)))
        .header("cookie", cookie_header(&l, &s))
        .header("referer", "https://evil.example/page")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1, "csrf");
    // The session survived all three attempts.
    let r = client()
        .get(s.url("/v1/verify"))
        .bearer_auth(&l.long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A cross-site login form is refused too.
    let r = client()
        .post(s.url("/v1/login"))
        .header("origin", "https://evil.example")
        .json(&json!({ "username": "alice", "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1, "csrf");
    // Same origin passes; a Referer from this site passes.
    let r = client()
        .delete(s.url(&format!("/v1/sessions/{}", l.sid)))
        .header("cookie", cookie_header(&l, &s))
        .header("referer", format!("{}/", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_input_gets_clear_json_errors_and_the_server_keeps_serving() {
    let s = TestServer::start(Config::for_test()).await;
    let raw = |body: Vec<u8>, ct: &str| {
        client()
            .post(s.url("/v1/login"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let (st, code, _) = error_of(raw(b"{not json".to_vec(), "application/json").await.unwrap()).await;
    assert_eq!((st, code.as_str()), (StatusCode::BAD_REQUEST, "bad_request"));
    let (st, code, _) = error_of(
        raw(br#"{"username":"alice"}"#.to_vec(), "application/json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_request"),
        "missing field"
    );
    let (st, _, _) = error_of(
        raw(
            br#"{"username":"alice","password":"x","extra":1}"#.to_vec(),
            "application/json",
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "unknown field");
    let (st, code, _) = error_of(raw(b"\xff\xfe\x00".to_vec(), "application/json").await.unwrap()).await;
    assert_eq!(
        (st, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_request"),
        "non-UTF-8 body"
    );
    let (st, code, _) = error_of(raw(b"x".to_vec(), "text/plain").await.unwrap()).await;
    assert_eq!(
        (st, code.as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let (st, code, _) = error_of(raw(vec![b'a'; 1 << 20], "application/json").await.unwrap()).await;
    assert_eq!((st, code.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));
    let (st, _, _) = error_of(
        raw(
            br#"{"username":"alice","password":"correct horse","device":"PC!"}"#.to_vec(),
            "application/json",
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "bad device type");
    // Form bodies work as JSON does (from the service's own origin: a form
    // login must name its origin).
    let r = client()
        .post(s.url("/v1/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", &s.base)
        .body(b"username=alice&password=correct+horse".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A 20 KiB cookie header.
    let r = client()
        .get(s.url("/v1/verify"))
        .header("cookie", format!("tt_short={}", "A".repeat(20 * 1024)))
        .send()
        .await
        .unwrap();
    let (st, code, _) = error_of(r).await;
    assert_eq!(
        (st, code.as_str()),
        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large")
    );
    // Non-UTF-8 bytes in headers.
    let r = client()
        .get(s.url("/v1/verify"))
        .header("cookie", HeaderValue::from_bytes(b"tt_short=\xff\xfe").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1, "missing");
    let r = client()
        .get(s.url("/v1/verify"))
        .header("x-short-token", HeaderValue::from_bytes(b"\xff\xfe").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1, "invalid");
    let r = client().get(s.url("/v1/nope")).send().await.unwrap();
    assert_eq!(error_of(r).await.1, "not_found");
    // A known path with a method it does not answer: 405 in the error
    // shape, with the methods it does answer.
    let r = client().put(s.url("/v1/login")).send().await.unwrap();
    let (status, code, headers) = error_of(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    assert_eq!(headers["allow"], "POST");
    // Still serving.
    login(&s, "alice").await;
}

#[tokio::test]
async fn wrong_passwords_are_throttled_and_do_not_reveal_which_names_exist() {
    let s = TestServer::start(Config::for_test()).await;
    let attempt = |user: &'static str, pw: &'static str| {
        client()
            .post(s.url("/v1/login"))
            .json(&json!({ "username": user, "password": pw }))
            .send()
    };
    let (st_known, body_known) = {
        let r = attempt("alice", "wrong password").await.unwrap();
        (r.status(), r.text().await.unwrap())
    };
    let (st_unknown, body_unknown) = {
        let r = attempt("mallory", "wrong password").await.unwrap();
        (r.status(), r.text().await.unwrap())
    };
    assert_eq!(
        (st_known, &body_known),
        (st_unknown, &body_unknown),
        "same answer for unknown names"
    );
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = attempt("alice", "wrong password").await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry > 0 && retry <= 300, "{retry}");
            assert_eq!(error_of(r).await.1, "throttled");
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 4, "{statuses:?}");
    assert!(statuses[4..].iter().all(|s| *s == 429), "{statuses:?}");
    // Even the right password waits now; other users are unaffected.
    assert_eq!(
        attempt("alice", "correct horse").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(attempt("bob", "correct horse").await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn operations_endpoints() {
    let s = TestServer::start(Config::for_test()).await;
    let b: Value = client()
        .get(s.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b["status"], "ok");
    let b: Value = client()
        .get(s.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (b["redis"].as_str(), b["breaker"].as_str()),
        (Some("embedded"), Some("closed"))
    );
    let l = login(&s, "alice").await;
    client()
        .get(s.url("/v1/verify"))
        .bearer_auth(&l.long)
        .header("x-short-token", &l.short)
        .send()
        .await
        .unwrap();
    let m = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("twintoken_verify_total{path=\"short\"} 1"), "{m}");
    assert!(
        m.contains("twintoken_verify_duration_seconds_bucket{path=\"short\",le=\"+Inf\"} 1"),
        "{m}"
    );
    assert!(m.contains("twintoken_store_breaker_state 0"), "{m}");
    let page = client().get(s.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("<form id=\"login\"") && page.contains("Who am I?"));
    let r = client().get(s.url("/v1/admin/stats")).send().await.unwrap();
    assert_eq!(
        error_of(r).await.0,
        StatusCode::NOT_FOUND,
        "admin API off without an admin token"
    );
}

#[tokio::test]
async fn the_router_answers_in_process_too() {
    use tower::ServiceExt as _;
    let s = TestServer::start(Config::for_test()).await;
    let l = login(&s, "bob").await;
    let app = twintoken::http::router(s.state().clone());
    let req = axum::http::Request::builder()
        .uri("/v1/verify")
        .header("authorization", format!("Bearer {}", l.long))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-user-id"], "1002");
}

#[tokio::test]
async fn an_app_protects_its_own_routes_with_the_guard() {
    use axum::middleware::from_fn_with_state;
    use axum::routing::get;
    use twintoken::http::{CurrentUser, Guard, guard};

    let s = TestServer::start(Config::for_test()).await;
    let g = Guard::new(
        s.state().verifier.clone(),
        s.state().config.cookies.clone(),
        s.clock.clone(),
    )
    .public("/login");
    let app = axum::Router::new()
        .route(
            "/me",
            get(|CurrentUser(v): CurrentUser| async move { format!("{}:{}", v.uid, v.path.as_str()) }),
        )
        .route("/login", get(|| async { "public page" }))
        .route("/login/help", get(|| async { "public too" }))
        .layer(from_fn_with_state(g, guard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    assert_eq!(
        client()
            .get(format!("{base}/login"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "public page"
    );
    assert_eq!(
        client()
            .get(format!("{base}/login/help"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let r = client().get(format!("{base}/me")).send().await.unwrap();
    assert_eq!(error_of(r).await.1, "missing");
    let l = login(&s, "alice").await;
    let r = client()
        .get(format!("{base}/me"))
        .header("cookie", cookie_header(&l, &s))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "1001:short");
    // Only a long cookie: the guard answers by the long path and refreshes the short cookie.
    let r = client()
        .get(format!("{base}/me"))
        .header("cookie", format!("tt_long={}", l.long))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["set-cookie"].to_str().unwrap().starts_with("tt_short="));
    assert_eq!(r.text().await.unwrap(), "1001:long");
    task.abort();
}

/// Slow loris: a client that trickles its headers is cut off at the
/// header-read timeout, and the server keeps serving everyone else.
#[tokio::test]
async fn slow_clients_are_disconnected_at_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = Config::for_test();
    c.server.header_read_timeout = Duration::from_secs(1);
    let s = TestServer::start(c).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"GET /v1/verify HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        if conn.write_all(b"a").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {} // a 408 before closing is fine
            Err(_) => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a trickling client is still connected after 5 s"
        );
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(800), "cut off too early: {took:?}");
    let r = client().get(s.url("/v1/verify")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "others are still served");

    // A kept-alive connection that goes quiet after a request is closed too.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = conn.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let start = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle kept-alive connection is still open after 5 s");
    assert!(start.elapsed() >= Duration::from_millis(800), "{:?}", start.elapsed());
}

/// Many connections: a thousand idle ones do not stop the service; at the
/// connection limit new clients wait (they are not refused) until slots
/// free up, here when idle connections hit the header-read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_and_the_connection_limit() {
    let mut c = Config::for_test();
    c.server.header_read_timeout = Duration::from_secs(1);
    let s = TestServer::start(c).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let start = std::time::Instant::now();
    let r = client().get(s.url("/v1/verify")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Served at once, not after the idle ones time out (1 s each, in turn).
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    drop(idle);

    let mut c = Config::for_test();
    c.server.header_read_timeout = Duration::from_secs(1);
    c.server.max_connections = 20;
    let s = TestServer::start(c).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = std::time::Instant::now();
    let r = client().get(s.url("/v1/verify")).send().await.unwrap();
    let waited = start.elapsed();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(4),
        "the 21st connection waits for a slot (idle ones time out after 1 s): {waited:?}"
    );
}

/// Issue 20: force-retiring a key while its tokens are live, seen over
/// HTTP: after the reload, every token sealed with it is refused (401
/// `invalid`), and a new login works under the new key.
#[tokio::test]
async fn force_retiring_a_key_refuses_its_live_tokens() {
    use twintoken::time::Clock as _;
    use twintoken::tokens::Kid;
    let s = TestServer::start(Config::for_test()).await;
    let l = login(&s, "alice").await;
    let verify = |cookie: String| client().get(s.url("/v1/verify")).header("cookie", cookie).send();
    assert_eq!(verify(cookie_header(&l, &s)).await.unwrap().status(), StatusCode::OK);
    let dir = s.state().config.keys.dir.clone();
    let now = s.clock.now();
    twintoken::keys::rotate(&dir, now, Duration::ZERO).unwrap();
    let refused = twintoken::keys::retire(&dir, Kid(1), now, Duration::from_secs(30 * 86_400), false);
    assert!(refused.is_err(), "retiring a key whose tokens may live needs --force");
    twintoken::keys::retire(&dir, Kid(1), now, Duration::from_secs(30 * 86_400), true).unwrap();
    assert!(s.state().verifier.keys().reload().unwrap(), "the reload saw the change");
    let (status, code, _) = error_of(verify(cookie_header(&l, &s)).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "invalid"));
    let fresh = login(&s, "alice").await;
    assert_eq!(
        verify(cookie_header(&fresh, &s)).await.unwrap().status(),
        StatusCode::OK
    );
}

/// Issue 20: a users file that turns invalid is not loaded; the users
/// loaded before keep logging in, and a valid file later is picked up.
#[tokio::test]
async fn an_invalid_users_file_keeps_the_previous_users() {
    let s = TestServer::start(Config::for_test()).await;
    let path = s.state().config.users.file.clone();
    std::fs::write(&path, "this is [not a users file").unwrap();
    // The reload looks at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    login(&s, "alice").await;
    login(&s, "alice").await;
    // A valid file (here with a new user) is picked up again.
    let mut users = twintoken::users::Users::default();
    users.add("carol", Some("1003"), "correct horse").unwrap();
    users.save(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    login(&s, "carol").await;
}

/// `/metrics` passes Prometheus' own checker (`promtool check metrics`, from
/// Debian's `prometheus` package, which `scripts/test` installs) and counts
/// what happened: logins per method and outcome, requests per route and
/// status, store calls, keys per state, the build.
#[tokio::test]
async fn metrics_pass_promtool_and_count_what_happened() {
    let s = TestServer::start(Config::for_test()).await;
    login(&s, "alice").await;
    let r = client()
        .post(s.url("/v1/login"))
        .json(&json!({ "username": "alice", "password": "wrong" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Unknown paths count under `other`, a wrong method under its path.
    let r = client().get(s.url("/v1/nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = client().put(s.url("/v1/login")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let text = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value(r#"twintoken_logins_total{method="password",outcome="ok"}"#), 1.0);
    assert_eq!(
        value(r#"twintoken_logins_total{method="password",outcome="failed"}"#),
        1.0
    );
    assert_eq!(
        value(r#"twintoken_http_requests_total{route="/v1/login",status="200"}"#),
        1.0
    );
    assert_eq!(
        value(r#"twintoken_http_requests_total{route="/v1/login",status="401"}"#),
        1.0
    );
    assert_eq!(
        value(r#"twintoken_http_request_duration_seconds_count{route="/v1/login"}"#),
        3.0
    );
    assert_eq!(
        value(r#"twintoken_http_requests_total{route="other",status="404"}"#),
        1.0
    );
    assert_eq!(
        value(r#"twintoken_http_requests_total{route="/v1/login",status="405"}"#),
        1.0
    );
    assert!(value(r#"twintoken_store_call_duration_seconds_count{op="login"}"#) >= 1.0);
    assert_eq!(value(r#"twintoken_keys{state="primary"}"#), 1.0);
    assert_eq!(value(r#"twintoken_revocation_feed_caught_up"#), 1.0);
    assert_eq!(
        value(&format!(
            "twintoken_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must be installed (./scripts/test installs Debian's prometheus package)");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every error code of the API is in docs/http-api.md's error table, in the
/// row of the status it is answered with.
#[test]
fn the_error_table_lists_every_code_with_its_status() {
    use twintoken::http::ErrorCode;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/http-api.md")).unwrap();
    for code in ErrorCode::ALL {
        let status = code.status().as_u16().to_string();
        let row = doc
            .lines()
            .filter(|l| l.starts_with("| "))
            .find(|l| {
                l.contains(&format!("`{}`", code.as_str()))
                    && l[2..].split([' ', ',']).next().is_some_and(|c| c == status)
            })
            .or_else(|| {
                // Rows that list several statuses ("| 502, 504 | …").
                doc.lines()
                    .filter(|l| l.starts_with("| ") && l.contains(&format!("`{}`", code.as_str())))
                    .find(|l| {
                        l.split('|')
                            .nth(1)
                            .is_some_and(|c| c.split(',').any(|s| s.trim() == status))
                    })
            });
        assert!(
            row.is_some(),
            "docs/http-api.md lacks `{}` under {status}",
            code.as_str()
        );
    }
}
