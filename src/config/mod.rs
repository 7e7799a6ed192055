//! Configuration: one typed struct ([`Config`]), every key optional, layered
//! as TOML file -> environment (`TWINTOKEN_<SECTION>__<KEY>`) -> flags.
//!
//! Unknown keys, bad values and unreadable files are errors that name the
//! key (and whether it came from the file, a variable or a flag). This
//! module reads the environment only through the iterator it is handed, so
//! tests never mutate the process environment.

mod duration;
mod load;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use load::{ConfigError, Override};

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
    pub admin_token: Option<String>,
    /// A client must send a request's headers within this time (slow-loris
    /// clients are disconnected).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Open connections at most; beyond it the server stops accepting until
    /// one closes.
    pub max_connections: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log_format: LogFormat::Text,
            admin_token: None,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
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

/// `[store]`: the session store.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Redis URL(s): one for a single server, several for a cluster; unset
    /// selects the embedded in-memory store.
    #[serde(skip_serializing_if = "Option::is_none", with = "redis_urls")]
    pub redis: Option<Vec<String>>,
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
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            redis: None,
            timeout: Duration::from_millis(25),
            key_prefix: "tt:".into(),
            fallback: Fallback::Crypto,
            fallback_window: Duration::from_secs(600),
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
    pub webhook_secret: Option<String>,
    /// Life of a code.
    #[serde(with = "duration")]
    pub code_ttl: Duration,
    /// Whether an unknown destination gets a new user.
    pub auto_register: bool,
    /// Wrong guesses a code survives; the next wrong one burns it.
    pub max_attempts: u32,
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
            resend_interval: Duration::from_secs(60),
            daily_limit: 10,
            sends_per_address: 30,
            webhook_timeout: Duration::from_secs(5),
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
    /// Name of the long-token cookie.
    pub long_name: String,
    /// Name of the short-token cookie.
    pub short_name: String,
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
            long_name: "tt_long".into(),
            short_name: "tt_short".into(),
            secure: true,
            same_site: SameSite::Lax,
            allowed_origins: Vec::new(),
        }
    }
}

impl Config {
    /// Defaults suited to tests: short lifetimes stay the defaults, cookies
    /// are not `Secure` (tests speak plain HTTP on loopback).
    pub fn for_test() -> Config {
        let mut c = Config::default();
        c.cookies.secure = false;
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
                .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
            {
                return bad("store.redis", format!("{u:?} must start with redis:// or rediss://"));
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
            ("cookies.long_name", &self.cookies.long_name),
            ("cookies.short_name", &self.cookies.short_name),
        ] {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                return bad(
                    key,
                    format!("{name:?} is not a valid cookie name (use letters, digits, '_', '-', '.')"),
                );
            }
        }
        if self.cookies.long_name == self.cookies.short_name {
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
            if self.code_login.webhook_secret.is_none() {
                return bad(
                    "code_login.webhook_secret",
                    "is required when code_login.sender = \"webhook\"".into(),
                );
            }
        }
        Ok(())
    }
}

/// Device types name per-device caps and are stored with each session, so
/// they are short and plain.
pub fn valid_device(d: &str) -> bool {
    (1..=16).contains(&d.len())
        && d.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `store.redis` accepts one URL or a list of them.
mod redis_urls {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    pub fn serialize<S: Serializer>(v: &Option<Vec<String>>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
        match OneOrMany::deserialize(d) {
            Ok(OneOrMany::One(s)) => Ok(Some(vec![s])),
            Ok(OneOrMany::Many(v)) => Ok(Some(v)),
            Err(_) => Err(serde::de::Error::custom("expected a redis:// URL or a list of them")),
        }
    }
}
