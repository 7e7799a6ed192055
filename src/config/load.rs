//! Layering: file -> environment -> flags, then one typed deserialization
//! whose errors name the key and the layer it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::Config;

/// Prefix of environment overrides: `TWINTOKEN_<SECTION>__<KEY>`.
pub const ENV_PREFIX: &str = "TWINTOKEN_";

/// A value set by a command-line flag, at a dotted key (`server.listen`).
#[derive(Clone, Debug)]
pub struct Override {
    /// Dotted key, e.g. `store.redis`.
    pub key: &'static str,
    /// The flag, for messages, e.g. `--redis`.
    pub flag: &'static str,
    /// The value.
    pub value: Value,
}

/// Why the configuration could not be loaded. Every message names the file,
/// variable, flag or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config file {path}: cannot read it")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path}: invalid TOML")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// An environment variable that cannot be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A key with a bad value, or a key that does not exist.
    #[error("config key {key} (from {origin}): {message}")]
    Key {
        /// Dotted key.
        key: String,
        /// `config file x.toml`, `environment variable X`, `flag --x`, `defaults`.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A relation between keys that does not hold.
    #[error("config key {key} {message}")]
    Check {
        /// Dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads the configuration: `file` (if any), then the `TWINTOKEN_*`
    /// variables among `env`, then `flags`; then checks it.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[Override],
    ) -> Result<Config, ConfigError> {
        let mut root = Table::new();
        // Where each dotted key was last set, for error messages.
        let mut origin: BTreeMap<String, String> = BTreeMap::new();

        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            root = text.parse::<Table>().map_err(|e| ConfigError::Syntax {
                path: path.to_path_buf(),
                source: Box::new(e),
            })?;
            for (section, v) in &root {
                origin.insert(section.clone(), format!("config file {}", path.display()));
                if let Value::Table(t) = v {
                    for k in t.keys() {
                        origin.insert(format!("{section}.{k}"), format!("config file {}", path.display()));
                    }
                }
            }
        }

        let template = Value::try_from(Config::default()).unwrap_or(Value::Table(Table::new()));
        let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        env.sort();
        for (var, raw) in env {
            let rest = &var[ENV_PREFIX.len()..];
            let Some((section, key)) = rest.split_once("__") else {
                return Err(ConfigError::Env {
                    var,
                    message: "expected TWINTOKEN_<SECTION>__<KEY>, e.g. TWINTOKEN_TOKENS__SHORT_TTL".into(),
                });
            };
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            let shape = template.get(&section).and_then(|s| s.get(&key));
            let value = env_value(shape, &raw).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
            set(&mut root, &section, &key, value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
            origin.insert(format!("{section}.{key}"), format!("environment variable {var}"));
        }

        for o in flags {
            let (section, key) = o.key.split_once('.').unwrap_or((o.key, ""));
            set(&mut root, section, key, o.value.clone()).map_err(|message| ConfigError::Key {
                key: o.key.into(),
                origin: format!("flag {}", o.flag),
                message,
            })?;
            origin.insert(o.key.into(), format!("flag {}", o.flag));
        }

        let config: Config = serde_path_to_error::deserialize(Value::Table(root)).map_err(|e| {
            let key = e.path().to_string();
            let mut message = e.inner().message().to_string();
            // Hints for the mistakes newcomers make.
            if key == "server.listen" && message.contains("socket address") {
                message
                    .push_str(": write an address with a port, e.g. 127.0.0.1:8080 or 0.0.0.0:8080 (IPv6: [::1]:8080)");
            }
            // The key itself, else a key below it (an unknown section set
            // only through a variable), else its section.
            let below = format!("{key}.");
            let origin = origin
                .get(&key)
                .or_else(|| origin.iter().find(|(k, _)| k.starts_with(&below)).map(|(_, v)| v))
                .or_else(|| key.split('.').next().and_then(|s| origin.get(s)))
                .cloned()
                .unwrap_or_else(|| "defaults".into());
            ConfigError::Key {
                key: if key == "." { "(top level)".into() } else { key },
                origin,
                message,
            }
        })?;
        config.validate()?;
        Ok(config)
    }
}

/// Interprets an environment value by the type the key has in the defaults:
/// strings stay strings, numbers and booleans are parsed, lists and tables
/// are TOML literals (`["a","b"]`, `{ pc = 1 }`). Keys without a default
/// (optional ones) are strings unless written as a TOML list.
fn env_value(shape: Option<&Value>, raw: &str) -> Result<Value, String> {
    let literal = |raw: &str| {
        format!("v = {raw}")
            .parse::<Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .ok_or_else(|| format!("{raw:?} is not a TOML value"))
    };
    match shape {
        Some(Value::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("{raw:?} is not a whole number")),
        Some(Value::Boolean(_)) => match raw.trim() {
            "true" => Ok(Value::Boolean(true)),
            "false" => Ok(Value::Boolean(false)),
            _ => Err(format!("{raw:?} is not true or false")),
        },
        Some(Value::Array(_)) | Some(Value::Table(_)) => literal(raw),
        None if raw.trim_start().starts_with('[') => literal(raw),
        _ => Ok(Value::String(raw.to_string())),
    }
}

fn set(root: &mut Table, section: &str, key: &str, value: Value) -> Result<(), String> {
    if section.is_empty() || key.is_empty() {
        return Err("names no <section>.<key>".into());
    }
    let entry = root
        .entry(section.to_string())
        .or_insert_with(|| Value::Table(Table::new()));
    match entry {
        Value::Table(t) => {
            t.insert(key.to_string(), value);
            Ok(())
        }
        _ => Err(format!("[{section}] is not a table in the config file")),
    }
}
