//! A twintoken HTTP server for tests: the real router on a real listening
//! socket, with a clock the test moves.

use std::sync::Arc;

use twintoken::app::{ServeOptions, Service, build};
use twintoken::config::Config;
use twintoken::http::{AppState, listener, router};
use twintoken::time::{Clock, ManualClock, SystemClock};
use twintoken::users::Users;

pub struct TestServer {
    pub base: String,
    pub clock: Arc<ManualClock>,
    pub service: Service,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    /// A server with users `alice` (id 1001, phone +4915112345678) and `bob`
    /// (id 1002, e-mail bob@example.com), password `correct horse`, on the
    /// embedded store unless `config` names Redis.
    pub async fn start(mut config: Config) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        // A node of a multi-node test shares the first node's keyring (an
        // absolute keys.dir); otherwise each server gets its own.
        if !config.keys.dir.is_absolute() {
            config.keys.dir = dir.path().join("keys");
        }
        config.users.file = dir.path().join("users.toml");
        let mut users = Users::default();
        users.add("alice", Some("1001"), "correct horse").unwrap();
        users.add("bob", Some("1002"), "correct horse").unwrap();
        users.set_contact("alice", Some("+4915112345678"), None).unwrap();
        users.set_contact("bob", None, Some("bob@example.com")).unwrap();
        users.save(&config.users.file).unwrap();
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let opts = ServeOptions {
            no_create_keys: false,
            has_config_file: true,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // As `serve` does: the bound address is the service's own origin.
        config.server.listen = addr;
        let service = build(config, &opts, clock.clone()).await.unwrap();
        // The production accept loop (header-read timeout, connection limit).
        let limits = listener::Limits::from_config(&service.state.config.server);
        let app = router(service.state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(listener::run(listener, app, limits, async move {
            let _ = stopped.await;
        }));
        TestServer {
            base: format!("http://{addr}"),
            clock,
            service,
            _dir: dir,
            task,
            stop: Some(stop),
        }
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.service.state
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `POST /v1/login` as `user` with the test password: the answer's JSON.
    pub async fn login_json(&self, user: &str) -> serde_json::Value {
        let r = reqwest::Client::new()
            .post(self.url("/v1/login"))
            .json(&serde_json::json!({ "username": user, "password": "correct horse" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "login of {user}");
        r.json().await.unwrap()
    }
}

impl Drop for TestServer {
    /// Shuts the server down as SIGTERM does: it stops accepting and closes
    /// its connections (idle keep-alive ones at once), so clients see it go.
    fn drop(&mut self) {
        let signalled = self.stop.take().is_some_and(|stop| stop.send(()).is_ok());
        if !signalled {
            self.task.abort();
        }
    }
}
