//! A secret configuration value (the admin token, webhook secrets): wiped
//! from memory when dropped, never printed (`Debug` and serialization say
//! `[redacted]`), and only readable through [`Secret::expose`], so that no
//! code turns it into a plain `String` by accident.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// A secret string from the configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// The secret itself, for the one place that uses it (a comparison, an
    /// HMAC key). Never log or copy it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its length in bytes (for validation messages).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Why it cannot be a secret at all, when it cannot: shorter than `min`
    /// bytes, blank, or padded with white space (a copy-paste accident that
    /// makes the value differ from what the other side holds).
    pub fn weakness(&self, min: usize) -> Option<String> {
        let s = self.expose();
        if s.trim().is_empty() {
            Some(format!("is blank ({} bytes of white space)", s.len()))
        } else if s.trim() != s {
            Some("starts or ends with white space (a copy-paste accident?); remove it".into())
        } else if s.len() < min {
            Some(format!("is {} bytes long; it must be at least {min}", s.len()))
        } else {
            None
        }
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(Zeroizing::new(s))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(Zeroizing::new(s.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::from)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// `url` with its password replaced by `***` (for logs and messages).
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((cred, host)) => {
            let user = cred.split_once(':').map_or(cred, |(u, _)| u);
            let masked = if cred.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_printed() {
        let s = Secret::from("hunter2-hunter2-hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2-hunter2-hunter2");
    }

    #[test]
    fn blank_padded_and_short_secrets_are_weak() {
        assert!(
            Secret::from(" ".repeat(40))
                .weakness(16)
                .is_some_and(|w| w.contains("blank"))
        );
        assert!(
            Secret::from(" ".repeat(16))
                .weakness(16)
                .is_some_and(|w| w.contains("blank"))
        );
        let padded = format!(" {} ", "a".repeat(32));
        assert!(
            Secret::from(padded)
                .weakness(16)
                .is_some_and(|w| w.contains("white space"))
        );
        assert!(
            Secret::from("short")
                .weakness(16)
                .is_some_and(|w| w.contains("at least 16"))
        );
        assert_eq!(Secret::from("a".repeat(16)).weakness(16), None);
    }
}
