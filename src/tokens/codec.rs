//! Sealing and opening tokens. Hot path: opening does not allocate (the
//! decoded bytes and the plaintext live on the stack, [`UserId`] is inline).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{Tag, XNonce};

use super::{Cipher, Kid, Sid, TokenError, TokenKind, UserId};
use crate::time::UnixMs;
use crate::tokens::types::MAX_UID_LEN;

/// Tokens longer than this (in characters) are rejected before decoding.
pub const MAX_TOKEN_TEXT_LEN: usize = 1024;

/// How far in the future a token's issue time may lie before it is rejected
/// as not yet valid (nodes' clocks differ a little).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The version new long tokens are sealed with. Version 1 tokens (no
/// authentication time, no flags) still open until they expire.
const VERSION: u8 = 2;
const V1: u8 = 1;
/// The version new short tokens are sealed with: version 2 plus the
/// binding to the long token they were issued with ([`Binding`]). Version
/// 1 and 2 short tokens still open until they expire.
const SHORT_VERSION: u8 = 3;
/// The version of a long token bound to a device key (device-bound
/// sessions): version 2 plus the key, after the user id.
const BOUND_VERSION: u8 = 4;
/// The longest device key a bound long token carries (an RS256 key of
/// 4096 bits as `dbsc::DeviceKey` writes it is 519 bytes).
pub const MAX_DEVICE_KEY_LEN: usize = 520;
const HEADER_LEN: usize = 6;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Version 1: `time:u64 | time:u64 | sid[16] | uid_len:u8`, before the uid.
const FIXED_V1: usize = 8 + 8 + 16 + 1;
/// Version 2: `time:u64 | time:u64 | sid[16] | auth_s:u32 | flags:u8 |
/// uid_len:u8`, before the uid. The sid keeps its place (`peek_long_sid`);
/// the authentication time in whole seconds (until 2106) keeps a short
/// token with a typical user id inside the same number of Poly1305 blocks
/// as version 1 (the hot path).
const FIXED_V2: usize = 8 + 8 + 16 + 4 + 1 + 1;
/// Bytes of a long token's nonce a short token is bound to.
pub const BINDING_LEN: usize = 16;
/// Version 3 (short tokens only): version 2's fields, then the binding
/// `bind[16]` before `uid_len`. A typical user id still fits the message in
/// one ChaCha block.
const FIXED_V3: usize = FIXED_V2 + BINDING_LEN;
/// Flag bit: the session was created with "remember me" (persistent cookies).
const FLAG_REMEMBER: u8 = 1;
const MAX_PLAINTEXT_LEN: usize = FIXED_V2 + MAX_UID_LEN + 2 + MAX_DEVICE_KEY_LEN;
const MIN_TOKEN_LEN: usize = HEADER_LEN + NONCE_LEN + FIXED_V1 + 1 + TAG_LEN;
const MAX_TOKEN_LEN: usize = HEADER_LEN + NONCE_LEN + MAX_PLAINTEXT_LEN + TAG_LEN;
/// The longest base64 text any token can have; longer text is rejected by
/// length before decoding (and beyond [`MAX_TOKEN_TEXT_LEN`] as too long).
const MAX_TOKEN_B64_LEN: usize = (MAX_TOKEN_LEN * 4).div_ceil(3);
/// Enough for any text that passes the length checks.
const DECODE_BUF_LEN: usize = MAX_TOKEN_LEN + 3;

/// Where the codec gets its keys. Implemented by the keyring's snapshot
/// ([`crate::keys::KeySet`]); the codec itself never decides which key signs.
pub trait KeyLookup {
    /// The key that seals new tokens at `now`.
    fn sealing_key(&self, now: UnixMs) -> Result<(Kid, &Cipher), TokenError>;
    /// The key that opens a token naming `kid`, if that key is accepted at
    /// `now`; [`TokenError::UnknownKid`] or [`TokenError::RetiredKid`] if not.
    fn opening_key(&self, kid: Kid, now: UnixMs) -> Result<&Cipher, TokenError>;
    /// The raw bytes of that key, for [`peek_long_sid`].
    fn peeking_key(&self, kid: Kid) -> Option<&[u8; 32]>;
}

/// What a long token says: who, which session, when issued, when the
/// session began (carried over by rotation, so the absolute lifetime counts
/// from it), when the user last authenticated (the login, or the last
/// re-authentication; carried over by rotation), and whether the session's
/// cookies are persistent ("remember me").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongClaims {
    /// The user.
    pub uid: UserId,
    /// The session: a member of the user's sorted set in the store.
    pub sid: Sid,
    /// When this token was issued.
    pub iat: UnixMs,
    /// When the session began.
    pub login: UnixMs,
    /// When the user last proved who they are, in whole seconds (`login
    /// <= auth <= iat`, compared in seconds); a version 1 token's is its
    /// login time.
    pub auth: UnixMs,
    /// Persistent cookies (`true`, and for version 1 tokens) or browser-
    /// session cookies.
    pub remember: bool,
    /// The session is bound to a device key, which the token carries
    /// (version 4; [`open_long_bound`] reads it): the long token alone never
    /// earns a short token, only a proof by that key does. Sealed only by
    /// [`seal_long_bound`].
    pub device_bound: bool,
}

impl LongClaims {
    /// A session that begins `now`: logged in, authenticated and issued
    /// then, not bound to a device key.
    pub fn new_session(uid: UserId, sid: Sid, now: UnixMs, remember: bool) -> LongClaims {
        LongClaims {
            uid,
            sid,
            iat: now,
            login: now,
            auth: now,
            remember,
            device_bound: false,
        }
    }
}

/// Which long token a short token was issued with: the first
/// [`BINDING_LEN`] bytes of that long token's nonce (random, public, unique
/// per long token). A short token counts beside a long token only if they
/// match, a byte comparison instead of a decryption (see [`long_binding`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding(pub [u8; BINDING_LEN]);

/// What a short token says: a long check for (uid, sid) succeeded at `iat`,
/// and the answer may be reused until `exp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortClaims {
    /// The user.
    pub uid: UserId,
    /// The session the long check confirmed.
    pub sid: Sid,
    /// When this token was issued.
    pub iat: UnixMs,
    /// When it stops being accepted.
    pub exp: UnixMs,
    /// The session's last authentication, in whole seconds (`None` in a
    /// version 1 token, which does not carry it; sealing `None` writes
    /// `iat`).
    pub auth: Option<UnixMs>,
    /// As [`LongClaims::remember`].
    pub remember: bool,
    /// The long token it was issued with (`None` in versions 1 and 2, which
    /// do not carry it; sealing `None` writes version 2).
    pub bind: Option<Binding>,
}

/// Seals a long token with the key that signs at `now`. A bound session's
/// token needs its device key: [`seal_long_bound`].
pub fn seal_long(keys: &impl KeyLookup, c: &LongClaims, now: UnixMs) -> Result<String, TokenError> {
    if c.device_bound {
        return Err(TokenError::Layout("a device-bound long token needs its device key"));
    }
    seal_long_inner(keys, c, None, now)
}

/// Seals the long token of a session bound to `device` (the key as
/// `dbsc::DeviceKey` writes it, 1 to [`MAX_DEVICE_KEY_LEN`] bytes):
/// version 4, `device_bound` set.
pub fn seal_long_bound(
    keys: &impl KeyLookup,
    c: &LongClaims,
    device: &[u8],
    now: UnixMs,
) -> Result<String, TokenError> {
    if device.is_empty() || device.len() > MAX_DEVICE_KEY_LEN {
        return Err(TokenError::Layout("device key length"));
    }
    seal_long_inner(keys, c, Some(device), now)
}

fn seal_long_inner(
    keys: &impl KeyLookup,
    c: &LongClaims,
    device: Option<&[u8]>,
    now: UnixMs,
) -> Result<String, TokenError> {
    if c.login > c.iat {
        return Err(TokenError::Layout("login time after issue time"));
    }
    let auth = auth_seconds(c.auth)?;
    if u64::from(auth) < c.login.0 / 1000 || u64::from(auth) > c.iat.0 / 1000 {
        return Err(TokenError::Layout("authentication time outside login..issue time"));
    }
    seal(
        keys,
        TokenKind::Long,
        now,
        [c.iat.0, c.login.0],
        auth,
        c.remember,
        Extra::Device(device),
        &c.sid,
        &c.uid,
    )
}

/// Seals a short token with the key that signs at `now`.
pub fn seal_short(keys: &impl KeyLookup, c: &ShortClaims, now: UnixMs) -> Result<String, TokenError> {
    if c.exp < c.iat {
        return Err(TokenError::Layout("expiry before issue time"));
    }
    let auth = auth_seconds(c.auth.unwrap_or(c.iat))?;
    if u64::from(auth) > c.iat.0 / 1000 {
        return Err(TokenError::Layout("authentication time after issue time"));
    }
    seal(
        keys,
        TokenKind::Short,
        now,
        [c.iat.0, c.exp.0],
        auth,
        c.remember,
        Extra::Bind(c.bind),
        &c.sid,
        &c.uid,
    )
}

/// What a device-bound-session challenge says: issued for session `sid`
/// of `uid` at `iat`, answerable until `exp`. Same layout as a version 2
/// short token, kind `'C'` (so neither ever opens as the other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChallengeClaims {
    /// The user.
    pub uid: UserId,
    /// The session it was issued for.
    pub sid: Sid,
    /// When it was issued.
    pub iat: UnixMs,
    /// When it stops being accepted.
    pub exp: UnixMs,
}

/// Seals a challenge with the key that signs at `now`.
pub fn seal_challenge(keys: &impl KeyLookup, c: &ChallengeClaims, now: UnixMs) -> Result<String, TokenError> {
    if c.exp < c.iat {
        return Err(TokenError::Layout("expiry before issue time"));
    }
    seal(
        keys,
        TokenKind::Challenge,
        now,
        [c.iat.0, c.exp.0],
        auth_seconds(c.iat)?,
        false,
        Extra::Bind(None),
        &c.sid,
        &c.uid,
    )
}

/// Opens a challenge, rejecting it once `now` reaches its expiry.
pub fn open_challenge(keys: &impl KeyLookup, token: &str, now: UnixMs) -> Result<ChallengeClaims, TokenError> {
    let mut buf = [0u8; DECODE_BUF_LEN];
    let p = open(keys, TokenKind::Challenge, token, now, &mut buf)?;
    let (iat, exp) = (UnixMs(p.t1), UnixMs(p.t2));
    if exp < iat || p.remember {
        return Err(TokenError::Layout("not a challenge's fields"));
    }
    check_times(iat, exp, now)?;
    Ok(ChallengeClaims {
        uid: p.uid,
        sid: p.sid,
        iat,
        exp,
    })
}

/// An authentication time as the token holds it: whole seconds, u32.
fn auth_seconds(t: UnixMs) -> Result<u32, TokenError> {
    u32::try_from(t.0 / 1000).map_err(|_| TokenError::Layout("authentication time after 2106"))
}

/// Opens a long token. Checks the key, the tag and the layout, and that it
/// was not issued in the future; lifetimes are the verifier's business. A
/// bound token opens with `device_bound` set (its key: [`open_long_bound`]).
pub fn open_long(keys: &impl KeyLookup, token: &str, now: UnixMs) -> Result<LongClaims, TokenError> {
    open_long_bound(keys, token, now).map(|(c, _)| c)
}

/// [`open_long`], with the device key of a bound token.
pub fn open_long_bound(
    keys: &impl KeyLookup,
    token: &str,
    now: UnixMs,
) -> Result<(LongClaims, Option<Vec<u8>>), TokenError> {
    let mut buf = [0u8; DECODE_BUF_LEN];
    let p = open(keys, TokenKind::Long, token, now, &mut buf)?;
    let (iat, login) = (UnixMs(p.t1), UnixMs(p.t2));
    if login > iat {
        return Err(TokenError::Layout("login time after issue time"));
    }
    let auth = p.auth.map_or(login, |s| UnixMs(s * 1000));
    if auth.0 / 1000 < login.0 / 1000 || auth.0 / 1000 > iat.0 / 1000 {
        return Err(TokenError::Layout("authentication time outside login..issue time"));
    }
    check_not_future(iat, now)?;
    let c = LongClaims {
        uid: p.uid,
        sid: p.sid,
        iat,
        login,
        auth,
        remember: p.remember,
        device_bound: p.device.is_some(),
    };
    Ok((c, p.device))
}

/// Opens a short token, rejecting it once `now` reaches its expiry.
pub fn open_short(keys: &impl KeyLookup, token: &str, now: UnixMs) -> Result<ShortClaims, TokenError> {
    let mut buf = [0u8; DECODE_BUF_LEN];
    let p = open(keys, TokenKind::Short, token, now, &mut buf)?;
    let (iat, exp) = (UnixMs(p.t1), UnixMs(p.t2));
    if exp < iat {
        return Err(TokenError::Layout("expiry before issue time"));
    }
    let auth = p.auth.map(|s| UnixMs(s * 1000));
    if auth.is_some_and(|a| a.0 / 1000 > iat.0 / 1000) {
        return Err(TokenError::Layout("authentication time after issue time"));
    }
    let c = ShortClaims {
        uid: p.uid,
        sid: p.sid,
        iat,
        exp,
        auth,
        remember: p.remember,
        bind: p.bind,
    };
    check_short_times(&c, now)?;
    Ok(c)
}

/// The checks of [`open_short`] that depend on the time: not issued in the
/// future beyond the clock skew, not expired. Made again on every use of
/// claims opened earlier.
pub fn check_short_times(c: &ShortClaims, now: UnixMs) -> Result<(), TokenError> {
    check_times(c.iat, c.exp, now)
}

/// Issued no later than the clock skew allows, and not expired.
fn check_times(iat: UnixMs, exp: UnixMs, now: UnixMs) -> Result<(), TokenError> {
    check_not_future(iat, now)?;
    if now >= exp {
        return Err(TokenError::Expired {
            exp_ms: exp.0,
            now_ms: now.0,
        });
    }
    Ok(())
}

fn check_not_future(iat: UnixMs, now: UnixMs) -> Result<(), TokenError> {
    if iat > now.plus(MAX_CLOCK_SKEW) {
        return Err(TokenError::NotYetValid {
            iat_ms: iat.0,
            now_ms: now.0,
        });
    }
    Ok(())
}

/// The shared plaintext shape of both kinds: two times, sid, (version 2)
/// the authentication time and the flags, uid.
struct Plain {
    t1: u64,
    t2: u64,
    sid: Sid,
    auth: Option<u64>,
    remember: bool,
    bind: Option<Binding>,
    device: Option<Vec<u8>>,
    uid: UserId,
}

/// What a kind's layout adds to version 2: a short token's binding
/// (version 3) or a long token's device key (version 4).
enum Extra<'a> {
    Bind(Option<Binding>),
    Device(Option<&'a [u8]>),
}

/// `times`: the kind's two times; `auth`: the authentication time (s);
/// `extra`: a short token's binding (version 3) or a long token's device
/// key (version 4); neither: version 2.
#[allow(clippy::too_many_arguments)]
fn seal(
    keys: &impl KeyLookup,
    kind: TokenKind,
    now: UnixMs,
    times: [u64; 2],
    auth: u32,
    remember: bool,
    extra: Extra<'_>,
    sid: &Sid,
    uid: &UserId,
) -> Result<String, TokenError> {
    let (kid, cipher) = keys.sealing_key(now)?;
    let uid = uid.as_bytes();
    let (version, fixed, bind, device) = match extra {
        Extra::Bind(Some(b)) => (SHORT_VERSION, FIXED_V3, Some(b), None),
        Extra::Device(Some(d)) => (BOUND_VERSION, FIXED_V2, None, Some(d)),
        Extra::Bind(None) | Extra::Device(None) => (VERSION, FIXED_V2, None, None),
    };
    let device_len = device.map_or(0, |d| 2 + d.len());
    let pt_len = fixed + uid.len() + device_len;
    let total = HEADER_LEN + NONCE_LEN + pt_len + TAG_LEN;

    let mut out = [0u8; MAX_TOKEN_LEN];
    out[0] = version;
    out[1] = kind.byte();
    out[2..6].copy_from_slice(&kid.0.to_be_bytes());
    let (header, rest) = out.split_at_mut(HEADER_LEN);
    let (nonce, rest) = rest.split_at_mut(NONCE_LEN);
    getrandom::fill(nonce).map_err(TokenError::Rng)?;
    let (pt, rest) = rest.split_at_mut(pt_len);
    pt[0..8].copy_from_slice(&times[0].to_be_bytes());
    pt[8..16].copy_from_slice(&times[1].to_be_bytes());
    pt[16..32].copy_from_slice(&sid.0);
    pt[32..36].copy_from_slice(&auth.to_be_bytes());
    pt[36] = if remember { FLAG_REMEMBER } else { 0 };
    if let Some(b) = bind {
        pt[FIXED_V2 - 1..FIXED_V3 - 1].copy_from_slice(&b.0);
    }
    // uid length is 1..=64 by construction of UserId.
    pt[fixed - 1] = uid.len() as u8;
    pt[fixed..fixed + uid.len()].copy_from_slice(uid);
    if let Some(d) = device {
        let at = fixed + uid.len();
        // At most MAX_DEVICE_KEY_LEN (seal_long_bound checks).
        pt[at..at + 2].copy_from_slice(&(d.len() as u16).to_be_bytes());
        pt[at + 2..].copy_from_slice(d);
    }

    let nonce = XNonce::try_from(&*nonce).map_err(|_| TokenError::Layout("nonce length"))?;
    let tag = cipher
        .encrypt_inout_detached(&nonce, header, pt.into())
        .map_err(|_| TokenError::Layout("plaintext too long for the cipher"))?;
    rest[..TAG_LEN].copy_from_slice(&tag);
    Ok(URL_SAFE_NO_PAD.encode(&out[..total]))
}

/// The session id a long token names, read **without authenticating the
/// token**: XChaCha20 keystream for the 16 sid bytes only (the plaintext's
/// bytes 16..32, block 1 of the AEAD's stream), no Poly1305. `None` for
/// text that is not a version-1 long token of a live key.
///
/// Only for one question: "does this request's long token name the same
/// session as its valid short token?" A short token alone is accepted, so
/// a forged long token beside it can at worst make the request be judged
/// by that short token, exactly as without it; a genuine long token of
/// another session (a short token planted beside a victim's long token)
/// is always told apart. Anything the answer grants still rests on the
/// authenticated short token. Costs two ChaCha blocks (HChaCha20 and one
/// keystream block) instead of a whole open.
pub fn peek_long_sid(keys: &impl KeyLookup, token: &str) -> Option<Sid> {
    use chacha20::cipher::{KeyIvInit as _, StreamCipher as _, StreamCipherSeek as _};
    if token.len() > MAX_TOKEN_B64_LEN {
        return None;
    }
    let mut buf = [0u8; DECODE_BUF_LEN];
    let n = URL_SAFE_NO_PAD.decode_slice(token.as_bytes(), &mut buf[..]).ok()?;
    if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&n)
        || ![V1, VERSION, BOUND_VERSION].contains(&buf[0])
        || TokenKind::from_byte(buf[1]) != Some(TokenKind::Long)
    {
        return None;
    }
    let kid = Kid(u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]));
    let key = keys.peeking_key(kid)?;
    let nonce = &buf[HEADER_LEN..HEADER_LEN + NONCE_LEN];
    let mut stream = chacha20::XChaCha20::new(key.into(), nonce.try_into().ok()?);
    // Block 0 keys Poly1305; the message starts at block 1.
    stream.try_seek(64u64 + 16).ok()?;
    let start = HEADER_LEN + NONCE_LEN + 16;
    let mut sid = [0u8; 16];
    sid.copy_from_slice(&buf[start..start + 16]);
    stream.try_apply_keystream(&mut sid).ok()?;
    Some(Sid(sid))
}

/// The binding of a long token ([`Binding`]), read from its public bytes
/// without decrypting anything: the header and the nonce, the first 40
/// characters of its text. `None` unless the text begins like a long token
/// whose key is accepted at `now` (a retired key's long token never lets a
/// short token beside it count, as when the long token is opened).
///
/// Used for one question, like [`peek_long_sid`]: "was this request's
/// valid short token issued with this long token?" A short token alone is
/// accepted, so a long token forged to match can at worst make the request
/// be judged by that short token, exactly as without it; a genuine long
/// token of another session (a short token planted beside a victim's long
/// token) has another random nonce, so the pair is told apart and the
/// long path judges the long token.
pub fn long_binding(keys: &impl KeyLookup, token: &str, now: UnixMs) -> Option<Binding> {
    let (kid, bind) = long_binding_unchecked(token)?;
    keys.opening_key(kid, now).ok()?;
    Some(bind)
}

/// [`long_binding`] without the key check: the kid the text names and its
/// binding. The caller must check that the kid is accepted (the keyring
/// does, remembering the answer per key-set generation).
pub fn long_binding_unchecked(token: &str) -> Option<(Kid, Binding)> {
    const PREFIX: usize = HEADER_LEN + NONCE_LEN;
    const PREFIX_B64: usize = PREFIX / 3 * 4;
    let text = token.as_bytes().get(..PREFIX_B64)?;
    let mut buf = [0u8; PREFIX];
    let n = URL_SAFE_NO_PAD.decode_slice(text, &mut buf[..]).ok()?;
    if n != PREFIX
        || ![V1, VERSION, BOUND_VERSION].contains(&buf[0])
        || TokenKind::from_byte(buf[1]) != Some(TokenKind::Long)
    {
        return None;
    }
    let kid = Kid(u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]));
    let mut b = [0u8; BINDING_LEN];
    b.copy_from_slice(&buf[HEADER_LEN..HEADER_LEN + BINDING_LEN]);
    Some((kid, Binding(b)))
}

fn open(
    keys: &impl KeyLookup,
    expected: TokenKind,
    token: &str,
    now: UnixMs,
    buf: &mut [u8; DECODE_BUF_LEN],
) -> Result<Plain, TokenError> {
    if token.len() > MAX_TOKEN_TEXT_LEN {
        return Err(TokenError::TooLong(token.len()));
    }
    if token.len() > MAX_TOKEN_B64_LEN {
        // Valid base64 or not, it would decode to more than any token holds.
        return Err(TokenError::Length(token.len() / 4 * 3));
    }
    let n = URL_SAFE_NO_PAD
        .decode_slice(token.as_bytes(), &mut buf[..])
        .map_err(|_| TokenError::Base64)?;
    let bytes = &mut buf[..n];
    if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&n) {
        return Err(TokenError::Length(n));
    }
    let version = bytes[0];
    if ![V1, VERSION, SHORT_VERSION, BOUND_VERSION].contains(&version) {
        return Err(TokenError::Version(version));
    }
    let found = TokenKind::from_byte(bytes[1]).ok_or(TokenError::Kind(bytes[1]))?;
    if found != expected {
        return Err(TokenError::WrongKind { expected, found });
    }
    if (version == SHORT_VERSION && found != TokenKind::Short)
        || (version == BOUND_VERSION && found != TokenKind::Long)
        || (found == TokenKind::Challenge && version != VERSION)
    {
        return Err(TokenError::Version(version));
    }
    let kid = Kid(u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]));
    let cipher = keys.opening_key(kid, now)?;

    let (header, rest) = bytes.split_at_mut(HEADER_LEN);
    let (nonce, rest) = rest.split_at_mut(NONCE_LEN);
    let (ct, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    let nonce = XNonce::try_from(&*nonce).map_err(|_| TokenError::Length(n))?;
    let tag = Tag::try_from(&*tag).map_err(|_| TokenError::Length(n))?;
    cipher
        .decrypt_inout_detached(&nonce, header, (&mut *ct).into(), &tag)
        .map_err(|_| TokenError::Tag)?;

    let pt: &[u8] = ct;
    let read = |at: usize| {
        let mut t = [0u8; 8];
        t.copy_from_slice(&pt[at..at + 8]);
        u64::from_be_bytes(t)
    };
    let (fixed, auth, remember, bind) = if version == V1 {
        (FIXED_V1, None, true, None)
    } else {
        let fixed = if version == SHORT_VERSION { FIXED_V3 } else { FIXED_V2 };
        if pt.len() < fixed + 1 {
            return Err(TokenError::Layout("shorter than its version's plaintext"));
        }
        let flags = pt[36];
        if flags & !FLAG_REMEMBER != 0 {
            return Err(TokenError::Layout("unknown flags"));
        }
        let auth = u32::from_be_bytes([pt[32], pt[33], pt[34], pt[35]]);
        let bind = (version == SHORT_VERSION).then(|| {
            let mut b = [0u8; BINDING_LEN];
            b.copy_from_slice(&pt[FIXED_V2 - 1..FIXED_V3 - 1]);
            Binding(b)
        });
        (fixed, Some(u64::from(auth)), flags & FLAG_REMEMBER != 0, bind)
    };
    let uid_len = usize::from(pt[fixed - 1]);
    let Some(uid) = pt.get(fixed..fixed + uid_len) else {
        return Err(TokenError::Layout("user id length disagrees with token length"));
    };
    let rest = &pt[fixed + uid_len..];
    let device = if version == BOUND_VERSION {
        let (len, key) = rest.split_at_checked(2).ok_or(TokenError::Layout("no device key"))?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len == 0 || len > MAX_DEVICE_KEY_LEN || key.len() != len {
            return Err(TokenError::Layout("device key length disagrees with token length"));
        }
        Some(key.to_vec())
    } else {
        if !rest.is_empty() {
            return Err(TokenError::Layout("user id length disagrees with token length"));
        }
        None
    };
    let uid = UserId::from_bytes(uid)?;
    let mut sid = [0u8; 16];
    sid.copy_from_slice(&pt[16..32]);
    Ok(Plain {
        t1: read(0),
        t2: read(8),
        sid: Sid(sid),
        auth,
        remember,
        bind,
        device,
        uid,
    })
}
