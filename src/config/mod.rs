//! Configuration: one typed struct ([`Config`]), every key optional, layered
//! as TOML file -> environment (`TWINTOKEN_<SECTION>__<KEY>`) -> flags.
//!
//! Unknown keys, bad values and unreadable files are errors that name the
//! key (and whether it came from the file, a variable or a flag). This
//! module reads the environment only through the iterator it is handed, so
//! tests never mutate the process environment.

mod duration;
mod load;
mod secret;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use load::{ConfigError, Override};
pub use secret::{Secret, mask_url};

/// Shortest admin token accepted (bytes): the admin API can issue sessions
/// for any user.
pub const MIN_ADMIN_TOKEN: usize = 32;
/// Shortest webhook signing secret accepted (bytes).
pub const MIN_WEBHOOK_SECRET: usize = 16;

/// The whole configuration. See `README.md` for every key and its default.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[keys]`
    pub keys: KeysConfig,
    /// `[users]`
    pub users: UsersConfig,
    /// `[tokens]`
    pub tokens: TokensConfig,
    /// `[login]`
    pub login: LoginConfig,
    /// `[code_login]`
    pub code_login: CodeLoginConfig,
    /// `[cookies]`
    pub cookies: CookiesConfig,
    /// `[throttle]`
    pub throttle: ThrottleConfig,
    /// `[events]`
    pub events: EventsConfig,
    /// `[dbsc]`
    pub dbsc: DbscConfig,
}

/// `[dbsc]`: device-bound sessions (W3C Device Bound Session Credentials).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbscConfig {
    /// Offer registration and answer `/v1/dbsc/*`; unset = on when
    /// `cookies.secure` is (browsers use DBSC only over HTTPS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// What a refresh proof signed by another key than the session's does.
    pub on_bad_proof: OnBadProof,
    /// How long a challenge (in `Secure-Session-Registration` and
    /// `Secure-Session-Challenge`) is accepted.
    #[serde(with = "duration")]
    pub challenge_ttl: Duration,
}

impl Default for DbscConfig {
    fn default() -> Self {
        DbscConfig {
            enabled: None,
            on_bad_proof: OnBadProof::Revoke,
            challenge_ttl: Duration::from_secs(300),
        }
    }
}

/// `dbsc.on_bad_proof`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadProof {
    /// End the session everywhere (its cookies were copied: theft).
    #[default]
    Revoke,
    /// Refuse the request only.
    Refuse,
}

impl Config {
    /// Whether device-bound sessions are on (`dbsc.enabled`, else
    /// `cookies.secure`).
    pub fn dbsc_enabled(&self) -> bool {
        self.dbsc.enabled.unwrap_or(self.cookies.secure)
    }
}

/// `[events]`: audit events (see `src/audit.rs`) also POSTed to a webhook,
/// one JSON object per request, signed like the code webhook.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Where events are POSTed (unset: only the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key for the `X-Twintoken-Signature` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<Secret>,
    /// How long one delivery may take.
    #[serde(with = "duration")]
    pub webhook_timeout: Duration,
    /// Events waiting for delivery; when full, new events are dropped (and
    /// counted) rather than slowing requests.
    pub queue: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            webhook_url: None,
            webhook_secret: None,
            webhook_timeout: Duration::from_secs(5),
            queue: 1024,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[server]`: where to listen and the admin API's credential.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Log format (`text` or `json`); the level comes from `RUST_LOG`
    /// (default `info`).
    pub log_format: LogFormat,
    /// Bearer token for the admin API; the admin API is off when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<Secret>,
    /// A client must send a request's headers within this time (slow-loris
    /// clients are disconnected).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Open connections at most; beyond it the server stops accepting until
    /// one closes.
    pub max_connections: u32,
    /// The origin browsers see this service at (`https://auth.example.com`),
    /// for the CSRF check of cookie-borne requests. Unset: the listen address
    /// (and `localhost` for a loopback one). Set it behind a proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_origin: Option<String>,
    /// CIDRs (or single addresses) of reverse proxies whose forwarding
    /// header (`forwarded_header`) is believed. Empty: the TCP peer is the
    /// client, and forwarding headers are ignored.
    pub trusted_proxies: Vec<String>,
    /// The one forwarding header believed from `trusted_proxies`; every
    /// other one is ignored, so a client cannot pass its own through a proxy
    /// that sets a different one.
    pub forwarded_header: ForwardedHeader,
    /// A request's body must be complete within this time from the end of
    /// its headers (HTTP/1.1 and HTTP/2): 408, or the stream is reset.
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// A second listener for `/metrics` and `/openapi.json`; when set, the
    /// main listener answers those paths with 404.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Which forwarding header carries the client's address from a trusted
/// proxy (`server.forwarded_header`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx's
    /// `$proxy_add_x_forwarded_for`).
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    #[serde(rename = "forwarded")]
    Forwarded,
    /// `X-Real-IP: client` (one address, set by the proxy).
    #[serde(rename = "x-real-ip")]
    XRealIp,
}

impl ForwardedHeader {
    /// The header's name, lowercase.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
            ForwardedHeader::XRealIp => "x-real-ip",
        }
    }
}

impl ServerConfig {
    /// `trusted_proxies`, parsed (entries that do not parse are refused by
    /// [`Config::validate`], and skipped here).
    pub fn trusted_proxies(&self) -> Vec<Cidr> {
        self.trusted_proxies.iter().filter_map(|s| s.parse().ok()).collect()
    }
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`), or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.trim().split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s.trim(), None),
        };
        let net: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR (e.g. \"10.0.0.0/8\", \"::1\")"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { net, bits })
    }
}

impl Cidr {
    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count as
    /// IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map_or(ip, V4),
            v4 => v4,
        };
        let mask = |bits: u8, width: u32| -> u128 {
            if bits == 0 {
                0
            } else {
                (!0u128) << (width - u32::from(bits))
            }
        };
        match (self.net, ip) {
            (V4(n), V4(a)) => {
                let m = mask(self.bits, 32);
                (u128::from(u32::from(n)) & m) == (u128::from(u32::from(a)) & m)
            }
            (V6(n), V6(a)) => {
                let m = mask(self.bits, 128);
                (u128::from(n) & m) == (u128::from(a) & m)
            }
            _ => false,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log_format: LogFormat::Text,
            admin_token: None,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            public_origin: None,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::XForwardedFor,
            body_read_timeout: Duration::from_secs(10),
            metrics_listen: None,
        }
    }
}

/// What to accept for long tokens while Redis is unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Long tokens that decrypt, are within their lifetimes and not revoked.
    #[default]
    Crypto,
    /// Only sessions this node confirmed with Redis within the fallback window.
    Known,
    /// None: long-token checks fail closed with 503.
    Off,
}

/// When the embedded store's journal reaches the disk (`store.fsync`).
/// Revocations (logout, kick, eviction, theft) and used one-time codes are
/// fsynced before they are acknowledged under either policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// Every change, before it is acknowledged.
    Always,
    /// Other changes (logins, renewals, rotations) within a second.
    #[default]
    Everysec,
}

/// `[store]`: the session store.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Redis URL(s): one for a single server, several for a cluster; unset
    /// selects the embedded in-memory store.
    #[serde(skip_serializing_if = "Option::is_none", with = "redis_urls")]
    pub redis: Option<Vec<Secret>>,
    /// Per Redis call.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Policy while Redis is unreachable.
    pub fallback: Fallback,
    /// How long a confirmation counts under `fallback = "known"`.
    #[serde(with = "duration")]
    pub fallback_window: Duration,
    /// The embedded store's directory (snapshot and journal), relative to
    /// the working directory; empty keeps it in memory only. Unused with
    /// Redis.
    pub path: PathBuf,
    /// When the embedded store's journal is fsynced.
    pub fsync: Fsync,
    /// CA certificates (PEM) that Redis servers' TLS certificates must
    /// chain to (`rediss://`); unset: the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; with `tls_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS; with `tls_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// Stop `serve` at start when a configured Redis node cannot be used
    /// (default: start anyway, serving by the fallback policy).
    pub require_on_start: bool,
    /// Redis Sentinel: the sentinels' URLs (instead of `redis`); their
    /// credentials are used for the data nodes too. One URL or a list.
    #[serde(skip_serializing_if = "Option::is_none", with = "redis_urls")]
    pub sentinels: Option<Vec<Secret>>,
    /// Redis Sentinel: the monitored group's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_master: Option<String>,
    /// With Redis: the file that keeps logouts and kicks made while Redis
    /// is unreachable (answered 202 pending) until Redis has them; relative
    /// to the working directory; empty: such requests answer 503. Unused
    /// by the embedded store.
    pub outbox: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            redis: None,
            timeout: Duration::from_millis(25),
            key_prefix: "tt:".into(),
            fallback: Fallback::Crypto,
            fallback_window: Duration::from_secs(600),
            path: PathBuf::from("sessions"),
            fsync: Fsync::Everysec,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            require_on_start: false,
            sentinels: None,
            sentinel_master: None,
            outbox: PathBuf::from("pending-revocations"),
        }
    }
}

/// `[keys]`: the keyring.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// The keyring directory.
    pub dir: PathBuf,
    /// How often a running server re-reads it (it also does on SIGHUP).
    #[serde(with = "duration")]
    pub reload_interval: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            dir: PathBuf::from("keys"),
            reload_interval: Duration::from_secs(5),
        }
    }
}

impl KeysConfig {
    /// How long `keys rotate` waits before the new key signs by default:
    /// two reload intervals, so every node has loaded it first.
    pub fn propagation_delay(&self) -> Duration {
        self.reload_interval.saturating_mul(2)
    }
}

/// `[users]`: the built-in user file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsersConfig {
    /// Path of the users file (argon2id hashes).
    pub file: PathBuf,
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig {
            file: PathBuf::from("users.toml"),
        }
    }
}

/// `[tokens]`: lifetimes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Life of a short token.
    #[serde(with = "duration")]
    pub short_ttl: Duration,
    /// Sliding idle lifetime of a session.
    #[serde(with = "duration")]
    pub long_idle_ttl: Duration,
    /// Absolute lifetime of a session, from its login; never extended.
    #[serde(with = "duration")]
    pub long_absolute_ttl: Duration,
    /// A verify within this much of the idle expiry extends it.
    #[serde(with = "duration")]
    pub renew_window: Duration,
    /// A long token older than this is rotated to a new sid.
    #[serde(with = "duration")]
    pub rotate_interval: Duration,
    /// How long the old sid stays valid after its successor was first used.
    #[serde(with = "duration")]
    pub rotate_grace: Duration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            short_ttl: Duration::from_secs(60),
            long_idle_ttl: Duration::from_secs(2 * 3600),
            long_absolute_ttl: Duration::from_secs(30 * 86400),
            renew_window: Duration::from_secs(30 * 60),
            rotate_interval: Duration::from_secs(86400),
            rotate_grace: Duration::from_secs(30),
        }
    }
}

/// How many sessions a user may hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginMode {
    /// Many sessions, capped at `max_sessions`.
    #[default]
    Multi,
    /// A new login revokes the user's other sessions.
    Single,
}

/// What happens to a login beyond a cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Revoke the oldest session to make room.
    #[default]
    EvictOldest,
    /// Refuse the new login.
    Reject,
}

/// `[login]`: login modes and caps.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// `multi` or `single`.
    pub mode: LoginMode,
    /// Cap on a user's sessions in `multi` mode.
    pub max_sessions: u32,
    /// Policy at a cap.
    pub overflow: Overflow,
    /// Per-device-type caps, e.g. `{ pc = 1, mobile = 1 }`.
    pub devices: BTreeMap<String, u32>,
    /// Store the client address and user agent with each session (shown
    /// by `GET /v1/sessions`).
    pub metadata: bool,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            mode: LoginMode::Multi,
            max_sessions: 10,
            overflow: Overflow::EvictOldest,
            devices: BTreeMap::new(),
            metadata: true,
        }
    }
}

/// How one-time codes reach the user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeSender {
    /// Written to the service log (development).
    #[default]
    Log,
    /// POSTed to `webhook_url`, signed with `webhook_secret`.
    Webhook,
}

/// `[code_login]`: one-time-code login.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodeLoginConfig {
    /// Whether the code endpoints exist.
    pub enabled: bool,
    /// `log` or `webhook`.
    pub sender: CodeSender,
    /// Where the webhook sender posts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key for the webhook signature header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<Secret>,
    /// Life of a code.
    #[serde(with = "duration")]
    pub code_ttl: Duration,
    /// Whether an unknown destination gets a new user.
    pub auto_register: bool,
    /// Wrong codes per (destination, client address) per throttle window;
    /// then that address waits (others are not affected).
    pub max_attempts: u32,
    /// Wrong guesses a code survives from all addresses together; the next
    /// wrong one burns it. Higher than `max_attempts`, so one stranger who
    /// knows the phone number cannot burn the owner's code.
    pub max_attempts_per_code: u32,
    /// Shortest time between two codes sent to one destination.
    #[serde(with = "duration")]
    pub resend_interval: Duration,
    /// Codes per destination per 24 hours.
    pub daily_limit: u32,
    /// Codes requested per client address per hour (per node).
    pub sends_per_address: u32,
    /// How long the webhook sender waits for the receiver.
    #[serde(with = "duration")]
    pub webhook_timeout: Duration,
}

impl Default for CodeLoginConfig {
    fn default() -> Self {
        CodeLoginConfig {
            enabled: false,
            sender: CodeSender::Log,
            webhook_url: None,
            webhook_secret: None,
            code_ttl: Duration::from_secs(120),
            auto_register: false,
            max_attempts: 5,
            max_attempts_per_code: 20,
            resend_interval: Duration::from_secs(60),
            daily_limit: 10,
            sends_per_address: 30,
            webhook_timeout: Duration::from_secs(5),
        }
    }
}

/// `[throttle]`: failed logins (password and one-time code), counted per
/// (account, client address), per client address, and per account, shared
/// by all nodes through the store. See `docs/security.md`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// The counting window; a throttled client waits until it ends.
    #[serde(with = "duration")]
    pub window: Duration,
    /// Failed logins for one user name from one client address.
    pub per_user_address: u32,
    /// Failed logins (any user name, and wrong codes) from one client address.
    pub per_address: u32,
    /// Failed logins for one user name from all addresses together beyond
    /// which the account counts as under a distributed attack.
    pub user_attack_threshold: u32,
    /// What each address gets for that user name while it is under attack
    /// (at least 1: an address that has not failed is never refused).
    pub per_user_address_under_attack: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            window: Duration::from_secs(300),
            per_user_address: 5,
            per_address: 20,
            user_attack_threshold: 50,
            per_user_address_under_attack: 2,
        }
    }
}

/// The cookies' `SameSite` attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    /// `Lax` (default).
    #[default]
    Lax,
    /// `Strict`.
    Strict,
    /// `None` (needs `secure = true`).
    None,
}

/// `[cookies]`: the two cookies of PC web clients.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CookiesConfig {
    /// Name of the long-token cookie; see [`CookiesConfig::long_name`] for
    /// the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_name: Option<String>,
    /// Name of the short-token cookie; see [`CookiesConfig::short_name`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_name: Option<String>,
    /// Whether cookies carry `Secure`.
    pub secure: bool,
    /// The `SameSite` attribute.
    pub same_site: SameSite,
    /// Extra origins allowed to send state-changing requests with cookies.
    pub allowed_origins: Vec<String>,
}

impl Default for CookiesConfig {
    fn default() -> Self {
        CookiesConfig {
            long_name: None,
            short_name: None,
            secure: true,
            same_site: SameSite::Lax,
            allowed_origins: Vec::new(),
        }
    }
}

impl CookiesConfig {
    /// The long-token cookie's name: as configured, else `__Host-tt_long`
    /// with `secure` (the prefix makes browsers refuse the cookie from a
    /// sibling subdomain or over plain HTTP: no cookie tossing), else
    /// `tt_long`.
    pub fn long_name(&self) -> &str {
        match (&self.long_name, self.secure) {
            (Some(n), _) => n,
            (None, true) => "__Host-tt_long",
            (None, false) => "tt_long",
        }
    }

    /// The short-token cookie's name (defaults as for [`Self::long_name`]).
    pub fn short_name(&self) -> &str {
        match (&self.short_name, self.secure) {
            (Some(n), _) => n,
            (None, true) => "__Host-tt_short",
            (None, false) => "tt_short",
        }
    }
}

impl Config {
    /// Defaults suited to tests: short lifetimes stay the defaults, cookies
    /// are not `Secure` (tests speak plain HTTP on loopback).
    pub fn for_test() -> Config {
        let mut c = Config::default();
        c.cookies.secure = false;
        // Tests keep the embedded store in memory unless they give it a
        // directory of their own.
        c.store.path = PathBuf::new();
        // Nor a logout outbox in the working directory: tests that want one
        // name a file of their own.
        c.store.outbox = PathBuf::new();
        c
    }

    /// Checks relations between keys that no single key's type can express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.tokens;
        let bad = |key: &str, message: String| {
            Err(ConfigError::Check {
                key: key.into(),
                message,
            })
        };
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        if t.short_ttl.is_zero() {
            return bad("tokens.short_ttl", "must be longer than zero".into());
        }
        if self.dbsc.challenge_ttl < Duration::from_secs(10) || self.dbsc.challenge_ttl > Duration::from_secs(3600) {
            return bad(
                "dbsc.challenge_ttl",
                format!(
                    "({}) must be between 10s and 1h (a browser answers a challenge at once, but may keep one a while)",
                    fmt(self.dbsc.challenge_ttl)
                ),
            );
        }
        if t.short_ttl >= t.long_idle_ttl {
            return bad(
                "tokens.short_ttl",
                format!(
                    "({}) must be shorter than tokens.long_idle_ttl ({})",
                    fmt(t.short_ttl),
                    fmt(t.long_idle_ttl)
                ),
            );
        }
        if t.long_idle_ttl > t.long_absolute_ttl {
            return bad(
                "tokens.long_idle_ttl",
                format!(
                    "({}) must not exceed tokens.long_absolute_ttl ({})",
                    fmt(t.long_idle_ttl),
                    fmt(t.long_absolute_ttl)
                ),
            );
        }
        if t.renew_window > t.long_idle_ttl {
            return bad(
                "tokens.renew_window",
                format!(
                    "({}) must not exceed tokens.long_idle_ttl ({})",
                    fmt(t.renew_window),
                    fmt(t.long_idle_ttl)
                ),
            );
        }
        if t.rotate_interval.is_zero() || t.rotate_grace >= t.rotate_interval {
            return bad(
                "tokens.rotate_grace",
                format!(
                    "({}) must be shorter than tokens.rotate_interval ({})",
                    fmt(t.rotate_grace),
                    fmt(t.rotate_interval)
                ),
            );
        }
        if self.store.timeout.is_zero() {
            return bad("store.timeout", "must be longer than zero".into());
        }
        if self.store.key_prefix.contains(['{', '}']) {
            return bad(
                "store.key_prefix",
                "must not contain '{' or '}' (they delimit the Redis Cluster hash tag)".into(),
            );
        }
        if let Some(urls) = &self.store.redis {
            if urls.is_empty() {
                return bad(
                    "store.redis",
                    "lists no URL; leave it unset for the embedded store".into(),
                );
            }
            if let Some(u) = urls
                .iter()
                .find(|u| !(u.expose().starts_with("redis://") || u.expose().starts_with("rediss://")))
            {
                let shown = mask_url(u.expose());
                return bad(
                    "store.redis",
                    format!("{shown:?} must start with redis:// or rediss://"),
                );
            }
        }
        if self.keys.reload_interval < Duration::from_millis(100) {
            return bad("keys.reload_interval", "must be at least 100ms".into());
        }
        if self.login.max_sessions == 0 {
            return bad("login.max_sessions", "must be at least 1".into());
        }
        if let Some((dev, _)) = self.login.devices.iter().find(|(d, n)| **n == 0 || !valid_device(d)) {
            return bad(
                "login.devices",
                format!("{dev:?}: device types are 1-16 characters of [a-z0-9_-] with a cap of at least 1"),
            );
        }
        for (key, name) in [
            ("cookies.long_name", self.cookies.long_name()),
            ("cookies.short_name", self.cookies.short_name()),
        ] {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                return bad(
                    key,
                    format!("{name:?} is not a valid cookie name (use letters, digits, '_', '-', '.')"),
                );
            }
            if (name.starts_with("__Host-") || name.starts_with("__Secure-")) && !self.cookies.secure {
                return bad(
                    key,
                    format!("{name:?}: browsers accept __Host- and __Secure- cookies only with cookies.secure = true"),
                );
            }
        }
        if self.cookies.long_name() == self.cookies.short_name() {
            return bad("cookies.short_name", "must differ from cookies.long_name".into());
        }
        if self.cookies.same_site == SameSite::None && !self.cookies.secure {
            return bad(
                "cookies.same_site",
                "\"none\" requires cookies.secure = true (browsers drop such cookies otherwise)".into(),
            );
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.server.header_read_timeout) {
            return bad("server.header_read_timeout", "must be between 100ms and 5m".into());
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.server.body_read_timeout) {
            return bad("server.body_read_timeout", "must be between 100ms and 5m".into());
        }
        if self.server.metrics_listen == Some(self.server.listen) && self.server.listen.port() != 0 {
            return bad(
                "server.metrics_listen",
                "must differ from server.listen (it is a second listener for /metrics and /openapi.json)".into(),
            );
        }
        if let Some(t) = &self.server.admin_token
            && let Some(weak) = t.weakness(MIN_ADMIN_TOKEN)
        {
            return bad(
                "server.admin_token",
                format!(
                    "{weak} (an empty or short token would open the admin API; it must be at least {MIN_ADMIN_TOKEN} bytes). Generate one with `openssl rand -base64 32`, or leave the key unset to disable the admin API"
                ),
            );
        }
        for (key, origin) in std::iter::once(("server.public_origin", self.server.public_origin.as_ref())).chain(
            self.cookies
                .allowed_origins
                .iter()
                .map(|o| ("cookies.allowed_origins", Some(o))),
        ) {
            if let Some(o) = origin
                && (normalize_origin(o).is_none()
                    || o.trim_end_matches('/')
                        .split_once("://")
                        .is_some_and(|(_, r)| r.contains('/')))
            {
                return bad(
                    key,
                    format!("{o:?} is not an origin: write scheme://host[:port], e.g. \"https://auth.example.com\""),
                );
            }
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections", "must be at least 1".into());
        }
        let cl = &self.code_login;
        if !(Duration::from_secs(30)..=Duration::from_secs(3600)).contains(&cl.code_ttl) {
            return bad("code_login.code_ttl", "must be between 30s and 1h".into());
        }
        if !(1..=10).contains(&cl.max_attempts) {
            return bad("code_login.max_attempts", "must be between 1 and 10".into());
        }
        if !(cl.max_attempts..=100).contains(&cl.max_attempts_per_code) {
            return bad(
                "code_login.max_attempts_per_code",
                format!("must be between code_login.max_attempts ({}) and 100", cl.max_attempts),
            );
        }
        for p in &self.server.trusted_proxies {
            if let Err(m) = p.parse::<Cidr>() {
                return bad("server.trusted_proxies", m);
            }
        }
        let th = &self.throttle;
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&th.window) {
            return bad("throttle.window", "must be between 1s and 24h".into());
        }
        for (key, n) in [
            ("throttle.per_user_address", th.per_user_address),
            ("throttle.per_address", th.per_address),
            ("throttle.user_attack_threshold", th.user_attack_threshold),
        ] {
            if n == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if !(1..=th.per_user_address).contains(&th.per_user_address_under_attack) {
            return bad(
                "throttle.per_user_address_under_attack",
                format!(
                    "must be between 1 (an address that never failed always gets a try) and throttle.per_user_address ({})",
                    th.per_user_address
                ),
            );
        }
        if cl.resend_interval > Duration::from_secs(3600) {
            return bad("code_login.resend_interval", "must be at most 1h".into());
        }
        if cl.daily_limit == 0 {
            return bad("code_login.daily_limit", "must be at least 1".into());
        }
        if cl.sends_per_address == 0 {
            return bad("code_login.sends_per_address", "must be at least 1".into());
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&cl.webhook_timeout) {
            return bad("code_login.webhook_timeout", "must be between 100ms and 60s".into());
        }
        if let Some(u) = &cl.webhook_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return bad(
                "code_login.webhook_url",
                format!("{u:?} must start with https:// (or http:// for a local relay)"),
            );
        }
        if self.code_login.enabled && self.code_login.sender == CodeSender::Webhook {
            if self.code_login.webhook_url.is_none() {
                return bad(
                    "code_login.webhook_url",
                    "is required when code_login.sender = \"webhook\"".into(),
                );
            }
            match &self.code_login.webhook_secret {
                None => {
                    return bad(
                        "code_login.webhook_secret",
                        "is required when code_login.sender = \"webhook\"".into(),
                    );
                }
                Some(s) => {
                    if let Some(weak) = s.weakness(MIN_WEBHOOK_SECRET) {
                        return bad(
                            "code_login.webhook_secret",
                            format!(
                                "{weak} (receivers could not tell our requests from forged ones). Generate one with `openssl rand -base64 32`"
                            ),
                        );
                    }
                }
            }
        }
        let ev = &self.events;
        if let Some(u) = &ev.webhook_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return bad(
                    "events.webhook_url",
                    format!("{u:?} must start with https:// (or http:// for a local relay)"),
                );
            }
            match &ev.webhook_secret {
                None => return bad("events.webhook_secret", "is required with events.webhook_url".into()),
                Some(s) => {
                    if let Some(weak) = s.weakness(MIN_WEBHOOK_SECRET) {
                        return bad(
                            "events.webhook_secret",
                            format!("{weak}. Generate one with `openssl rand -base64 32`"),
                        );
                    }
                }
            }
        }
        if !(1..=100_000).contains(&ev.queue) {
            return bad("events.queue", format!("must be 1 to 100000, not {}", ev.queue));
        }
        let st = &self.store;
        match (&st.sentinels, &st.sentinel_master) {
            (Some(_), _) if st.redis.is_some() => {
                return bad(
                    "store.sentinels",
                    "give either store.redis (a server or a cluster) or store.sentinels (Sentinel), not both".into(),
                );
            }
            (Some(s), _) if s.is_empty() => return bad("store.sentinels", "lists no sentinel".into()),
            (Some(_), None) => {
                return bad(
                    "store.sentinel_master",
                    "is required with store.sentinels (the name the sentinels monitor)".into(),
                );
            }
            (_, Some(m)) if m.trim().is_empty() => return bad("store.sentinel_master", "is empty".into()),
            (None, Some(_)) => return bad("store.sentinel_master", "needs store.sentinels".into()),
            _ => {}
        }
        if let Some(list) = &st.sentinels {
            for url in list {
                let url = url.expose();
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    let shown = mask_url(url);
                    return bad(
                        "store.sentinels",
                        format!(
                            "{shown:?} is not a URL of a sentinel: write redis://host:port or rediss://host:port (TLS)"
                        ),
                    );
                }
            }
            let tls = list.iter().filter(|u| u.expose().starts_with("rediss://")).count();
            if tls != 0 && tls != list.len() {
                return bad(
                    "store.sentinels",
                    "mixes redis:// and rediss:// URLs: the sentinels and the data nodes they name are reached all with TLS (rediss://) or all without".into(),
                );
            }
        }
        for url in st.redis.iter().flatten() {
            let url = url.expose();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                let shown = mask_url(url);
                return bad(
                    "store.redis",
                    format!("{shown:?} is not a Redis URL: write redis://host:port or rediss://host:port (TLS)"),
                );
            }
        }
        if st.tls_cert_file.is_some() != st.tls_key_file.is_some() {
            let missing = if st.tls_cert_file.is_some() {
                "store.tls_key_file"
            } else {
                "store.tls_cert_file"
            };
            return bad(
                missing,
                "mutual TLS needs both store.tls_cert_file and store.tls_key_file".into(),
            );
        }
        Ok(())
    }
}

/// An origin, normalised for comparison: lower-case scheme and host, the
/// scheme's default port dropped (`https://A.example:443` equals
/// `https://a.example`). `None` for anything that is not an http(s) origin,
/// including the opaque `null`.
pub fn normalize_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = split_authority(authority);
    if host.is_empty() || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let host = host.to_ascii_lowercase();
    Some(match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// `host[:port]` split into host and port: the port follows the last ':'
/// unless that ':' is inside an IPv6 literal.
pub fn split_authority(authority: &str) -> (&str, Option<&str>) {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    }
}

/// Device types name per-device caps and are stored with each session, so
/// they are short and plain.
pub fn valid_device(d: &str) -> bool {
    (1..=16).contains(&d.len())
        && d.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `store.redis` and `store.sentinels` accept one URL or a list of them;
/// an error never repeats the value (it may hold a password).
mod redis_urls {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Secret;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    pub fn serialize<S: Serializer>(v: &Option<Vec<Secret>>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Secret>>, D::Error> {
        match OneOrMany::deserialize(d) {
            Ok(OneOrMany::One(s)) => Ok(Some(vec![s.into()])),
            Ok(OneOrMany::Many(v)) => Ok(Some(v.into_iter().map(Secret::from).collect())),
            Err(_) => Err(serde::de::Error::custom("expected a redis:// URL or a list of them")),
        }
    }
}
