//! Test support: real redis-server processes the tests start themselves.

pub mod node;
pub mod redis_server;
pub mod server;
pub mod tls;
pub mod webhook;

/// Every `Set-Cookie` of a response, whole.
pub fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("Set-Cookie is text").to_string())
        .collect()
}

/// A `Cookie` header carrying every cookie a response set (name=value).
pub fn jar_of(r: &reqwest::Response) -> String {
    set_cookies(r)
        .iter()
        .filter_map(|c| c.split(';').next().map(str::to_string))
        .collect::<Vec<_>>()
        .join("; ")
}
