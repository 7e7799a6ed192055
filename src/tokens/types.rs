//! The values a token carries, each valid by construction.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::TokenError;

/// Longest user id, in bytes of UTF-8.
pub const MAX_UID_LEN: usize = 64;

/// A user id: an opaque UTF-8 string of 1..=64 bytes (numeric ids, UUIDs,
/// names). Stored inline, so building or copying one never allocates — the
/// short-token path relies on that.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId {
    len: u8,
    bytes: [u8; MAX_UID_LEN],
}

impl UserId {
    /// Checks the length (1..=64 bytes) and builds the id.
    pub fn new(s: &str) -> Result<UserId, TokenError> {
        Self::from_bytes(s.as_bytes())
    }

    /// From raw bytes, which must be valid UTF-8 of 1..=64 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<UserId, TokenError> {
        if b.is_empty() || b.len() > MAX_UID_LEN {
            return Err(TokenError::UidLength(b.len()));
        }
        if std::str::from_utf8(b).is_err() {
            return Err(TokenError::UidUtf8);
        }
        let mut bytes = [0u8; MAX_UID_LEN];
        bytes[..b.len()].copy_from_slice(b);
        // In range by the check above.
        Ok(UserId {
            len: b.len() as u8,
            bytes,
        })
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        // Validated as UTF-8 in `from_bytes`, the only constructor; the
        // fallback is unreachable but keeps this free of panics.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The id's UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({:?})", self.as_str())
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UserId {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UserId::new(s)
    }
}

/// A session id: 128 random bits from the OS CSPRNG. Shown as 22 characters
/// of base64url.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid(pub [u8; 16]);

impl Sid {
    /// A fresh random session id.
    pub fn random() -> Result<Sid, TokenError> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(TokenError::Rng)?;
        Ok(Sid(b))
    }

    /// The 22-character base64url text form.
    pub fn to_text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The text form written into `buf`, without allocating (the verify
    /// hot path).
    pub fn write_text<'b>(&self, buf: &'b mut [u8; 22]) -> &'b str {
        // 16 bytes are always exactly 22 characters of base64url.
        let n = URL_SAFE_NO_PAD.encode_slice(self.0, &mut buf[..]).unwrap_or(0);
        std::str::from_utf8(&buf[..n]).unwrap_or("")
    }
}

impl FromStr for Sid {
    type Err = TokenError;
    /// Parses the 22-character base64url text form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 16];
        if s.len() != 22 {
            return Err(TokenError::BadSid);
        }
        match URL_SAFE_NO_PAD.decode_slice(s, &mut out) {
            Ok(16) => Ok(Sid(out)),
            _ => Err(TokenError::BadSid),
        }
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({})", self.to_text())
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// A key id: names the key a token was sealed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kid(pub u32);

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Kid {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Kid)
    }
}

/// Which of the two tokens: part of the authenticated header, so one kind
/// never opens as the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// The long token (`'L'`), checked against the session store.
    Long,
    /// The short token (`'S'`), a stateless cache of a long check.
    Short,
    /// A device-bound-session challenge (`'C'`): a session and an expiry,
    /// sealed so that any node can check a proof's `jti` without storing
    /// what it handed out.
    Challenge,
}

impl TokenKind {
    /// The header byte.
    pub fn byte(self) -> u8 {
        match self {
            TokenKind::Long => b'L',
            TokenKind::Short => b'S',
            TokenKind::Challenge => b'C',
        }
    }

    /// The kind a header byte names, if any.
    pub fn from_byte(b: u8) -> Option<TokenKind> {
        match b {
            b'L' => Some(TokenKind::Long),
            b'S' => Some(TokenKind::Short),
            b'C' => Some(TokenKind::Challenge),
            _ => None,
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenKind::Long => "long",
            TokenKind::Short => "short",
            TokenKind::Challenge => "challenge",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_length_bounds() {
        assert!(matches!(UserId::new(""), Err(TokenError::UidLength(0))));
        assert!(UserId::new(&"x".repeat(64)).is_ok());
        assert!(matches!(UserId::new(&"x".repeat(65)), Err(TokenError::UidLength(65))));
        assert!(matches!(UserId::from_bytes(&[0xff]), Err(TokenError::UidUtf8)));
        assert_eq!(
            UserId::new("用户42").map(|u| u.to_string()).ok().as_deref(),
            Some("用户42")
        );
    }

    #[test]
    fn sid_text_round_trip_and_rejects_bad_text() {
        let sid = Sid([7; 16]);
        assert_eq!(sid.to_text().len(), 22);
        assert_eq!(sid.write_text(&mut [0; 22]), sid.to_text());
        assert_eq!(sid.to_text().parse::<Sid>().ok(), Some(sid));
        for bad in ["", "short", "!!!!!!!!!!!!!!!!!!!!!!", "AAAAAAAAAAAAAAAAAAAAAAA"] {
            assert!(matches!(bad.parse::<Sid>(), Err(TokenError::BadSid)), "{bad}");
        }
    }
}
