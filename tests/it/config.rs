//! Configuration: layering file -> environment -> flags, and errors that
//! name the key, the variable or the file.

use std::path::Path;
use std::time::Duration;

use twintoken::config::{Config, ConfigError, Fallback, LoginMode, Override};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

fn load(path: Option<&Path>, e: &[(&str, &str)], flags: &[Override]) -> Result<Config, ConfigError> {
    Config::load(path, env(e), flags)
}

#[test]
fn no_configuration_at_all_gives_the_documented_defaults() {
    let c = load(None, &[("PATH", "/bin"), ("HOME", "/root")], &[]).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert!(c.store.redis.is_none(), "no Redis configured: embedded store");
    assert_eq!(c.store.timeout, Duration::from_millis(25));
    assert_eq!(c.store.fallback, Fallback::Crypto);
    assert_eq!(c.tokens.short_ttl, Duration::from_secs(60));
    assert_eq!(c.tokens.long_absolute_ttl, Duration::from_secs(30 * 86400));
    assert_eq!(c.keys.propagation_delay(), Duration::from_secs(10));
    assert_eq!(
        c.cookies.long_name(),
        "__Host-tt_long",
        "secure cookies get the __Host- prefix"
    );
    assert_eq!(Config::for_test().cookies.short_name(), "tt_short");
    assert!(c.cookies.secure);
    assert!(!Config::for_test().cookies.secure);
}

#[test]
fn the_design_example_file_loads() {
    let f = file(
        r#"
[server]
listen = "127.0.0.1:8080"
admin_token = "0123456789abcdef0123456789abcdef"
trusted_proxies = ["10.0.0.0/8", "::1"]
public_origin = "https://auth.example.com"
[store]
redis = "redis://127.0.0.1:6379"
timeout = "25ms"
key_prefix = "tt:"
fallback = "known"
fallback_window = "10m"
[keys]
dir = "keys"
reload_interval = "5s"
[users]
file = "users.toml"
[tokens]
short_ttl = "60s"
long_idle_ttl = "2h"
long_absolute_ttl = "30d"
renew_window = "30m"
rotate_interval = "1d"
rotate_grace = "30s"
[login]
mode = "single"
max_sessions = 10
overflow = "reject"
devices = { pc = 1, mobile = 1 }
[code_login]
enabled = false
sender = "webhook"
webhook_url = "https://sms-gateway.internal/send"
webhook_secret = "0123456789abcdef"
code_ttl = "2m"
auto_register = false
[cookies]
long_name = "tt_long"
short_name = "tt_short"
secure = true
same_site = "lax"
allowed_origins = ["https://app.example.com"]
[throttle]
window = "10m"
per_user_address = 6
per_address = 30
user_attack_threshold = 100
per_user_address_under_attack = 1
"#,
    );
    let c = load(Some(f.path()), &[], &[]).unwrap();
    let urls: Vec<&str> = c.store.redis.iter().flatten().map(|u| u.expose()).collect();
    assert_eq!(urls, ["redis://127.0.0.1:6379"]);
    assert!(
        !format!("{c:?}").contains("redis://"),
        "Redis URLs (which may hold a password) are never printed"
    );
    assert_eq!(c.store.fallback, Fallback::Known);
    assert_eq!(c.login.mode, LoginMode::Single);
    assert_eq!(c.login.devices.get("mobile"), Some(&1));
    assert_eq!(c.cookies.allowed_origins, vec!["https://app.example.com"]);
    assert_eq!(c.server.trusted_proxies().len(), 2);
    assert!(c.server.trusted_proxies()[0].contains("10.20.30.40".parse().unwrap()));
    assert!(c.server.trusted_proxies()[1].contains("::1".parse().unwrap()));
    assert_eq!(c.throttle.window, Duration::from_secs(600));
    assert_eq!(c.throttle.per_user_address_under_attack, 1);
}

#[test]
fn environment_overrides_the_file_and_flags_override_both() {
    let f = file("[tokens]\nshort_ttl = \"30s\"\n[server]\nlisten = \"127.0.0.1:1\"\n");
    let flags = [Override {
        key: "server.listen",
        flag: "--listen",
        value: "127.0.0.1:3".into(),
    }];
    let c = load(
        Some(f.path()),
        &[
            ("TWINTOKEN_TOKENS__SHORT_TTL", "45s"),
            ("TWINTOKEN_SERVER__LISTEN", "127.0.0.1:2"),
            ("TWINTOKEN_LOGIN__MAX_SESSIONS", "3"),
            ("TWINTOKEN_COOKIES__SECURE", "false"),
            ("TWINTOKEN_SERVER__ADMIN_TOKEN", "12345678901234567890123456789012"),
            ("TWINTOKEN_STORE__REDIS", "[\"redis://a:1\", \"redis://b:2\"]"),
            ("TWINTOKEN_LOGIN__DEVICES", "{ pc = 2 }"),
        ],
        &flags,
    )
    .unwrap();
    assert_eq!(c.tokens.short_ttl, Duration::from_secs(45));
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:3");
    assert_eq!(c.login.max_sessions, 3);
    assert!(!c.cookies.secure);
    assert_eq!(
        c.server.admin_token.as_ref().map(|t| t.expose()),
        Some("12345678901234567890123456789012"),
        "a numeric-looking secret stays a string"
    );
    assert_eq!(c.store.redis.as_ref().map(|v| v.len()), Some(2));
    assert_eq!(c.login.devices.get("pc"), Some(&2));
}

fn err(r: Result<Config, ConfigError>) -> String {
    r.err().map(|e| e.to_string()).unwrap_or_else(|| "no error".into())
}

#[test]
fn unknown_keys_are_errors_naming_the_key_and_its_source() {
    let f = file("[tokens]\nshort_tl = \"1s\"\n");
    let m = err(load(Some(f.path()), &[], &[]));
    assert!(
        m.contains("tokens.short_tl") && m.contains("unknown field") && m.contains("config file"),
        "{m}"
    );
    assert!(m.contains("short_ttl"), "suggests the known keys: {m}");

    let f = file("[tokenz]\nshort_ttl = \"1s\"\n");
    let m = err(load(Some(f.path()), &[], &[]));
    assert!(m.contains("tokenz"), "{m}");

    let m = err(load(None, &[("TWINTOKEN_TOKEN__SHORT_TTL", "3s")], &[]));
    assert!(
        m.contains("environment variable TWINTOKEN_TOKEN__SHORT_TTL") && m.contains("unknown field `token`"),
        "{m}"
    );
    let m = err(load(None, &[("TWINTOKEN_TOKENS__SHORTTTL", "3s")], &[]));
    assert!(m.contains("tokens.shortttl"), "{m}");
    let m = err(load(None, &[("TWINTOKEN_TOKENS_SHORT_TTL", "3s")], &[]));
    assert!(m.contains("TWINTOKEN_<SECTION>__<KEY>"), "{m}");
}

#[test]
fn bad_values_name_the_key_and_what_is_wrong() {
    let m = err(load(None, &[("TWINTOKEN_TOKENS__SHORT_TTL", "3x")], &[]));
    assert!(
        m.contains("tokens.short_ttl") && m.contains("\"3x\" is not a duration"),
        "{m}"
    );
    let m = err(load(None, &[("TWINTOKEN_LOGIN__MAX_SESSIONS", "many")], &[]));
    assert!(
        m.contains("TWINTOKEN_LOGIN__MAX_SESSIONS") && m.contains("whole number"),
        "{m}"
    );
    let m = err(load(None, &[("TWINTOKEN_COOKIES__SECURE", "yes")], &[]));
    assert!(m.contains("true or false"), "{m}");
    let f = file("[store]\nfallback = \"maybe\"\n");
    let m = err(load(Some(f.path()), &[], &[]));
    assert!(m.contains("store.fallback") && m.contains("maybe"), "{m}");
    let f = file("[server]\nlisten = \"nowhere\"\n");
    let m = err(load(Some(f.path()), &[], &[]));
    assert!(m.contains("server.listen"), "{m}");
    let f = file("[store]\nredis = 5\n");
    let m = err(load(Some(f.path()), &[], &[]));
    assert!(m.contains("store.redis") && m.contains("redis:// URL"), "{m}");
}

#[test]
fn unreadable_and_invalid_files_are_named() {
    let m = err(load(Some(Path::new("/nonexistent/twintoken.toml")), &[], &[]));
    assert!(
        m.contains("/nonexistent/twintoken.toml") && m.contains("cannot read"),
        "{m}"
    );
    let f = file("[tokens\nshort_ttl = 1");
    let e = load(Some(f.path()), &[], &[]).err().unwrap();
    assert!(e.to_string().contains("invalid TOML"));
    let detail = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
    assert!(detail.contains("line 1"), "the cause says where: {detail}");
}

#[test]
fn relations_between_keys_are_checked() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("TWINTOKEN_TOKENS__SHORT_TTL", "3h")], "tokens.short_ttl"),
        (&[("TWINTOKEN_TOKENS__LONG_IDLE_TTL", "40d")], "tokens.long_idle_ttl"),
        (&[("TWINTOKEN_TOKENS__RENEW_WINDOW", "3h")], "tokens.renew_window"),
        (&[("TWINTOKEN_TOKENS__ROTATE_GRACE", "2d")], "tokens.rotate_grace"),
        (&[("TWINTOKEN_STORE__TIMEOUT", "0s")], "store.timeout"),
        (&[("TWINTOKEN_STORE__KEY_PREFIX", "a{b")], "store.key_prefix"),
        (&[("TWINTOKEN_STORE__REDIS", "http://x")], "store.redis"),
        (&[("TWINTOKEN_LOGIN__MAX_SESSIONS", "0")], "login.max_sessions"),
        (&[("TWINTOKEN_LOGIN__DEVICES", "{ PC = 1 }")], "login.devices"),
        (&[("TWINTOKEN_COOKIES__LONG_NAME", "a b")], "cookies.long_name"),
        (
            &[
                ("TWINTOKEN_COOKIES__SHORT_NAME", "tt"),
                ("TWINTOKEN_COOKIES__LONG_NAME", "tt"),
            ],
            "cookies.short_name",
        ),
        (
            &[
                ("TWINTOKEN_COOKIES__SHORT_NAME", "__Host-s"),
                ("TWINTOKEN_COOKIES__SECURE", "false"),
            ],
            "cookies.short_name",
        ),
        (
            &[
                ("TWINTOKEN_COOKIES__SAME_SITE", "none"),
                ("TWINTOKEN_COOKIES__SECURE", "false"),
            ],
            "cookies.same_site",
        ),
        (
            &[
                ("TWINTOKEN_CODE_LOGIN__ENABLED", "true"),
                ("TWINTOKEN_CODE_LOGIN__SENDER", "webhook"),
            ],
            "webhook_url",
        ),
        (
            &[("TWINTOKEN_SERVER__HEADER_READ_TIMEOUT", "1ms")],
            "server.header_read_timeout",
        ),
        (&[("TWINTOKEN_SERVER__MAX_CONNECTIONS", "0")], "server.max_connections"),
        (&[("TWINTOKEN_CODE_LOGIN__CODE_TTL", "5s")], "code_login.code_ttl"),
        (
            &[("TWINTOKEN_CODE_LOGIN__MAX_ATTEMPTS", "0")],
            "code_login.max_attempts",
        ),
        (
            &[("TWINTOKEN_CODE_LOGIN__RESEND_INTERVAL", "2h")],
            "code_login.resend_interval",
        ),
        (&[("TWINTOKEN_CODE_LOGIN__DAILY_LIMIT", "0")], "code_login.daily_limit"),
        (
            &[("TWINTOKEN_CODE_LOGIN__SENDS_PER_ADDRESS", "0")],
            "code_login.sends_per_address",
        ),
        (
            &[("TWINTOKEN_CODE_LOGIN__WEBHOOK_TIMEOUT", "10ms")],
            "code_login.webhook_timeout",
        ),
        (
            &[("TWINTOKEN_CODE_LOGIN__WEBHOOK_URL", "ftp://x")],
            "code_login.webhook_url",
        ),
        (
            &[
                ("TWINTOKEN_CODE_LOGIN__ENABLED", "true"),
                ("TWINTOKEN_CODE_LOGIN__SENDER", "webhook"),
                ("TWINTOKEN_CODE_LOGIN__WEBHOOK_URL", "https://relay.example"),
                ("TWINTOKEN_CODE_LOGIN__WEBHOOK_SECRET", ""),
            ],
            "code_login.webhook_secret",
        ),
        (
            &[("TWINTOKEN_SERVER__TRUSTED_PROXIES", "[\"10.0.0.0/33\"]")],
            "server.trusted_proxies",
        ),
        (
            &[("TWINTOKEN_SERVER__TRUSTED_PROXIES", "[\"10.0.0.0/8\", \"nginx\"]")],
            "\"nginx\" is not an IP address or CIDR",
        ),
        (
            &[("TWINTOKEN_SERVER__PUBLIC_ORIGIN", "https://a.example/path")],
            "server.public_origin",
        ),
        (
            &[("TWINTOKEN_COOKIES__ALLOWED_ORIGINS", "[\"app.example\"]")],
            "cookies.allowed_origins",
        ),
        (
            &[("TWINTOKEN_THROTTLE__PER_USER_ADDRESS_UNDER_ATTACK", "0")],
            "throttle.per_user_address_under_attack",
        ),
        (&[("TWINTOKEN_THROTTLE__WINDOW", "0s")], "throttle.window"),
        (&[("TWINTOKEN_THROTTLE__PER_ADDRESS", "0")], "throttle.per_address"),
        (
            &[("TWINTOKEN_CODE_LOGIN__MAX_ATTEMPTS_PER_CODE", "2")],
            "code_login.max_attempts_per_code",
        ),
        (&[("TWINTOKEN_SERVER__ADMIN_TOKEN", "")], "server.admin_token"),
        (&[("TWINTOKEN_SERVER__ADMIN_TOKEN", "x")], "server.admin_token"),
        // The second review: blank and padded secrets were accepted.
        (&[("TWINTOKEN_SERVER__ADMIN_TOKEN", BLANK_40)], "server.admin_token"),
        (
            &[("TWINTOKEN_SERVER__ADMIN_TOKEN", " 0123456789abcdef0123456789abcdef ")],
            "server.admin_token",
        ),
        (
            &[
                ("TWINTOKEN_EVENTS__WEBHOOK_URL", "https://events.example/in"),
                ("TWINTOKEN_EVENTS__WEBHOOK_SECRET", BLANK_40),
            ],
            "events.webhook_secret",
        ),
        (
            &[
                ("TWINTOKEN_CODE_LOGIN__ENABLED", "true"),
                ("TWINTOKEN_CODE_LOGIN__SENDER", "webhook"),
                ("TWINTOKEN_CODE_LOGIN__WEBHOOK_URL", "https://sms.example/send"),
                ("TWINTOKEN_CODE_LOGIN__WEBHOOK_SECRET", "                "),
            ],
            "code_login.webhook_secret",
        ),
        (
            &[("TWINTOKEN_SERVER__BODY_READ_TIMEOUT", "0s")],
            "server.body_read_timeout",
        ),
        (
            &[("TWINTOKEN_SERVER__FORWARDED_HEADER", "x-client-ip")],
            "server.forwarded_header",
        ),
    ];
    for (vars, key) in cases {
        let m = err(load(None, vars, &[]));
        assert!(m.contains(key), "{vars:?}: {m}");
    }
    // A refused URL is shown with its password masked.
    for var in ["TWINTOKEN_STORE__REDIS", "TWINTOKEN_STORE__SENTINELS"] {
        let mut vars = vec![(var, "http://user:Pass-Word-9@x:1/")];
        if var.ends_with("SENTINELS") {
            vars.push(("TWINTOKEN_STORE__SENTINEL_MASTER", "tt"));
        }
        let m = err(load(None, &vars, &[]));
        assert!(m.contains("x:1") && !m.contains("Pass-Word-9"), "{var}: {m}");
    }
}

const BLANK_40: &str = "                                        ";

/// README's configuration table lists every key of `Config` with its real
/// default, and nothing that is not a key (issue 16: docs that stay true).
#[test]
fn the_readme_configuration_table_lists_every_key_with_its_real_default() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut documented: std::collections::BTreeMap<String, String> = Default::default();
    for line in readme.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_start_matches('|').split(" | ").map(str::trim).collect();
        let (keys, default) = (cells[0], cells.get(1).copied().unwrap_or(""));
        let mut section = String::new();
        for key in keys.split('`').skip(1).step_by(2) {
            let full = match key.split_once('.') {
                Some((s, _)) => {
                    section = s.to_string();
                    key.to_string()
                }
                None => format!("{section}.{key}"),
            };
            documented.insert(full, default.to_string());
        }
    }
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let mut missing = Vec::new();
    for (section, table) in defaults.as_table().unwrap() {
        for (k, v) in table.as_table().unwrap() {
            let key = format!("{section}.{k}");
            let Some(doc) = documented.get(&key) else {
                missing.push(key);
                continue;
            };
            let ok = match v {
                toml::Value::String(s) => match (
                    humantime::parse_duration(s),
                    humantime::parse_duration(doc.trim_matches('`')),
                ) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => doc.contains(&format!("`{s}`")),
                },
                toml::Value::Array(a) if a.is_empty() => doc.contains("`[]`"),
                toml::Value::Table(t) if t.is_empty() => doc.contains("`{}`"),
                other => doc.contains(&format!("`{other}`")),
            };
            assert!(ok, "README says {key} defaults to {doc}, the code says {v}");
        }
    }
    assert!(
        missing.is_empty(),
        "keys missing from README's configuration table: {missing:?}"
    );
    // Everything documented is a key (optional keys have no default to
    // compare, but they must parse as known fields).
    for key in documented.keys() {
        let (section, field) = key.split_once('.').unwrap();
        let parsed = toml::from_str::<Config>(&format!("[{section}]\n{field} = \"x\"\n"));
        if let Err(e) = parsed {
            assert!(
                !e.to_string().contains("unknown field"),
                "README documents {key}, which is no key: {e}"
            );
        }
    }
}

/// docs/ARCHITECTURE.md names every source file and every Lua script, so
/// the map cannot silently fall behind the code.
#[test]
fn the_architecture_map_names_every_module_and_script() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    let mut stack = vec![root.join("src"), root.join("lua")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            // Named by its path, by its path inside its top-level module
            // (`memory/persist.rs` in the `src/store/` row), by its file name,
            // or (a script) by its stem in the `lua/` row.
            let inner: String = rel.split('/').skip(2).collect::<Vec<_>>().join("/");
            let stem = name.trim_end_matches(".lua");
            let named = map.contains(&rel)
                || (!inner.is_empty() && map.contains(&format!("`{inner}`")))
                || (name != "mod.rs" && map.contains(&format!("`{name}`")))
                || (rel.starts_with("lua/") && map.contains(&format!("`{stem}`")));
            if !named {
                missing.push(rel);
            }
        }
    }
    missing.sort();
    assert!(missing.is_empty(), "docs/ARCHITECTURE.md does not name: {missing:?}");
}
