//! DBSC proofs, from a client written from the spec (W3C webappsec-dbsc and
//! `../shared/DBSC.md`): JWTs signed by real ES256 and RS256 keys, and
//! every way a proof can be wrong.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use twintoken::dbsc::{DeviceKey, MAX_PROOF_LEN, ProofError, check_refresh, check_registration};

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// A device key as a browser holds it.
enum Device {
    Es(EcdsaKeyPair),
    Rs(RsaKeyPair),
}

impl Device {
    fn es256() -> Device {
        Device::Es(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }

    fn rs256() -> Device {
        Device::Rs(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap())
    }

    fn alg(&self) -> &'static str {
        match self {
            Device::Es(_) => "ES256",
            Device::Rs(_) => "RS256",
        }
    }

    /// The public key as a JWK.
    fn jwk(&self) -> Value {
        match self {
            Device::Es(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
            Device::Rs(k) => {
                let (n, e) = rsa_components(k.public_key().as_ref());
                json!({"kty": "RSA", "n": b64(&n), "e": b64(&e)})
            }
        }
    }

    /// The key as the server keeps it.
    fn key(&self) -> DeviceKey {
        match self {
            Device::Es(k) => DeviceKey::Es256(k.public_key().as_ref().try_into().unwrap()),
            Device::Rs(k) => {
                let (n, e) = rsa_components(k.public_key().as_ref());
                DeviceKey::Rs256 { n, e }
            }
        }
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Device::Es(k) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Device::Rs(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut sig).unwrap();
                sig
            }
        }
    }

    /// A compact JWT of `header` and `payload`, signed by this key.
    fn jwt(&self, header: &Value, payload: &Value) -> String {
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let sig = self.sign(signed.as_bytes());
        format!("{signed}.{}", b64(&sig))
    }

    /// What Chromium sends to the registration endpoint.
    fn registration(&self, challenge: &str) -> String {
        self.jwt(
            &json!({"alg": self.alg(), "typ": "dbsc+jwt", "jwk": self.jwk()}),
            &json!({"jti": challenge}),
        )
    }

    /// What Chromium sends to the refresh endpoint.
    fn refresh(&self, challenge: &str) -> String {
        self.jwt(
            &json!({"alg": self.alg(), "typ": "dbsc+jwt"}),
            &json!({"jti": challenge}),
        )
    }
}

/// `n` and `e` of a DER `RSAPublicKey` (SEQUENCE of two INTEGERs), without
/// the sign byte.
fn rsa_components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn item(b: &[u8]) -> (&[u8], &[u8]) {
        let (len, at) = match b[1] {
            l if l < 0x80 => (usize::from(l), 2),
            0x81 => (usize::from(b[2]), 3),
            0x82 => (usize::from(b[2]) << 8 | usize::from(b[3]), 4),
            l => panic!("DER length form {l:#x}"),
        };
        (&b[at..at + len], &b[at + len..])
    }
    let (seq, _) = item(der);
    let (n, rest) = item(seq);
    let (e, _) = item(rest);
    let strip = |v: &[u8]| v.iter().skip_while(|b| **b == 0).copied().collect::<Vec<u8>>();
    (strip(n), strip(e))
}

#[test]
fn registrations_and_refreshes_of_both_algorithms_verify() {
    for d in [Device::es256(), Device::rs256()] {
        let r = check_registration(&d.registration("c-1")).unwrap();
        assert_eq!((r.key.clone(), r.jti.as_str()), (d.key(), "c-1"), "{}", d.alg());
        assert_eq!(r.key.alg(), d.alg());
        assert_eq!(check_refresh(&d.refresh("c-2"), &r.key).unwrap(), "c-2");
        // A refresh may repeat the jwk, if it is the registered key.
        let again = d.jwt(
            &json!({"alg": d.alg(), "typ": "dbsc+jwt", "jwk": d.jwk()}),
            &json!({"jti": "c-3"}),
        );
        assert_eq!(check_refresh(&again, &r.key).unwrap(), "c-3");
    }
}

#[test]
fn a_proof_by_another_key_is_refused() {
    let (d, thief) = (Device::es256(), Device::es256());
    let key = check_registration(&d.registration("c")).unwrap().key;
    // Signed by another key, without or with that key in the header.
    assert_eq!(check_refresh(&thief.refresh("c"), &key), Err(ProofError::Signature));
    assert_eq!(
        check_refresh(&thief.registration("c"), &key),
        Err(ProofError::KeyMismatch)
    );
    // Another algorithm than the registered key's.
    let rsa = Device::rs256();
    assert_eq!(
        check_refresh(&rsa.refresh("c"), &key),
        Err(ProofError::Alg("RS256".into()))
    );
    // A registration whose jwk is not the key that signed it.
    let forged = thief.jwt(
        &json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": d.jwk()}),
        &json!({"jti": "c"}),
    );
    assert_eq!(check_registration(&forged), Err(ProofError::Signature));
}

#[test]
fn every_malformed_proof_gets_its_own_error() {
    let d = Device::es256();
    let good = d.registration("c");
    let key = d.key();
    let (h, rest) = good.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    let with_header = |header: Value| d.jwt(&header, &json!({"jti": "c"}));
    let cases: Vec<(String, ProofError)> = vec![
        ("x".repeat(MAX_PROOF_LEN + 1), ProofError::TooLong(MAX_PROOF_LEN + 1)),
        (format!("{h}.{p}"), ProofError::Shape),
        (format!("{good}.x"), ProofError::Shape),
        (format!("{h}.{p}.{s}=="), ProofError::Base64("signature")),
        (format!("*.{p}.{s}"), ProofError::Base64("header")),
        (format!("{}.{p}.{s}", b64(b"not json")), ProofError::Json("header")),
        (format!("{h}.{}.{s}", b64(b"[1]")), ProofError::Json("payload")),
        (format!("{h}.{p}."), ProofError::Signature),
        (format!("{h}.{}.{s}", b64(br#"{"jti":"other"}"#)), ProofError::Signature),
        (
            with_header(json!({"alg": "ES256", "typ": "JWT", "jwk": d.jwk()})),
            ProofError::Type,
        ),
        (with_header(json!({"alg": "ES256", "jwk": d.jwk()})), ProofError::Type),
        (
            with_header(json!({"alg": "none", "typ": "dbsc+jwt", "jwk": d.jwk()})),
            ProofError::Alg("none".into()),
        ),
        (
            with_header(json!({"alg": "HS256", "typ": "dbsc+jwt", "jwk": d.jwk()})),
            ProofError::Alg("HS256".into()),
        ),
        (
            with_header(json!({"alg": "ES256", "typ": "dbsc+jwt"})),
            ProofError::MissingKey,
        ),
        (
            with_header(
                json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}}),
            ),
            ProofError::BadKey("crv must be P-256"),
        ),
        (
            with_header(
                json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}}),
            ),
            ProofError::BadKey("x and y must be 32 bytes"),
        ),
        (
            with_header(json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}})),
            ProofError::BadKey("kty does not match alg"),
        ),
        (
            with_header(
                json!({"alg": "RS256", "typ": "dbsc+jwt", "jwk": {"kty": "RSA", "n": b64(&[1; 128]), "e": "AQAB"}}),
            ),
            ProofError::BadKey("n must be a 2048- to 4096-bit modulus"),
        ),
        (
            d.jwt(
                &json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": d.jwk()}),
                &json!({"jti": ""}),
            ),
            ProofError::MissingJti,
        ),
        (
            d.jwt(
                &json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": d.jwk()}),
                &json!({"aud": "x"}),
            ),
            ProofError::MissingJti,
        ),
    ];
    for (proof, want) in cases {
        assert_eq!(check_registration(&proof).err(), Some(want), "{proof:.80}");
    }
    // A signature made invalid by one flipped bit, on both paths.
    let mut sig = URL_SAFE_NO_PAD.decode(s).unwrap();
    sig[10] ^= 1;
    let flipped = format!("{h}.{p}.{}", b64(&sig));
    assert_eq!(check_registration(&flipped), Err(ProofError::Signature));
    assert_eq!(check_refresh(&flipped, &key), Err(ProofError::Signature));
}

/// RFC 7638, section 3.1: the thumbprint of its example RSA key.
#[test]
fn thumbprints_follow_rfc_7638() {
    let n = URL_SAFE_NO_PAD
        .decode(
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        )
        .unwrap();
    let key = DeviceKey::Rs256 { n, e: vec![1, 0, 1] };
    assert_eq!(key.thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    let (a, b) = (Device::es256().key(), Device::es256().key());
    assert_ne!(a.thumbprint(), b.thumbprint());
    assert_eq!(a.thumbprint().len(), 43);
}

/// A proof made by another implementation (`jsonwebtoken`, pure-Rust
/// `p256` signing, its own JWK and RFC 7638 thumbprint code) is accepted,
/// and both sides name the key alike.
#[test]
fn a_proof_signed_by_another_jwt_library_verifies() {
    use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
    let key = EncodingKey::from_ec_der(pkcs8.as_ref());
    let jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some("dbsc+jwt".into());
    header.jwk = Some(jwk.clone());
    let proof = jsonwebtoken::encode(&header, &json!({"jti": "from-elsewhere"}), &key).unwrap();
    let r = check_registration(&proof).unwrap();
    assert_eq!(r.jti, "from-elsewhere");
    assert_eq!(r.key.thumbprint(), jwk.thumbprint(ThumbprintHash::SHA256).unwrap());
    header.jwk = None;
    let refresh = jsonwebtoken::encode(&header, &json!({"jti": "next"}), &key).unwrap();
    assert_eq!(check_refresh(&refresh, &r.key).unwrap(), "next");
}

/// A device key travels inside a bound long token as bytes and comes back
/// the same; anything else is not a key.
#[test]
fn device_keys_round_trip_through_a_bound_long_token() {
    use twintoken::keys::KeySet;
    use twintoken::time::UnixMs;
    use twintoken::tokens::{self, Kid, LongClaims, MAX_DEVICE_KEY_LEN, Sid, UserId};
    let keys = KeySet::single(Kid(3), [5; 32]);
    let now = UnixMs(1_800_000_000_000);
    let c = LongClaims {
        uid: UserId::new("dev").unwrap(),
        sid: Sid([4; 16]),
        iat: now,
        login: now,
        auth: now,
        remember: true,
        device_bound: true,
    };
    for d in [Device::es256(), Device::rs256()] {
        let key = d.key();
        let bytes = key.to_bytes();
        assert!(bytes.len() <= MAX_DEVICE_KEY_LEN);
        let t = tokens::seal_long_bound(&keys, &c, &bytes, now).unwrap();
        let (opened, device) = tokens::open_long_bound(&keys, &t, now).unwrap();
        assert_eq!(opened, c);
        assert_eq!(DeviceKey::from_bytes(&device.unwrap()), Some(key));
    }
    for bad in [&[][..], &[1, 4, 4][..], &[3; 66][..], &[2, 0, 4, 1, 1, 1, 1, 1][..]] {
        assert_eq!(DeviceKey::from_bytes(bad), None, "{bad:?}");
    }
}

/// No downgrade: a bound session's long token alone — as a bearer token or
/// a cookie, strict or not — earns 401 `proof_required` and no short
/// token; a short token issued with it still answers on the short path.
#[tokio::test]
async fn a_bound_long_token_alone_earns_nothing() {
    use crate::support::server::TestServer;
    use twintoken::time::Clock as _;
    use twintoken::tokens::ShortClaims;
    let s = TestServer::start(twintoken::config::Config::for_test()).await;
    let alice = s.login_json("alice").await;
    let keys = s.state().verifier.keys().clone();
    let now = s.clock.now();
    let unbound = alice["long_token"].as_str().unwrap();
    let c = keys.open_long(unbound, now).unwrap();
    let device = Device::es256().key().to_bytes();
    let bound = keys
        .seal_long_bound(
            &twintoken::tokens::LongClaims {
                device_bound: true,
                ..c
            },
            &device,
            now,
        )
        .unwrap();
    let http = reqwest::Client::new();
    let code = |r: reqwest::Response| async move {
        let status = r.status();
        let short = r.headers().get("x-short-token").is_some() || r.headers().get("set-cookie").is_some();
        let body: Value = r.json().await.unwrap();
        (status.as_u16(), body["error"].as_str().unwrap_or("").to_string(), short)
    };
    let cookies = &s.state().config.cookies;
    let long_cookie = format!("{}={bound}", cookies.long_name());
    for strict in ["", "?strict=true"] {
        let r = http
            .get(s.url(&format!("/v1/verify{strict}")))
            .bearer_auth(&bound)
            .send()
            .await
            .unwrap();
        assert_eq!(code(r).await, (401, "proof_required".into(), false), "bearer {strict}");
        let r = http
            .get(s.url(&format!("/v1/verify{strict}")))
            .header("cookie", &long_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(code(r).await, (401, "proof_required".into(), false), "cookie {strict}");
    }
    // A short token issued with the bound long token answers.
    let short = keys
        .seal_short(
            &ShortClaims {
                uid: c.uid,
                sid: c.sid,
                iat: now,
                exp: now.plus(std::time::Duration::from_secs(60)),
                auth: Some(c.auth),
                remember: c.remember,
                bind: keys.long_binding(&bound, now),
            },
            now,
        )
        .unwrap();
    let r = http
        .get(s.url("/v1/verify"))
        .header("cookie", format!("{long_cookie}; {}={short}", cookies.short_name()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-path"], "short");
}

/// Proofs a real browser made: headless Chromium 156's registration and
/// refresh JWTs (`tests/it/fixtures/dbsc/`), checked as the service will
/// check them, and refused once altered or against another key.
#[test]
fn proofs_recorded_from_chromium_verify() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/dbsc");
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap().trim().to_string();
    let (registration, refresh) = (read("registration.jwt"), read("refresh.jwt"));
    let r = check_registration(&registration).unwrap();
    assert_eq!(r.jti, "chal-1");
    assert_eq!(r.key.alg(), "ES256");
    assert_eq!(check_refresh(&refresh, &r.key).unwrap(), "chal-2");
    // The refresh carries no jwk: it is not a registration.
    assert_eq!(check_registration(&refresh), Err(ProofError::MissingKey));
    assert_eq!(
        check_refresh(&refresh, &Device::es256().key()),
        Err(ProofError::Signature)
    );
    let (signed, _) = refresh.rsplit_once('.').unwrap();
    let other = Device::es256().sign(signed.as_bytes());
    assert_eq!(
        check_refresh(&format!("{signed}.{}", b64(&other)), &r.key),
        Err(ProofError::Signature)
    );
}
