//! The `twintoken` binary as an operator runs it: exit codes and messages.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn twintoken(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_twintoken"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn keys_init_list_rotate_retire_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let o = twintoken(&["keys", "init", "--keys-dir", "k"], d.path());
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("created key 1"));

    let o = twintoken(&["keys", "rotate", "--keys-dir", "k", "--delay", "1h"], d.path());
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("created key 2"));

    let o = twintoken(&["keys", "list", "--keys-dir", "k"], d.path());
    let out = text(&o).0;
    assert!(o.status.success());
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["KID", "STATE", "CREATED", "ACTIVATES_AT", "RETIRED_AT"]);
    assert_eq!(&rows[1][..2], ["1", "primary"]);
    assert_eq!(&rows[2][..2], ["2", "pending"]);

    // Retiring the primary is refused with a hint; --force overrides.
    let o = twintoken(&["keys", "retire", "1", "--keys-dir", "k"], d.path());
    assert!(!o.status.success());
    assert!(text(&o).1.contains("pass --force"), "{:?}", text(&o));
    let o = twintoken(&["keys", "retire", "2", "--keys-dir", "k"], d.path());
    assert!(
        o.status.success(),
        "a pending key never signed, so it may go: {:?}",
        text(&o)
    );
    let o = twintoken(&["keys", "list", "--keys-dir", "k"], d.path());
    assert!(text(&o).0.lines().nth(2).unwrap_or("").contains("retired"));
}

#[test]
fn errors_exit_nonzero_with_one_readable_message() {
    let d = tempfile::tempdir().unwrap();
    let o = twintoken(&["keys", "list", "--keys-dir", "missing"], d.path());
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert!(
        err.starts_with("error: keyring missing has no keys; run `twintoken keys init"),
        "{err}"
    );

    assert!(
        twintoken(&["keys", "init", "--keys-dir", "k"], d.path())
            .status
            .success()
    );
    std::fs::set_permissions(d.path().join("k/key-1.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = text(&twintoken(&["keys", "list", "--keys-dir", "k"], d.path())).1;
    assert!(err.contains("chmod 600"), "{err}");

    let err = text(&twintoken(&["keys", "list", "--config", "nope.toml"], d.path())).1;
    assert!(
        err.contains("config file nope.toml: cannot read it") && err.contains("caused by"),
        "{err}"
    );

    let err = text(&twintoken(&["keys", "rotate", "--delay", "soon"], d.path())).1;
    assert!(err.contains("--delay"), "clap names the bad flag: {err}");
}

#[test]
fn serve_creates_a_first_key_unless_told_not_to_and_does_not_pretend_to_serve() {
    let d = tempfile::tempdir().unwrap();
    let o = twintoken(&["serve", "--keys-dir", "k", "--no-create-keys"], d.path());
    assert!(!o.status.success());
    assert!(text(&o).1.contains("has no keys"), "{:?}", text(&o));

    let o = twintoken(&["serve", "--keys-dir", "k"], d.path());
    let (out, err) = text(&o);
    assert!(out.contains("created key 1"), "{out}");
    assert!(
        !o.status.success(),
        "serve must not claim to serve before the HTTP layer exists"
    );
    assert!(err.contains("does not serve HTTP yet"), "{err}");
    assert!(d.path().join("k/key-1.key").exists());
}
