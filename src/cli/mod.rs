//! The `twintoken` command line: argument definitions and dispatch. Each
//! subcommand lives in its own file and writes its output to the writer it
//! is handed, so tests run it in-process.

mod keys;
mod serve;
mod users;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, Override};
use crate::keys::KeyError;

/// twintoken: login state with long + short tokens.
#[derive(Debug, Parser)]
#[command(name = "twintoken", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve(ServeArgs),
    /// Manage the keyring: init, list, rotate, retire.
    Keys {
        /// Where the keyring is.
        #[command(flatten)]
        common: CommonArgs,
        /// The action.
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Manage the built-in users file: add, passwd, disable, enable, list.
    Users {
        /// Where the users file is.
        #[command(flatten)]
        common: UsersArgs,
        /// The action.
        #[command(subcommand)]
        action: UsersAction,
    },
}

/// Flags of `twintoken users`.
#[derive(Debug, Args)]
pub struct UsersArgs {
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Users file (overrides users.file).
    #[arg(long, global = true, value_name = "FILE")]
    pub users_file: Option<PathBuf>,
}

/// `twintoken users` actions. Passwords are read from standard input (one
/// line); `--password-stdin` says so explicitly for scripts.
#[derive(Debug, Subcommand)]
pub enum UsersAction {
    /// Add a user.
    Add {
        /// Login name.
        name: String,
        /// User id that goes into tokens (default: the name).
        #[arg(long, value_name = "ID")]
        user_id: Option<String>,
        /// Read the password from standard input without prompting.
        #[arg(long)]
        password_stdin: bool,
        /// No password: the user logs in by one-time code only.
        #[arg(long, conflicts_with = "password_stdin")]
        no_password: bool,
        /// Phone number (E.164) for one-time-code login.
        #[arg(long, value_name = "PHONE")]
        phone: Option<String>,
        /// E-mail address for one-time-code login.
        #[arg(long, value_name = "EMAIL")]
        email: Option<String>,
    },
    /// Set the phone number or e-mail address a user receives one-time codes
    /// at (an empty value removes it).
    Contact {
        /// Login name.
        name: String,
        /// Phone number (E.164).
        #[arg(long, value_name = "PHONE")]
        phone: Option<String>,
        /// E-mail address.
        #[arg(long, value_name = "EMAIL")]
        email: Option<String>,
    },
    /// Change a user's password.
    Passwd {
        /// Login name.
        name: String,
        /// Read the password from standard input without prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable a user: logins are refused and their sessions end on every
    /// running node.
    Disable {
        /// Login name.
        name: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// Login name.
        name: String,
    },
    /// List users (name, id, state, phone, e-mail).
    List,
}

/// Flags every subcommand shares.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Keyring directory (overrides keys.dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
}

/// `twintoken serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file and keyring directory.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Listen address (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Redis URL; repeat for the nodes of a cluster (overrides store.redis).
    #[arg(long, value_name = "URL")]
    pub redis: Vec<String>,
    /// Users file (overrides users.file).
    #[arg(long, value_name = "FILE")]
    pub users_file: Option<PathBuf>,
    /// Refuse to start with an empty keyring instead of creating a first key.
    #[arg(long)]
    pub no_create_keys: bool,
}

/// `twintoken keys` actions.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create the first key (kid 1) in an empty keyring.
    Init,
    /// Show every key with its state and times.
    List,
    /// Add a key that starts signing after a propagation delay.
    Rotate {
        /// How long until the new key signs (default: 2 x keys.reload_interval).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        delay: Option<std::time::Duration>,
    },
    /// Stop accepting a key and erase its secret.
    Retire {
        /// The key id.
        kid: u32,
        /// Retire even if tokens it sealed may still be alive.
        #[arg(long)]
        force: bool,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A keyring problem.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A users-file problem.
    #[error(transparent)]
    Users(#[from] crate::users::UsersError),
    /// The service failed.
    #[error(transparent)]
    Serve(#[from] crate::app::ServeError),
    /// Writing the output failed.
    #[error("writing output failed")]
    Output(#[source] std::io::Error),
}

/// Runs a parsed command line, writing its output to `out`.
pub fn run(cli: Cli, env: Vec<(String, String)>, out: &mut dyn Write) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve::run(args, env, out),
        Command::Keys { common, action } => keys::run(common, action, env, out),
        Command::Users { common, action } => users::run(common, action, env, out),
    }
}

fn load_config(common: &CommonArgs, env: Vec<(String, String)>, mut flags: Vec<Override>) -> Result<Config, CliError> {
    if let Some(dir) = &common.keys_dir {
        flags.push(Override {
            key: "keys.dir",
            flag: "--keys-dir",
            value: toml::Value::String(dir.display().to_string()),
        });
    }
    Ok(Config::load(common.config.as_deref(), env, &flags)?)
}
