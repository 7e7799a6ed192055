//! `twintoken serve`. For now it validates the configuration and prepares
//! the keyring exactly as the server will, then says plainly that this
//! build does not serve HTTP yet.

use std::io::Write;

use super::{CliError, ServeArgs, load_config};
use crate::config::Override;
use crate::keys::{self, Keyring};
use crate::time::{Clock, SystemClock};

pub(super) fn run(args: ServeArgs, env: Vec<(String, String)>, out: &mut dyn Write) -> Result<(), CliError> {
    let mut flags = Vec::new();
    if let Some(l) = &args.listen {
        flags.push(Override {
            key: "server.listen",
            flag: "--listen",
            value: toml::Value::String(l.clone()),
        });
    }
    if !args.redis.is_empty() {
        let urls = args.redis.iter().cloned().map(toml::Value::String).collect();
        flags.push(Override {
            key: "store.redis",
            flag: "--redis",
            value: toml::Value::Array(urls),
        });
    }
    if let Some(f) = &args.users_file {
        flags.push(Override {
            key: "users.file",
            flag: "--users-file",
            value: toml::Value::String(f.display().to_string()),
        });
    }
    let config = load_config(&args.common, env, flags)?;
    let dir = config.keys.dir.as_path();
    match keys::load_dir(dir) {
        Err(keys::KeyError::Empty { .. }) if !args.no_create_keys => {
            let m = keys::init(dir, SystemClock.now())?;
            writeln!(
                out,
                "keyring {} was empty: created key {} (development convenience; production runs `twintoken keys init` and `serve --no-create-keys`)",
                dir.display(),
                m.kid
            )
            .map_err(CliError::Output)?;
        }
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    let ring = Keyring::load(dir)?;
    let primary = ring.snapshot().primary(SystemClock.now());
    writeln!(
        out,
        "configuration and keyring are valid (primary key: {})",
        primary.map(|k| k.to_string()).unwrap_or_else(|| "none yet".into())
    )
    .map_err(CliError::Output)?;
    Err(CliError::NotServing(
        "this build of twintoken does not serve HTTP yet: the session store, verifier and HTTP layer are still to come"
            .into(),
    ))
}
