//! Constant-time comparison, for secrets compared with attacker input
//! (the admin token, one-time-code digests, webhook signatures).

/// Whether `a == b`, in time that depends only on the lengths, not on
/// where the inputs differ.
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Whether a secret given by a client equals the configured one, in time
/// that depends on neither where they differ nor how long the configured
/// one is: both are hashed (SHA-256) and the digests compared. For bearer
/// secrets (the admin token), where [`eq`]'s early length check would tell
/// an attacker the secret's length.
pub fn eq_secret(given: &[u8], expected: &[u8]) -> bool {
    use sha2::Digest as _;
    eq(&sha2::Sha256::digest(given), &sha2::Sha256::digest(expected))
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_by_digest() {
        assert!(super::eq_secret(b"an admin token", b"an admin token"));
        assert!(!super::eq_secret(b"an admin token", b"an admin tokeN"));
        assert!(!super::eq_secret(b"an admin", b"an admin token"));
        assert!(!super::eq_secret(b"", b"an admin token"));
    }

    #[test]
    fn is_equality() {
        assert!(super::eq(b"abc", b"abc"));
        assert!(!super::eq(b"abc", b"abd"));
        assert!(!super::eq(b"abc", b"ab"));
        assert!(super::eq(b"", b""));
    }
}
