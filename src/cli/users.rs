//! `twintoken users add|passwd|disable|list`.

use std::io::{BufRead, Write};

use super::{CliError, UsersAction, UsersArgs};
use crate::config::{Config, Override};
use crate::users::{Users, UsersError};

fn read_password(prompt: bool) -> Result<String, CliError> {
    if prompt {
        eprint!("password (read from standard input): ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| UsersError::Rejected(format!("cannot read the password from standard input: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub(super) fn run(
    args: UsersArgs,
    action: UsersAction,
    env: Vec<(String, String)>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut flags = Vec::new();
    if let Some(f) = &args.users_file {
        flags.push(Override {
            key: "users.file",
            flag: "--users-file",
            value: toml::Value::String(f.display().to_string()),
        });
    }
    let config = Config::load(args.config.as_deref(), env, &flags)?;
    let path = config.users.file.as_path();
    let mut users = Users::load(path)?;
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(CliError::Output);
    match action {
        UsersAction::Add {
            name,
            user_id,
            password_stdin,
        } => {
            let password = read_password(!password_stdin)?;
            users.add(&name, user_id.as_deref(), &password)?;
            users.save(path)?;
            w(out, format!("added user {name} to {}", path.display()))
        }
        UsersAction::Passwd { name, password_stdin } => {
            if !users.entries().contains_key(&name) {
                return Err(UsersError::NoSuchUser(name).into());
            }
            let password = read_password(!password_stdin)?;
            users.passwd(&name, &password)?;
            users.save(path)?;
            w(out, format!("changed the password of {name}"))
        }
        UsersAction::Disable { name } => {
            users.disable(&name)?;
            users.save(path)?;
            w(
                out,
                format!("disabled {name}; a running server refuses their logins within a second"),
            )
        }
        UsersAction::List => {
            w(out, format!("{:<24} {:<24} STATE", "NAME", "ID"))?;
            for (name, u) in users.entries() {
                w(
                    out,
                    format!(
                        "{:<24} {:<24} {}",
                        name,
                        u.id,
                        if u.disabled { "disabled" } else { "active" }
                    ),
                )?;
            }
            Ok(())
        }
    }
}
