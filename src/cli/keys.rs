//! `twintoken keys init|list|rotate|retire`.

use std::io::Write;

use super::{CliError, CommonArgs, KeysAction, load_config};
use crate::keys::{self, KeySet};
use crate::time::{Clock, SystemClock};
use crate::tokens::Kid;

pub(super) fn run(
    common: CommonArgs,
    action: KeysAction,
    env: Vec<(String, String)>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let config = load_config(&common, env, Vec::new())?;
    let dir = config.keys.dir.as_path();
    let now = SystemClock.now();
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(CliError::Output);
    match action {
        KeysAction::Init => {
            let m = keys::init(dir, now)?;
            w(
                out,
                format!("created key {} in {}; it signs from now on", m.kid, dir.display()),
            )
        }
        KeysAction::List => {
            let set = KeySet::from_files(keys::load_dir(dir)?);
            w(
                out,
                format!(
                    "{:<6} {:<12} {:<21} {:<21} {}",
                    "KID", "STATE", "CREATED", "ACTIVATES_AT", "RETIRED_AT"
                ),
            )?;
            for e in set.entries() {
                let m = e.meta;
                let state = set.state(m.kid, now).map(|s| s.to_string()).unwrap_or_default();
                let retired = m.retired_at.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
                w(
                    out,
                    format!(
                        "{:<6} {:<12} {:<21} {:<21} {}",
                        m.kid, state, m.created, m.activates_at, retired
                    ),
                )?;
            }
            Ok(())
        }
        KeysAction::Rotate { delay } => {
            let delay = delay.unwrap_or_else(|| config.keys.propagation_delay());
            let m = keys::rotate(dir, now, delay)?;
            w(
                out,
                format!(
                    "created key {}; every node accepts it after its next reload, and it signs from {} (in {})",
                    m.kid,
                    m.activates_at,
                    humantime::format_duration(delay)
                ),
            )
        }
        KeysAction::Retire { kid, force } => {
            let m = keys::retire(dir, Kid(kid), now, config.tokens.long_absolute_ttl, force)?;
            w(
                out,
                format!("retired key {}; tokens sealed with it are rejected from now on", m.kid),
            )
        }
    }
}
