//! The two cookies of PC web clients, and the CSRF origin check for
//! requests that carry them.

use axum::http::{HeaderMap, HeaderValue, header};

use super::error::{ApiError, ErrorCode};
use crate::config::{CookiesConfig, SameSite, normalize_origin};
use crate::time::UnixMs;

/// The values of the cookies `a` and `b` in the request, in one pass over
/// the Cookie headers (the verify hot path). Values that are not text
/// count as absent. A name sent twice is an error (the name is returned):
/// browsers send both when a sibling subdomain planted a cookie of the same
/// name (cookie tossing), and no rule says which one is ours.
pub fn get_two<'h, 'n>(
    headers: &'h HeaderMap,
    a: &'n str,
    b: &'n str,
) -> Result<(Option<&'h str>, Option<&'h str>), &'n str> {
    let (mut va, mut vb) = (None, None);
    for (k, v) in headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
    {
        let (slot, name) = if k == a {
            (&mut va, a)
        } else if k == b {
            (&mut vb, b)
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(name);
        }
        *slot = Some(v.trim_matches('"'));
    }
    Ok((va, vb))
}

/// The short and the long token cookie of a request ([`get_two`]); a
/// name sent twice is a 401 `invalid` that says what to do.
pub fn token_cookies<'h>(
    headers: &'h HeaderMap,
    c: &CookiesConfig,
) -> Result<(Option<&'h str>, Option<&'h str>), ApiError> {
    get_two(headers, c.short_name(), c.long_name()).map_err(|name| {
        ApiError::new(
            ErrorCode::Invalid,
            format!("the cookie {name} is sent more than once (a cookie planted by another site?); clear this site's cookies and log in again"),
        )
    })
}

/// A `Set-Cookie` value for `name=value`, living until `expires`.
/// `persistent = false` ("remember me" off): a browser-session cookie,
/// without `Max-Age`, gone when the browser closes; the token inside still
/// expires on its own.
pub fn set(
    c: &CookiesConfig,
    name: &str,
    value: &str,
    expires: UnixMs,
    now: UnixMs,
    persistent: bool,
) -> Option<HeaderValue> {
    if !persistent {
        return HeaderValue::from_str(&format!("{name}={value}; {}", attributes(c))).ok();
    }
    let max_age = expires.since(now).as_secs();
    HeaderValue::from_str(&format!("{name}={value}; Max-Age={max_age}; {}", attributes(c))).ok()
}

/// A `Set-Cookie` value that deletes `name`.
pub fn clear(c: &CookiesConfig, name: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{name}=; Max-Age=0; {}", attributes(c))).ok()
}

/// The attributes every token cookie carries (`Set-Cookie` adds `Max-Age`
/// to persistent ones): what a device-bound session's credential declares.
pub fn attributes(c: &CookiesConfig) -> String {
    let same_site = match c.same_site {
        SameSite::Lax => "Lax",
        SameSite::Strict => "Strict",
        SameSite::None => "None",
    };
    let secure = if c.secure { "; Secure" } else { "" };
    format!("Path=/; HttpOnly; SameSite={same_site}{secure}")
}

/// The origins allowed to send state-changing requests with cookies: the
/// service's own (`server.public_origin`, else the listen address; for a
/// loopback address also `localhost`) and `cookies.allowed_origins`. Built
/// once at start; the request's `Host` header is never trusted for this.
#[derive(Clone, Debug, Default)]
pub struct Origins(Vec<String>);

impl Origins {
    /// From the configuration (`server.listen` must be the bound address).
    pub fn from_config(c: &crate::config::Config) -> Origins {
        let mut list = Vec::new();
        match &c.server.public_origin {
            Some(o) => list.extend(normalize_origin(o)),
            None => {
                let a = c.server.listen;
                if !a.ip().is_unspecified() {
                    list.extend(normalize_origin(&format!("http://{a}")));
                }
                if a.ip().is_loopback() {
                    list.push(format!("http://localhost:{}", a.port()));
                }
            }
        }
        list.extend(c.cookies.allowed_origins.iter().filter_map(|o| normalize_origin(o)));
        Origins(list)
    }

    /// Whether `origin` (as sent in `Origin`, or a `Referer` URL) is one of them.
    pub fn allows(&self, origin: &str) -> bool {
        normalize_origin(origin).is_some_and(|o| self.0.contains(&o))
    }
}

/// CSRF defence for state-changing requests that carry cookies: besides
/// `SameSite`, the request must name its origin (`Origin`, else `Referer`),
/// and that origin (scheme, host and port) must be one of `origins`.
/// `strict` = a missing origin is refused too: requests that cookies
/// authenticate, and form-encoded logins (a cross-site form on an old
/// browser sends neither header). Otherwise (a JSON login from a
/// non-browser client) only a foreign origin is refused.
pub fn check_origin(headers: &HeaderMap, origins: &Origins, strict: bool) -> Result<(), ApiError> {
    let text = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    let origin = text(header::ORIGIN).or_else(|| text(header::REFERER));
    let deny = |why: &str| Err(ApiError::new(ErrorCode::Csrf, why.to_string()));
    match origin {
        None if strict => deny("this request must carry an Origin or Referer header (CSRF protection)"),
        None => Ok(()),
        Some(o) if origins.allows(o) => Ok(()),
        Some(_) => deny(
            "the request's origin is not this service (server.public_origin) nor one listed in cookies.allowed_origins",
        ),
    }
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
        assert_eq!(get_two(&h, "tt_long", "tt_short"), Ok((Some("LLL"), Some("SSS"))));
        assert_eq!(get_two(&h, "tt", "tt_short"), Ok((None, Some("SSS"))));
        assert_eq!(get_two(&h, "tt", "x"), Ok((None, None)));
    }

    #[test]
    fn a_cookie_name_sent_twice_is_refused() {
        let h = headers(&[("cookie", "tt_short=B; tt_long=L"), ("cookie", "tt_short=A")]);
        assert_eq!(get_two(&h, "tt_long", "tt_short"), Err("tt_short"));
        assert_eq!(get_two(&h, "tt_short", "tt_long"), Err("tt_short"));
        assert_eq!(get_two(&h, "tt_long", "x"), Ok((Some("L"), None)));
    }

    #[test]
    fn origin_check() {
        let mut config = crate::config::Config::for_test();
        config.server.public_origin = Some("https://auth.example.com".into());
        config.cookies.allowed_origins = vec!["https://app.example.com".into()];
        let o = Origins::from_config(&config);
        let ok = |h: &[(&'static str, &str)], strict| check_origin(&headers(h), &o, strict).is_ok();
        assert!(ok(&[("origin", "https://auth.example.com")], true));
        assert!(ok(&[("origin", "HTTPS://Auth.Example.com:443")], true));
        assert!(ok(&[("origin", "https://app.example.com")], true));
        assert!(ok(&[("referer", "https://auth.example.com/x?y")], true));
        assert!(!ok(&[("origin", "https://evil.example")], true));
        assert!(!ok(&[("origin", "null")], true));
        assert!(!ok(&[("origin", "http://auth.example.com")], true), "scheme counts");
        assert!(!ok(&[("origin", "ftp://auth.example.com")], true));
        assert!(!ok(&[("origin", "https://auth.example.com:8443")], true), "port counts");
        assert!(
            !ok(&[("host", "evil.example"), ("origin", "https://evil.example")], true),
            "the Host header is not trusted"
        );
        assert!(!ok(&[], true));
        assert!(ok(&[], false), "JSON login from a non-browser client");
        assert!(!ok(&[("origin", "https://evil.example")], false));
    }

    #[test]
    fn own_origin_from_the_listen_address() {
        let mut config = crate::config::Config::for_test();
        config.server.listen = "127.0.0.1:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        let o = Origins::from_config(&config);
        assert!(o.allows("http://127.0.0.1:8080"));
        assert!(o.allows("http://localhost:8080"));
        assert!(!o.allows("http://127.0.0.1:8081"));
        assert!(!o.allows("https://127.0.0.1:8080"));
        config.server.listen = "0.0.0.0:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(!Origins::from_config(&config).allows("http://0.0.0.0:8080"));
    }
}
