//! The two cookies of PC web clients, and the CSRF origin check for
//! requests that carry them.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};

use super::error::ApiError;
use crate::config::{CookiesConfig, SameSite};
use crate::time::UnixMs;

/// The value of cookie `name` in the request, if present. Values that are
/// not text count as absent.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// A `Set-Cookie` value for `name=value`, living until `expires`.
pub fn set(c: &CookiesConfig, name: &str, value: &str, expires: UnixMs, now: UnixMs) -> Option<HeaderValue> {
    let max_age = expires.since(now).as_secs();
    HeaderValue::from_str(&format!("{name}={value}; Max-Age={max_age}; {}", attributes(c))).ok()
}

/// A `Set-Cookie` value that deletes `name`.
pub fn clear(c: &CookiesConfig, name: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{name}=; Max-Age=0; {}", attributes(c))).ok()
}

fn attributes(c: &CookiesConfig) -> String {
    let same_site = match c.same_site {
        SameSite::Lax => "Lax",
        SameSite::Strict => "Strict",
        SameSite::None => "None",
    };
    let secure = if c.secure { "; Secure" } else { "" };
    format!("Path=/; HttpOnly; SameSite={same_site}{secure}")
}

/// The origin (`scheme://host[:port]`) of a URL, for the `Referer` fallback.
fn origin_of(url: &str) -> Option<&str> {
    let scheme_end = url.find("://")? + 3;
    let rest = &url[scheme_end..];
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&url[..scheme_end + host_end])
}

/// CSRF defence for state-changing requests that carry cookies: besides
/// `SameSite`, the request must name its origin (`Origin`, else `Referer`),
/// and that origin must be the request's own host or one listed in
/// `cookies.allowed_origins`. `strict` = the cookies authenticate the
/// request, so a missing origin is refused too; otherwise (login) only a
/// foreign origin is.
pub fn check_origin(headers: &HeaderMap, c: &CookiesConfig, strict: bool) -> Result<(), ApiError> {
    let text = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    let origin = text(header::ORIGIN).or_else(|| text(header::REFERER).and_then(origin_of));
    let deny = |why: &str| Err(ApiError::new(StatusCode::FORBIDDEN, "csrf", why.to_string()));
    let Some(origin) = origin else {
        return if strict {
            deny("cookie-authenticated requests must carry an Origin or Referer header")
        } else {
            Ok(())
        };
    };
    if c.allowed_origins.iter().any(|o| o.trim_end_matches('/') == origin) {
        return Ok(());
    }
    let host = text(header::HOST).unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        return Ok(());
    }
    deny("the request's origin is not this site nor one listed in cookies.allowed_origins")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")));
        }
        h
    }

    #[test]
    fn reads_cookies_among_others() {
        let h = headers(&[("cookie", "a=1; tt_long=LLL"), ("cookie", "tt_short=SSS")]);
        assert_eq!(get(&h, "tt_long"), Some("LLL"));
        assert_eq!(get(&h, "tt_short"), Some("SSS"));
        assert_eq!(get(&h, "tt"), None);
    }

    #[test]
    fn origin_check() {
        let c = CookiesConfig {
            allowed_origins: vec!["https://app.example.com".into()],
            ..Default::default()
        };
        let ok = |h: &[(&'static str, &str)], strict| check_origin(&headers(h), &c, strict).is_ok();
        assert!(ok(
            &[("host", "auth.example.com"), ("origin", "https://auth.example.com")],
            true
        ));
        assert!(ok(
            &[("host", "auth.example.com"), ("origin", "https://app.example.com")],
            true
        ));
        assert!(ok(
            &[
                ("host", "auth.example.com"),
                ("referer", "https://auth.example.com/x?y")
            ],
            true
        ));
        assert!(!ok(
            &[("host", "auth.example.com"), ("origin", "https://evil.example")],
            true
        ));
        assert!(!ok(&[("host", "auth.example.com"), ("origin", "null")], true));
        assert!(!ok(&[("host", "auth.example.com")], true));
        assert!(
            ok(&[("host", "auth.example.com")], false),
            "login from a non-browser client"
        );
        assert!(!ok(
            &[("host", "auth.example.com"), ("origin", "https://evil.example")],
            false
        ));
    }
}
