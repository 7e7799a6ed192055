//! A real headless Chromium (Debian's `chromium` + `chromium-driver`),
//! driven over the WebDriver protocol: log in on the demo page, see both
//! cookies set as HttpOnly, come back after the short token expired and
//! still be logged in, log out; and log in with a one-time code.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twintoken::config::Config;

use crate::support::server::TestServer;

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(names: &[&str]) -> String {
    names
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
        .unwrap_or_else(|| names[0].into())
}

impl Driver {
    async fn start(profile: &std::path::Path) -> Driver {
        Driver::start_with(profile, &[]).await
    }

    /// A browser with `extra` command-line switches.
    async fn start_with(profile: &std::path::Path, extra: &[String]) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(which(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver must be installed (./scripts/test installs chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let start = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "chromedriver answers");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend(extra.iter().cloned());
        let caps = json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
            "binary": which(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]),
            "args": args
        }, "goog:loggingPrefs": { "browser": "ALL" } }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_string();
        let mut d = Driver {
            child,
            base,
            session,
            http,
        };
        d.base = format!("{}/session/{}", d.base, d.session);
        d
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut rq = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let v: Value = rq.send().await.unwrap().json().await.unwrap();
        // A WebDriver error (no such element, stale element, script error)
        // fails the test: it must not read as an empty answer.
        if let Some(e) = v["value"]["error"].as_str() {
            panic!("WebDriver {path}: {e}: {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|e| e.as_str())
            .unwrap_or_else(|| panic!("{css}: {v}"))
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{e}/click"), Some(json!({})))
            .await;
    }

    async fn text(&self, css: &str) -> String {
        let e = self.element(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .unwrap_or_else(|| panic!("{css}: the element's text is not a string"))
            .to_string()
    }

    async fn cookies(&self) -> Vec<Value> {
        let v = self.call(reqwest::Method::GET, "/cookie", None).await;
        v.as_array()
            .cloned()
            .unwrap_or_else(|| panic!("WebDriver /cookie answered {v}, not a list"))
    }

    /// The browser console's messages since the last call (ChromeDriver's
    /// log endpoint; reading drains it).
    async fn console(&self) -> Vec<String> {
        let v = self
            .call(reqwest::Method::POST, "/se/log", Some(json!({ "type": "browser" })))
            .await;
        v.as_array()
            .unwrap_or_else(|| panic!("the browser log is not a list: {v}"))
            .iter()
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Waits until `#path` shows `want`.
    async fn path_becomes(&self, want: &str) {
        let start = Instant::now();
        loop {
            let got = self.text("#path").await;
            if got == want {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "#path shows {got:?}, expected {want:?}; output: {}",
                self.text("#out").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_on_the_demo_page_stays_logged_in_and_logs_out() {
    let s = TestServer::start(Config::for_test()).await;
    let profile = tempfile::tempdir().unwrap();
    let d = Driver::start(profile.path()).await;
    d.goto(&s.url("/")).await;
    d.type_into("#username", "alice").await;
    d.type_into("#password", "correct horse").await;
    d.click("#login-button").await;

    // Both cookies arrive, HttpOnly (the page's script cannot read them).
    let start = Instant::now();
    let cookies = loop {
        let c = d.cookies().await;
        if c.len() >= 2 {
            break c;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "cookies set: {c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for name in ["tt_long", "tt_short"] {
        let c = cookies
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {cookies:?}"));
        assert_eq!(c["httpOnly"], true, "{c}");
        assert_eq!(c["sameSite"], "Lax", "{c}");
        assert!(
            c.get("expiry").is_some(),
            "\"Remember me\" is checked: a persistent cookie: {c}"
        );
    }
    let script: Value = d
        .call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": "return document.cookie", "args": [] })),
        )
        .await;
    assert_eq!(script, "", "HttpOnly cookies are invisible to scripts");

    d.click("#whoami").await;
    d.path_becomes("short").await;

    // A minute later the short token has expired: reload, still logged in,
    // answered by the long token, and a fresh short cookie is set.
    let old_short = cookies.iter().find(|c| c["name"] == "tt_short").unwrap()["value"].clone();
    s.clock.advance(Duration::from_secs(61));
    d.goto(&s.url("/")).await;
    d.click("#whoami").await;
    d.path_becomes("long").await;
    let new_short = d.cookies().await.into_iter().find(|c| c["name"] == "tt_short").unwrap()["value"].clone();
    assert_ne!(old_short, new_short, "the short cookie was refreshed");
    d.click("#whoami").await;
    d.path_becomes("short").await;

    // Log out: cookies gone, no longer logged in.
    d.click("#logout").await;
    let start = Instant::now();
    while !d.cookies().await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "cookies cleared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.click("#whoami").await;
    // The path label names only the check that answered; the error has its
    // own line.
    d.path_becomes("–").await;
    let start = Instant::now();
    while !d.text("#error").await.contains("missing") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "error line: {}",
            d.text("#error").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The server goes away: the page says the request failed, and its
    // script raises no uncaught error (issue 20).
    d.call(
        reqwest::Method::POST,
        "/execute/sync",
        Some(json!({
            "script": "window.__errors = []; \
                       window.addEventListener('unhandledrejection', e => window.__errors.push(String(e.reason))); \
                       window.addEventListener('error', e => window.__errors.push(String(e.message)));",
            "args": [],
        })),
    )
    .await;
    drop(s);
    d.click("#whoami").await;
    let start = Instant::now();
    loop {
        let shown = d.text("#out").await;
        if shown.starts_with("Request failed") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the page says the request failed: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors = d
        .call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": "return window.__errors;", "args": [] })),
        )
        .await;
    assert_eq!(errors, json!([]), "no uncaught error in the page's script");
    d.call(reqwest::Method::DELETE, "", None).await;
}

/// The demo page runs under its Content-Security-Policy: driving it (log
/// in, ask who am I, list sessions) reports no violation, while an inline
/// script added to the page and an attempt to frame the page are refused,
/// and reported on the same console, so the check can see a violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_runs_under_its_content_security_policy() {
    let s = TestServer::start(Config::for_test()).await;
    let profile = tempfile::tempdir().unwrap();
    let d = Driver::start(profile.path()).await;
    d.goto(&s.url("/")).await;
    d.type_into("#username", "alice").await;
    d.type_into("#password", "correct horse").await;
    d.click("#login-button").await;
    // The login's answer (its cookies) first, then "who am I".
    let start = Instant::now();
    while d.cookies().await.len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "cookies set; output: {}",
            d.text("#out").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.click("#whoami").await;
    d.path_becomes("short").await;
    d.click("#list-sessions").await;
    let start = Instant::now();
    while !d.text("#sessions").await.contains("This device") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            d.text("#sessions").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let csp = |log: &[String]| {
        log.iter()
            .filter(|m| m.contains("Content Security Policy"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let log = d.console().await;
    assert_eq!(
        csp(&log),
        Vec::<String>::new(),
        "no CSP violation while the page is driven: {log:?}"
    );

    // What the policy is for: an injected inline script does not run, and
    // the page cannot be framed (frame-ancestors 'none').
    let ran = d
        .call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({
                "script": "const e = document.createElement('script'); e.textContent = 'window.__injected = 1'; \
                           document.body.appendChild(e); \
                           const f = document.createElement('iframe'); f.src = '/'; document.body.appendChild(f); \
                           return window.__injected === 1;",
                "args": [],
            })),
        )
        .await;
    assert_eq!(ran, false, "an inline script the policy does not name must not run");
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        seen.extend(csp(&d.console().await));
        let script = seen.iter().any(|m| m.contains("script-src"));
        let frame = seen.iter().any(|m| m.contains("frame-ancestors"));
        if script && frame {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "both refusals reported: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.call(reqwest::Method::DELETE, "", None).await;
}

/// The demo page's second way in: a one-time code, delivered to a webhook
/// receiver the test runs, typed into the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_with_a_one_time_code_on_the_demo_page() {
    use crate::support::webhook::Receiver;
    let receiver = Receiver::start("browser test secret").await;
    let mut c = Config::for_test();
    c.code_login.enabled = true;
    c.code_login.sender = twintoken::config::CodeSender::Webhook;
    c.code_login.webhook_url = Some(receiver.url.clone());
    c.code_login.webhook_secret = Some("browser test secret".into());
    let s = TestServer::start(c).await;
    let profile = tempfile::tempdir().unwrap();
    let d = Driver::start(profile.path()).await;
    d.goto(&s.url("/")).await;
    d.type_into("#destination", "bob@example.com").await;
    d.click("#send-button").await;
    let code = receiver.next().await.code;
    d.type_into("#code", &code).await;
    // "Remember me" unchecked: browser-session cookies.
    d.click("#remember").await;
    d.click("#code-login-button").await;
    let start = Instant::now();
    while d.cookies().await.len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "cookies set; output: {}",
            d.text("#out").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        d.text("#out").await.contains("Logged in as 1002"),
        "{}",
        d.text("#out").await
    );
    for c in d.cookies().await {
        assert!(c.get("expiry").is_none(), "a browser-session cookie has no expiry: {c}");
    }
    d.click("#whoami").await;
    d.path_becomes("short").await;
    d.call(reqwest::Method::DELETE, "", None).await;
}

/// "Your sessions" on the demo page: the logged-in user sees every session
/// (this one marked), ends another one, and the answer area is in view
/// without scrolling in a 1000×950 window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sees_their_sessions_and_ends_another_one() {
    let s = TestServer::start(Config::for_test()).await;
    // Alice is also logged in on another device.
    let other: Value = reqwest::Client::builder()
        .user_agent("other-phone/1.0")
        .build()
        .unwrap()
        .post(s.url("/v1/login"))
        .json(&json!({ "username": "alice", "password": "correct horse", "device": "mobile" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other_long = other["long_token"].as_str().unwrap().to_string();
    let profile = tempfile::tempdir().unwrap();
    let d = Driver::start(profile.path()).await;
    d.call(
        reqwest::Method::POST,
        "/window/rect",
        Some(json!({ "width": 1000, "height": 950 })),
    )
    .await;
    d.goto(&s.url("/")).await;
    d.type_into("#username", "alice").await;
    d.type_into("#password", "correct horse").await;
    d.click("#login-button").await;
    let start = Instant::now();
    while d.cookies().await.len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "logged in: {}",
            d.text("#out").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let items = || async {
        d.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({
                "script": "return [...document.querySelectorAll('#sessions li[data-sid]')].map(li => li.textContent);",
                "args": [],
            })),
        )
        .await
    };
    d.click("#list-sessions").await;
    let start = Instant::now();
    let list = loop {
        let v = items().await;
        if v.as_array().is_some_and(|a| a.len() == 2) {
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "two sessions listed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let texts: Vec<&str> = list.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(
        texts.iter().filter(|t| t.starts_with("This device")).count(),
        1,
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("other-phone/1.0") && t.contains("mobile")),
        "{texts:?}"
    );
    assert!(
        texts.iter().all(|t| t.contains("127.0.0.1") && t.contains("last seen")),
        "{texts:?}"
    );
    // The answer area is in view without scrolling.
    let view = d
        .call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({
                "script": "const r = document.getElementById('out').getBoundingClientRect(); \
                           return [window.scrollY, r.top, r.bottom, window.innerHeight, window.innerWidth];",
                "args": [],
            })),
        )
        .await;
    let v: Vec<f64> = view.as_array().unwrap().iter().filter_map(Value::as_f64).collect();
    assert!(
        v[0] == 0.0 && v[1] >= 0.0 && v[2] <= v[3],
        "answer area in view (scrollY, top, bottom, innerHeight, innerWidth): {v:?}"
    );
    // End the other session from the page: it is gone from the list and
    // its token no longer works.
    d.click("#sessions button.end").await;
    let start = Instant::now();
    while items().await.as_array().is_none_or(|a| a.len() != 1) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "one session left: {}",
            items().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = reqwest::Client::new()
        .get(s.url("/v1/verify"))
        .bearer_auth(&other_long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);
    d.click("#whoami").await;
    d.path_becomes("short").await;
    d.call(reqwest::Method::DELETE, "", None).await;
}

/// Device-bound sessions in a real browser: headless Chromium 156 (software
/// keys, the DBSC features on) through real nginx terminating TLS (a
/// self-signed certificate pinned by its SPKI, as `../shared/DBSC.md`
/// says). Logging in on the demo page registers a device key
/// (`/v1/dbsc/start`); once the short cookie expires, the browser holds
/// back an in-scope request, refreshes with a proof (403 + challenge, then
/// the signed retry) and releases it with the new short cookie; the cookie
/// jar copied off the browser is refused from a plain HTTP client once its
/// short cookie has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_binds_its_session_and_refreshes_it_through_nginx_over_tls() {
    use crate::gateway::{free_port, run_nginx};
    use crate::support::tls::Certs;
    use twintoken::http::metrics::DBSC_EVENTS;
    use twintoken::time::Clock as _;

    let certs = Certs::make();
    let port = free_port();
    let origin = format!("https://localhost:{port}");
    let mut c = Config::for_test();
    c.cookies.secure = true; // device-bound sessions follow it
    c.server.public_origin = Some(origin.clone());
    c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
    c.tokens.short_ttl = Duration::from_secs(3);
    let s = TestServer::start(c).await;
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/nginx-dbsc.conf")).unwrap();
    let upstream = s.base.trim_start_matches("http://").to_string();
    let conf = example
        .replace("server 127.0.0.1:8080;", &format!("server {upstream};"))
        .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port} ssl;"))
        .replace(
            "/etc/ssl/certs/www.example.com.pem",
            &certs.path("server.crt").display().to_string(),
        )
        .replace(
            "/etc/ssl/private/www.example.com.key",
            &certs.path("server.key").display().to_string(),
        );
    let _nginx = tokio::task::spawn_blocking(move || run_nginx(&conf, port))
        .await
        .unwrap();
    let spki = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            certs.path("server.crt").display()
        ))
        .output()
        .unwrap();
    let spki = String::from_utf8(spki.stdout).unwrap().trim().to_string();
    assert_eq!(spki.len(), 44, "SPKI pin: {spki:?}");
    let profile = tempfile::tempdir().unwrap();
    let d = Driver::start_with(
        profile.path(),
        &[
            format!("--ignore-certificate-errors-spki-list={spki}"),
            "--enable-features=DeviceBoundSessions:RefreshQuota/false,EnableBoundSessionCredentialsSoftwareKeysForManualTesting".into(),
        ],
    )
    .await;
    let events = |name: &str| {
        let i = DBSC_EVENTS.iter().position(|e| *e == name).unwrap();
        s.state().http_metrics.dbsc[i].load(std::sync::atomic::Ordering::Relaxed)
    };
    let wait = |what: &'static str, ok: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !ok() {
            assert!(start.elapsed() < Duration::from_secs(15), "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    d.goto(&format!("{origin}/")).await;
    d.type_into("#username", "alice").await;
    d.type_into("#password", "correct horse").await;
    d.click("#login-button").await;
    // The login answer offered registration; the browser made a key and
    // registered it.
    tokio::task::block_in_place(|| wait("Chromium registered a device key", &|| events("registered") >= 1));
    let cookies = loop {
        let c = d.cookies().await;
        let long = c
            .iter()
            .find(|c| c["name"] == "__Host-tt_long")
            .map(|c| c["value"].as_str().unwrap().to_string());
        if let Some(long) = long
            && s.state()
                .verifier
                .keys()
                .open_long(&long, s.clock.now())
                .is_ok_and(|l| l.device_bound)
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let jar: Vec<(String, String)> = cookies
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let old_short = jar
        .iter()
        .find(|(n, _)| n == "__Host-tt_short")
        .map(|(_, v)| v.clone())
        .unwrap();

    // The short cookie expires in the browser (3 s); an in-scope request
    // is held back until the refresh, then carries the new short cookie:
    // answered by the short path (the long cookie alone would be 401
    // proof_required).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let refreshed_before = events("refreshed");
    d.goto(&format!("{origin}/v1/verify")).await;
    let body: Value = d
        .call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": "return document.body.innerText", "args": [] })),
        )
        .await;
    let body: Value = serde_json::from_str(body.as_str().unwrap()).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(
        body["path"], "short",
        "the held-back request carries the refreshed short cookie: {body}"
    );
    assert_eq!(body["user_id"], "1001");
    assert!(
        events("refreshed") > refreshed_before,
        "the browser refreshed with a proof"
    );
    assert!(events("challenged") >= 1, "a refresh began with 403 and a challenge");
    let new_short = d
        .cookies()
        .await
        .into_iter()
        .find(|c| c["name"] == "__Host-tt_short")
        .map(|c| c["value"].as_str().unwrap().to_string())
        .expect("a short cookie after the refresh");
    assert_ne!(new_short, old_short);

    // "Your sessions" on the demo page marks the session device-bound.
    d.goto(&format!("{origin}/")).await;
    d.click("#list-sessions").await;
    let start = Instant::now();
    while !d.text("#sessions").await.contains("Device-bound") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the session list marks the bound session: {}",
            d.text("#sessions").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The copied jar, replayed from a plain HTTP client once its short
    // cookie has expired: the long cookie alone earns nothing.
    s.clock.advance(Duration::from_secs(4));
    let cookie = jar
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let r = reqwest::Client::new()
        .get(s.url("/v1/verify"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "proof_required");
    assert_eq!(events("proof_failed"), 0);
}
