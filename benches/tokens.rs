//! Token micro-benchmarks: our codec against the raw AEAD on the same bytes
//! and against an HS256 JWT carrying the same claims.
//!
//! Run: `cargo bench --bench tokens`. Results: docs/benchmarks.md.

use std::hint::black_box;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use twintoken::keys::KeySet;
use twintoken::time::UnixMs;
use twintoken::tokens::{self, Kid, LongClaims, ShortClaims, Sid, UserId};

const SECRET: [u8; 32] = [42; 32];
const NOW: UnixMs = UnixMs(1_800_000_000_000);

/// The short token's claims as a JWT would carry them.
#[derive(Serialize, Deserialize)]
struct JwtClaims {
    sub: String,
    sid: String,
    iat: u64,
    exp: u64,
}

fn bench(c: &mut Criterion) {
    let keys = KeySet::single(Kid(1), SECRET);
    // A typical numeric user id.
    let uid = UserId::new("10000042").unwrap_or_else(|e| panic!("{e}"));
    let long = LongClaims::new_session(uid, Sid([7; 16]), NOW, true);
    let long_t = tokens::seal_long(&keys, &long, NOW).unwrap_or_else(|e| panic!("{e}"));
    // As issued: bound to its long token.
    let short = ShortClaims {
        uid,
        sid: Sid([7; 16]),
        iat: NOW,
        exp: UnixMs(NOW.0 + 60_000),
        auth: Some(NOW),
        remember: true,
        bind: tokens::long_binding(&keys, &long_t, NOW),
    };
    let short_t = tokens::seal_short(&keys, &short, NOW).unwrap_or_else(|e| panic!("{e}"));

    c.bench_function("long_issue", |b| {
        b.iter(|| tokens::seal_long(&keys, black_box(&long), NOW))
    });
    c.bench_function("long_open", |b| {
        b.iter(|| tokens::open_long(&keys, black_box(&long_t), NOW))
    });
    c.bench_function("short_issue", |b| {
        b.iter(|| tokens::seal_short(&keys, black_box(&short), NOW))
    });
    c.bench_function("short_open", |b| {
        b.iter(|| tokens::open_short(&keys, black_box(&short_t), NOW))
    });

    // The AEAD alone on the short token's exact bytes: decrypt in place from
    // a stack copy (what the codec does after base64 decoding).
    let raw = URL_SAFE_NO_PAD.decode(&short_t).unwrap_or_default();
    let cipher = XChaCha20Poly1305::new(&SECRET.into());
    let mut scratch = [0u8; 256];
    c.bench_function("aead_open_raw", |b| {
        b.iter(|| {
            let buf = &mut scratch[..raw.len()];
            buf.copy_from_slice(black_box(&raw));
            let (header, rest) = buf.split_at_mut(6);
            let (nonce, rest) = rest.split_at_mut(24);
            let (ct, tag) = rest.split_at_mut(rest.len() - 16);
            let nonce = XNonce::try_from(&*nonce).unwrap_or_default();
            let tag = Tag::try_from(&*tag).unwrap_or_default();
            cipher
                .decrypt_inout_detached(&nonce, header, (&mut *ct).into(), &tag)
                .is_ok()
        })
    });

    let jwt_claims = JwtClaims {
        sub: uid.as_str().into(),
        sid: Sid([7; 16]).to_text(),
        iat: NOW.0 / 1000,
        exp: NOW.0 / 1000 + 60,
    };
    let enc = EncodingKey::from_secret(&SECRET);
    let dec = DecodingKey::from_secret(&SECRET);
    let header = Header::new(Algorithm::HS256);
    let jwt = jsonwebtoken::encode(&header, &jwt_claims, &enc).unwrap_or_default();
    let mut validation = Validation::new(Algorithm::HS256);
    // Same work as ours: check exp against a fixed time, nothing else.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    c.bench_function("jwt_hs256_issue", |b| {
        b.iter(|| jsonwebtoken::encode(&header, black_box(&jwt_claims), &enc))
    });
    c.bench_function("jwt_hs256_verify", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<JwtClaims>(black_box(&jwt), &dec, &validation)
                .map(|d| d.claims.exp > NOW.0 / 1000)
                .unwrap_or(false)
        })
    });
}

/// The verifier's short path against the bare codec, with an empty revoked
/// cache and with 10 000 other sessions revoked.
fn bench_verifier(c: &mut Criterion) {
    use std::sync::Arc;

    use futures_util::FutureExt as _;
    use twintoken::config::Config;
    use twintoken::keys::Keyring;
    use twintoken::store::memory::MemoryStore;
    use twintoken::store::{Revocation, Store, StoreSettings};
    use twintoken::verify::{Verifier, VerifierSettings};

    let config = Config::for_test();
    let keys = Arc::new(Keyring::fixed(KeySet::single(Kid(1), SECRET)));
    let store = Arc::new(Store::Memory(Box::new(MemoryStore::new(StoreSettings::from_config(
        &config,
    )))));
    let v = Verifier::new(keys.clone(), store, VerifierSettings::from_config(&config));
    let uid = UserId::new("10000042").unwrap_or_else(|e| panic!("{e}"));
    // A cookie client sends both tokens; the short one counts only beside
    // the long token it was issued with (its binding, compared as bytes).
    let long = keys
        .seal_long(&LongClaims::new_session(uid, Sid([7; 16]), NOW, true), NOW)
        .unwrap_or_else(|e| panic!("{e}"));
    let short = ShortClaims {
        uid,
        sid: Sid([7; 16]),
        iat: NOW,
        exp: UnixMs(NOW.0 + 60_000),
        auth: Some(NOW),
        remember: true,
        bind: keys.long_binding(&long, NOW),
    };
    let t = keys.seal_short(&short, NOW).unwrap_or_else(|e| panic!("{e}"));

    c.bench_function("short_open_same_run", |b| {
        b.iter(|| keys.open_short(black_box(&t), NOW))
    });
    c.bench_function("verifier_short", |b| b.iter(|| v.verify_short(black_box(&t), NOW)));
    c.bench_function("verifier_verify_short", |b| {
        b.iter(|| v.verify(Some(black_box(&t)), None, NOW).now_or_never())
    });
    c.bench_function("verifier_verify_short_and_long", |b| {
        b.iter(|| {
            let r = v
                .verify(Some(black_box(&t)), Some(black_box(&long)), NOW)
                .now_or_never();
            assert!(matches!(r, Some(Ok(_))));
            r
        })
    });
    for i in 0..10_000u32 {
        let mut sid = [0u8; 16];
        sid[..4].copy_from_slice(&i.to_le_bytes());
        sid[15] = 0xEE;
        let u = UserId::new(&format!("user{i}")).unwrap_or_else(|e| panic!("{e}"));
        v.revoked().apply(
            &Revocation::Sessions {
                uid: u,
                sids: vec![Sid(sid)],
            },
            NOW,
        );
    }
    c.bench_function("verifier_short_10k_revoked", |b| {
        b.iter(|| v.verify_short(black_box(&t), NOW))
    });
}

criterion_group!(benches, bench, bench_verifier);
criterion_main!(benches);
