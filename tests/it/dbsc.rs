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
        device_bound: true,
        ..LongClaims::new_session(UserId::new("dev").unwrap(), Sid([4; 16]), now, true)
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

// ---------------------------------------------------------------------------
// The protocol over HTTP, from a client written from the spec: registration
// offered on login, `POST /v1/dbsc/start`, `POST /v1/dbsc/refresh`.

mod http {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde_json::{Value, json};
    use twintoken::config::Config;
    use twintoken::time::Clock as _;

    use super::Device;
    use crate::support::redis_server::RedisServer;
    use crate::support::server::TestServer;

    /// A browser's cookie jar for one site, and its device key.
    pub struct Browser {
        pub jar: BTreeMap<String, String>,
        pub device: Device,
        pub http: reqwest::Client,
    }

    /// What an answer said, read once.
    pub struct Answer {
        pub status: u16,
        pub headers: reqwest::header::HeaderMap,
        pub body: Value,
        /// `Set-Cookie` of this answer: name -> (value, attributes).
        pub set: BTreeMap<String, (String, String)>,
    }

    impl Answer {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }
        pub fn error(&self) -> &str {
            self.body["error"].as_str().unwrap_or("")
        }
    }

    /// The quoted parameter `name` of a structured header value.
    pub fn param<'a>(v: &'a str, name: &str) -> Option<&'a str> {
        let at = v.find(&format!("{name}=\""))? + name.len() + 2;
        let end = v[at..].find('"')? + at;
        Some(&v[at..end])
    }

    /// The challenge of `Secure-Session-Challenge: "<c>";id="<id>"`.
    pub fn challenge_of(v: &str) -> (String, String) {
        let c = v.strip_prefix('"').and_then(|r| r.split('"').next()).unwrap();
        (c.to_string(), param(v, "id").unwrap().to_string())
    }

    impl Browser {
        pub fn new(device: Device) -> Browser {
            Browser::with_agent(device, "dbsc-spec-client/1.0")
        }

        pub fn with_agent(device: Device, agent: &'static str) -> Browser {
            Browser {
                jar: BTreeMap::new(),
                device,
                http: reqwest::Client::builder().user_agent(agent).build().unwrap(),
            }
        }

        fn cookie_header(&self) -> String {
            self.jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        }

        /// Sends `req` with the jar's cookies and `extra` headers, and keeps
        /// what the answer sets.
        pub async fn send(&mut self, req: reqwest::RequestBuilder, extra: &[(&str, &str)]) -> Answer {
            let mut req = req;
            if !self.jar.is_empty() {
                req = req.header("cookie", self.cookie_header());
            }
            for (k, v) in extra {
                req = req.header(*k, *v);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let mut set = BTreeMap::new();
            for v in headers.get_all("set-cookie") {
                let v = v.to_str().unwrap();
                let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
                let (name, value) = pair.split_once('=').unwrap();
                set.insert(name.to_string(), (value.to_string(), attrs.trim().to_string()));
                if value.is_empty() || attrs.contains("Max-Age=0") {
                    self.jar.remove(name);
                } else {
                    self.jar.insert(name.to_string(), value.to_string());
                }
            }
            let body = r.json().await.unwrap_or(Value::Null);
            Answer {
                status,
                headers,
                body,
                set,
            }
        }

        pub async fn login(&mut self, s: &TestServer, user: &str) -> Answer {
            let req = self
                .http
                .post(s.url("/v1/login"))
                .json(&json!({"username": user, "password": "correct horse"}));
            let a = self.send(req, &[]).await;
            assert_eq!(a.status, 200, "login: {}", a.body);
            a
        }

        /// Registration as Chromium does it: POST with the proof over the
        /// offered challenge.
        pub async fn register(&mut self, s: &TestServer, challenge: &str) -> Answer {
            let proof = self.device.registration(challenge);
            let req = self.http.post(s.url("/v1/dbsc/start"));
            self.send(req, &[("secure-session-response", &proof)]).await
        }

        /// A refresh as Chromium does it: without proof (403 + challenge),
        /// then at once with a proof over that challenge.
        pub async fn refresh(&mut self, s: &TestServer) -> Answer {
            let id = self.device.key().thumbprint();
            let req = self.http.post(s.url("/v1/dbsc/refresh"));
            let first = self.send(req, &[("sec-secure-session-id", &id)]).await;
            if first.status != 403 {
                return first;
            }
            assert_eq!(first.error(), "challenge_required");
            let (c, named) = challenge_of(first.header("secure-session-challenge").unwrap());
            assert_eq!(named, id, "the challenge names the session");
            let proof = self.device.refresh(&c);
            let req = self.http.post(s.url("/v1/dbsc/refresh"));
            self.send(
                req,
                &[("sec-secure-session-id", &id), ("secure-session-response", &proof)],
            )
            .await
        }

        pub async fn verify(&mut self, s: &TestServer) -> Answer {
            let req = self.http.get(s.url("/v1/verify"));
            self.send(req, &[]).await
        }
    }

    /// `GET /v1/verify` with `long` as a bearer token: status and error code.
    pub async fn bearer(http: &reqwest::Client, url: String, long: &str) -> (u16, String) {
        let r = http.get(url).bearer_auth(long).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status, body["error"].as_str().unwrap_or("").to_string())
    }

    pub fn config() -> Config {
        let mut c = Config::for_test();
        c.dbsc.enabled = Some(true);
        c
    }

    pub fn with_redis(redis: &RedisServer) -> Config {
        let mut c = config();
        c.store.redis = Some(vec![redis.url().into()]);
        c
    }

    /// Logs in and registers: the login's offer, the registration answer.
    pub async fn bound(s: &TestServer, b: &mut Browser, user: &str) -> Answer {
        let login = b.login(s, user).await;
        let offer = login
            .header("secure-session-registration")
            .expect("a login answer offers registration");
        assert!(offer.starts_with("(ES256 RS256);path=\"/v1/dbsc/start\";"), "{offer}");
        let reg = b.register(s, param(offer, "challenge").unwrap()).await;
        assert_eq!(reg.status, 200, "registration: {}", reg.body);
        reg
    }

    fn names(s: &TestServer) -> (String, String) {
        let c = &s.state().config.cookies;
        (c.long_name().to_string(), c.short_name().to_string())
    }

    /// The whole protocol with both algorithms: login offers registration;
    /// registration binds (the session config, a bound long cookie, the
    /// pre-binding long token refused from then on); the bound long token
    /// alone earns `proof_required`; a refresh answers 403 with a
    /// challenge, then a new short cookie (a new value every time); the
    /// session list marks it; a second registration is refused.
    #[tokio::test]
    async fn a_spec_client_binds_and_refreshes_with_es256_and_rs256() {
        let redis = RedisServer::start();
        let s = TestServer::start(with_redis(&redis)).await;
        let (long_name, short_name) = names(&s);
        for device in [Device::es256(), Device::rs256()] {
            let alg = device.alg();
            let mut b = Browser::new(device);
            let login = b.login(&s, "alice").await;
            let pre = login.body["long_token"].as_str().unwrap().to_string();
            let offer = login.header("secure-session-registration").unwrap().to_string();
            let reg = b.register(&s, param(&offer, "challenge").unwrap()).await;
            assert_eq!(reg.status, 200, "{alg}: {}", reg.body);
            let cfg = &reg.body;
            assert_eq!(cfg["session_identifier"], b.device.key().thumbprint(), "{alg}");
            assert_eq!(cfg["refresh_url"], "/v1/dbsc/refresh");
            assert_eq!(cfg["scope"]["include_site"], false);
            let cred = &cfg["credentials"][0];
            assert_eq!(
                (cred["type"].as_str(), cred["name"].as_str()),
                (Some("cookie"), Some(&*short_name))
            );
            let attrs = cred["attributes"].as_str().unwrap();
            assert!(!attrs.contains("Max-Age") && !attrs.contains("Expires"), "{attrs}");
            let (short_value, short_attrs) = &reg.set[&short_name];
            assert!(
                short_attrs.contains(attrs),
                "Set-Cookie {short_attrs:?} carries the credential's {attrs:?}"
            );
            let bound_long = reg.set[&long_name].0.clone();
            assert_ne!(bound_long, pre);
            let keys = s.state().verifier.keys();
            let now = s.clock.now();
            assert!(
                keys.open_long(&bound_long, now).unwrap().device_bound,
                "{alg}: the new long token is bound"
            );

            // The long token from before the binding: its sid is gone.
            let (status, _) = bearer(&b.http, s.url("/v1/verify"), &pre).await;
            assert_eq!(status, 401, "{alg}: the pre-binding long token");
            // The bound long token alone, as a cookie or a bearer token.
            let got = bearer(&b.http, s.url("/v1/verify"), &bound_long).await;
            assert_eq!(got, (401, "proof_required".into()));
            let r = b
                .http
                .get(s.url("/v1/verify"))
                .header("cookie", format!("{long_name}={bound_long}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.json::<Value>().await.unwrap()["error"], "proof_required");
            // Both cookies: the short path, and no new registration offer.
            let v = b.verify(&s).await;
            assert_eq!((v.status, v.header("x-auth-path")), (200, Some("short")));
            assert!(v.header("secure-session-registration").is_none());

            // Refresh: 403 + challenge, then a new short cookie each time.
            b.jar.remove(&short_name);
            let mut seen = vec![short_value.clone()];
            for _ in 0..2 {
                let r = b.refresh(&s).await;
                assert_eq!(r.status, 200, "{alg}: {}", r.body);
                assert_eq!(r.header("x-auth-path"), Some("long"));
                assert_eq!(r.body["session_identifier"], b.device.key().thumbprint());
                let v = r.set[&short_name].0.clone();
                assert!(!seen.contains(&v), "a new short cookie value on every refresh");
                seen.push(v);
                s.clock.advance(Duration::from_millis(1100));
            }
            let v = b.verify(&s).await;
            assert_eq!((v.status, v.header("x-auth-path")), (200, Some("short")), "{alg}");

            // Listed as bound.
            let req = b.http.get(s.url("/v1/sessions"));
            let list = b.send(req, &[]).await;
            let me = list.body["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["current"] == true)
                .cloned()
                .unwrap();
            assert_eq!(me["bound"], true, "{}", list.body);

            // A bound session is bound once (a proof over a challenge of
            // this very session, by the same key or another).
            let ch = twintoken::tokens::ChallengeClaims {
                uid: twintoken::tokens::UserId::new(v.body["user_id"].as_str().unwrap()).unwrap(),
                sid: v.body["session_id"].as_str().unwrap().parse().unwrap(),
                iat: s.clock.now(),
                exp: s.clock.now().plus(Duration::from_secs(60)),
            };
            let c = keys.seal_challenge(&ch, s.clock.now()).unwrap();
            let again = b.register(&s, &c).await;
            assert_eq!((again.status, again.error()), (409, "already_bound"), "{alg}");
        }
    }

    /// Every way a registration or a refresh can be wrong gets its own
    /// answer, and none of them binds, refreshes or ends the session —
    /// except a proof by another key on refresh, which ends it (theft,
    /// `dbsc.on_bad_proof = "revoke"`), audited as `dbsc_proof_failed`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_error_path_of_registration_and_refresh() {
        const SECRET: &str = "events webhook secret for tests";
        let (url, got) = crate::policy::event_receiver(SECRET, Duration::ZERO).await;
        let redis = RedisServer::start();
        let mut c = with_redis(&redis);
        c.events.webhook_url = Some(url);
        c.events.webhook_secret = Some(SECRET.into());
        let s = TestServer::start(c).await;
        let (long_name, short_name) = names(&s);
        let mut b = Browser::with_agent(Device::es256(), "dbsc-errors/1.0");
        let login = b.login(&s, "alice").await;
        let offer = login.header("secure-session-registration").unwrap().to_string();
        let ch = param(&offer, "challenge").unwrap().to_string();
        let post = |b: &Browser, path: &str| b.http.post(s.url(path));

        // Registration.
        let r = b
            .http
            .post(s.url("/v1/dbsc/start"))
            .header("secure-session-response", b.device.registration(&ch))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "no cookies");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "missing");
        let req = post(&b, "/v1/dbsc/start");
        let a = b.send(req, &[]).await;
        assert_eq!((a.status, a.error()), (400, "bad_request"), "no proof");
        let wrong_typ = b.device.jwt(
            &json!({"alg": "ES256", "typ": "JWT", "jwk": b.device.jwk()}),
            &json!({"jti": ch}),
        );
        let hs = format!(
            "{}.{}.c2ln",
            super::b64(br#"{"alg":"HS256","typ":"dbsc+jwt"}"#),
            super::b64(br#"{"jti":"x"}"#)
        );
        for (what, proof) in [
            ("typ", wrong_typ.as_str()),
            ("alg", hs.as_str()),
            ("garbage", "not a jwt"),
        ] {
            let req = post(&b, "/v1/dbsc/start");
            let a = b.send(req, &[("secure-session-response", proof)]).await;
            assert_eq!((a.status, a.error()), (400, "bad_request"), "{what}: {}", a.body);
        }
        // Signed by another key than its jwk.
        let other = Device::es256();
        let forged = other.jwt(
            &json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": b.device.jwk()}),
            &json!({"jti": ch}),
        );
        let req = post(&b, "/v1/dbsc/start");
        let a = b.send(req, &[("secure-session-response", &forged)]).await;
        assert_eq!(
            (a.status, a.error()),
            (401, "invalid_proof"),
            "signature by another key"
        );
        // A challenge of another session (bob's), and one that is not ours.
        let mut bob = Browser::new(Device::es256());
        let bob_login = bob.login(&s, "bob").await;
        let bob_ch = param(bob_login.header("secure-session-registration").unwrap(), "challenge")
            .unwrap()
            .to_string();
        for (what, c) in [
            ("foreign", bob_ch.as_str()),
            ("made up", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ] {
            let a = b.register(&s, c).await;
            assert_eq!((a.status, a.error()), (401, "invalid_proof"), "{what} challenge");
        }
        // A stale challenge (challenge_ttl is 5 minutes).
        s.clock.advance(Duration::from_secs(301));
        let a = b.register(&s, &ch).await;
        assert_eq!((a.status, a.error()), (401, "invalid_proof"), "stale challenge");
        // Nothing was bound: the long token still verifies on its own.
        let long = b.jar[&long_name].clone();
        let (status, _) = bearer(&b.http, s.url("/v1/verify"), &long).await;
        assert_eq!(status, 200, "nothing bound by a refused registration");
        // A refresh of an unbound session.
        let a = b.refresh(&s).await;
        assert_eq!((a.status, a.error()), (401, "invalid"), "refresh of an unbound session");

        // Bind (the verify's offer: a fresh challenge).
        b.jar.remove(&short_name);
        let v = b.verify(&s).await;
        let offer = v
            .header("secure-session-registration")
            .expect("a long-path cookie verify offers registration")
            .to_string();
        let v2 = b.verify(&s).await;
        assert_eq!(v2.header("x-auth-path"), Some("short"));
        assert!(
            v2.header("secure-session-registration").is_none(),
            "offered once per short token"
        );
        let a = b.register(&s, param(&offer, "challenge").unwrap()).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let id = b.device.key().thumbprint();

        // Refresh.
        let req = post(&b, "/v1/dbsc/refresh");
        let a = b.send(req, &[("sec-secure-session-id", "some-other-session")]).await;
        assert_eq!((a.status, a.error()), (404, "not_found"), "unknown session id");
        let r = b.http.post(s.url("/v1/dbsc/refresh")).send().await.unwrap();
        assert_eq!(r.status(), 401, "no cookies");
        let req = post(&b, "/v1/dbsc/refresh");
        let a = b.send(req, &[("secure-session-response", "not a jwt")]).await;
        assert_eq!((a.status, a.error()), (400, "bad_request"), "garbage proof");
        let wrong_typ = b
            .device
            .jwt(&json!({"alg": "ES256", "typ": "JWT"}), &json!({"jti": "x"}));
        let req = post(&b, "/v1/dbsc/refresh");
        let a = b.send(req, &[("secure-session-response", &wrong_typ)]).await;
        assert_eq!((a.status, a.error()), (400, "bad_request"), "bad typ");
        // A stale or foreign challenge signed by the right key: 403 and a
        // fresh challenge (the browser retries), nothing ended.
        for c in [ch.as_str(), bob_ch.as_str()] {
            let req = post(&b, "/v1/dbsc/refresh");
            let a = b.send(req, &[("secure-session-response", &b.device.refresh(c))]).await;
            assert_eq!((a.status, a.error()), (403, "challenge_required"));
            let (fresh, named) = challenge_of(a.header("secure-session-challenge").unwrap());
            assert_eq!(named, id);
            assert_ne!(fresh, c);
        }
        let ok = b.refresh(&s).await;
        assert_eq!(ok.status, 200, "{}", ok.body);

        // A proof by another key: 401, audited, the session ends.
        let req = post(&b, "/v1/dbsc/refresh");
        let first = b.send(req, &[]).await;
        let (c403, _) = challenge_of(first.header("secure-session-challenge").unwrap());
        let thief = Device::es256();
        let req = post(&b, "/v1/dbsc/refresh");
        let a = b.send(req, &[("secure-session-response", &thief.refresh(&c403))]).await;
        assert_eq!((a.status, a.error()), (401, "invalid_proof"), "a proof by another key");
        let rs = Device::rs256();
        let req = post(&b, "/v1/dbsc/refresh");
        let a = b.send(req, &[("secure-session-response", &rs.refresh(&c403))]).await;
        assert_eq!(
            (a.status, a.error()),
            (401, "invalid_proof"),
            "another key of another algorithm"
        );
        let ended = b.refresh(&s).await;
        assert_eq!(
            (ended.status, &ended.body),
            (200, &json!({"continue": false})),
            "the session ended"
        );
        assert!(
            !b.jar.contains_key(&long_name) && !b.jar.contains_key(&short_name),
            "cookies cleared"
        );
        let start = std::time::Instant::now();
        loop {
            let events: Vec<Value> = got
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e["user_agent"] == "dbsc-errors/1.0")
                .cloned()
                .collect();
            let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
            if kinds.contains(&"dbsc_proof_failed") && kinds.contains(&"dbsc_bound") {
                let e = events.iter().find(|e| e["event"] == "dbsc_proof_failed").unwrap();
                assert_eq!(e["user"], "1001", "{e}");
                assert!(e["detail"].as_str().unwrap().contains("session revoked"), "{e}");
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "audit events: {kinds:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `dbsc.on_bad_proof = "refuse"`: a proof by another key is refused
    /// and audited, the session lives on; with device-bound sessions off,
    /// nothing is offered and the endpoints do not exist.
    #[tokio::test]
    async fn refuse_keeps_the_session_and_off_means_off() {
        let mut c = config();
        c.dbsc.on_bad_proof = twintoken::config::OnBadProof::Refuse;
        let s = TestServer::start(c).await;
        let mut b = Browser::new(Device::es256());
        bound(&s, &mut b, "alice").await;
        let req = b.http.post(s.url("/v1/dbsc/refresh"));
        let first = b.send(req, &[]).await;
        let (c403, _) = challenge_of(first.header("secure-session-challenge").unwrap());
        let req = b.http.post(s.url("/v1/dbsc/refresh"));
        let a = b
            .send(req, &[("secure-session-response", &Device::es256().refresh(&c403))])
            .await;
        assert_eq!((a.status, a.error()), (401, "invalid_proof"));
        let r = b.refresh(&s).await;
        assert_eq!((r.status, r.header("x-auth-path")), (200, Some("long")), "{}", r.body);

        let mut off = config();
        off.dbsc.enabled = None; // follows cookies.secure, off in tests
        let s = TestServer::start(off).await;
        let mut b = Browser::new(Device::es256());
        let login = b.login(&s, "alice").await;
        assert!(login.header("secure-session-registration").is_none());
        for path in ["/v1/dbsc/start", "/v1/dbsc/refresh"] {
            let req = b.http.post(s.url(path));
            let a = b.send(req, &[]).await;
            assert_eq!((a.status, a.error()), (404, "not_found"), "{path}");
        }
    }

    /// Redis frozen during a refresh: the refresh is judged on crypto alone
    /// (the key in the long token, the revoked cache, `store.fallback =
    /// crypto`) and answers 200 with a short cookie — never a 4xx, which
    /// would end the browser's session. A session ended before the freeze
    /// stays ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refresh_while_redis_is_frozen_works_on_crypto_alone() {
        let redis = RedisServer::start();
        let s = TestServer::start(with_redis(&redis)).await;
        let start = std::time::Instant::now();
        while !s.state().verifier.caught_up() {
            assert!(start.elapsed() < Duration::from_secs(5), "revocation feed caught up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut b = Browser::new(Device::es256());
        bound(&s, &mut b, "alice").await;
        let mut gone = Browser::new(Device::es256());
        bound(&s, &mut gone, "bob").await;
        let kept = gone.jar.clone();
        let req = gone.http.post(s.url("/v1/logout-all"));
        let origin = s.base.clone();
        let out = gone.send(req, &[("origin", &origin)]).await;
        assert_eq!(out.status, 200, "{}", out.body);
        gone.jar = kept; // copied before the logout
        redis.freeze();
        let r = b.refresh(&s).await;
        assert_eq!(
            (r.status, r.header("x-auth-path")),
            (200, Some("fallback")),
            "{}",
            r.body
        );
        let r = gone.refresh(&s).await;
        assert_eq!(
            (r.status, &r.body),
            (200, &json!({"continue": false})),
            "an ended session stays ended"
        );
        assert!(r.set.contains_key(&names(&s).1), "a short cookie on the fallback");
        let v = b.verify(&s).await;
        assert_eq!((v.status, v.header("x-auth-path")), (200, Some("short")));
        redis.thaw();
        let r = b.refresh(&s).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// Two nodes on one Redis and one keyring: bind on one, refresh on the
    /// other; the other node refuses the pre-binding long token too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bind_on_one_node_refresh_on_the_other() {
        let redis = RedisServer::start();
        let keys = tempfile::tempdir().unwrap();
        let mut c = with_redis(&redis);
        c.keys.dir = keys.path().join("keys");
        let a = TestServer::start(c.clone()).await;
        let bnode = TestServer::start(c).await;
        let mut b = Browser::new(Device::es256());
        let login = b.login(&a, "alice").await;
        let pre = login.body["long_token"].as_str().unwrap().to_string();
        let offer = login.header("secure-session-registration").unwrap().to_string();
        let reg = b.register(&a, param(&offer, "challenge").unwrap()).await;
        assert_eq!(reg.status, 200);
        let r = b.refresh(&bnode).await;
        assert_eq!((r.status, r.header("x-auth-path")), (200, Some("long")), "{}", r.body);
        let (status, _) = bearer(&b.http, bnode.url("/v1/verify"), &pre).await;
        assert_eq!(status, 401, "the pre-binding long token on the other node");
        let v = b.verify(&bnode).await;
        assert_eq!(v.status, 200);
    }

    /// A bound session rotates like any other: the refresh after the rotate
    /// interval hands out a new long cookie, bound to the same key.
    #[tokio::test]
    async fn a_bound_session_rotates_with_its_binding() {
        let mut c = config();
        c.tokens.rotate_interval = Duration::from_secs(3600);
        let s = TestServer::start(c).await;
        let (long_name, _) = names(&s);
        let mut b = Browser::new(Device::rs256());
        bound(&s, &mut b, "alice").await;
        let before = b.jar[&long_name].clone();
        s.clock.advance(Duration::from_secs(3601));
        let r = b.refresh(&s).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let after = r
            .set
            .get(&long_name)
            .map(|x| x.0.clone())
            .expect("a rotated long cookie");
        assert_ne!(after, before);
        let keys = s.state().verifier.keys();
        let (claims, key) = keys.open_long_bound(&after, s.clock.now()).unwrap();
        assert!(claims.device_bound);
        assert_eq!(
            twintoken::dbsc::DeviceKey::from_bytes(&key.unwrap()),
            Some(b.device.key())
        );
        let got = bearer(&b.http, s.url("/v1/verify"), &after).await;
        assert_eq!(got, (401, "proof_required".into()));
        let v = b.verify(&s).await;
        assert_eq!((v.status, v.header("x-auth-path")), (200, Some("short")));
        let r = b.refresh(&s).await;
        assert_eq!(
            (r.status, r.header("x-auth-path")),
            (200, Some("long")),
            "the successor refreshes"
        );
    }

    /// A burst of signed refreshes of one bound session when rotation is
    /// due (a browser with several tabs): single flight and the store hand
    /// every one the same successor, every one answers 200.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_refreshes_rotates_a_bound_session_once() {
        let redis = RedisServer::start();
        let mut c = with_redis(&redis);
        c.tokens.rotate_interval = Duration::from_secs(3600);
        let s = TestServer::start(c).await;
        let (long_name, _) = names(&s);
        let mut b = Browser::new(Device::es256());
        bound(&s, &mut b, "alice").await;
        s.clock.advance(Duration::from_secs(3601));
        let mut proofs = Vec::new();
        for _ in 0..8 {
            let req = b.http.post(s.url("/v1/dbsc/refresh"));
            let a = b.send(req, &[]).await;
            let (ch, _) = challenge_of(a.header("secure-session-challenge").unwrap());
            proofs.push(b.device.refresh(&ch));
        }
        let cookie = format!("{long_name}={}", b.jar[&long_name]);
        let sends = proofs.into_iter().map(|p| {
            let r = b
                .http
                .post(s.url("/v1/dbsc/refresh"))
                .header("cookie", cookie.clone())
                .header("secure-session-response", p);
            async move { r.send().await.unwrap() }
        });
        let answers = futures_util::future::join_all(sends).await;
        let keys = s.state().verifier.keys();
        let mut successors = std::collections::BTreeSet::new();
        for r in answers {
            assert_eq!(r.status(), 200);
            let set: Vec<String> = r
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            let long = set
                .iter()
                .find_map(|v| {
                    v.strip_prefix(&format!("{long_name}="))
                        .map(|r| r.split(';').next().unwrap().to_string())
                })
                .expect("every answer carries the successor's long cookie");
            let claims = keys.open_long(&long, s.clock.now()).unwrap();
            assert!(claims.device_bound);
            successors.insert(claims.sid);
        }
        assert_eq!(successors.len(), 1, "one successor for the whole burst");
    }

    /// A proof by another key whose client resets the connection while the
    /// revocation waits on a frozen Redis: the session still ends (the
    /// revocation runs to its end on its own: refused by this node at once,
    /// kept in the outbox for the store).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_proof_ends_the_session_even_if_its_client_goes_away() {
        let redis = RedisServer::start();
        let state = tempfile::tempdir().unwrap();
        let mut c = with_redis(&redis);
        c.store.outbox = state.path().join("pending-revocations");
        let s = TestServer::start(c).await;
        let mut b = Browser::new(Device::es256());
        bound(&s, &mut b, "alice").await;
        let req = b.http.post(s.url("/v1/dbsc/refresh"));
        let first = b.send(req, &[]).await;
        let (ch, _) = challenge_of(first.header("secure-session-challenge").unwrap());
        let forged = Device::es256().refresh(&ch);
        let long = b.jar[&names(&s).0].clone();
        redis.freeze();
        let addr = s.base.trim_start_matches("http://").to_string();
        let request = format!(
            "POST /v1/dbsc/refresh HTTP/1.1\r\nHost: {addr}\r\nCookie: tt_long={long}\r\nSecure-Session-Response: {forged}\r\nContent-Length: 0\r\n\r\n"
        );
        {
            use tokio::io::AsyncWriteExt as _;
            let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            tcp.write_all(request.as_bytes()).await.unwrap();
            // The revocation is now waiting on the frozen store (25 ms).
            tokio::time::sleep(Duration::from_millis(5)).await;
            tcp.set_zero_linger().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.thaw();
        let r = b.refresh(&s).await;
        assert_eq!(
            (r.status, &r.body),
            (200, &json!({"continue": false})),
            "the session ended although the client went away"
        );
    }
}
