//! The fuzz targets' checks (`tests/fuzz/src/checks.rs`), run on stable over
//! the committed seed corpus and every crash regression, so a fixed crash
//! stays fixed in the normal suite. The fuzzing itself: `scripts/fuzz`.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

use twintoken::keys::KeySet;
use twintoken::tokens::{Kid, LongClaims, ShortClaims, Sid, UserId, seal_long, seal_short};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_else(|_| Vec::new());
    out.sort();
    out.into_iter()
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// The fuzz service's own origin (its configured listen address).
const ORIGIN: &str = "http://127.0.0.1:8080";

fn seed_tokens() -> (String, String) {
    let keys = KeySet::single(Kid(1), checks::KEY);
    let uid = UserId::new("1001").unwrap();
    let sid = Sid([0xa5; 16]);
    let long = seal_long(
        &keys,
        &LongClaims::new_session(uid, sid, checks::NOW, true),
        checks::NOW,
    )
    .unwrap();
    let short = seal_short(
        &keys,
        &ShortClaims {
            uid,
            sid,
            iat: checks::NOW,
            exp: checks::NOW.plus(std::time::Duration::from_secs(60)),
            auth: Some(checks::NOW),
            remember: true,
            bind: twintoken::tokens::long_binding(&keys, &long, checks::NOW),
        },
        checks::NOW,
    )
    .unwrap();
    (long, short)
}

/// A bound long token (version 4, with a P-256 key's bytes) and a
/// challenge, under the fuzz key.
fn seed_bound_and_challenge() -> (String, String) {
    use twintoken::tokens::{ChallengeClaims, seal_challenge, seal_long_bound};
    let keys = KeySet::single(Kid(1), checks::KEY);
    let uid = UserId::new("1001").unwrap();
    let sid = Sid([3; 16]);
    let device = twintoken::dbsc::DeviceKey::Es256([4; 65]).to_bytes();
    let claims = LongClaims {
        device_bound: true,
        ..LongClaims::new_session(uid, sid, checks::NOW, true)
    };
    let bound = seal_long_bound(&keys, &claims, &device, checks::NOW).unwrap();
    let c = ChallengeClaims {
        uid,
        sid,
        iat: checks::NOW,
        exp: checks::NOW.plus(std::time::Duration::from_secs(300)),
    };
    (bound, seal_challenge(&keys, &c, checks::NOW).unwrap())
}

/// The seed corpus, as committed: valid tokens of both kinds and their
/// near misses, and HTTP requests of every endpoint the target covers.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let (long, short) = seed_tokens();
    let mut s: Vec<(&str, String, Vec<u8>)> = vec![
        ("token_decode", "long".into(), long.clone().into_bytes()),
        ("token_decode", "short".into(), short.clone().into_bytes()),
        (
            "token_decode",
            "long-truncated".into(),
            long.as_bytes()[..long.len() - 3].to_vec(),
        ),
        ("token_decode", "short-padded".into(), format!("{short}==").into_bytes()),
        (
            "token_decode",
            "std-alphabet".into(),
            long.replace('-', "+").replace('_', "/").into_bytes(),
        ),
        ("token_decode", "empty".into(), Vec::new()),
        ("token_decode", "oversized".into(), "A".repeat(1100).into_bytes()),
    ];
    let (bound, challenge) = seed_bound_and_challenge();
    s.push(("token_decode", "long-bound".into(), bound.into_bytes()));
    s.push(("token_decode", "challenge".into(), challenge.into_bytes()));
    // A proof Chromium made (the device-bound-session endpoints read the
    // same parser).
    let registration = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/fixtures/dbsc/registration.jwt"
    ))
    .unwrap();
    let refresh = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/fixtures/dbsc/refresh.jwt"
    ))
    .unwrap();
    let trim = |b: &[u8]| b.trim_ascii().to_vec();
    s.push(("token_decode", "dbsc-registration".into(), trim(&registration)));
    let sep = |fields: &[&[u8]]| -> Vec<u8> { fields.join(&0xFFu8) };
    let cookie = format!("tt_long={long}; tt_short={short}");
    let bearer = format!("Bearer {long}");
    let json = b"application/json".as_slice();
    let form = b"application/x-www-form-urlencoded".as_slice();
    let http: Vec<(&str, u8, Vec<u8>)> = vec![
        ("verify-cookies", 0, sep(&[cookie.as_bytes(), b"", b"", b"", b"", b""])),
        (
            "verify-bearer",
            1,
            sep(&[b"", bearer.as_bytes(), short.as_bytes(), b"", b"", b""]),
        ),
        (
            "verify-short-only",
            0,
            sep(&[b"", b"", short.as_bytes(), b"", b"", b""]),
        ),
        (
            "login-json",
            2,
            sep(&[
                b"",
                b"",
                b"",
                json,
                b"",
                br#"{"username":"alice","password":"correct horse","device":"pc"}"#,
            ]),
        ),
        (
            "login-form",
            2,
            sep(&[
                b"",
                b"",
                b"",
                form,
                ORIGIN.as_bytes(),
                b"username=alice&password=correct+horse",
            ]),
        ),
        (
            "logout",
            3,
            sep(&[cookie.as_bytes(), b"", b"", b"", ORIGIN.as_bytes(), b""]),
        ),
        (
            "code-send",
            4,
            sep(&[b"", b"", b"", json, b"", br#"{"destination":"+4915112345678"}"#]),
        ),
        (
            "code-login",
            5,
            sep(&[
                b"",
                b"",
                b"",
                json,
                b"",
                br#"{"destination":"a@example.com","code":"123456"}"#,
            ]),
        ),
        ("sessions", 6, sep(&[b"", bearer.as_bytes(), b"", b"", b"", b""])),
        (
            "admin-issue",
            7,
            sep(&[
                b"",
                b"Bearer fuzz-admin-token-fuzz-admin-token",
                b"",
                json,
                b"",
                br#"{"user_id":"1001"}"#,
            ]),
        ),
        // First bytes from 0xF0: the device-bound-session endpoints, the
        // third field as Secure-Session-Response.
        (
            "dbsc-start",
            0xF0,
            sep(&[format!("tt_long={long}").as_bytes(), b"", &trim(&registration)]),
        ),
        (
            "dbsc-refresh",
            0xF1,
            sep(&[format!("tt_long={long}").as_bytes(), b"", &trim(&refresh)]),
        ),
    ];
    for (name, pick, rest) in http {
        let mut b = vec![pick];
        b.extend(rest);
        s.push(("http_input", name.into(), b));
    }
    s
}

/// The committed seeds are [`seeds`] (tokens carry random nonces, so they
/// are compared by meaning: the token seeds must still open under the
/// fuzz key). `TWINTOKEN_WRITE_FUZZ_SEEDS=1` rewrites them after a format
/// change.
#[test]
fn the_seed_corpus_is_there_and_its_tokens_open() {
    let write = std::env::var_os("TWINTOKEN_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = fuzz_dir().join("seeds").join(target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        assert!(path.is_file(), "{} is missing", path.display());
    }
    let keys = KeySet::single(Kid(1), checks::KEY);
    let read = |n: &str| std::fs::read_to_string(fuzz_dir().join("seeds/token_decode").join(n)).unwrap();
    assert!(twintoken::tokens::open_long(&keys, &read("long"), checks::NOW).is_ok());
    assert!(twintoken::tokens::open_short(&keys, &read("short"), checks::NOW).is_ok_and(|c| c.bind.is_some()));
    assert!(twintoken::tokens::open_long(&keys, &read("long-bound"), checks::NOW).is_ok_and(|c| c.device_bound));
    assert!(twintoken::tokens::open_challenge(&keys, &read("challenge"), checks::NOW).is_ok());
}

/// Runs `check` over a target's seeds and regressions; returns how many.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        for (path, bytes) in files(&fuzz_dir().join(dir).join(target)) {
            eprintln!("{}", path.display());
            check(&bytes);
            n += 1;
        }
    }
    n
}

#[test]
fn token_decode_holds_on_the_corpus_and_regressions() {
    let n = replay("token_decode", checks::token_decode);
    assert!(n >= 9, "the seed corpus is there ({n} files)");
}

#[test]
fn http_input_holds_on_the_corpus_and_regressions() {
    let n = replay("http_input", checks::http_input);
    assert!(n >= 10, "the seed corpus is there ({n} files)");
}

/// Each HTTP seed gets the answer it was written for, on a fresh service:
/// a seed that silently turned into a 401 or 403 (a renamed cookie, a new
/// CSRF rule, a longer admin token) would no longer exercise its endpoint.
#[test]
fn each_http_seed_gets_the_answer_it_was_written_for() {
    let app = checks::App::new();
    // Logout last: it ends the seed session the others use.
    let expected = [
        ("verify-cookies", 200),
        ("verify-bearer", 200),
        ("verify-short-only", 200),
        ("login-json", 200),
        ("login-form", 200),
        ("code-send", 202),
        ("code-login", 401),
        ("sessions", 200),
        ("admin-issue", 201),
        ("logout", 200),
    ];
    for (name, status) in expected {
        // The committed file: what the fuzzer starts from.
        let bytes = std::fs::read(fuzz_dir().join("seeds/http_input").join(name)).unwrap();
        assert_eq!(
            checks::http_status(&app, &bytes),
            Some(status),
            "seed {name} (rewrite the seeds with TWINTOKEN_WRITE_FUZZ_SEEDS=1 after a contract change)"
        );
    }
}
