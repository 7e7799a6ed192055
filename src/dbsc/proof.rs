//! DBSC proofs: compact JWTs (`header.payload.signature`, base64url without
//! padding) signed by a browser's device key.
//!
//! - Registration (`Secure-Session-Response` on the registration POST):
//!   header `{"alg":"ES256"|"RS256","typ":"dbsc+jwt","jwk":{…}}`, payload
//!   `{"jti":"<challenge>"}`, signed by the key in `jwk`. Chromium 156 sends
//!   nothing else (no `aud`, `iat`, `exp`); other payload members are
//!   ignored.
//! - Refresh: the same without `jwk`, signed by the key registered for
//!   the session. A `jwk` that is present must be that key.
//!
//! ES256 signatures are the raw 64-byte `r ‖ s` (JWS), RS256 ones RSASSA-
//! PKCS1-v1_5 with SHA-256 over a 2048- to 4096-bit modulus. Nothing here
//! decides whether the challenge is fresh or the session exists: the
//! caller gets the `jti` and judges it.

use aws_lc_rs::signature::VerificationAlgorithm as _;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::Digest as _;

/// Longer proofs are refused before anything is decoded (a 4096-bit RS256
/// registration with its `jwk` is about 1.6 KB).
pub const MAX_PROOF_LEN: usize = 8192;

/// RSA moduli accepted, in bytes (2048 to 4096 bits).
const RSA_MODULUS: std::ops::RangeInclusive<usize> = 256..=512;

/// A device's public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceKey {
    /// P-256: the uncompressed point `0x04 ‖ x ‖ y`.
    Es256([u8; 65]),
    /// RSA: modulus and public exponent, big-endian, no leading zeros.
    Rs256 {
        /// The modulus.
        n: Vec<u8>,
        /// The public exponent.
        e: Vec<u8>,
    },
}

/// Why a proof is refused. Each is its own variant so that a test (and the
/// log) can tell them apart; a client is told only that the proof failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Longer than [`MAX_PROOF_LEN`].
    #[error("proof is {0} bytes, more than the {MAX_PROOF_LEN} allowed")]
    TooLong(usize),
    /// Not three dot-separated parts.
    #[error("proof is not a compact JWT (header.payload.signature)")]
    Shape,
    /// A part is not base64url without padding.
    #[error("proof {0} is not base64url without padding")]
    Base64(&'static str),
    /// A part is not the JSON object it must be.
    #[error("proof {0} is not valid JSON of the expected shape")]
    Json(&'static str),
    /// `typ` is not `dbsc+jwt`.
    #[error("proof typ must be \"dbsc+jwt\"")]
    Type,
    /// `alg` is neither ES256 nor RS256, or not the registered key's.
    #[error("proof alg {0:?} is not accepted here (ES256 or RS256, the registered key's)")]
    Alg(String),
    /// A registration without `jwk`.
    #[error("registration proof has no jwk")]
    MissingKey,
    /// The `jwk` is not a usable key of the proof's algorithm.
    #[error("proof jwk is not a usable key: {0}")]
    BadKey(&'static str),
    /// A refresh naming another key than the session's.
    #[error("proof jwk is not the key registered for this session")]
    KeyMismatch,
    /// The signature does not verify.
    #[error("proof signature does not verify")]
    Signature,
    /// No `jti` (the challenge), or an empty one.
    #[error("proof payload has no jti")]
    MissingJti,
}

/// What a registration proof binds: the key, and the challenge it signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The device's public key.
    pub key: DeviceKey,
    /// The challenge (`jti`).
    pub jti: String,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    typ: Option<String>,
    jwk: Option<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    jti: Option<String>,
}

/// A proof split and decoded; `signed` is `header.payload` as sent.
struct Parts<'a> {
    header: Header,
    payload: Payload,
    signed: &'a str,
    signature: Vec<u8>,
}

fn split(jwt: &str) -> Result<Parts<'_>, ProofError> {
    if jwt.len() > MAX_PROOF_LEN {
        return Err(ProofError::TooLong(jwt.len()));
    }
    let mut it = jwt.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(ProofError::Shape);
    };
    let decode = |part: &str, name| URL_SAFE_NO_PAD.decode(part).map_err(|_| ProofError::Base64(name));
    let header = serde_json::from_slice(&decode(h, "header")?).map_err(|_| ProofError::Json("header"))?;
    let payload = serde_json::from_slice(&decode(p, "payload")?).map_err(|_| ProofError::Json("payload"))?;
    Ok(Parts {
        header,
        payload,
        signed: &jwt[..h.len() + 1 + p.len()],
        signature: decode(s, "signature")?,
    })
}

fn b64(field: Option<&str>, what: &'static str) -> Result<Vec<u8>, ProofError> {
    URL_SAFE_NO_PAD
        .decode(field.ok_or(ProofError::BadKey(what))?)
        .map_err(|_| ProofError::BadKey(what))
}

impl DeviceKey {
    /// The key of a JWK, for the algorithm `alg`.
    fn from_jwk(jwk: &Jwk, alg: &str) -> Result<DeviceKey, ProofError> {
        match (alg, jwk.kty.as_str()) {
            ("ES256", "EC") => {
                if jwk.crv.as_deref() != Some("P-256") {
                    return Err(ProofError::BadKey("crv must be P-256"));
                }
                let (x, y) = (b64(jwk.x.as_deref(), "x")?, b64(jwk.y.as_deref(), "y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(ProofError::BadKey("x and y must be 32 bytes"));
                }
                let mut point = [4u8; 65];
                point[1..33].copy_from_slice(&x);
                point[33..].copy_from_slice(&y);
                Ok(DeviceKey::Es256(point))
            }
            ("RS256", "RSA") => {
                let (n, e) = (b64(jwk.n.as_deref(), "n")?, b64(jwk.e.as_deref(), "e")?);
                DeviceKey::rsa(n, e).map_err(ProofError::BadKey)
            }
            ("ES256" | "RS256", _) => Err(ProofError::BadKey("kty does not match alg")),
            _ => Err(ProofError::Alg(alg.into())),
        }
    }

    /// An RSA key within the accepted sizes (2048- to 4096-bit modulus, an
    /// exponent of 1 to 4 bytes, neither with leading zeros).
    fn rsa(n: Vec<u8>, e: Vec<u8>) -> Result<DeviceKey, &'static str> {
        if !RSA_MODULUS.contains(&n.len()) || n[0] == 0 {
            return Err("n must be a 2048- to 4096-bit modulus");
        }
        if e.is_empty() || e.len() > 4 || e[0] == 0 {
            return Err("e must be 1 to 4 bytes without leading zeros");
        }
        Ok(DeviceKey::Rs256 { n, e })
    }

    /// The JWS algorithm of this key.
    pub fn alg(&self) -> &'static str {
        match self {
            DeviceKey::Es256(_) => "ES256",
            DeviceKey::Rs256 { .. } => "RS256",
        }
    }

    /// Whether `signature` is this key's over `message`.
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            DeviceKey::Es256(point) => ECDSA_P256_SHA256_FIXED.verify_sig(point, message, signature).is_ok(),
            DeviceKey::Rs256 { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
        }
    }

    /// The key as a bound long token carries it (at most
    /// `tokens::MAX_DEVICE_KEY_LEN` bytes): `0x01 ‖ point` (ES256, 66
    /// bytes) or `0x02 ‖ n_len:u16 ‖ n ‖ e` (RS256, up to 519 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            DeviceKey::Es256(p) => [&[1u8][..], p].concat(),
            DeviceKey::Rs256 { n, e } => {
                // n is at most 512 bytes (checked when the key was read).
                let len = (n.len() as u16).to_be_bytes();
                [&[2u8][..], &len, n, e].concat()
            }
        }
    }

    /// The key [`Self::to_bytes`] wrote; `None` for anything else (the
    /// same limits as a key read from a JWK).
    pub fn from_bytes(b: &[u8]) -> Option<DeviceKey> {
        match b.split_first()? {
            (1, p) => Some(DeviceKey::Es256(p.try_into().ok()?)),
            (2, rest) => {
                let (len, rest) = rest.split_at_checked(2)?;
                let (n, e) = rest.split_at_checked(usize::from(u16::from_be_bytes([len[0], len[1]])))?;
                DeviceKey::rsa(n.to_vec(), e.to_vec()).ok()
            }
            _ => None,
        }
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url): the key's name in
    /// logs, audit lines and the browser's session identifier.
    pub fn thumbprint(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.thumbprint_bytes())
    }

    /// The RFC 7638 JWK thumbprint as the SHA-256 digest (what the session
    /// store keeps).
    pub fn thumbprint_bytes(&self) -> [u8; 32] {
        let enc = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let canonical = match self {
            DeviceKey::Es256(p) => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                enc(&p[1..33]),
                enc(&p[33..])
            ),
            DeviceKey::Rs256 { n, e } => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, enc(e), enc(n)),
        };
        sha2::Sha256::digest(canonical.as_bytes()).into()
    }
}

/// The `jti` of a checked proof.
fn jti(p: Payload) -> Result<String, ProofError> {
    p.jti.filter(|j| !j.is_empty()).ok_or(ProofError::MissingJti)
}

fn check_type(h: &Header) -> Result<(), ProofError> {
    if h.typ.as_deref() != Some("dbsc+jwt") {
        return Err(ProofError::Type);
    }
    Ok(())
}

/// Checks a registration proof: `typ`, `alg`, the `jwk` of that algorithm,
/// the signature by that key, a `jti`. The caller checks that the `jti` is
/// a challenge it issued.
pub fn check_registration(jwt: &str) -> Result<Registration, ProofError> {
    let p = split(jwt)?;
    check_type(&p.header)?;
    let jwk = p.header.jwk.as_ref().ok_or(ProofError::MissingKey)?;
    let key = DeviceKey::from_jwk(jwk, &p.header.alg)?;
    if !key.verifies(p.signed.as_bytes(), &p.signature) {
        return Err(ProofError::Signature);
    }
    Ok(Registration {
        key,
        jti: jti(p.payload)?,
    })
}

/// Checks a refresh proof against the session's registered `key`: `typ`,
/// the key's `alg`, a `jwk` (if any) equal to it, the signature by it, a
/// `jti`. Returns the `jti` for the caller to judge.
pub fn check_refresh(jwt: &str, key: &DeviceKey) -> Result<String, ProofError> {
    let p = split(jwt)?;
    check_type(&p.header)?;
    if p.header.alg != key.alg() {
        return Err(ProofError::Alg(p.header.alg));
    }
    if let Some(jwk) = &p.header.jwk
        && DeviceKey::from_jwk(jwk, &p.header.alg)? != *key
    {
        return Err(ProofError::KeyMismatch);
    }
    if !key.verifies(p.signed.as_bytes(), &p.signature) {
        return Err(ProofError::Signature);
    }
    jti(p.payload)
}
