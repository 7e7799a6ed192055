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

struct Nginx {
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

fn free_port() -> u16 {
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

/// Starts nginx from docs/examples/nginx.conf with our ports and paths.
fn start_nginx(port: u16, twintoken: &str, app: &str) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/nginx.conf")).unwrap();
    let d = dir.path().display();
    let conf = example
        .replace("server 127.0.0.1:8080;", &format!("server {twintoken};"))
        .replace("server 127.0.0.1:3000;", &format!("server {app};"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace(
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
    let tt = TestServer::start(Config::for_test()).await;
    let (app, app_task) = start_app().await;
    let port = free_port();
    let twintoken = tt.base.trim_start_matches("http://").to_string();
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

    // Short cookie gone (expired in the browser): the long check answers, and
    // the refreshed short cookie reaches the browser through nginx.
    let r = client
        .get(format!("{base}/dashboard"))
        .header("cookie", &long_only)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let set: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
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
