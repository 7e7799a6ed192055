//! The client's address, one extractor for throttles, code-login limits,
//! session metadata and logs: the TCP peer, unless the peer is one of
//! `server.trusted_proxies`; then the rightmost address of the one
//! forwarding header the operator chose (`server.forwarded_header`:
//! `X-Forwarded-For`, `Forwarded: for=` or `X-Real-IP`) that is not itself a
//! trusted proxy. Every other forwarding header is ignored: proxies append
//! to or set their own header and pass the others through untouched, so a
//! header the proxy does not manage is the client's own word.
//!
//! The header is read as bytes. Entries left of the client's (the part a
//! client could have sent itself) are never parsed, so client garbage
//! there changes nothing; an entry a trusted proxy wrote that cannot be read
//! is a broken proxy set-up and the request gets 400 (counted by
//! `twintoken_forwarded_malformed_total`), never the proxy's own address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};

use super::AppState;
use super::error::{ApiError, ErrorCode};
use crate::config::{Cidr, ForwardedHeader};

/// Hops walked from the right at most; a longer chain of trusted proxies
/// counts as unreadable.
pub const MAX_HOPS: usize = 32;

/// A forwarding header from a trusted proxy that cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub struct Unreadable;

/// The trusted proxies, the header they set, and what their headers did.
#[derive(Debug)]
pub struct Proxies {
    trusted: Vec<Cidr>,
    header: ForwardedHeader,
    name: HeaderName,
    malformed: AtomicU64,
}

impl Proxies {
    /// Proxies in `trusted` that carry the client's address in `header`.
    pub fn new(trusted: Vec<Cidr>, header: ForwardedHeader) -> Proxies {
        Proxies {
            trusted,
            header,
            name: HeaderName::from_static(header.name()),
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
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, Unreadable> {
        let peer = canonical(peer);
        if self.trusted.is_empty() || !self.trusts(peer) {
            return Ok(peer);
        }
        match self.walk(headers) {
            Ok(ip) => Ok(ip.unwrap_or(peer)),
            Err(e) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, header = self.header.name(), "unreadable forwarding header from a trusted proxy");
                Err(e)
            }
        }
    }

    /// `Ok(None)`: no forwarding header.
    fn walk(&self, headers: &HeaderMap) -> Result<Option<IpAddr>, Unreadable> {
        // Every line of the header, in order, split into hops: the rightmost
        // is the one the nearest proxy wrote.
        let hops: Vec<&[u8]> = headers
            .get_all(&self.name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .collect();
        if hops.is_empty() {
            return Ok(None);
        }
        if self.header == ForwardedHeader::XRealIp && hops.len() > 1 {
            return Err(Unreadable);
        }
        let mut client = None;
        for hop in hops.iter().rev().take(MAX_HOPS) {
            let ip = self.parse(hop).ok_or(Unreadable)?;
            client = Some(ip);
            if !self.trusts(ip) {
                return Ok(client);
            }
        }
        // Every hop walked is a trusted proxy: the leftmost is the client,
        // unless the chain was longer than we walk.
        if hops.len() > MAX_HOPS {
            Err(Unreadable)
        } else {
            Ok(client)
        }
    }

    /// One entry of the chosen header.
    fn parse(&self, hop: &[u8]) -> Option<IpAddr> {
        let hop = std::str::from_utf8(hop).ok()?;
        match self.header {
            ForwardedHeader::XForwardedFor | ForwardedHeader::XRealIp => parse_hop(hop),
            ForwardedHeader::Forwarded => hop
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, v)| parse_hop(v)),
        }
    }
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
        state
            .proxies
            .client(peer, &parts.headers)
            .map(ClientAddr)
            .map_err(|Unreadable| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "the {} header from the trusted proxy cannot be read (check the proxy's configuration)",
                        state.proxies.header.name()
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn proxies(list: &[&str], header: ForwardedHeader) -> Proxies {
        Proxies::new(
            list.iter()
                .map(|s| s.parse().unwrap_or_else(|e| panic!("{e}")))
                .collect(),
            header,
        )
    }

    fn xff(list: &[&str]) -> Proxies {
        proxies(list, ForwardedHeader::XForwardedFor)
    }

    fn h(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_bytes(v).unwrap_or_else(|e| panic!("{e}")));
        }
        m
    }

    #[test]
    fn untrusted_peers_cannot_choose_their_address() {
        let spoof = h(&[
            ("x-forwarded-for", b"1.2.3.4"),
            ("forwarded", b"for=5.6.7.8"),
            ("x-real-ip", b"9.9.9.9"),
        ]);
        for header in [
            ForwardedHeader::XForwardedFor,
            ForwardedHeader::Forwarded,
            ForwardedHeader::XRealIp,
        ] {
            let p = proxies(&["10.0.0.0/8"], header);
            assert_eq!(p.client(ip("203.0.113.9"), &spoof), Ok(ip("203.0.113.9")));
            assert_eq!(proxies(&[], header).client(ip("10.0.0.1"), &spoof), Ok(ip("10.0.0.1")));
        }
    }

    /// The second review: nginx appends to `X-Forwarded-For` and passes the
    /// client's own `Forwarded` through; `Forwarded` used to win. Only the
    /// configured header counts.
    #[test]
    fn only_the_configured_header_is_believed() {
        let both = h(&[("forwarded", b"for=203.0.113.77"), ("x-forwarded-for", b"198.51.100.7")]);
        let peer = ip("10.0.0.2");
        assert_eq!(xff(&["10.0.0.0/8"]).client(peer, &both), Ok(ip("198.51.100.7")));
        let fwd = proxies(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        assert_eq!(fwd.client(peer, &both), Ok(ip("203.0.113.77")));
        let real = proxies(&["10.0.0.0/8"], ForwardedHeader::XRealIp);
        assert_eq!(real.client(peer, &both), Ok(peer), "no X-Real-IP: the peer");
        let with_real = h(&[("x-real-ip", b"198.51.100.9"), ("x-forwarded-for", b"6.6.6.6")]);
        assert_eq!(real.client(peer, &with_real), Ok(ip("198.51.100.9")));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let p = xff(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let chain = h(&[("x-forwarded-for", b"6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(
            p.client(ip("10.0.0.2"), &chain),
            Ok(ip("198.51.100.7")),
            "a client-supplied 6.6.6.6 is ignored"
        );
        let split = h(&[
            ("x-forwarded-for", b"6.6.6.6"),
            ("x-forwarded-for", b"198.51.100.7:5555"),
        ]);
        assert_eq!(p.client(ip("10.0.0.2"), &split), Ok(ip("198.51.100.7")));
        let v6 = h(&[("x-forwarded-for", b"[2001:db8:1::5]:443, 2001:db8:ffff::1")]);
        assert_eq!(
            p.client(ip("::ffff:10.0.0.2"), &v6),
            Ok(ip("2001:db8:1::5")),
            "IPv6 with port; mapped peer"
        );
        let fwd = h(&[("forwarded", b"for=6.6.6.6;proto=https, for=\"[2001:db8:1::7]:4711\"")]);
        let f = proxies(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        assert_eq!(f.client(ip("10.0.0.2"), &fwd), Ok(ip("2001:db8:1::7")));
        let all_trusted = h(&[("x-forwarded-for", b"10.9.9.9, 10.1.1.1")]);
        assert_eq!(p.client(ip("10.0.0.2"), &all_trusted), Ok(ip("10.9.9.9")));
        assert_eq!(p.malformed(), 0);
    }

    /// Client garbage left of the client's entry is never parsed (non-ASCII
    /// bytes included); what the trusted proxy wrote must be readable.
    #[test]
    fn client_garbage_is_ignored_and_an_unreadable_proxy_entry_is_refused() {
        let p = xff(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        let garbage = h(&[("x-forwarded-for", b"\xff\xfe not-an-ip, [::1]:x, 198.51.100.7")]);
        assert_eq!(p.client(peer, &garbage), Ok(ip("198.51.100.7")));
        let non_ascii_line = h(&[
            ("x-forwarded-for", b"caf\xc3\xa9"),
            ("x-forwarded-for", b"198.51.100.8"),
        ]);
        assert_eq!(p.client(peer, &non_ascii_line), Ok(ip("198.51.100.8")));
        let long = vec!["10.0.0.3"; MAX_HOPS + 1].join(", ");
        for bad in [
            h(&[("x-forwarded-for", b"not-an-ip")]),
            h(&[("x-forwarded-for", b"1.2.3.4, ")]),
            h(&[("x-forwarded-for", b"[::1]:notaport")]),
            h(&[("x-forwarded-for", b"198.51.100.7, \xff")]),
            h(&[("x-forwarded-for", long.as_bytes())]),
        ] {
            assert_eq!(p.client(peer, &bad), Err(Unreadable), "{bad:?}");
        }
        let f = proxies(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        assert_eq!(f.client(peer, &h(&[("forwarded", b"for=unknown")])), Err(Unreadable));
        assert_eq!(f.client(peer, &h(&[("forwarded", b"proto=https")])), Err(Unreadable));
        let r = proxies(&["10.0.0.0/8"], ForwardedHeader::XRealIp);
        assert_eq!(
            r.client(peer, &h(&[("x-real-ip", b"1.2.3.4, 5.6.7.8")])),
            Err(Unreadable)
        );
        assert_eq!(p.malformed() + f.malformed() + r.malformed(), 8);
        assert_eq!(p.client(peer, &HeaderMap::new()), Ok(peer), "no header: the peer");
    }
}
