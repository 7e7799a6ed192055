//! The client's address, one extractor for throttles, code-login limits,
//! session metadata and logs: the TCP peer, unless the peer is one of
//! `server.trusted_proxies`; then the rightmost address of `Forwarded:
//! for=` (RFC 7239, when present) or else `X-Forwarded-For` that is not
//! itself a trusted proxy. From any other peer both headers are ignored, so
//! a client cannot choose its own address. A header that cannot be read is
//! never the client's problem: the peer address is used and the metric
//! `twintoken_forwarded_malformed_total` counts it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, header};

use super::AppState;
use super::error::ApiError;
use crate::config::Cidr;

/// Hops walked from the right at most; a longer chain of trusted proxies
/// counts as malformed.
pub const MAX_HOPS: usize = 32;

/// The trusted proxies and what their headers did.
#[derive(Debug, Default)]
pub struct Proxies {
    trusted: Vec<Cidr>,
    malformed: AtomicU64,
}

impl Proxies {
    /// Proxies in `trusted`.
    pub fn new(trusted: Vec<Cidr>) -> Proxies {
        Proxies {
            trusted,
            malformed: AtomicU64::new(0),
        }
    }

    /// Forwarding headers from trusted proxies that could not be read.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The client address of a request from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.trusted.is_empty() || !self.trusts(peer) {
            return peer;
        }
        match self.walk(headers) {
            Ok(Some(ip)) => ip,
            Ok(None) => peer,
            Err(()) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "unreadable X-Forwarded-For / Forwarded from a trusted proxy; using the peer address");
                peer
            }
        }
    }

    /// `Ok(None)`: no forwarding header; `Err`: one that cannot be read.
    fn walk(&self, headers: &HeaderMap) -> Result<Option<IpAddr>, ()> {
        let forwarded = values(headers, &header::FORWARDED)?;
        let hops: Vec<&str> = if !forwarded.is_empty() {
            forwarded
                .iter()
                .flat_map(|v| v.split(','))
                .map(|element| {
                    element
                        .split(';')
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                        .map_or("", |(_, v)| v.trim())
                })
                .collect()
        } else {
            values(headers, &HeaderName::from_static("x-forwarded-for"))?
                .iter()
                .flat_map(|v| v.split(','))
                .collect()
        };
        if hops.is_empty() {
            return Ok(None);
        }
        let mut client = None;
        for hop in hops.iter().rev().take(MAX_HOPS) {
            let ip = parse_hop(hop).ok_or(())?;
            client = Some(ip);
            if !self.trusts(ip) {
                return Ok(client);
            }
        }
        // Every hop walked is a trusted proxy: the leftmost is the client,
        // unless the chain was longer than we walk.
        if hops.len() > MAX_HOPS { Err(()) } else { Ok(client) }
    }
}

fn values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Vec<&'a str>, ()> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().map_err(|_| ()))
        .collect()
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's IPv4 peers) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One hop: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711`, optionally quoted (`Forwarded` quotes IPv6).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let h = hop.trim().trim_matches('"');
    if let Some(rest) = h.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok())) {
            return None;
        }
        return ip
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|v6| canonical(IpAddr::V6(v6)));
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    let (ip, port) = h.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The client's address (loopback when served without connection info,
/// as in tests that call the router directly).
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<Arc<AppState>> for ClientAddr {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        Ok(ClientAddr(state.proxies.client(peer, &parts.headers)))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn proxies(list: &[&str]) -> Proxies {
        Proxies::new(
            list.iter()
                .map(|s| s.parse().unwrap_or_else(|e| panic!("{e}")))
                .collect(),
        )
    }

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")));
        }
        m
    }

    #[test]
    fn untrusted_peers_cannot_choose_their_address() {
        let p = proxies(&["10.0.0.0/8"]);
        let spoof = h(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        assert_eq!(p.client(ip("203.0.113.9"), &spoof), ip("203.0.113.9"));
        assert_eq!(proxies(&[]).client(ip("10.0.0.1"), &spoof), ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let p = proxies(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let xff = h(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(
            p.client(ip("10.0.0.2"), &xff),
            ip("198.51.100.7"),
            "a client-supplied 6.6.6.6 is ignored"
        );
        let split = h(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.7:5555")]);
        assert_eq!(p.client(ip("10.0.0.2"), &split), ip("198.51.100.7"));
        let v6 = h(&[("x-forwarded-for", "[2001:db8:1::5]:443, 2001:db8:ffff::1")]);
        assert_eq!(
            p.client(ip("::ffff:10.0.0.2"), &v6),
            ip("2001:db8:1::5"),
            "IPv6 with port; mapped peer"
        );
        let fwd = h(&[
            ("forwarded", "for=6.6.6.6;proto=https, for=\"[2001:db8:1::7]:4711\""),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        assert_eq!(p.client(ip("10.0.0.2"), &fwd), ip("2001:db8:1::7"), "Forwarded wins");
        let all_trusted = h(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(p.client(ip("10.0.0.2"), &all_trusted), ip("10.9.9.9"));
        assert_eq!(p.malformed(), 0);
    }

    #[test]
    fn unreadable_headers_fall_back_to_the_peer_and_are_counted() {
        let p = proxies(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        let long = vec!["10.0.0.3"; MAX_HOPS + 1].join(", ");
        for bad in [
            h(&[("x-forwarded-for", "not-an-ip")]),
            h(&[("x-forwarded-for", "1.2.3.4, ")]),
            h(&[("x-forwarded-for", "[::1]:notaport")]),
            h(&[("forwarded", "for=unknown")]),
            h(&[("forwarded", "proto=https")]),
            h(&[("x-forwarded-for", &long)]),
        ] {
            assert_eq!(p.client(peer, &bad), peer, "{bad:?}");
        }
        assert_eq!(p.malformed(), 6);
        assert_eq!(
            p.client(peer, &HeaderMap::new()),
            peer,
            "no header: the peer, not malformed"
        );
        assert_eq!(p.malformed(), 6);
    }
}
