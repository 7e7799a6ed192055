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
fn serve_refuses_an_empty_keyring_when_told_to() {
    let d = tempfile::tempdir().unwrap();
    let o = twintoken(
        &[
            "serve",
            "--keys-dir",
            "k",
            "--no-create-keys",
            "--listen",
            "127.0.0.1:0",
        ],
        d.path(),
    );
    assert!(!o.status.success());
    assert!(text(&o).1.contains("has no keys"), "{:?}", text(&o));
}

/// `cargo run --release -- serve` on a fresh checkout: no config, embedded
/// store, first key and a demo user created, demo page served, the log says
/// how to use Redis, and SIGTERM stops it cleanly.
#[test]
fn serve_with_no_configuration_serves_the_demo_page_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    let d = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_twintoken"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(d.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("serve logs until it listens").unwrap();
        log.push_str(&line);
        log.push('\n');
        if let Some(rest) = line.split("open http://").nth(1) {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    assert!(log.contains("created a first key"), "{log}");
    assert!(log.contains("--redis redis://"), "the log says how to use Redis: {log}");
    assert!(log.contains("created user `demo`"), "{log}");
    assert!(d.path().join("keys/key-1.key").exists());
    assert!(
        log.contains("kept on disk") && d.path().join("sessions/LOCK").exists(),
        "sessions are kept in ./sessions by default: {log}"
    );

    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.0 200") && page.contains("twintoken"), "{page}");

    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "serve stops within 10 s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit: {status:?}");

    // A later start says how to get a new password for `demo` (it was
    // printed only once).
    let mut child = Command::new(env!("CARGO_BIN_EXE_twintoken"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(d.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut log = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("open http://") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!log.contains("created user `demo`"), "{log}");
    assert!(log.contains("users passwd demo"), "{log}");
}

/// The mistakes newcomers make with `--listen` get a hint each.
#[test]
fn listen_mistakes_get_a_hint() {
    let d = tempfile::tempdir().unwrap();
    let (_, err) = text(&twintoken(&["serve", "--listen", "127.0.0.1"], d.path()));
    assert!(
        err.contains("server.listen") && err.contains("with a port, e.g. 127.0.0.1:8080"),
        "{err}"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (_, err) = text(&twintoken(&["serve", "--listen", &addr], d.path()));
    assert!(
        err.contains(&format!("cannot listen on {addr}"))
            && err.contains("another process uses this port")
            && err.contains("--listen"),
        "{err}"
    );
}

fn twintoken_stdin(args: &[&str], dir: &std::path::Path, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_twintoken"))
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn users_add_passwd_disable_list() {
    let d = tempfile::tempdir().unwrap();
    let o = twintoken_stdin(
        &["users", "add", "alice", "--user-id", "1001", "--password-stdin"],
        d.path(),
        "first password\n",
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let mode = std::fs::metadata(d.path().join("users.toml"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let file = std::fs::read_to_string(d.path().join("users.toml")).unwrap();
    assert!(
        file.contains("$argon2id$") && !file.contains("first password"),
        "{file}"
    );

    let o = twintoken_stdin(
        &["users", "add", "alice", "--password-stdin"],
        d.path(),
        "another one\n",
    );
    assert!(text(&o).1.contains("already exists"), "{:?}", text(&o));
    let o = twintoken_stdin(&["users", "add", "bob", "--password-stdin"], d.path(), "short\n");
    assert!(text(&o).1.contains("8 to 1024 bytes"), "{:?}", text(&o));
    let o = twintoken_stdin(
        &["users", "passwd", "alice", "--password-stdin"],
        d.path(),
        "second password\n",
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let db = twintoken::users::UserDb::open(&d.path().join("users.toml")).unwrap();
    assert_eq!(db.authenticate("alice", "second password").unwrap().as_str(), "1001");
    assert_eq!(
        db.authenticate("alice", "first password"),
        Err(twintoken::users::AuthError::BadCredentials)
    );

    assert!(twintoken(&["users", "disable", "alice"], d.path()).status.success());
    let list = text(&twintoken(&["users", "list"], d.path())).0;
    assert!(
        list.lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .eq(["alice", "1001", "disabled", "-", "-"]),
        "{list}"
    );
    let err = text(&twintoken(&["users", "disable", "carol"], d.path())).1;
    assert!(err.contains("no user \"carol\""), "{err}");
    let (out, _) = text(&twintoken(&["users", "enable", "alice"], d.path()));
    assert!(out.contains("enabled alice"), "{out}");
    let list = text(&twintoken(&["users", "list"], d.path())).0;
    assert!(list.lines().nth(1).unwrap_or("").contains("active"), "{list}");
    let err = text(&twintoken(&["users", "enable", "carol"], d.path())).1;
    assert!(err.contains("no user \"carol\""), "{err}");

    std::fs::write(d.path().join("bad.toml"), "[users.x]\nid = \"\"\npassword = \"nope\"\n").unwrap();
    let err = text(&twintoken(&["users", "list", "--users-file", "bad.toml"], d.path())).1;
    assert!(err.contains("bad.toml") && err.contains("user \"x\""), "{err}");
}

#[test]
fn users_get_phone_numbers_and_email_addresses_for_code_login() {
    let d = tempfile::tempdir().unwrap();
    let o = twintoken(
        &["users", "add", "carol", "--no-password", "--phone", "+44 20 7946 0958"],
        d.path(),
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let o = twintoken(&["users", "add", "dave", "--no-password"], d.path());
    assert!(text(&o).1.contains("needs --phone or --email"), "{:?}", text(&o));
    let o = twintoken_stdin(
        &["users", "add", "erin", "--password-stdin", "--phone", "+442079460958"],
        d.path(),
        "erins password\n",
    );
    assert!(
        text(&o).1.contains("already belongs to user \"carol\""),
        "{:?}",
        text(&o)
    );
    let o = twintoken(&["users", "contact", "carol", "--email", "Carol@Example.COM"], d.path());
    assert!(o.status.success(), "{:?}", text(&o));
    let o = twintoken(&["users", "contact", "carol", "--email", "not an address"], d.path());
    assert!(text(&o).1.contains("e-mail address"), "{:?}", text(&o));
    let o = twintoken(&["users", "contact", "carol", "--phone", "carol@example.com"], d.path());
    assert!(text(&o).1.contains("is not a phone"), "{:?}", text(&o));
    let list = text(&twintoken(&["users", "list"], d.path())).0;
    assert!(
        list.lines().nth(1).unwrap_or("").split_whitespace().eq([
            "carol",
            "carol",
            "active",
            "+442079460958",
            "carol@example.com"
        ]),
        "{list}"
    );
    // A password-less user cannot log in with any password.
    let db = twintoken::users::UserDb::open(&d.path().join("users.toml")).unwrap();
    assert!(db.authenticate("carol", "").is_err());
    let dest = twintoken::codes::Destination::parse("carol@example.com").unwrap();
    assert_eq!(
        db.find_by_destination(&dest).map(|u| u.as_str().to_string()).as_deref(),
        Some("carol")
    );
    assert!(
        twintoken(&["users", "contact", "carol", "--email", ""], d.path())
            .status
            .success()
    );
    let db = twintoken::users::UserDb::open(&d.path().join("users.toml")).unwrap();
    assert!(
        db.find_by_destination(&dest).is_none(),
        "an empty value removes the address"
    );

    std::fs::write(
        d.path().join("bad.toml"),
        "[users.x]\nid = \"x\"\nphone = \"+44 20 7946 0958\"\n",
    )
    .unwrap();
    let err = text(&twintoken(&["users", "list", "--users-file", "bad.toml"], d.path())).1;
    assert!(err.contains("not a normalised phone"), "{err}");
}

#[test]
fn a_changed_users_file_is_picked_up_by_an_open_user_db() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("users.toml");
    let mut u = twintoken::users::Users::default();
    u.add("dan", None, "password one").unwrap();
    u.save(&path).unwrap();
    let db = twintoken::users::UserDb::open(&path).unwrap();
    let dan = db.authenticate("dan", "password one").unwrap();
    assert_eq!(
        db.authenticate("erin", "password two"),
        Err(twintoken::users::AuthError::BadCredentials)
    );
    u.add("erin", None, "password two").unwrap();
    u.disable("dan").unwrap();
    // Make sure the modification time moves, then wait out the 1 s check interval.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    u.save(&path).unwrap();
    let erin = db.authenticate("erin", "password two").expect("new user picked up");
    assert_ne!(erin, dan);
    assert_eq!(
        db.authenticate("dan", "password one"),
        Err(twintoken::users::AuthError::BadCredentials),
        "disabled user refused"
    );
}
