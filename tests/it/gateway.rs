//! A real nginx (started by the test on free ports) in front of a tiny
//! upstream, asking twintoken with `auth_request`, configured as
//! docs/examples/nginx.conf shows.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use reqwest::StatusCode;
use serde_json::json;
use twintoken::config::Config;

use crate::support::server::TestServer;

pub(crate) struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers before it exits (SIGKILL
        // would orphan them, still listening).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nginx_binary() -> String {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
        .unwrap_or_else(|| "nginx".into())
}

/// Starts nginx from docs/examples/nginx.conf with our ports and paths;
/// `twintoken` lists the nodes behind its upstream.
fn start_nginx(port: u16, twintoken: &[String], app: &str) -> Nginx {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/nginx.conf")).unwrap();
    let conf = example
        .replace(
            "server 127.0.0.1:8080;",
            &twintoken
                .iter()
                .map(|t| format!("server {t};"))
                .collect::<Vec<_>>()
                .join(" "),
        )
        .replace("server 127.0.0.1:3000;", &format!("server {app};"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    run_nginx(&conf, port)
}

/// Runs nginx on `conf` (an example with its addresses filled in), its
/// temporary files and pid in a directory of its own; returns once it
/// listens on `port`.
pub(crate) fn run_nginx(conf: &str, port: u16) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conf = conf.replace(
        "http {",
        &format!(
            "http {{\n    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n    access_log off;"
        ),
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(
        &conf_path,
        format!("pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nworker_processes 1;\nuser root;\n{conf}"),
    )
    .unwrap();
    let child = Command::new(nginx_binary())
        .args([
            "-p",
            &d.to_string(),
            "-c",
            &conf_path.display().to_string(),
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx must be installed (./scripts/test installs it)");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "nginx listens");
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx { child, _dir: dir }
}

/// The upstream application: echoes what nginx told it about the user.
async fn start_app() -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().fallback(|h: HeaderMap| async move {
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        axum::Json(json!({ "user": get("x-user-id"), "session": get("x-session-id"), "path": get("x-auth-path") }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (
        addr,
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_guards_an_upstream_and_refreshes_the_short_cookie() {
    let port = free_port();
    let mut config = Config::for_test();
    config.server.public_origin = Some(format!("http://127.0.0.1:{port}"));
    let tt = TestServer::start(config).await;
    let (app, app_task) = start_app().await;
    let twintoken = vec![tt.base.trim_start_matches("http://").to_string()];
    let _nginx = tokio::task::spawn_blocking({
        let app = app.clone();
        move || start_nginx(port, &twintoken, &app)
    })
    .await
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Anonymous: nginx answers 401 and the app never sees the request.
    let r = client.get(format!("{base}/dashboard")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Log in through nginx (the /v1/ location), as a browser would.
    let r = client
        .post(format!("{base}/v1/login"))
        .json(&json!({ "username": "alice", "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect();
    let jar = cookies.join("; ");
    let long_only = cookies.iter().find(|c| c.starts_with("tt_long=")).unwrap().clone();

    // Logged in: the upstream sees who it is.
    let r = client
        .get(format!("{base}/dashboard"))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (seen["user"].as_str(), seen["path"].as_str()),
        (Some("1001"), Some("short"))
    );

    // A sensitive location (strict verify): the long cookie is checked in
    // the store although the short cookie is valid.
    let r = client
        .get(format!("{base}/account/email"))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (seen["user"].as_str(), seen["path"].as_str()),
        (Some("1001"), Some("long"))
    );

    // Short cookie gone (expired in the browser): the long check answers, and
    // the refreshed short cookie reaches the browser through nginx.
    let r = client
        .get(format!("{base}/dashboard"))
        .header("cookie", &long_only)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let set = crate::support::set_cookies(&r);
    assert!(
        set.iter().any(|c| c.starts_with("tt_short=") && c.contains("HttpOnly")),
        "{set:?}"
    );
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (seen["user"].as_str(), seen["path"].as_str()),
        (Some("1001"), Some("long"))
    );

    // Logged out: 401 again through nginx.
    let r = client
        .post(format!("{base}/v1/logout"))
        .header("cookie", &jar)
        .header("origin", &base)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client
        .get(format!("{base}/dashboard"))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app_task.abort();
}

/// A browser at its own loopback address (Linux routes all of 127/8 to lo).
fn client_at(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Issue 13: nginx in front of two nodes sharing one redis-server. The
/// nodes see real client addresses (session lists), count failed logins
/// together, a client that forges X-Forwarded-For is still itself, and
/// nobody's failures lock another address out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_behind_nginx_see_real_clients_and_share_the_throttle() {
    let redis = crate::support::redis_server::RedisServer::start();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let node = |keys: Option<std::path::PathBuf>| {
        let mut c = Config::for_test();
        c.store.redis = Some(vec![redis.url().into()]);
        c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        c.server.public_origin = Some(base.clone());
        if let Some(k) = keys {
            c.keys.dir = k; // one keyring for both nodes
        }
        TestServer::start(c)
    };
    let a = node(None).await;
    let b = node(Some(a.state().config.keys.dir.clone())).await;
    let (app, app_task) = start_app().await;
    let nodes = vec![
        a.base.trim_start_matches("http://").to_string(),
        b.base.trim_start_matches("http://").to_string(),
    ];
    let _nginx = tokio::task::spawn_blocking({
        let app = app.clone();
        move || start_nginx(port, &nodes, &app)
    })
    .await
    .unwrap();
    let login = |ip: &'static str, user: &'static str, password: &'static str| {
        client_at(ip)
            .post(format!("{base}/v1/login"))
            .json(&json!({ "username": user, "password": password }))
            .send()
    };

    // Two browsers of alice: each session records its own address.
    let mut jar = String::new();
    for ip in ["127.0.0.10", "127.0.0.11"] {
        let r = login(ip, "alice", "correct horse").await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        jar = crate::support::jar_of(&r);
    }
    let r = client_at("127.0.0.11")
        .get(format!("{base}/v1/sessions"))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap();
    let list: serde_json::Value = r.json().await.unwrap();
    let mut ips: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .map(|s| s["ip"].as_str().unwrap())
        .collect();
    ips.sort();
    assert_eq!(ips, ["127.0.0.10", "127.0.0.11"], "{list}");

    // A guesser forging X-Forwarded-For: nginx appends its real address,
    // which is the one counted, on both nodes together.
    for i in 0..20 {
        let r = client_at("127.0.0.20")
            .post(format!("{base}/v1/login"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .json(&json!({ "username": format!("nobody{i}"), "password": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // The second review: a guesser naming someone else's address in its
    // own `Forwarded` header (which nginx passes through unless told not
    // to) locked that address out; only X-Forwarded-For counts.
    for i in 0..20 {
        let r = client_at("127.0.0.24")
            .post(format!("{base}/v1/login"))
            .header("forwarded", "for=127.0.0.23")
            .header("x-real-ip", "127.0.0.23")
            .json(&json!({ "username": format!("nobody{i}"), "password": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    assert_eq!(
        login("127.0.0.23", "bob", "correct horse").await.unwrap().status(),
        StatusCode::OK,
        "the address named in the forged Forwarded is not locked out"
    );
    let r = client_at("127.0.0.20")
        .post(format!("{base}/v1/login"))
        .header("x-forwarded-for", "198.51.100.200")
        .json(&json!({ "username": "bob", "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    // Everyone else is unaffected.
    assert_eq!(
        login("127.0.0.12", "bob", "correct horse").await.unwrap().status(),
        StatusCode::OK
    );

    // Five wrong passwords for bob from one address: that address waits
    // for bob, bob logs in from his own.
    for _ in 0..5 {
        let r = login("127.0.0.21", "bob", "guess").await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = login("127.0.0.21", "bob", "correct horse").await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        login("127.0.0.22", "bob", "correct horse").await.unwrap().status(),
        StatusCode::OK
    );

    // Both nodes served and counted: each refused some of the attempts.
    for node in [&a, &b] {
        let throttled = node.state().throttle.throttled().iter().sum::<u64>();
        let served = node
            .state()
            .verifier
            .metrics()
            .accepted
            .iter()
            .map(|c| c.get())
            .sum::<u64>();
        assert!(throttled + served > 0, "nginx spread requests over both nodes");
    }
    app_task.abort();
}

/// Review finding 3: tokens reach cookie clients only as `Set-Cookie`. After
/// a rotation the long cookie comes first, which is the one nginx hands on;
/// the next request, whose short cookie names the old session, gets a
/// matching short cookie from the long path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_hands_on_a_rotated_long_cookie_then_a_matching_short_one() {
    let port = free_port();
    let mut config = Config::for_test();
    config.server.public_origin = Some(format!("http://127.0.0.1:{port}"));
    config.tokens.long_idle_ttl = Duration::from_secs(3 * 86_400);
    config.tokens.renew_window = Duration::from_secs(3600);
    let tt = TestServer::start(config).await;
    let (app, app_task) = start_app().await;
    let twintoken = vec![tt.base.trim_start_matches("http://").to_string()];
    let _nginx = tokio::task::spawn_blocking(move || start_nginx(port, &twintoken, &app))
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/v1/login"))
        .json(&json!({ "username": "alice", "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    let first: serde_json::Value = r.json().await.unwrap();
    let old_short = first["short_token"].as_str().unwrap().to_string();
    tt.clock.advance(Duration::from_secs(86_400 + 60)); // rotation due
    let r = client
        .get(format!("{base}/dashboard"))
        .header("cookie", format!("tt_long={}", first["long_token"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let set = crate::support::set_cookies(&r);
    assert!(set.len() == 1 && set[0].starts_with("tt_long="), "{set:?}");
    let new_long = set[0].split(';').next().unwrap().to_string();
    // The browser now holds the new long cookie and an old short one.
    let r = client
        .get(format!("{base}/dashboard"))
        .header("cookie", format!("{new_long}; tt_short={old_short}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let set = crate::support::set_cookies(&r);
    assert!(set.len() == 1 && set[0].starts_with("tt_short="), "{set:?}");
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        seen["path"], "long",
        "the old short token does not count beside the new long one"
    );
    let r = client
        .get(format!("{base}/dashboard"))
        .header("cookie", format!("{new_long}; {}", set[0].split(';').next().unwrap()))
        .send()
        .await
        .unwrap();
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (seen["user"].as_str(), seen["path"].as_str()),
        (Some("1001"), Some("short"))
    );
    app_task.abort();
}
