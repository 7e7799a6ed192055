//! The embedded store kept on disk (`store.path`), with the real binary:
//! sessions survive SIGKILL and SIGTERM restarts, logouts stay logouts, a
//! torn last write is dropped, any other damage stops the start with a
//! message that says where and what to do, and a second process on the
//! same directory is refused.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::support::node::Node;

const ADMIN: &str = "persistence-admin-token-of-32-bytes";

/// A deployment directory with a config file for one node whose embedded
/// store lives in `sessions/` (relative, as in the default).
fn deployment(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN}\"\n\
             [store]\npath = \"sessions\"\n{extra}\n\
             [cookies]\nsecure = false\n"
        ),
    )
    .unwrap();
    (d, config)
}

async fn issue(c: &Client, node: &Node, uid: &str) -> String {
    let r = c
        .post(node.url("/v1/admin/sessions"))
        .bearer_auth(ADMIN)
        .json(&json!({ "user_id": uid }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let b: Value = r.json().await.unwrap();
    b["long_token"].as_str().unwrap().to_string()
}

async fn logout(c: &Client, node: &Node, long: &str) {
    let r = c.post(node.url("/v1/logout")).bearer_auth(long).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Verifies a long token alone: the status, and the path or the error code.
async fn verify(c: &Client, node: &Node, long: &str) -> (StatusCode, String) {
    let r = c.get(node.url("/v1/verify")).bearer_auth(long).send().await.unwrap();
    let status = r.status();
    if status == StatusCode::OK {
        let path = r.headers()["x-auth-path"].to_str().unwrap().to_string();
        (status, path)
    } else {
        let b: Value = r.json().await.unwrap();
        (status, b["error"].as_str().unwrap_or_default().to_string())
    }
}

/// Every live token verifies on the store path; every ended one is unknown
/// to the store.
async fn check(c: &Client, node: &Node, live: &[String], ended: &[String], when: &str) {
    for (i, t) in live.iter().enumerate() {
        assert_eq!(
            verify(c, node, t).await,
            (StatusCode::OK, "long".to_string()),
            "{when}: live session {i}"
        );
    }
    for (i, t) in ended.iter().enumerate() {
        assert_eq!(
            verify(c, node, t).await,
            (StatusCode::UNAUTHORIZED, "unknown_session".to_string()),
            "{when}: logged-out session {i}"
        );
    }
}

fn store_dir(d: &Path) -> PathBuf {
    d.join("sessions")
}

/// The newest journal file of a store directory.
fn newest_journal(store: &Path) -> PathBuf {
    let mut js: Vec<(u64, PathBuf)> = std::fs::read_dir(store)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let g = e.file_name().to_str()?.strip_prefix("journal.")?.parse().ok()?;
            Some((g, e.path()))
        })
        .collect();
    js.sort();
    js.pop().expect("a journal file").1
}

/// Runs `serve` on `config` expecting it to stop at start; its stderr.
fn refused_start(dir: &Path, config: &Path) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_twintoken"))
        .args(["serve", "--config"])
        .arg(config)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a serve that starts after all would run forever.
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "serve exited with success");
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return err;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("serve started although it should have refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_sigkill_and_sigterm_and_logouts_stay_logouts() {
    let (d, config) = deployment("");
    let c = Client::new();
    let mut node = Node::start(d.path(), &config);
    let mut live = Vec::new();
    for i in 0..50 {
        live.push(issue(&c, &node, &format!("user{}", i % 25)).await);
    }
    let ended: Vec<String> = live.drain(..10).collect();
    for t in &ended {
        logout(&c, &node, t).await;
    }
    // The logouts were the last requests: each was on disk before its 200,
    // and with it every login journaled before it.
    node.kill9();
    node.restart();
    check(&c, &node, &live, &ended, "after SIGKILL").await;

    // Logins in the last moment before a graceful stop are flushed by it.
    for i in 0..5 {
        live.push(issue(&c, &node, &format!("late{i}")).await);
    }
    node.terminate();
    node.restart();
    check(&c, &node, &live, &ended, "after SIGTERM").await;

    // `everysec`: logins reach the disk within a second without any
    // revocation to carry them; 1.5 s leaves a wide margin over the writer's
    // 200 ms tick.
    for i in 0..5 {
        live.push(issue(&c, &node, &format!("quiet{i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill9();
    node.restart();
    check(&c, &node, &live, &ended, "after SIGKILL 1.5 s after the last login").await;
    let log = node.log();
    assert!(log.contains("embedded session store loaded from disk"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_always_keeps_a_login_answered_just_before_a_crash() {
    let (d, config) = deployment("fsync = \"always\"");
    let c = Client::new();
    let mut node = Node::start(d.path(), &config);
    let t = issue(&c, &node, "alice").await;
    node.kill9();
    node.restart();
    assert_eq!(verify(&c, &node, &t).await, (StatusCode::OK, "long".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_write_is_dropped_and_logged() {
    let (d, config) = deployment("");
    let c = Client::new();
    let mut node = Node::start(d.path(), &config);
    let live = vec![issue(&c, &node, "alice").await, issue(&c, &node, "bob").await];
    node.terminate();
    // A crash in the middle of appending a frame: a length and checksum,
    // then only part of the payload it announces.
    let journal = newest_journal(&store_dir(d.path()));
    let good_len = std::fs::metadata(&journal).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&journal).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 1, 5, 0]).unwrap();
    drop(f);
    node.restart();
    check(&c, &node, &live, &[], "after a torn write").await;
    let log = node.log();
    assert!(
        log.contains("torn") && log.contains(&format!("offset={good_len}")),
        "the torn write is logged with its offset: {log}"
    );
    // The file was cut back to its last whole frame, and new writes follow it.
    let after = issue(&c, &node, "carol").await;
    node.terminate();
    node.restart();
    check(
        &c,
        &node,
        &[live, vec![after]].concat(),
        &[],
        "after writing past the cut",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_end_stops_the_start_and_says_where_and_what_to_do() {
    let (d, config) = deployment("");
    let c = Client::new();
    let mut node = Node::start(d.path(), &config);
    for u in ["alice", "bob", "carol"] {
        issue(&c, &node, u).await;
    }
    node.terminate();
    let journal = newest_journal(&store_dir(d.path()));
    let mut bytes = std::fs::read(&journal).unwrap();
    // The first frame starts after the header line; flip a byte of its payload.
    let first = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
    bytes[first + 10] ^= 0xff;
    std::fs::write(&journal, &bytes).unwrap();
    drop(node);
    let err = refused_start(d.path(), &config);
    assert!(
        err.contains(&journal.display().to_string())
            && err.contains(&format!("damaged at byte {first}"))
            && err.contains("checksum mismatch")
            && err.contains("Move this file aside"),
        "{err}"
    );
    // Nothing was changed by the refused start.
    assert_eq!(std::fs::read(&journal).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_directory_is_refused() {
    let (d, config) = deployment("");
    let c = Client::new();
    let node = Node::start(d.path(), &config);
    let t = issue(&c, &node, "alice").await;
    let err = refused_start(d.path(), &config);
    assert!(
        err.contains("another twintoken process is using this store directory"),
        "{err}"
    );
    // The first one is unaffected.
    assert_eq!(verify(&c, &node, &t).await, (StatusCode::OK, "long".to_string()));
}

#[test]
fn a_store_directory_that_cannot_be_written_stops_the_start() {
    let (d, config) = deployment("");
    // Permission bits do not stop root; sysfs refuses new directories to
    // everybody.
    let root = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    };
    let unwritable = if root {
        PathBuf::from("/sys/twintoken-test-sessions")
    } else {
        let ro = d.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        ro.join("sessions")
    };
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("path = \"sessions\"", &format!("path = \"{}\"", unwritable.display()));
    std::fs::write(&config, text).unwrap();
    let err = refused_start(d.path(), &config);
    assert!(
        err.contains("store.path")
            && err.contains(&unwritable.display().to_string())
            && err.contains("creating the store directory"),
        "{err}"
    );
}

/// A store directory that group or others may write is refused at start
/// (another local user could have replaced the journal to lift bans or
/// resurrect sessions); the message names the directory and the fix. One
/// they can only read is tightened to 0700 and used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_directory_open_to_other_users_stops_the_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let (d, config) = deployment("");
    let store = d.path().join("sessions");
    std::fs::create_dir_all(&store).unwrap();
    let dir = std::fs::canonicalize(&store).unwrap();
    for mode in [0o777, 0o775, 0o722, 0o702, 0o770] {
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = refused_start(d.path(), &config);
        assert!(
            err.contains(&dir.display().to_string())
                && err.contains(&format!("mode {mode:04o}"))
                && err.contains(&format!("chmod 700 {}", dir.display())),
            "{mode:o}: {err}"
        );
        assert_eq!(
            std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
            mode,
            "a refused directory is left as it was"
        );
    }
    for mode in [0o755, 0o750, 0o705] {
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(mode)).unwrap();
        let c = Client::new();
        let node = Node::start(d.path(), &config);
        let t = issue(&c, &node, "alice").await;
        assert_eq!(verify(&c, &node, &t).await, (StatusCode::OK, "long".to_string()));
        assert_eq!(
            std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
            0o700,
            "{mode:o} is tightened"
        );
        drop(node);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_path_keeps_sessions_in_memory_only() {
    let (d, config) = deployment("");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("path = \"sessions\"", "path = \"\"");
    std::fs::write(&config, text).unwrap();
    let c = Client::new();
    let mut node = Node::start(d.path(), &config);
    let t = issue(&c, &node, "alice").await;
    node.terminate();
    node.restart();
    assert_eq!(
        verify(&c, &node, &t).await,
        (StatusCode::UNAUTHORIZED, "unknown_session".to_string())
    );
    assert!(!store_dir(d.path()).exists());
}

mod compaction {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use twintoken::config::{Config, Fsync};
    use twintoken::store::memory::MemoryStore;
    use twintoken::store::memory::persist::PersistOptions;
    use twintoken::store::{NewSession, SessionStore, StoreSettings};
    use twintoken::time::UnixMs;
    use twintoken::tokens::{Sid, UserId};

    const T0: UnixMs = UnixMs(1_800_000_000_000);

    fn open(dir: &Path, compact_min: u64) -> MemoryStore {
        let mut o = PersistOptions::new(dir, Fsync::Everysec);
        o.compact_min_bytes = compact_min;
        MemoryStore::open(StoreSettings::from_config(&Config::for_test()), &o).unwrap()
    }

    async fn logins(s: &MemoryStore, from: u8, to: u8) {
        for i in from..to {
            let n = NewSession {
                uid: UserId::new(&format!("u{}", i % 7)).unwrap(),
                sid: Sid([i; 16]),
                device: None,
                meta: Some(format!("m{i}")),
            };
            s.login(&n, T0).await.unwrap();
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_keeps_every_change_and_a_crash_before_the_new_snapshot_loses_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), u64::MAX);
        logins(&s, 0, 30).await;
        s.revoke(&UserId::new("u3").unwrap(), &Sid([3; 16]), T0).await.unwrap();
        drop(s);
        assert_eq!(files(d.path()), ["LOCK", "journal.0"]);
        let gen0 = std::fs::read(d.path().join("journal.0")).unwrap();

        // A zero floor: the writer compacts within a tick.
        let s = open(d.path(), 0);
        let start = Instant::now();
        while !files(d.path()).contains(&"snapshot.1".to_string()) {
            assert!(start.elapsed() < Duration::from_secs(10), "compacted within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(s);
        // Generation 0's files are gone once the new snapshot is in place.
        let s = open(d.path(), u64::MAX);
        assert!(
            !files(d.path()).contains(&"journal.0".to_string()),
            "{:?}",
            files(d.path())
        );
        logins(&s, 30, 40).await;
        s.revoke_all(&UserId::new("u5").unwrap(), T0).await.unwrap();
        let state = s.dump(T0);
        drop(s);
        assert_eq!(open(d.path(), u64::MAX).dump(T0), state, "snapshot + newer journal");

        // A crash after the switch to journal.1 but before snapshot.1 was
        // renamed into place: the old journal is still there, no new snapshot.
        std::fs::remove_file(d.path().join("snapshot.1")).unwrap();
        std::fs::write(d.path().join("journal.0"), &gen0).unwrap();
        assert_eq!(open(d.path(), u64::MAX).dump(T0), state, "journal.0 then journal.1");
        assert!(!state.contains("u5") && state.contains("u1 "), "{state}");
    }
}
