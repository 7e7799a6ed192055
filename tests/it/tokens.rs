//! The token codec: round trips, tampering, kind confusion and garbage.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use twintoken::keys::KeySet;
use twintoken::time::UnixMs;
use twintoken::tokens::{
    self, BINDING_LEN, Binding, ChallengeClaims, Kid, LongClaims, MAX_CLOCK_SKEW, MAX_TOKEN_TEXT_LEN, ShortClaims, Sid,
    TokenError, TokenKind, UserId,
};

const NOW: UnixMs = UnixMs(1_800_000_000_000);

fn keys() -> KeySet {
    KeySet::single(Kid(7), [42; 32])
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn long(uid_s: &str) -> LongClaims {
    LongClaims {
        uid: uid(uid_s),
        sid: Sid([9; 16]),
        iat: NOW,
        login: NOW.minus(std::time::Duration::from_secs(3600)),
        auth: NOW.minus(std::time::Duration::from_secs(600)),
        remember: true,
        device_bound: false,
    }
}

fn short(uid_s: &str) -> ShortClaims {
    ShortClaims {
        uid: uid(uid_s),
        sid: Sid([9; 16]),
        iat: NOW,
        exp: NOW.plus(std::time::Duration::from_secs(60)),
        auth: Some(NOW.minus(std::time::Duration::from_secs(600))),
        remember: false,
        bind: None,
    }
}

fn challenge(uid_s: &str) -> ChallengeClaims {
    ChallengeClaims {
        uid: uid(uid_s),
        sid: Sid([9; 16]),
        iat: NOW,
        exp: NOW.plus(std::time::Duration::from_secs(300)),
    }
}

/// Any UTF-8 string of 1..=64 bytes.
fn arb_uid() -> impl Strategy<Value = String> {
    "\\PC{1,64}".prop_map(|s| {
        let mut end = s.len().min(64);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    })
}

proptest! {
    #[test]
    fn long_round_trips(u in arb_uid(), sid in any::<[u8; 16]>(), age in 0u64..10_000_000_000, back in 0u64..10_000_000_000, since in 0u64..10_000_000_000, remember in any::<bool>()) {
        let iat = UnixMs(NOW.0 - age);
        let login = UnixMs(iat.0.saturating_sub(back));
        // Whole seconds between the login's second and the issue's.
        let (first, last) = (login.0 / 1000, iat.0 / 1000);
        let auth = UnixMs((first + since % (last - first + 1)) * 1000);
        let c = LongClaims { uid: uid(&u), sid: Sid(sid), iat, login, auth, remember, device_bound: false };
        let t = tokens::seal_long(&keys(), &c, NOW).unwrap();
        prop_assert!(t.len() <= MAX_TOKEN_TEXT_LEN);
        prop_assert_eq!(tokens::open_long(&keys(), &t, NOW).unwrap(), c);
    }

    #[test]
    fn short_round_trips(u in arb_uid(), sid in any::<[u8; 16]>(), age in 0u64..1_000_000, life in 1u64..10_000_000, back in 0u64..1_000_000_000, remember in any::<bool>(), bind in proptest::option::of(any::<[u8; 16]>())) {
        let iat = UnixMs(NOW.0 - age);
        let c = ShortClaims { uid: uid(&u), sid: Sid(sid), iat, exp: UnixMs(NOW.0 + life), auth: Some(UnixMs(iat.0.saturating_sub(back) / 1000 * 1000)), remember, bind: bind.map(Binding) };
        let t = tokens::seal_short(&keys(), &c, NOW).unwrap();
        prop_assert_eq!(tokens::open_short(&keys(), &t, NOW).unwrap(), c);
    }

    #[test]
    fn garbage_text_is_an_error_not_a_panic(s in "\\PC{0,700}") {
        prop_assert!(tokens::open_long(&keys(), &s, NOW).is_err());
        prop_assert!(tokens::open_short(&keys(), &s, NOW).is_err());
        let _ = tokens::peek_long_sid(&keys(), &s);
    }

    /// The unauthenticated peek at a long token's sid (used only to tell
    /// whether a short token belongs beside it) reads exactly the sid the
    /// full open authenticates, for any claims.
    #[test]
    fn peeking_reads_the_sid_that_opening_authenticates(u in arb_uid(), sid in any::<[u8; 16]>(), age in 0u64..1_000_000) {
        let c = LongClaims { uid: uid(&u), sid: Sid(sid), iat: UnixMs(NOW.0 - age), login: UnixMs(NOW.0 - age), auth: UnixMs(NOW.0 - age), remember: true, device_bound: false };
        let t = tokens::seal_long(&keys(), &c, NOW).unwrap();
        prop_assert_eq!(tokens::peek_long_sid(&keys(), &t), Some(Sid(sid)));
        let s = ShortClaims { uid: uid(&u), sid: Sid(sid), iat: NOW, exp: NOW.plus(std::time::Duration::from_secs(60)), auth: Some(NOW), remember: true, bind: None };
        let st = tokens::seal_short(&keys(), &s, NOW).unwrap();
        prop_assert_eq!(tokens::peek_long_sid(&keys(), &st), None, "a short token is not peeked as a long one");
        prop_assert_eq!(tokens::peek_long_sid(&KeySet::single(Kid(8), [42; 32]), &t), None, "unknown kid");
    }

    /// A long token's binding is the start of its nonce: two long tokens of
    /// the same claims differ in it, a short token carries it back exactly,
    /// and nothing but a long token of an accepted key has one.
    #[test]
    fn a_binding_names_one_long_token(u in arb_uid(), sid in any::<[u8; 16]>(), age in 0u64..1_000_000) {
        let c = LongClaims { uid: uid(&u), sid: Sid(sid), iat: UnixMs(NOW.0 - age), login: UnixMs(NOW.0 - age), auth: UnixMs(NOW.0 - age), remember: true, device_bound: false };
        let (a, b) = (tokens::seal_long(&keys(), &c, NOW).unwrap(), tokens::seal_long(&keys(), &c, NOW).unwrap());
        let (ba, bb) = (tokens::long_binding(&keys(), &a, NOW).unwrap(), tokens::long_binding(&keys(), &b, NOW).unwrap());
        prop_assert_ne!(ba, bb, "each long token has its own binding");
        let nonce = URL_SAFE_NO_PAD.decode(&a).unwrap()[6..6 + BINDING_LEN].to_vec();
        prop_assert_eq!(&ba.0[..], &nonce[..]);
        let s = ShortClaims { uid: uid(&u), sid: Sid(sid), iat: NOW, exp: NOW.plus(std::time::Duration::from_secs(60)), auth: Some(NOW), remember: true, bind: Some(ba) };
        let st = tokens::seal_short(&keys(), &s, NOW).unwrap();
        prop_assert_eq!(tokens::open_short(&keys(), &st, NOW).unwrap().bind, Some(ba));
        prop_assert_eq!(tokens::long_binding(&keys(), &st, NOW), None, "a short token has no binding of its own");
        prop_assert_eq!(tokens::long_binding(&KeySet::single(Kid(8), [42; 32]), &a, NOW), None, "unknown kid");
        prop_assert_eq!(tokens::long_binding(&keys(), &a[..39], NOW), None, "too short to hold a nonce");
    }

    #[test]
    fn garbage_bytes_in_valid_base64_are_rejected(b in proptest::collection::vec(any::<u8>(), 0..400)) {
        let s = URL_SAFE_NO_PAD.encode(&b);
        prop_assert!(tokens::open_long(&keys(), &s, NOW).is_err());
        prop_assert!(tokens::open_short(&keys(), &s, NOW).is_err());
    }

    #[test]
    fn truncated_or_extended_tokens_are_rejected(cut in 0usize..200, extra in "[A-Za-z0-9_-]{1,40}") {
        let t = tokens::seal_long(&keys(), &long("alice"), NOW).unwrap();
        let truncated = &t[..cut.min(t.len() - 1)];
        prop_assert!(tokens::open_long(&keys(), truncated, NOW).is_err());
        let extended = format!("{t}{extra}");
        prop_assert!(tokens::open_long(&keys(), &extended, NOW).is_err());
    }
}

#[test]
fn every_single_bit_flip_of_either_kind_is_rejected() {
    let k = keys();
    let bound = ShortClaims {
        bind: Some(Binding([3; BINDING_LEN])),
        ..short("user-1")
    };
    for (kind, token) in [
        (TokenKind::Long, tokens::seal_long(&k, &long("user-1"), NOW).unwrap()),
        (TokenKind::Short, tokens::seal_short(&k, &short("user-1"), NOW).unwrap()),
        (TokenKind::Short, tokens::seal_short(&k, &bound, NOW).unwrap()),
        (
            TokenKind::Challenge,
            tokens::seal_challenge(&k, &challenge("user-1"), NOW).unwrap(),
        ),
    ] {
        let open = |t: &str| match kind {
            TokenKind::Long => tokens::open_long(&k, t, NOW).map(|_| ()),
            TokenKind::Short => tokens::open_short(&k, t, NOW).map(|_| ()),
            TokenKind::Challenge => tokens::open_challenge(&k, t, NOW).map(|_| ()),
        };
        assert!(open(&token).is_ok());
        // Bit flips of the decoded bytes, header and nonce included.
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                open(&URL_SAFE_NO_PAD.encode(&b)).is_err(),
                "{kind} token: flipped bit {bit} accepted"
            );
        }
        // Bit flips of the text itself (non-canonical base64 included).
        for bit in 0..token.len() * 8 {
            let mut t = token.clone().into_bytes();
            t[bit / 8] ^= 1 << (bit % 8);
            if let Ok(t) = String::from_utf8(t) {
                assert!(open(&t).is_err(), "{kind} token: flipped text bit {bit} accepted");
            }
        }
    }
}

#[test]
fn short_never_opens_as_long_nor_the_reverse() {
    let k = keys();
    let l = tokens::seal_long(&k, &long("bob"), NOW).unwrap();
    let s = tokens::seal_short(&k, &short("bob"), NOW).unwrap();
    assert!(matches!(
        tokens::open_short(&k, &l, NOW),
        Err(TokenError::WrongKind {
            expected: TokenKind::Short,
            found: TokenKind::Long
        })
    ));
    assert!(matches!(
        tokens::open_long(&k, &s, NOW),
        Err(TokenError::WrongKind {
            expected: TokenKind::Long,
            found: TokenKind::Short
        })
    ));
    // Rewriting the kind byte does not help: it is authenticated.
    let mut b = URL_SAFE_NO_PAD.decode(&s).unwrap();
    b[1] = b'L';
    assert!(matches!(
        tokens::open_long(&k, &URL_SAFE_NO_PAD.encode(&b), NOW),
        Err(TokenError::Tag)
    ));
}

#[test]
fn each_defect_has_its_own_error() {
    let k = keys();
    let t = tokens::seal_long(&k, &long("carol"), NOW).unwrap();
    let bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        f(&mut b);
        URL_SAFE_NO_PAD.encode(&b)
    };
    let open = |t: &str| tokens::open_long(&k, t, NOW);

    assert!(matches!(open(&"A".repeat(1025)), Err(TokenError::TooLong(1025))));
    assert!(matches!(open("not base64!"), Err(TokenError::Base64)));
    assert!(
        matches!(open(&format!("{t}=")), Err(TokenError::Base64)),
        "padding is not accepted"
    );
    assert!(matches!(open("AAAA"), Err(TokenError::Length(3))));
    assert!(matches!(open(&with(&|b| b[0] = 3)), Err(TokenError::Version(3))));
    assert!(matches!(open(&with(&|b| b[0] = 0)), Err(TokenError::Version(0))));
    // A version 2 token relabelled as version 1 fails authentication (the
    // version is associated data).
    assert!(matches!(open(&with(&|b| b[0] = 1)), Err(TokenError::Tag)));
    assert!(matches!(open(&with(&|b| b[1] = b'X')), Err(TokenError::Kind(b'X'))));
    assert!(matches!(
        open(&with(&|b| b[5] = 8)),
        Err(TokenError::UnknownKid(Kid(8)))
    ));
    assert!(matches!(
        open(&with(&|b| *b.last_mut().unwrap() ^= 1)),
        Err(TokenError::Tag)
    ));
    // Sealed with another key under the same kid.
    let other = KeySet::single(Kid(7), [43; 32]);
    assert!(matches!(tokens::open_long(&other, &t, NOW), Err(TokenError::Tag)));
    // Error texts are lowercase and say what is wrong.
    assert_eq!(
        TokenError::UnknownKid(Kid(8)).to_string(),
        "token names key 8, which this keyring does not have"
    );
}

#[test]
fn short_token_expires_exactly_at_exp_and_maps_to_expired() {
    let k = keys();
    let c = short("dave");
    let t = tokens::seal_short(&k, &c, NOW).unwrap();
    assert!(tokens::open_short(&k, &t, UnixMs(c.exp.0 - 1)).is_ok());
    let err = tokens::open_short(&k, &t, c.exp).unwrap_err();
    assert!(matches!(err, TokenError::Expired { .. }));
    assert_eq!(err.client_code(), "expired");
    assert_eq!(TokenError::Tag.client_code(), "invalid");
}

#[test]
fn tokens_from_the_future_beyond_clock_skew_are_not_yet_valid() {
    let k = keys();
    let mut c = long("erin");
    c.iat = NOW.plus(MAX_CLOCK_SKEW).plus(std::time::Duration::from_millis(1));
    c.login = c.iat;
    c.auth = c.iat;
    let t = tokens::seal_long(&k, &c, NOW).unwrap();
    assert!(matches!(
        tokens::open_long(&k, &t, NOW),
        Err(TokenError::NotYetValid { .. })
    ));
    c.iat = NOW.plus(MAX_CLOCK_SKEW);
    c.login = c.iat;
    c.auth = c.iat;
    let t = tokens::seal_long(&k, &c, NOW).unwrap();
    assert!(
        tokens::open_long(&k, &t, NOW).is_ok(),
        "skew within the bound is tolerated"
    );
}

#[test]
fn inconsistent_claims_are_refused_at_seal_time() {
    let mut c = long("frank");
    c.login = c.iat.plus(std::time::Duration::from_millis(1));
    assert!(matches!(
        tokens::seal_long(&keys(), &c, NOW),
        Err(TokenError::Layout(_))
    ));
    let mut s = short("frank");
    s.exp = UnixMs(s.iat.0 - 1);
    assert!(matches!(
        tokens::seal_short(&keys(), &s, NOW),
        Err(TokenError::Layout(_))
    ));
    assert!(matches!(
        tokens::seal_long(&KeySet::default(), &long("x"), NOW),
        Err(TokenError::NoSigningKey)
    ));
}

#[test]
fn tokens_are_randomised_by_their_nonce() {
    let a = tokens::seal_long(&keys(), &long("gina"), NOW).unwrap();
    let b = tokens::seal_long(&keys(), &long("gina"), NOW).unwrap();
    assert_ne!(a, b);
}

#[test]
fn the_authentication_time_lies_between_login_and_issue() {
    let k = keys();
    let mut c = long("fay");
    // Compared in whole seconds: the token keeps seconds.
    c.auth = c.login.minus(std::time::Duration::from_secs(1));
    assert!(matches!(tokens::seal_long(&k, &c, NOW), Err(TokenError::Layout(_))));
    c.auth = c.iat.plus(std::time::Duration::from_secs(1));
    assert!(matches!(tokens::seal_long(&k, &c, NOW), Err(TokenError::Layout(_))));
    c.auth = c.iat.plus(std::time::Duration::from_millis(999 - c.iat.0 % 1000));
    let opened = tokens::open_long(&k, &tokens::seal_long(&k, &c, NOW).unwrap(), NOW).unwrap();
    assert_eq!(opened.auth, UnixMs(c.iat.0 / 1000 * 1000), "kept in whole seconds");
    let mut s = short("fay");
    s.auth = Some(s.iat.plus(std::time::Duration::from_secs(1)));
    assert!(matches!(tokens::seal_short(&k, &s, NOW), Err(TokenError::Layout(_))));
    // Sealing a short token without one writes its issue time.
    s.auth = None;
    let t = tokens::seal_short(&k, &s, NOW).unwrap();
    assert_eq!(
        tokens::open_short(&k, &t, NOW).unwrap().auth,
        Some(UnixMs(s.iat.0 / 1000 * 1000))
    );
}

/// A challenge opens only as a challenge, only until it expires, and
/// neither token kind opens as one.
#[test]
fn challenges_open_as_nothing_else_and_expire() {
    let k = keys();
    let c = challenge("carol");
    let t = tokens::seal_challenge(&k, &c, NOW).unwrap();
    assert_eq!(tokens::open_challenge(&k, &t, NOW).unwrap(), c);
    let expected = |r: Result<(), TokenError>, e: TokenKind, f: TokenKind| {
        assert!(
            matches!(r, Err(TokenError::WrongKind { expected, found }) if expected == e && found == f),
            "{r:?}"
        );
    };
    expected(
        tokens::open_short(&k, &t, NOW).map(|_| ()),
        TokenKind::Short,
        TokenKind::Challenge,
    );
    expected(
        tokens::open_long(&k, &t, NOW).map(|_| ()),
        TokenKind::Long,
        TokenKind::Challenge,
    );
    let s = tokens::seal_short(&k, &short("carol"), NOW).unwrap();
    let l = tokens::seal_long(&k, &long("carol"), NOW).unwrap();
    expected(
        tokens::open_challenge(&k, &s, NOW).map(|_| ()),
        TokenKind::Challenge,
        TokenKind::Short,
    );
    expected(
        tokens::open_challenge(&k, &l, NOW).map(|_| ()),
        TokenKind::Challenge,
        TokenKind::Long,
    );
    assert!(matches!(
        tokens::open_challenge(&k, &t, c.exp),
        Err(TokenError::Expired { .. })
    ));
    assert!(matches!(
        tokens::open_challenge(&KeySet::single(Kid(7), [8; 32]), &t, NOW),
        Err(TokenError::Tag)
    ));
    assert!(matches!(
        tokens::seal_challenge(
            &k,
            &ChallengeClaims {
                exp: UnixMs(NOW.0 - 1),
                ..c
            },
            NOW
        ),
        Err(TokenError::Layout(_))
    ));
}

proptest! {
    /// A bound long token (version 4) carries its device key bytes and
    /// otherwise behaves like any long token: its session id is peeked, its
    /// binding read, and it never opens as a short token.
    #[test]
    fn bound_long_tokens_round_trip(u in arb_uid(), device in proptest::collection::vec(any::<u8>(), 1..=tokens::MAX_DEVICE_KEY_LEN)) {
        let c = LongClaims { device_bound: true, ..long(&u) };
        let t = tokens::seal_long_bound(&keys(), &c, &device, NOW).unwrap();
        prop_assert!(t.len() <= MAX_TOKEN_TEXT_LEN);
        prop_assert_eq!(tokens::open_long_bound(&keys(), &t, NOW).unwrap(), (c, Some(device)));
        prop_assert_eq!(tokens::open_long(&keys(), &t, NOW).unwrap(), c);
        prop_assert_eq!(tokens::peek_long_sid(&keys(), &t), Some(c.sid));
        prop_assert!(tokens::long_binding(&keys(), &t, NOW).is_some());
        prop_assert!(tokens::open_short(&keys(), &t, NOW).is_err());
    }
}

#[test]
fn a_bound_session_is_never_sealed_without_its_key() {
    let c = LongClaims {
        device_bound: true,
        ..long("dana")
    };
    assert!(matches!(
        tokens::seal_long(&keys(), &c, NOW),
        Err(TokenError::Layout(_))
    ));
    for device in [vec![], vec![7; tokens::MAX_DEVICE_KEY_LEN + 1]] {
        assert!(matches!(
            tokens::seal_long_bound(&keys(), &c, &device, NOW),
            Err(TokenError::Layout(_))
        ));
    }
    // An unbound long token opens unbound, without a key.
    let (opened, device) =
        tokens::open_long_bound(&keys(), &tokens::seal_long(&keys(), &long("dana"), NOW).unwrap(), NOW).unwrap();
    assert!(!opened.device_bound && device.is_none());
}
