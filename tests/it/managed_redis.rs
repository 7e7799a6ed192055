//! Managed and self-hosted Redis as deployments meet it, with real
//! redis-server processes: TLS verified against a CA (and mutual TLS), a
//! least-privilege ACL user, wrong credentials, a node that is not there;
//! what the start-up diagnostics log, what `/readyz` says, and
//! `store.require_on_start`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use twintoken::app::{ServeOptions, build};
use twintoken::config::Config;
use twintoken::time::SystemClock;

use crate::support::node::Node;
use crate::support::redis_server::{RedisServer, free_port};
use crate::support::server::TestServer;
use crate::support::tls::{Certs, TlsCluster, TlsRedis};

const ADMIN: &str = "managed-redis-admin-token-of-32-bytes";

fn config(url: &str) -> Config {
    let mut c = Config::for_test();
    c.store.redis = Some(vec![url.into()]);
    c.store.timeout = Duration::from_millis(500);
    c.server.admin_token = Some(ADMIN.into());
    c
}

/// Issues a session through the admin API; verifies its long token alone
/// (the Redis path); kicks the user; the token is then refused.
async fn round_trip(base: &str) {
    let c = Client::new();
    let r = c
        .post(format!("{base}/v1/admin/sessions"))
        .bearer_auth(ADMIN)
        .json(&json!({ "user_id": "alice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let long = r.json::<Value>().await.unwrap()["long_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .get(format!("{base}/v1/verify"))
        .bearer_auth(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-auth-path"], "long");
    let stats: Value = c
        .get(format!("{base}/v1/admin/stats"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["online_sessions"], 1, "{stats}");
    let r = c
        .delete(format!("{base}/v1/admin/users/alice/sessions"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("{base}/v1/verify"))
        .bearer_auth(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// `build` must refuse `c` (require_on_start); the error chain as text.
async fn refused(mut c: Config) -> String {
    c.store.require_on_start = true;
    let keys = tempfile::tempdir().unwrap();
    c.keys.dir = keys.path().join("keys");
    c.users.file = keys.path().join("users.toml");
    match build(c, &ServeOptions::default(), Arc::new(SystemClock)).await {
        Ok(_) => panic!("the service started although its Redis is not usable"),
        Err(e) => {
            let mut text = e.to_string();
            let mut s = std::error::Error::source(&e);
            while let Some(x) = s {
                text.push_str(&format!(" / {x}"));
                s = x.source();
            }
            text
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verified_against_the_configured_ca_serves_every_path() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs, false);
    let mut c = config(&redis.url());
    c.store.tls_ca_file = Some(certs.path("ca.crt"));
    c.store.require_on_start = true;
    let s = TestServer::start(c).await;
    round_trip(&s.base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs, true);
    let mut c = config(&redis.url());
    c.store.tls_ca_file = Some(certs.path("ca.crt"));
    let err = refused(c.clone()).await;
    assert!(err.contains(&format!("127.0.0.1:{}", redis.port)), "{err}");
    c.store.tls_cert_file = Some(certs.path("client.crt"));
    c.store.tls_key_file = Some(certs.path("client.key"));
    c.store.require_on_start = true;
    let s = TestServer::start(c).await;
    round_trip(&s.base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused_with_the_reason() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs, false);
    let mut c = config(&redis.url());
    c.store.tls_ca_file = Some(certs.path("other-ca.crt"));
    let err = refused(c).await;
    assert!(
        err.contains(&format!("127.0.0.1:{}", redis.port)) && err.to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_files_that_cannot_be_used_stop_the_start_naming_the_key() {
    let certs = Certs::make();
    let d = tempfile::tempdir().unwrap();
    let not_pem = d.path().join("not.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let base = || config("rediss://127.0.0.1:1/");
    let cases: Vec<(Config, &str, &str)> = vec![
        (
            {
                let mut c = base();
                c.store.tls_ca_file = Some(d.path().join("missing.crt"));
                c
            },
            "store.tls_ca_file",
            "missing.crt",
        ),
        (
            {
                let mut c = base();
                c.store.tls_ca_file = Some(not_pem.clone());
                c
            },
            "store.tls_ca_file",
            "no PEM certificate",
        ),
        (
            {
                let mut c = base();
                c.store.tls_cert_file = Some(certs.path("client.crt"));
                c
            },
            "store.tls_key_file",
            "both",
        ),
        (
            {
                let mut c = base();
                c.store.tls_cert_file = Some(certs.path("client.crt"));
                c.store.tls_key_file = Some(not_pem.clone());
                c
            },
            "store.tls_key_file",
            "no PEM private key",
        ),
        (
            {
                let mut c = base();
                c.store.tls_cert_file = Some(certs.path("client.crt"));
                c.store.tls_key_file = Some(certs.path("server.key"));
                c
            },
            "store.tls_key_file",
            "does not match",
        ),
    ];
    for (c, key, what) in cases {
        let err = refused(c).await;
        assert!(err.contains(key) && err.contains(what), "want {key} / {what}: {err}");
    }
}

/// A config file for a `serve` process on `redis`.
fn node_config(dir: &Path, redis: &str, extra: &str) -> PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN}\"\n\
             [store]\nredis = \"{redis}\"\ntimeout = \"300ms\"\n{extra}\n\
             [cookies]\nsecure = false\n"
        ),
    )
    .unwrap();
    path
}

async fn readyz(base: &str) -> Value {
    Client::new()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_acl_user_does_everything_and_its_password_is_never_logged() {
    let redis = RedisServer::start();
    let _: () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                "twintoken",
                "on",
                ">s3cret/pw",
                "~tt:*",
                "&tt:*",
                "+@all",
                "-@dangerous",
            ][..],
        )
        .query(&mut redis.conn())
        .unwrap();
    // Percent-encoded in the URL: '/' is %2F.
    let url = format!("redis://twintoken:s3cret%2Fpw@127.0.0.1:{}/", redis.port);
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), &node_config(d.path(), &url, "require_on_start = true"));
    round_trip(&node.base).await;
    let ready = readyz(&node.base).await;
    assert_eq!(
        (ready["redis"].as_str(), ready["revocations_caught_up"].as_bool()),
        (Some("ok"), Some(true)),
        "{ready}"
    );
    let log = node.log();
    assert!(!log.contains("s3cret"), "the password appears in the log: {log}");
    assert!(
        log.contains(&format!("redis://twintoken:***@127.0.0.1:{}/", redis.port)) && log.contains("reachable"),
        "the node is named, its password masked: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_named_in_the_log_and_in_readyz_and_logins_answer_503() {
    let redis = RedisServer::start();
    let _: () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                "twintoken",
                "on",
                ">right",
                "~tt:*",
                "&tt:*",
                "+@all",
                "-@dangerous",
            ][..],
        )
        .query(&mut redis.conn())
        .unwrap();
    let url = format!("redis://twintoken:wrong@127.0.0.1:{}/", redis.port);
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), &node_config(d.path(), &url, ""));
    let log = node.log();
    assert!(
        log.contains("authentication failed")
            && log.contains(&format!("127.0.0.1:{}", redis.port))
            && !log.contains("wrong@"),
        "{log}"
    );
    let r = Client::new()
        .post(node.url("/v1/admin/sessions"))
        .bearer_auth(ADMIN)
        .json(&json!({ "user_id": "alice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = readyz(&node.base).await;
    assert_eq!(ready["status"], "ready", "the fallback still serves: {ready}");
    assert_eq!(ready["redis"], "degraded", "{ready}");
    assert_eq!(ready["cause"], "authentication failed", "{ready}");
    assert!(
        ready["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("authentication failed (127.0.0.1:{})", redis.port)),
        "{ready}"
    );
    let log = node.log();
    assert!(
        log.lines()
            .any(|l| l.contains("session store call failed") && l.contains("cause=\"authentication failed\"")),
        "the log says it in the same words: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_said_at_start_and_require_on_start_stops_serve() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), &node_config(d.path(), &url, ""));
    let log = node.log();
    assert!(
        log.contains(&format!("127.0.0.1:{port}")) && log.to_lowercase().contains("refused"),
        "{log}"
    );
    let ready = readyz(&node.base).await;
    assert_eq!(ready["redis"], "degraded", "{ready}");
    assert_eq!(ready["cause"], "refused", "{ready}");
    assert!(
        ready["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("refused (127.0.0.1:{port})")),
        "{ready}"
    );
    drop(node);

    let err = refused(config(&url)).await;
    assert!(
        err.contains("store.require_on_start")
            && err.contains(&format!("127.0.0.1:{port}"))
            && err.to_lowercase().contains("refused"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unknown_url_scheme_stops_the_start_naming_the_key() {
    let err = refused(config("http://127.0.0.1:6379/")).await;
    assert!(err.contains("store.redis") && err.contains("http://"), "{err}");
}

#[tokio::test]
async fn one_time_codes_and_throttle_counters_work_under_the_least_privilege_acl_user() {
    use twintoken::store::codes::{CheckOutcome, CodeLimits, CodeStore, SendOutcome};
    use twintoken::store::throttle::{AdmitLimits, Counter, ThrottleStore};
    use twintoken::store::{StoreSettings, redis::RedisStore};
    use twintoken::time::UnixMs;
    use twintoken::tokens::Kid;

    let redis = RedisServer::start();
    let _: () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                "twintoken",
                "on",
                ">pw",
                "~tt:*",
                "&tt:*",
                "+@all",
                "-@dangerous",
            ][..],
        )
        .query(&mut redis.conn())
        .unwrap();
    let url = format!("redis://twintoken:pw@127.0.0.1:{}/", redis.port);
    let s = RedisStore::connect(
        &[url.into()],
        "tt:",
        Duration::from_secs(1),
        StoreSettings::from_config(&Config::for_test()),
    )
    .await
    .unwrap();
    let now = UnixMs(1_800_000_000_000);
    let limits = CodeLimits {
        ttl: Duration::from_secs(120),
        max_attempts: 3,
        resend_interval: Duration::from_secs(60),
        daily_limit: 5,
    };
    assert_eq!(
        s.code_send("d", Kid(1), &[1; 32], &limits, now).await.unwrap(),
        SendOutcome::Stored
    );
    assert!(matches!(
        s.code_check("d", &[(Kid(1), [2; 32])], now).await.unwrap(),
        CheckOutcome::Wrong { .. }
    ));
    assert_eq!(
        s.code_check("d", &[(Kid(1), [1; 32])], now).await.unwrap(),
        CheckOutcome::Accepted
    );
    assert_eq!(
        s.code_send("e", Kid(1), &[3; 32], &limits, now).await.unwrap(),
        SendOutcome::Stored
    );
    assert!(s.code_cancel("e", &[3; 32], now).await.unwrap());
    let c = Counter::AddressFailures("192.0.2.1");
    let l = AdmitLimits {
        window: Duration::from_secs(300),
        limit: 5,
        reduced: 2,
        threshold: 50,
    };
    s.throttle_admit(c, &l, now).await.unwrap();
    s.throttle_release(c, true, now).await.unwrap();
}

/// Sentinel processes (`redis-server <conf> --sentinel`), killed on drop.
struct Sentinels {
    children: Vec<std::process::Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Sentinels {
    fn start(primary: u16, n: usize) -> Sentinels {
        Sentinels::start_with(primary, n, 2, None)
    }

    /// `n` sentinels watching `primary` as `tt` with `quorum`; with `tls`,
    /// they listen on TLS only, require client certificates, and reach the
    /// primary over TLS.
    fn start_with(primary: u16, n: usize, quorum: usize, tls: Option<&Certs>) -> Sentinels {
        let dir = tempfile::tempdir().unwrap();
        let (mut children, mut ports) = (Vec::new(), Vec::new());
        for i in 0..n {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            let listen = match tls {
                None => format!("port {port}\n"),
                Some(c) => format!(
                    "port 0\ntls-port {port}\ntls-replication yes\ntls-auth-clients yes\n\
                     tls-cert-file {crt}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                     tls-client-cert-file {ccrt}\ntls-client-key-file {ckey}\n",
                    crt = c.path("server.crt").display(),
                    key = c.path("server.key").display(),
                    ca = c.path("ca.crt").display(),
                    ccrt = c.path("client.crt").display(),
                    ckey = c.path("client.key").display(),
                ),
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}bind 127.0.0.1\ndir {dir}\nuser twintoken on >Acl-Pass-1 +@all\n\
                     sentinel monitor tt 127.0.0.1 {primary} {quorum}\n\
                     sentinel down-after-milliseconds tt 1000\n\
                     sentinel failover-timeout tt 4000\n",
                    dir = dir.path().display()
                ),
            )
            .unwrap();
            children.push(
                std::process::Command::new("redis-server")
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            ports.push(port);
        }
        for &port in &ports {
            let start = std::time::Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(start.elapsed() < Duration::from_secs(10), "sentinel listens on {port}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Sentinels {
            children,
            ports,
            _dir: dir,
        }
    }

    fn query(&self, i: usize, args: &[&str]) -> Option<redis::Value> {
        let c = redis::Client::open(format!("redis://127.0.0.1:{}/", self.ports[i])).ok()?;
        let mut conn = c.get_connection_with_timeout(Duration::from_millis(300)).ok()?;
        redis::cmd("SENTINEL").arg(args).query(&mut conn).ok()
    }

    /// The port the sentinels name as the primary, when they all agree.
    fn primary(&self) -> Option<u16> {
        let mut seen = None;
        for i in 0..self.ports.len() {
            let v: Vec<String> = redis::from_redis_value(self.query(i, &["get-master-addr-by-name", "tt"])?).ok()?;
            let p: u16 = v.get(1)?.parse().ok()?;
            if seen.is_some_and(|s| s != p) {
                return None;
            }
            seen = Some(p);
        }
        seen
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_follow_the_primary_through_a_sentinel_failover() {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let sentinels = Sentinels::start(primary.port, 3);
    // Every sentinel knows the replica (learnt from the primary's INFO) and
    // a quorum agrees before the test starts.
    let start = std::time::Instant::now();
    loop {
        let known = (0..3).all(|i| {
            sentinels
                .query(i, &["replicas", "tt"])
                .is_some_and(|v| matches!(v, redis::Value::Array(a) if !a.is_empty()))
        });
        if known && sentinels.primary() == Some(primary.port) && sentinels.query(0, &["ckquorum", "tt"]).is_some() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "sentinels ready within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = sentinels
        .ports
        .iter()
        .map(|p| format!("\"redis://127.0.0.1:{p}/\""))
        .collect::<Vec<_>>()
        .join(", ");
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN}\"\n\
             [store]\nsentinels = [{list}]\nsentinel_master = \"tt\"\ntimeout = \"300ms\"\nrequire_on_start = true\n\
             [cookies]\nsecure = false\n"
        ),
    )
    .unwrap();
    let node = Node::start(d.path(), &config);
    let c = Client::new();
    let issue = |uid: String| {
        let c = c.clone();
        let url = node.url("/v1/admin/sessions");
        async move {
            c.post(url)
                .bearer_auth(ADMIN)
                .json(&json!({ "user_id": uid }))
                .send()
                .await
                .unwrap()
        }
    };
    let mut longs = Vec::new();
    for i in 0..10 {
        let r = issue(format!("s{i}")).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        longs.push(
            r.json::<Value>().await.unwrap()["long_token"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Replicated before the primary dies.
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut primary.conn()).unwrap();
    assert_eq!(acked, 1);

    primary.kill();
    let killed = std::time::Instant::now();
    let (mut rejected, mut on_redis_again, mut login_again, mut switched) = (0, None, None, None);
    while on_redis_again.is_none() || login_again.is_none() {
        if switched.is_none() && sentinels.primary() == Some(replica.port) {
            switched = Some(killed.elapsed());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "failover followed within 30 s"
        );
        let mut all_long = true;
        for t in &longs {
            let r = c.get(node.url("/v1/verify")).bearer_auth(t).send().await.unwrap();
            if r.status() != StatusCode::OK {
                rejected += 1;
            } else if r.headers()["x-auth-path"] != "long" {
                all_long = false;
            }
        }
        if all_long && on_redis_again.is_none() {
            on_redis_again = Some(killed.elapsed());
        }
        if login_again.is_none() && issue("after".into()).await.status() == StatusCode::CREATED {
            login_again = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rejected, 0, "no valid session rejected during the switch");
    assert_eq!(sentinels.primary(), Some(replica.port), "the replica was promoted");
    println!(
        "sentinel failover: the sentinels named the new primary {:?}, sessions were on the Redis path again {:?}, logins {:?} after SIGKILL of the primary (down-after 1 s)",
        switched,
        on_redis_again.unwrap_or_default(),
        login_again.unwrap_or_default()
    );
    // Writes and the revocation broadcast work on the new primary: a kick
    // ends the session.
    let r = c
        .delete(node.url("/v1/admin/users/s0/sessions"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(node.url("/v1/verify"))
        .bearer_auth(&longs[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let ready = readyz(&node.base).await;
    assert_eq!(
        (ready["redis"].as_str(), ready["revocations_caught_up"].as_bool()),
        (Some("ok"), Some(true)),
        "{ready}"
    );
}

/// The documented least-privilege ACL user (docs/deployment.md), as
/// redis-server arguments; Sentinel deployments add `+role` (the client
/// checks that the node the sentinels name is a primary).
const ACL_USER: [&str; 8] = [
    "--user",
    "twintoken",
    "on",
    ">Acl-Pass-1",
    "~tt:*",
    "&tt:*",
    "+@all",
    "-@dangerous",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_with_the_least_privilege_acl_user_serves_every_path() {
    let certs = Certs::make();
    let cluster = TlsCluster::start(&certs, &ACL_USER);
    let urls = cluster
        .nodes
        .iter()
        .map(|n| format!("rediss://twintoken:Acl-Pass-1@127.0.0.1:{}/", n.port).into())
        .collect();
    let mut c = Config::for_test();
    c.store.redis = Some(urls);
    c.store.timeout = Duration::from_millis(500);
    c.server.admin_token = Some(ADMIN.into());
    c.store.tls_ca_file = Some(certs.path("ca.crt"));
    c.store.require_on_start = true;
    let s = TestServer::start(c).await;
    // Sessions of several users land on different masters; statistics
    // count them all (found masters without ROLE, which the user lacks).
    round_trip(&s.base).await;
    let http = Client::new();
    for i in 0..12 {
        let r = http
            .post(s.url("/v1/admin/sessions"))
            .bearer_auth(ADMIN)
            .json(&json!({ "user_id": format!("u{i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let stats: Value = http
        .get(s.url("/v1/admin/stats"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (stats["online_users"].as_u64(), stats["online_sessions"].as_u64()),
        (Some(12), Some(12)),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_the_primary_they_name_are_reached_over_mutual_tls() {
    let certs = Certs::make();
    let mut acl = ACL_USER.to_vec();
    acl.push("+role");
    let primary = TlsRedis::start_with(&certs, true, &acl);
    let sentinels = Sentinels::start_with(primary.port, 1, 1, Some(&certs));
    let mut c = Config::for_test();
    c.store.sentinels = Some(vec![
        format!("rediss://twintoken:Acl-Pass-1@127.0.0.1:{}/", sentinels.ports[0]).into(),
    ]);
    c.store.sentinel_master = Some("tt".into());
    c.store.timeout = Duration::from_millis(500);
    c.server.admin_token = Some(ADMIN.into());
    c.store.tls_ca_file = Some(certs.path("ca.crt"));
    // Without the client certificate neither the sentinel nor the primary
    // lets the node in, and the start says which sentinel refused.
    let err = refused(c.clone()).await;
    assert!(err.contains(&format!("127.0.0.1:{}", sentinels.ports[0])), "{err}");
    c.store.tls_cert_file = Some(certs.path("client.crt"));
    c.store.tls_key_file = Some(certs.path("client.key"));
    c.store.require_on_start = true;
    let s = TestServer::start(c).await;
    round_trip(&s.base).await;
    let ready = readyz(&s.base).await;
    assert_eq!(ready["redis"].as_str(), Some("ok"), "{ready}");
}

#[tokio::test]
async fn sentinel_settings_that_do_not_hold_together_stop_the_start_naming_the_key() {
    let s: Vec<twintoken::config::Secret> = vec!["redis://127.0.0.1:26379/".into()];
    let mut both = config("redis://127.0.0.1:6379/");
    both.store.sentinels = Some(s.clone());
    both.store.sentinel_master = Some("tt".into());
    let mut empty = Config::for_test();
    empty.store.sentinels = Some(s.clone());
    empty.store.sentinel_master = Some(" ".into());
    let mut missing = Config::for_test();
    missing.store.sentinels = Some(s.clone());
    let mut scheme = Config::for_test();
    scheme.store.sentinels = Some(vec!["sentinel://127.0.0.1:26379".into()]);
    scheme.store.sentinel_master = Some("tt".into());
    let mut mixed = Config::for_test();
    mixed.store.sentinels = Some(vec![s[0].clone(), "rediss://127.0.0.1:26380/".into()]);
    mixed.store.sentinel_master = Some("tt".into());
    let mut unreadable = Config::for_test();
    unreadable.store.sentinels = Some(vec!["rediss://127.0.0.1:26380/".into()]);
    unreadable.store.sentinel_master = Some("tt".into());
    unreadable.store.tls_ca_file = Some("/nonexistent/ca.pem".into());
    for (c, key, what) in [
        (both, "store.sentinels", "not both"),
        (empty, "store.sentinel_master", "is empty"),
        (missing, "store.sentinel_master", "is required"),
        (scheme, "store.sentinels", "sentinel://"),
        (mixed, "store.sentinels", "mixes redis:// and rediss://"),
        (unreadable, "store.tls_ca_file", "cannot be read"),
    ] {
        let err = refused(c).await;
        assert!(err.contains(key) && err.contains(what), "want {key} / {what}: {err}");
    }
}
