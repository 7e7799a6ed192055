//! The `twintoken` binary: parses the command line and runs it; every error
//! is printed once, with its chain of causes.

use std::process::ExitCode;

use clap::Parser;
use twintoken::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    // Not `stdout().lock()`: `serve` logs to stdout from its worker threads,
    // which would wait forever for a lock the main thread holds.
    let mut out = std::io::stdout();
    match run(cli, env, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!("\n  caused by: {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
