//! `twintoken users add|passwd|disable|enable|list`.

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
            no_password,
            phone,
            email,
        } => {
            if no_password {
                if phone.is_none() && email.is_none() {
                    return Err(UsersError::Rejected(
                        "a user without a password needs --phone or --email to log in with".into(),
                    )
                    .into());
                }
                users.add_without_password(&name, user_id.as_deref())?;
            } else {
                let password = read_password(!password_stdin)?;
                users.add(&name, user_id.as_deref(), &password)?;
            }
            users.set_contact(&name, phone.as_deref(), email.as_deref())?;
            users.save(path)?;
            w(out, format!("added user {name} to {}", path.display()))
        }
        UsersAction::Contact { name, phone, email } => {
            users.set_contact(&name, phone.as_deref(), email.as_deref())?;
            users.save(path)?;
            w(out, format!("updated the one-time-code contacts of {name}"))
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
                format!(
                    "disabled {name}; within a second every running node refuses their logins and ends their sessions"
                ),
            )
        }
        UsersAction::Enable { name } => {
            users.enable(&name)?;
            users.save(path)?;
            w(out, format!("enabled {name}; they can log in again"))
        }
        UsersAction::List => {
            w(
                out,
                format!("{:<24} {:<24} {:<9} {:<17} EMAIL", "NAME", "ID", "STATE", "PHONE"),
            )?;
            for (name, u) in users.entries() {
                w(
                    out,
                    format!(
                        "{:<24} {:<24} {:<9} {:<17} {}",
                        name,
                        u.id,
                        if u.disabled { "disabled" } else { "active" },
                        u.phone.as_deref().unwrap_or("-"),
                        u.email.as_deref().unwrap_or("-"),
                    )
                    .trim_end()
                    .to_string(),
                )?;
            }
            Ok(())
        }
    }
}
