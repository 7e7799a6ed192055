//! Hostile input over HTTP, against the real listening server: flipped
//! bits, tokens from another deployment's keyring, a stolen rotated-out
//! long token replayed after the grace period, tokens outside their
//! lifetimes, oversized cookies. (Slow clients and many connections are in
//! `http.rs`, brute force and timing in `http.rs` and the `login_timing`
//! bench, the decoder itself in `tokens.rs` and the fuzz targets.)

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use twintoken::config::Config;
use twintoken::time::Clock as _;

use crate::support::server::TestServer;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

struct Tokens {
    long: String,
    short: String,
}

async fn login(s: &TestServer) -> Tokens {
    let r = Client::new()
        .post(s.url("/v1/login"))
        .json(&json!({ "username": "alice", "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let b: Value = r.json().await.unwrap();
    Tokens {
        long: b["long_token"].as_str().unwrap().into(),
        short: b["short_token"].as_str().unwrap().into(),
    }
}

/// (status, error code, X-Long-Token if re-issued)
async fn verify(s: &TestServer, long: Option<&str>, short: Option<&str>) -> (StatusCode, String, Option<String>) {
    let mut rq = Client::new().get(s.url("/v1/verify"));
    if let Some(l) = long {
        rq = rq.bearer_auth(l);
    }
    if let Some(t) = short {
        rq = rq.header("x-short-token", t);
    }
    let r = rq.send().await.unwrap();
    let status = r.status();
    let new_long = r.headers().get("x-long-token").map(|v| v.to_str().unwrap().to_string());
    let b: Value = r.json().await.unwrap();
    (status, b["error"].as_str().unwrap_or("").into(), new_long)
}

#[tokio::test]
async fn every_bit_flip_of_a_presented_token_is_refused() {
    let s = TestServer::start(Config::for_test()).await;
    let t = login(&s).await;
    for (kind, token) in [("short", &t.short), ("long", &t.long)] {
        let bytes = B64.decode(token).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let flipped = B64.encode(&b);
            let (status, error, _) = if kind == "short" {
                verify(&s, None, Some(&flipped)).await
            } else {
                verify(&s, Some(&flipped), None).await
            };
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{kind} bit {bit}");
            assert_eq!(error, "invalid", "{kind} bit {bit}");
        }
    }
    // The originals still work.
    assert_eq!(verify(&s, None, Some(&t.short)).await.0, StatusCode::OK);
    assert_eq!(verify(&s, Some(&t.long), None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn tokens_from_another_keyring_are_invalid() {
    let ours = TestServer::start(Config::for_test()).await;
    let theirs = TestServer::start(Config::for_test()).await;
    let foreign = login(&theirs).await;
    // Same user name, same kid (both keyrings start at key 1): only the key differs.
    for (long, short) in [
        (Some(foreign.long.as_str()), None),
        (None, Some(foreign.short.as_str())),
        (Some(foreign.long.as_str()), Some(foreign.short.as_str())),
    ] {
        let (status, error, _) = verify(&ours, long, short).await;
        assert_eq!((status, error.as_str()), (StatusCode::UNAUTHORIZED, "invalid"));
    }
    let c = &ours.state().config.cookies;
    let r = Client::new()
        .get(ours.url("/v1/verify"))
        .header(
            "cookie",
            format!(
                "{}={}; {}={}",
                c.long_name(),
                foreign.long,
                c.short_name(),
                foreign.short
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_rotated_out_long_token_replayed_after_the_grace_revokes_the_session() {
    let mut c = Config::for_test();
    c.tokens.rotate_interval = Duration::from_secs(600);
    c.tokens.rotate_grace = Duration::from_secs(30);
    let s = TestServer::start(c).await;
    let t = login(&s).await;

    s.clock.advance(Duration::from_secs(601));
    let (status, _, successor) = verify(&s, Some(&t.long), None).await;
    assert_eq!(status, StatusCode::OK);
    let successor = successor.expect("the long token rotated");
    // The user moves on to the successor (its first use starts the grace).
    assert_eq!(verify(&s, Some(&successor), None).await.0, StatusCode::OK);
    s.clock.advance(Duration::from_secs(10));
    assert_eq!(
        verify(&s, Some(&t.long), None).await.0,
        StatusCode::OK,
        "within the grace the old token still works (requests in flight)"
    );

    // The thief replays the old token after the grace.
    s.clock.advance(Duration::from_secs(30));
    let (status, error, _) = verify(&s, Some(&t.long), None).await;
    assert_eq!((status, error.as_str()), (StatusCode::UNAUTHORIZED, "revoked"));
    let (status, error, _) = verify(&s, Some(&successor), None).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::UNAUTHORIZED, "revoked"),
        "the whole session is gone, the legitimate user's token too"
    );
}

#[tokio::test]
async fn tokens_outside_their_lifetimes_are_refused() {
    let s = TestServer::start(Config::for_test()).await;
    let t = login(&s).await;
    // Short token: 60 s.
    s.clock.advance(Duration::from_secs(61));
    let (status, error, _) = verify(&s, None, Some(&t.short)).await;
    assert_eq!((status, error.as_str()), (StatusCode::UNAUTHORIZED, "expired"));

    // From the future: a node whose clock is 5 minutes behind the issuer's
    // (beyond the 60 s skew allowed) does not accept the token yet.
    let fresh = login(&s).await;
    s.clock.set(s.clock.now().minus(Duration::from_secs(300)));
    let (status, error, _) = verify(&s, None, Some(&fresh.short)).await;
    assert_eq!((status, error.as_str()), (StatusCode::UNAUTHORIZED, "invalid"));
    let (status, error, _) = verify(&s, Some(&fresh.long), None).await;
    assert_eq!((status, error.as_str()), (StatusCode::UNAUTHORIZED, "invalid"));

    // Long token: idle 2 h without a check.
    s.clock.advance(Duration::from_secs(300 + 2 * 3600 + 1));
    let (status, error, _) = verify(&s, Some(&fresh.long), None).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::UNAUTHORIZED, "expired"),
        "past its idle lifetime: expired, not revoked"
    );
}

#[tokio::test]
async fn oversized_cookies_and_tokens_get_clear_errors() {
    let s = TestServer::start(Config::for_test()).await;
    let c = &s.state().config.cookies;
    // One huge token in a cookie: refused before decoding.
    let r = Client::new()
        .get(s.url("/v1/verify"))
        .header("cookie", format!("{}={}", c.long_name(), "A".repeat(8000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"], "invalid");
    // Cookies past the header limit: 431 with the JSON error.
    let r = Client::new()
        .get(s.url("/v1/verify"))
        .header("cookie", format!("junk={}", "x".repeat(17 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"], "headers_too_large");
    // Hundreds of cookies, none ours: missing, not an error of the server.
    let many: Vec<String> = (0..500).map(|i| format!("c{i}=v")).collect();
    let r = Client::new()
        .get(s.url("/v1/verify"))
        .header("cookie", many.join("; "))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"], "missing");
}
