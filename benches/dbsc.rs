//! Device-bound sessions: what they cost.
//!
//! - A refresh as the browser makes it (`POST /v1/dbsc/refresh` without a
//!   proof: 403 + challenge; then the signed retry: a new short cookie),
//!   over HTTP on loopback against a real redis-server: p50/p99 of the
//!   whole two-request refresh and of the signed request alone, with Redis
//!   answering, then with Redis frozen (SIGSTOP: the breaker open, judged on
//!   crypto alone by `store.fallback = crypto`).
//! - `Verifier::verify` of a bound and an unbound session with both tokens
//!   (the short path), interleaved: the same work, so the same cost.
//! - Long token sizes, unbound and bound (ES256, RS256-2048).
//!
//! `cargo bench --bench dbsc`; under `cargo test` a quick run that asserts
//! the outcomes it would report (refreshed by the store, then on the
//! fallback; both sessions answered by the short path).

#[path = "../tests/it/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// A browser's ES256 device key.
struct Device(EcdsaKeyPair);

impl Device {
    fn new() -> Device {
        Device(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap_or_else(|e| panic!("{e}")))
    }

    fn jwt(&self, header: &Value, challenge: &str) -> String {
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(json!({ "jti": challenge }).to_string().as_bytes())
        );
        let sig = self
            .0
            .sign(&SystemRandom::new(), signed.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        format!("{signed}.{}", b64(sig.as_ref()))
    }

    fn jwk(&self) -> Value {
        let p = self.0.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])})
    }
}

/// The value of cookie `name` in an answer's `Set-Cookie` headers.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get_all("set-cookie").iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let (pair, _) = v.split_once(';').unwrap_or((v, ""));
        let (n, value) = pair.split_once('=')?;
        (n == name).then(|| value.to_string())
    })
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

struct Client {
    http: reqwest::Client,
    base: String,
    long: String,
    long_name: String,
    device: Device,
}

impl Client {
    /// One refresh as Chromium makes it; `(whole, signed request alone,
    /// X-Auth-Path)`.
    async fn refresh(&self) -> (Duration, Duration, String) {
        let cookie = format!("{}={}", self.long_name, self.long);
        let url = format!("{}/v1/dbsc/refresh", self.base);
        let t0 = Instant::now();
        let r = self
            .http
            .post(&url)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), 403, "a refresh without a proof");
        let challenge = r
            .headers()
            .get("secure-session-challenge")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_start_matches('"').split('"').next().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("no challenge"));
        let proof = self.device.jwt(&json!({"alg": "ES256", "typ": "dbsc+jwt"}), &challenge);
        let t1 = Instant::now();
        let r = self
            .http
            .post(&url)
            .header("cookie", &cookie)
            .header("secure-session-response", proof)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let done = Instant::now();
        assert_eq!(r.status(), 200, "a signed refresh");
        let path = r
            .headers()
            .get("x-auth-path")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (done - t0, done - t1, path)
    }
}

/// Refreshes `n` times; prints p50/p99 and returns the paths seen.
async fn measure(c: &Client, label: &str, n: usize) -> Vec<String> {
    let (mut whole, mut signed, mut paths) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let (w, s, p) = c.refresh().await;
        whole.push(w.as_secs_f64() * 1e6);
        signed.push(s.as_secs_f64() * 1e6);
        paths.push(p);
    }
    println!(
        "refresh, {label}, {n} refreshes: 403 + signed retry p50 {:.0} µs p99 {:.0} µs; signed request alone p50 {:.0} µs p99 {:.0} µs",
        pct(&mut whole, 0.5),
        pct(&mut whole, 0.99),
        pct(&mut signed, 0.5),
        pct(&mut signed, 0.99)
    );
    paths
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (refreshes, verifies) = if full { (2000, 200_000) } else { (20, 2000) };
    let redis = tokio::task::spawn_blocking(redis_server::RedisServer::start)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut config = twintoken::config::Config::for_test();
    config.dbsc.enabled = Some(true);
    config.store.redis = Some(vec![redis.url().into()]);
    config.store.timeout = Duration::from_millis(25);
    let service = common::service(config, dir.path()).await;
    let state = service.state.clone();
    let addr = common::serve(twintoken::http::router(state.clone())).await;
    let base = format!("http://{addr}");
    let start = Instant::now();
    while !state.verifier.caught_up() {
        assert!(start.elapsed() < Duration::from_secs(10), "revocation feed caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = state.clock.now();
    let verifier = state.verifier.clone();
    let keys = verifier.keys().clone();
    let http = reqwest::Client::new();
    let long_name = state.config.cookies.long_name().to_string();
    let short_name = state.config.cookies.short_name().to_string();

    let uid = twintoken::tokens::UserId::new("1001").unwrap_or_else(|e| panic!("{e}"));
    let login = || async {
        verifier
            .login(uid, None, None, now)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // A bound session: an unbound one from the verifier, then the
    // registration endpoint with a proof over its challenge.
    let unbound = login().await;
    let device = Device::new();
    let ch = keys
        .seal_challenge(
            &twintoken::tokens::ChallengeClaims {
                uid: unbound.uid,
                sid: unbound.sid,
                iat: now,
                exp: now.plus(Duration::from_secs(300)),
            },
            now,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let proof = device.jwt(&json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": device.jwk()}), &ch);
    let r = http
        .post(format!("{base}/v1/dbsc/start"))
        .header("cookie", format!("{long_name}={}", unbound.long.token))
        .header("secure-session-response", proof)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200, "registration");
    let long = set_cookie(&r, &long_name).unwrap_or_else(|| panic!("a bound long cookie"));
    let bound_short = set_cookie(&r, &short_name).unwrap_or_else(|| panic!("a short cookie"));
    let client = Client {
        http: http.clone(),
        base: base.clone(),
        long: long.clone(),
        long_name,
        device,
    };

    // An unbound session to compare the short path with (logged in while
    // Redis answers).
    let other = login().await;

    // Refresh with Redis answering, then frozen.
    for _ in 0..(refreshes / 10).max(3) {
        client.refresh().await;
    }
    let paths = measure(&client, "Redis answering", refreshes).await;
    assert!(paths.iter().all(|p| p == "long"), "judged by the store: {paths:?}");
    redis.freeze();
    // The first calls time out (store.timeout) and open the breaker.
    for _ in 0..5 {
        client.refresh().await;
    }
    let paths = measure(&client, "Redis frozen (crypto alone)", refreshes).await;
    assert!(
        paths.iter().all(|p| p == "fallback"),
        "judged on crypto alone: {paths:?}"
    );
    redis.thaw();

    // The short path of a bound and an unbound session: the same work.
    let pairs = [
        ("unbound", other.short.token.clone(), other.long.token.clone()),
        ("bound", bound_short.clone(), long.clone()),
    ];
    let mut ns = [Vec::new(), Vec::new()];
    for round in 0..20 {
        for (i, (_, short, long)) in pairs.iter().enumerate() {
            let t = Instant::now();
            for _ in 0..verifies / 20 {
                let v = verifier
                    .verify(Some(short), Some(long), now)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(v.path, twintoken::verify::Path::Short, "round {round}");
            }
            ns[i].push(t.elapsed().as_nanos() as f64 / (verifies / 20) as f64);
        }
    }
    let (u, b) = (pct(&mut ns[0], 0.5), pct(&mut ns[1], 0.5));
    println!(
        "Verifier::verify with both tokens (short path), median of 20 interleaved rounds of {}: unbound {u:.0} ns, bound {b:.0} ns ({:+.1} %)",
        verifies / 20,
        (b / u - 1.0) * 100.0
    );

    // Sizes.
    let claims = keys.open_long(&long, now).unwrap_or_else(|e| panic!("{e}"));
    let rs256 = twintoken::dbsc::DeviceKey::Rs256 {
        n: [vec![0xC1], vec![0x5A; 255]].concat(),
        e: vec![1, 0, 1],
    };
    let rs = keys
        .seal_long_bound(&claims, &rs256.to_bytes(), now)
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "long token of user id {:?}: unbound {} characters; bound to an ES256 key {} characters; to an RS256-2048 key {} characters",
        claims.uid.as_str(),
        other.long.token.len(),
        long.len(),
        rs.len()
    );
}
