//! What the fuzz targets check, one function per target. Shared by the
//! cargo-fuzz targets and by `tests/it/fuzz.rs`, which replays the seed
//! corpus and every crash regression through the same functions on stable.
//!
//! Invariants: nothing panics; a token opens only under its own key and as
//! one kind at most; what opens re-seals to claims that open the same; every
//! HTTP answer is a success or the JSON error shape, never a 5xx other than
//! 503 (the store) and never a 500.

use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, header};
use tower::ServiceExt as _;
use twintoken::keys::KeySet;
use twintoken::time::UnixMs;
use twintoken::tokens::{
    Kid, LongClaims, ShortClaims, open_challenge, open_long, open_long_bound, open_short, seal_challenge, seal_long,
    seal_long_bound, seal_short,
};

/// The key the seed tokens were sealed with (kid 1).
pub const KEY: [u8; 32] = [7; 32];
/// The time the seed tokens were sealed at.
pub const NOW: UnixMs = UnixMs(1_795_000_000_000);

fn keysets() -> &'static (KeySet, KeySet, KeySet) {
    static K: OnceLock<(KeySet, KeySet, KeySet)> = OnceLock::new();
    K.get_or_init(|| {
        (
            KeySet::single(Kid(1), KEY),
            KeySet::single(Kid(1), [8; 32]),
            KeySet::default(),
        )
    })
}

/// Token text (every kind: long, bound long, short, challenge) under the
/// right key, another key with the same kid, and an empty keyring, at
/// several times.
pub fn token_decode(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (right, wrong, none) = keysets();
    for now in [NOW, UnixMs(NOW.0 - 3_600_000), UnixMs(NOW.0 + 86_400_000), UnixMs(0)] {
        let long = open_long_bound(right, text, now);
        let short = open_short(right, text, now);
        let challenge = open_challenge(right, text, now);
        let opened = [long.is_ok(), short.is_ok(), challenge.is_ok()];
        assert!(
            opened.iter().filter(|o| **o).count() <= 1,
            "one text opened as two kinds"
        );
        if let Ok((c, device)) = &long {
            let again = match device {
                Some(d) => seal_long_bound(right, c, d, now),
                None => seal_long(right, c, now),
            }
            .and_then(|t| open_long_bound(right, &t, now));
            // The authentication time is kept in whole seconds (a version 1
            // token's, its login time, may have milliseconds).
            let want = LongClaims {
                auth: UnixMs(c.auth.0 / 1000 * 1000),
                ..*c
            };
            assert_eq!(
                again.ok(),
                Some((want, device.clone())),
                "long claims re-seal and open the same"
            );
        }
        if let Ok(c) = &short {
            let again = seal_short(right, c, now).and_then(|t| open_short(right, &t, now));
            // A version 1 short token carries no authentication time; the
            // re-sealed one carries its issue time instead.
            let want = ShortClaims {
                auth: Some(UnixMs(c.auth.unwrap_or(c.iat).0 / 1000 * 1000)),
                ..*c
            };
            assert_eq!(again.ok(), Some(want), "short claims re-seal and open the same");
        }
        if let Ok(c) = &challenge {
            let again = seal_challenge(right, c, now).and_then(|t| open_challenge(right, &t, now));
            assert_eq!(again.ok(), Some(*c), "challenge claims re-seal and open the same");
        }
        assert!(open_challenge(wrong, text, now).is_err(), "opened under another key");
        assert!(open_long(wrong, text, now).is_err(), "opened under another key");
        assert!(open_short(wrong, text, now).is_err(), "opened under another key");
        assert!(open_long(none, text, now).is_err() && open_short(none, text, now).is_err());
    }
    // The same text as a device-bound-session proof: refused with a reason
    // or accepted, never a panic; an accepted registration's key survives
    // the trip through a bound long token's bytes.
    if let Ok(reg) = twintoken::dbsc::check_registration(text) {
        assert_eq!(
            twintoken::dbsc::DeviceKey::from_bytes(&reg.key.to_bytes()),
            Some(reg.key.clone())
        );
        assert!(!reg.jti.is_empty());
        let _ = twintoken::dbsc::check_refresh(text, &reg.key);
    }
}

/// A service with the fuzz key and user, and a runtime to drive it.
pub struct App {
    rt: tokio::runtime::Runtime,
    router: Router,
    _service: twintoken::app::Service,
}

fn app() -> &'static App {
    static A: OnceLock<App> = OnceLock::new();
    A.get_or_init(App::new)
}

impl App {
    /// A fresh service (its own embedded store) over the fuzz keyring.
    pub fn new() -> App {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = std::env::temp_dir().join(format!("twintoken-fuzz-{}", std::process::id()));
        // The keyring holds KEY as kid 1, so the seed tokens verify; the
        // users file holds alice (password "correct horse", phone +4915112345678).
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::create_dir_all(dir.join("keys")).expect("fuzz keys dir");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.join("keys/key-1.key"))
                .expect("fuzz key file");
            f.write_all(
                b"kid = 1\ncreated = \"2026-11-18T00:00:00.000Z\"\nactivates_at = \"2026-11-18T00:00:00.000Z\"\nsecret = \"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc\"\n",
            )
            .expect("fuzz key file");
            let mut users = twintoken::users::Users::default();
            users.add("alice", Some("1001"), "correct horse").expect("fuzz user");
            users
                .set_contact("alice", Some("+4915112345678"), None)
                .expect("fuzz user");
            users.save(&dir.join("users.toml")).expect("fuzz users file");
        }
        let mut config = twintoken::config::Config::for_test();
        config.keys.dir = dir.join("keys");
        config.users.file = dir.join("users.toml");
        config.code_login.enabled = true;
        config.dbsc.enabled = Some(true);
        config.server.admin_token = Some("fuzz-admin-token-fuzz-admin-token".into());
        let opts = twintoken::app::ServeOptions {
            no_create_keys: false,
            has_config_file: true,
        };
        let clock = std::sync::Arc::new(twintoken::time::ManualClock::new(NOW));
        let service = rt
            .block_on(twintoken::app::build(config, &opts, clock))
            .expect("service");
        // The seed tokens' session exists, so long-token seeds reach the
        // store path and the session list (not just a 401).
        rt.block_on(twintoken::store::SessionStore::login(
            &**service.state.verifier.store(),
            &twintoken::store::NewSession {
                uid: twintoken::tokens::UserId::new("1001").expect("uid"),
                sid: twintoken::tokens::Sid([0xa5; 16]),
                device: None,
                meta: None,
            },
            NOW,
        ))
        .expect("seed session");
        let router = twintoken::http::router(service.state.clone());
        App {
            rt,
            router,
            _service: service,
        }
    }
}

/// One request built from the input: the first byte picks the endpoint,
/// the rest splits at 0xFF into Cookie, Authorization, X-Short-Token
/// (`Secure-Session-Response` for the device-bound-session endpoints,
/// picked by first bytes from 0xF0), Content-Type, Origin and the body. Header values the HTTP layer would
/// not accept are left out (hyper refuses them before the router).
pub fn http_input(data: &[u8]) {
    http_status(app(), data);
}

/// [`http_input`] on `a`: the status it answered (checked: never a 5xx but
/// 503, errors in the JSON shape), `None` for input that makes no request.
pub fn http_status(a: &App, data: &[u8]) -> Option<u16> {
    let (&pick, rest) = data.split_first()?;
    let dbsc = pick >= 0xF0;
    let (method, path) = match pick % 8 {
        _ if dbsc && pick % 2 == 0 => (Method::POST, "/v1/dbsc/start"),
        _ if dbsc => (Method::POST, "/v1/dbsc/refresh"),
        0 => (Method::GET, "/v1/verify"),
        1 => (Method::POST, "/v1/verify"),
        2 => (Method::POST, "/v1/login"),
        3 => (Method::POST, "/v1/logout"),
        4 => (Method::POST, "/v1/login/code/send"),
        5 => (Method::POST, "/v1/login/code"),
        6 => (Method::GET, "/v1/sessions"),
        _ => (Method::POST, "/v1/admin/sessions"),
    };
    let mut parts = rest.split(|b| *b == 0xFF);
    let mut req = Request::builder().method(method).uri(path);
    for name in [
        header::COOKIE,
        header::AUTHORIZATION,
        header::HeaderName::from_static(if dbsc {
            "secure-session-response"
        } else {
            "x-short-token"
        }),
        header::CONTENT_TYPE,
        header::ORIGIN,
    ] {
        if let Some(v) = parts.next().filter(|v| !v.is_empty())
            && let Ok(v) = HeaderValue::from_bytes(v)
        {
            req = req.header(name, v);
        }
    }
    let body: Vec<u8> = parts.collect::<Vec<_>>().join(&0xFF);
    let req = req.body(Body::from(body)).ok()?;
    let (status, bytes) = a.rt.block_on(async {
        let resp = a.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, bytes)
    });
    assert!(
        status.is_success() || status.is_client_error() || status.as_u16() == 503,
        "{status} for {path}"
    );
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("errors are JSON");
        assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
    }
    Some(status.as_u16())
}
