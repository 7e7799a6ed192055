//! The keyring: lifecycle states, rotation, retirement, file permissions,
//! malformed files, live reload, and the known-answer fixture.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use twintoken::keys::{self, KeyError, KeySet, KeyState, Keyring};
use twintoken::time::UnixMs;
use twintoken::tokens::{Kid, LongClaims, Sid, TokenError, UserId};

const T0: UnixMs = UnixMs(1_800_000_000_000);
const DAY: Duration = Duration::from_secs(86400);
const ABSOLUTE: Duration = Duration::from_secs(30 * 86400);

fn claims(at: UnixMs) -> LongClaims {
    LongClaims::new_session(UserId::new("u1").unwrap(), Sid([1; 16]), at, true)
}

fn ring_at(dir: &Path) -> KeySet {
    KeySet::from_files(keys::load_dir(dir).unwrap())
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/fixtures")
}

#[test]
fn lifecycle_states_follow_activation_and_retirement() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("keys");
    keys::init(&dir, T0).unwrap();
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700,
        "a created keyring dir is private"
    );
    let k1 = fs::metadata(dir.join("key-1.key")).unwrap();
    assert_eq!(k1.permissions().mode() & 0o777, 0o600);

    let m2 = keys::rotate(&dir, T0, Duration::from_secs(10)).unwrap();
    assert_eq!(m2.kid, Kid(2));
    let set = ring_at(&dir);
    assert_eq!(set.state(Kid(1), T0), Some(KeyState::Primary));
    assert_eq!(set.state(Kid(2), T0), Some(KeyState::Pending));
    let later = T0.plus(Duration::from_secs(10));
    assert_eq!(set.state(Kid(1), later), Some(KeyState::VerifyOnly));
    assert_eq!(set.state(Kid(2), later), Some(KeyState::Primary));
    assert_eq!(set.state(Kid(3), later), None);
    assert!(matches!(keys::init(&dir, T0), Err(KeyError::AlreadyInitialized { .. })));
}

#[test]
fn rotation_keeps_old_tokens_valid_and_pending_keys_open_before_they_sign() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    keys::init(dir, T0).unwrap();
    let old = ring_at(dir);
    let t_old = twintoken::tokens::seal_long(&old, &claims(T0), T0).unwrap();

    keys::rotate(dir, T0, Duration::from_secs(10)).unwrap();
    let set = ring_at(dir);
    // Before activation node A still seals with key 1 ...
    let before = T0.plus(Duration::from_secs(5));
    let t_a = twintoken::tokens::seal_long(&set, &claims(before), before).unwrap();
    assert_eq!(kid_of(&t_a), 1);
    // ... while node B, whose clock runs 6 s ahead, already seals with key 2,
    // and node A opens that token although key 2 is still pending for it.
    let b_now = before.plus(Duration::from_secs(6));
    let t_b = twintoken::tokens::seal_long(&set, &claims(before), b_now).unwrap();
    assert_eq!(kid_of(&t_b), 2);
    assert_eq!(set.state(Kid(2), before), Some(KeyState::Pending));
    assert_eq!(
        twintoken::tokens::open_long(&set, &t_b, before).unwrap(),
        claims(before)
    );
    // The token sealed with the old key still opens after the rotation.
    assert_eq!(
        twintoken::tokens::open_long(&set, &t_old, b_now).unwrap().sid,
        claims(T0).sid
    );
}

fn kid_of(token: &str) -> u32 {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).unwrap();
    u32::from_be_bytes([b[2], b[3], b[4], b[5]])
}

#[test]
fn retire_refuses_while_tokens_may_live_then_rejects_them_distinctly() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    keys::init(dir, T0).unwrap();
    let t_old = twintoken::tokens::seal_long(&ring_at(dir), &claims(T0), T0).unwrap();
    keys::rotate(dir, T0, DAY).unwrap();

    // Primary: refused.
    let e = keys::retire(dir, Kid(1), T0, ABSOLUTE, false).unwrap_err();
    assert!(e.to_string().contains("primary key"), "{e}");
    // Superseded one day in, but tokens may live 30 days after that.
    let t = T0.plus(DAY * 2);
    let e = keys::retire(dir, Kid(1), t, ABSOLUTE, false).unwrap_err();
    assert!(matches!(e, KeyError::RetireRefused { .. }));
    assert!(e.to_string().contains("--force"), "{e}");
    assert!(matches!(
        keys::retire(dir, Kid(9), t, ABSOLUTE, false),
        Err(KeyError::NoSuchKey(Kid(9)))
    ));

    // After the absolute lifetime it may go; its tokens then fail with a
    // distinct error, and its secret is gone from disk.
    let t = T0.plus(DAY).plus(ABSOLUTE);
    assert!(twintoken::tokens::long_binding(&ring_at(dir), &t_old, t).is_some());
    keys::retire(dir, Kid(1), t, ABSOLUTE, false).unwrap();
    let set = ring_at(dir);
    assert_eq!(set.state(Kid(1), t), Some(KeyState::Retired));
    assert!(matches!(
        twintoken::tokens::open_long(&set, &t_old, t),
        Err(TokenError::RetiredKid(Kid(1)))
    ));
    // Nor does it let a short token beside it count (its binding is not
    // read once its key is retired).
    assert_eq!(twintoken::tokens::long_binding(&set, &t_old, t), None);
    let text = fs::read_to_string(dir.join("key-1.key")).unwrap();
    assert!(!text.contains("secret"), "retiring erases the secret");
    assert!(text.contains("retired_at"));
}

#[test]
fn retire_with_force_skips_the_safety_checks() {
    let d = tempfile::tempdir().unwrap();
    keys::init(d.path(), T0).unwrap();
    keys::rotate(d.path(), T0, Duration::ZERO).unwrap();
    keys::retire(d.path(), Kid(1), T0, ABSOLUTE, true).unwrap();
    assert_eq!(ring_at(d.path()).state(Kid(1), T0), Some(KeyState::Retired));
    assert_eq!(ring_at(d.path()).primary(T0), Some(Kid(2)));
}

#[test]
fn group_or_world_readable_key_files_are_refused_with_the_fix() {
    let d = tempfile::tempdir().unwrap();
    keys::init(d.path(), T0).unwrap();
    let f = d.path().join("key-1.key");
    for mode in [0o640, 0o604] {
        fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
        let e = keys::load_dir(d.path()).err().unwrap();
        assert!(matches!(e, KeyError::Permissions { .. }));
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
    // A key copied with a umask of 022, as git checks the fixtures out.
    let d2 = tempfile::tempdir().unwrap();
    let copy = d2.path().join("key-1.key");
    fs::copy(fixtures().join("key-1.key"), &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(keys::load_dir(d2.path()), Err(KeyError::Permissions { .. })));
}

#[test]
fn malformed_key_files_name_the_file_and_the_problem() {
    let cases: &[(&str, &str, &str)] = &[
        ("key-1.key", "kid = ", "not a valid key file"),
        (
            "key-1.key",
            "kid = 1\ncreated = \"x\"\nactivates_at = \"x\"\nsecret = \"AA\"\n",
            "RFC 3339",
        ),
        (
            "key-1.key",
            "kid = 1\ncreated = \"2026-01-01T00:00:00Z\"\nactivates_at = \"2026-01-01T00:00:00Z\"\nsecret = \"AA\"\n",
            "43 characters",
        ),
        (
            "key-1.key",
            "kid = 1\ncreated = \"2026-01-01T00:00:00Z\"\nactivates_at = \"2026-01-01T00:00:00Z\"\n",
            "no secret",
        ),
        (
            "key-2.key",
            "kid = 1\ncreated = \"2026-01-01T00:00:00Z\"\nactivates_at = \"2026-01-01T00:00:00Z\"\nsecret = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\"\n",
            "should be named key-1.key",
        ),
        ("key-1.key", "kid = 1\nkind = \"x\"\n", "not a valid key file"),
    ];
    for (name, text, want) in cases {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let e = keys::load_dir(d.path()).err().unwrap();
        let msg = format!(
            "{e}: {}",
            std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
        );
        assert!(msg.contains(name), "{msg}");
        assert!(msg.contains(want), "{msg} should mention {want}");
    }
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(keys::load_dir(d.path()), Err(KeyError::Empty { .. })));
    assert!(
        keys::load_dir(&d.path().join("missing"))
            .err()
            .unwrap()
            .to_string()
            .contains("keys init")
    );
}

#[test]
fn live_keyring_learns_rotations_by_reload_and_by_unknown_kid() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    keys::init(dir, T0).unwrap();
    let ring = Keyring::load(dir).unwrap();

    // Another node rotates with no delay and seals with key 2.
    keys::rotate(dir, T0, Duration::ZERO).unwrap();
    let other = ring_at(dir);
    let t2 = twintoken::tokens::seal_long(&other, &claims(T0), T0).unwrap();
    assert_eq!(kid_of(&t2), 2);
    // The unknown kid triggers one reload, and the token opens.
    assert_eq!(ring.open_long(&t2, T0).unwrap(), claims(T0));

    // A third key: an unknown kid within a second of the last such reload
    // does not reload again ...
    keys::rotate(dir, T0, Duration::ZERO).unwrap();
    let t3 = twintoken::tokens::seal_long(&ring_at(dir), &claims(T0), T0).unwrap();
    let soon = T0.plus(Duration::from_millis(500));
    assert!(matches!(ring.open_long(&t3, soon), Err(TokenError::UnknownKid(Kid(3)))));
    // ... a second later it does.
    assert_eq!(
        ring.open_long(&t3, T0.plus(Duration::from_secs(1))).unwrap(),
        claims(T0)
    );

    // The periodic reload path: returns whether anything changed.
    assert!(!ring.reload().unwrap());
    keys::rotate(dir, T0, DAY).unwrap();
    assert!(ring.reload().unwrap());
    assert_eq!(ring.snapshot().state(Kid(4), T0), Some(KeyState::Pending));
}

#[test]
fn a_bad_file_during_reload_keeps_the_current_keys() {
    let d = tempfile::tempdir().unwrap();
    keys::init(d.path(), T0).unwrap();
    let ring = Keyring::load(d.path()).unwrap();
    let t = ring.seal_long(&claims(T0), T0).unwrap();
    let bad = d.path().join("key-2.key");
    fs::write(&bad, "garbage").unwrap();
    fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(ring.reload().is_err());
    assert_eq!(
        ring.open_long(&t, T0).unwrap(),
        claims(T0),
        "the running keyring is untouched"
    );
}

#[tokio::test(start_paused = true)]
async fn the_reloader_task_picks_up_a_rotation_without_restart() {
    let d = tempfile::tempdir().unwrap();
    keys::init(d.path(), T0).unwrap();
    let ring = std::sync::Arc::new(Keyring::load(d.path()).unwrap());
    let clock = std::sync::Arc::new(twintoken::time::ManualClock::new(T0));
    let task = keys::spawn_reloader(ring.clone(), Duration::from_secs(5), clock);
    keys::rotate(d.path(), T0, DAY).unwrap();
    assert_eq!(ring.snapshot().state(Kid(2), T0), None);
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Paused time auto-advances; give the blocking file reads a moment.
    for _ in 0..100 {
        if ring.snapshot().state(Kid(2), T0).is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(ring.snapshot().state(Kid(2), T0), Some(KeyState::Pending));
    task.abort();
}

/// The walk-through in docs/token-format.md, checked with the raw AEAD and
/// the documented layout rather than with the codec.
#[test]
fn known_answer_tokens_decode_by_the_documented_layout() {
    #[derive(serde::Deserialize)]
    struct Example {
        now_ms: u64,
        uid: String,
        sid_hex: String,
        long: String,
        short: String,
        short_exp_ms: u64,
    }
    use base64::Engine as _;
    let ex: Example = toml::from_str(&fs::read_to_string(fixtures().join("example-tokens.toml")).unwrap()).unwrap();
    let d = tempfile::tempdir().unwrap();
    fs::copy(fixtures().join("key-1.key"), d.path().join("key-1.key")).unwrap();
    fs::set_permissions(d.path().join("key-1.key"), fs::Permissions::from_mode(0o600)).unwrap();
    let ring = Keyring::load(d.path()).unwrap();
    let now = UnixMs(ex.now_ms);

    let l = ring.open_long(&ex.long, now).unwrap();
    assert_eq!((l.uid.as_str(), l.iat, l.login), (ex.uid.as_str(), now, now));
    assert_eq!(hex(&l.sid.0), ex.sid_hex);
    let s = ring.open_short(&ex.short, now).unwrap();
    assert_eq!((s.uid.as_str(), s.exp), (ex.uid.as_str(), UnixMs(ex.short_exp_ms)));

    let secret: [u8; 32] = core::array::from_fn(|i| i as u8);
    let cipher = XChaCha20Poly1305::new(&secret.into());
    for (token, kind, t2) in [(&ex.long, b'L', ex.now_ms), (&ex.short, b'S', ex.short_exp_ms)] {
        let mut b = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).unwrap();
        assert_eq!(&b[..6], &[1, kind, 0, 0, 0, 1], "version 1, kind, kid 1 big-endian");
        let (header, rest) = b.split_at_mut(6);
        let (nonce, rest) = rest.split_at_mut(24);
        let (ct, tag) = rest.split_at_mut(rest.len() - 16);
        let nonce = XNonce::try_from(&*nonce).unwrap();
        let tag = Tag::try_from(&*tag).unwrap();
        cipher
            .decrypt_inout_detached(&nonce, header, (&mut *ct).into(), &tag)
            .unwrap();
        assert_eq!(&ct[0..8], &ex.now_ms.to_be_bytes());
        assert_eq!(&ct[8..16], &t2.to_be_bytes());
        assert_eq!(hex(&ct[16..32]), ex.sid_hex);
        assert_eq!(ct[32], 2);
        assert_eq!(&ct[33..], b"42");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The keyring's memo of opened short tokens answers exactly as opening
/// would: the time checks again on every use, nothing for a text that
/// differs by one character, nothing for another keyring (another secret
/// under the same kid), and nothing of a key retired by a reload.
#[test]
fn the_short_token_memo_answers_exactly_as_an_open() {
    use twintoken::tokens::ShortClaims;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    keys::init(dir, T0).unwrap();
    let ring = Keyring::load(dir).unwrap();
    let c = claims(T0);
    let short = ShortClaims {
        uid: c.uid,
        sid: c.sid,
        iat: T0,
        exp: T0.plus(Duration::from_secs(60)),
        auth: Some(T0),
        remember: true,
        bind: None,
    };
    let t = ring.seal_short(&short, T0).unwrap();
    // Opened, then answered again (from the memo) with the same claims.
    assert_eq!(ring.open_short(&t, T0).unwrap(), short);
    assert_eq!(ring.open_short(&t, T0.plus(Duration::from_secs(59))).unwrap(), short);
    // Expiry and the issue time are checked again on every use.
    assert!(matches!(
        ring.open_short(&t, T0.plus(Duration::from_secs(60))),
        Err(TokenError::Expired { .. })
    ));
    assert!(matches!(
        ring.open_short(&t, UnixMs(T0.0 - 61_000)),
        Err(TokenError::NotYetValid { .. })
    ));
    // One character changed in the ciphertext: opened, and refused.
    let mut forged = t.clone().into_bytes();
    let at = forged.len() - 30;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(matches!(ring.open_short(&forged, T0), Err(TokenError::Tag)));
    // Another keyring in the same thread, another secret under kid 1.
    let other = tempfile::tempdir().unwrap();
    keys::init(other.path(), T0).unwrap();
    let other = Keyring::load(other.path()).unwrap();
    assert!(matches!(other.open_short(&t, T0), Err(TokenError::Tag)));
    // The key rotated away and retired: the next reload ends its tokens,
    // and a long token of it no longer lets a short token beside it count.
    let long_t = ring.seal_long(&c, T0).unwrap();
    assert!(ring.long_binding(&long_t, T0).is_some());
    assert!(ring.long_binding(&long_t, T0).is_some(), "remembered");
    assert_eq!(ring.open_short(&t, T0).unwrap(), short);
    keys::rotate(dir, T0, Duration::ZERO).unwrap();
    keys::retire(dir, Kid(1), T0, ABSOLUTE, true).unwrap();
    assert_eq!(ring.open_short(&t, T0).unwrap(), short, "not reloaded yet");
    ring.reload().unwrap();
    assert!(matches!(ring.open_short(&t, T0), Err(TokenError::RetiredKid(Kid(1)))));
    assert_eq!(ring.long_binding(&long_t, T0), None);
    assert!(
        other.long_binding(&long_t, T0).is_some(),
        "another keyring's kid 1 is its own"
    );
}
