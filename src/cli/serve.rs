//! `twintoken serve`: loads the configuration (file -> env -> flags) and
//! runs the HTTP service until SIGTERM.

use std::io::Write;

use super::{CliError, ServeArgs, load_config};
use crate::app::{ServeOptions, serve};
use crate::config::Override;

pub(super) fn run(args: ServeArgs, env: Vec<(String, String)>, _out: &mut dyn Write) -> Result<(), CliError> {
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
    let opts = ServeOptions {
        no_create_keys: args.no_create_keys,
        has_config_file: args.common.config.is_some(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Output(std::io::Error::other(format!("cannot start the async runtime: {e}"))))?;
    runtime.block_on(serve(config, opts))?;
    Ok(())
}
