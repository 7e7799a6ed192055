//! The embedded store kept on disk (`store.path`), measured:
//! - journal bytes per login (plain, and with device and metadata);
//! - start time and memory with N sessions on disk, loaded from the journal
//!   alone and from a snapshot, each in a fresh child process (this binary
//!   again) so earlier phases leave nothing in its heap;
//! - verify through the `Verifier` on the embedded store in memory only vs
//!   kept on disk: the short path (both tokens) and the long path (long
//!   token alone, a store verify that changes nothing), and a store verify
//!   that renews (a journal write), interleaved rounds, medians.
//!
//! `cargo bench --bench embedded` for the figures (N = 100 000); without
//! `--bench` (as under `cargo test --all-targets`) a quick smoke with small
//! counts that still checks every answer.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use twintoken::config::{Config, Fsync};
use twintoken::keys::{KeySet, Keyring};
use twintoken::store::memory::MemoryStore;
use twintoken::store::memory::persist::PersistOptions;
use twintoken::store::{
    Device, LoginOutcome, NewSession, SessionStore, Store, StoreSettings, VerifyOutcome, VerifyRequest,
};
use twintoken::time::UnixMs;
use twintoken::tokens::{Kid, Sid, UserId};
use twintoken::verify::{Path as AuthPath, Verifier, VerifierSettings};

const T0: UnixMs = UnixMs(1_800_000_000_000);
const META: &str = r#"{"ip":"203.0.113.7","ua":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0"}"#;

fn settings() -> StoreSettings {
    let mut c = Config::for_test();
    // Long enough that the renewing verifies below never reach it.
    c.tokens.long_absolute_ttl = Duration::from_secs(50 * 365 * 86400);
    StoreSettings::from_config(&c)
}

fn sid(i: u64, tag: u8) -> Sid {
    let mut s = [tag; 16];
    s[..8].copy_from_slice(&i.to_le_bytes());
    Sid(s)
}

fn uid(i: u64) -> UserId {
    UserId::new(&format!("user{i}")).unwrap_or_else(|e| panic!("{e}"))
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_else(|e| panic!("statm: {e}"));
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("statm: {statm}"));
    pages * 4
}

fn dir_bytes(d: &Path, prefix: &str) -> u64 {
    std::fs::read_dir(d)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `n` logins, one user each, into a store kept in `dir`; returns after
/// everything is on disk (the store is dropped).
async fn fill(dir: &Path, n: u64, rich: bool, compact_min: u64) {
    let mut o = PersistOptions::new(dir, Fsync::Everysec);
    o.compact_min_bytes = compact_min;
    let s = MemoryStore::open(settings(), &o).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..n {
        let r = s
            .login(
                &NewSession {
                    uid: uid(i),
                    sid: sid(i, 1),
                    device: rich.then(|| Device::new("pc").unwrap_or_else(|e| panic!("{e}"))),
                    meta: rich.then(|| META.to_string()),
                },
                T0,
            )
            .await;
        assert!(matches!(r, Ok(LoginOutcome::Created { .. })), "login {i}: {r:?}");
    }
}

/// The child: opens the store in `dir`, prints "load_ms rss_delta_kib sessions".
fn child(dir: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let before = rss_kib();
    let start = Instant::now();
    let s = MemoryStore::open(settings(), &PersistOptions::new(dir, Fsync::Everysec)).unwrap_or_else(|e| panic!("{e}"));
    let took = start.elapsed();
    let after = rss_kib();
    let stats = rt.block_on(s.stats(T0)).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{:.1} {} {}",
        took.as_secs_f64() * 1e3,
        after.saturating_sub(before),
        stats.sessions
    );
}

/// Loads `dir` in a fresh process `times` times: median load ms, median
/// RSS growth KiB; asserts every load found `n` sessions.
fn load(dir: &Path, n: u64, times: usize) -> (f64, f64) {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let (mut ms, mut kib) = (Vec::new(), Vec::new());
    for _ in 0..times {
        let out = std::process::Command::new(&exe)
            .arg("--load-child")
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f: Vec<f64> = text.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        assert_eq!(f.len(), 3, "child printed {text:?}");
        assert_eq!(f[2] as u64, n, "every session loaded");
        ms.push(f[0]);
        kib.push(f[1]);
    }
    (median(&mut ms), median(&mut kib))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--load-child") {
        return child(&args[i + 1]);
    }
    let full = args.iter().any(|a| a == "--bench");
    let (n, rounds, per_round, loads) = if full {
        (100_000, 15, 20_000, 5)
    } else {
        (2_000, 3, 500, 1)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));

    // Journal bytes per login.
    println!("embedded store on disk, {n} sessions (1 per user):");
    for rich in [false, true] {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(fill(d.path(), n, rich, u64::MAX));
        let bytes = dir_bytes(d.path(), "journal.");
        assert!(bytes > 0 && dir_bytes(d.path(), "snapshot.") == 0);
        println!(
            "  journal bytes per login ({}): {:.1}",
            if rich {
                "device pc + 90-byte metadata"
            } else {
                "no device, no metadata"
            },
            bytes as f64 / n as f64
        );
    }

    // Start time and memory: from the journal alone, then from a snapshot.
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(fill(d.path(), n, true, u64::MAX));
    let (ms, kib) = load(d.path(), n, loads);
    println!(
        "  start from the journal ({} KiB): load {ms:.1} ms, RSS +{kib:.0} KiB ({:.0} B per session)",
        dir_bytes(d.path(), "journal.") / 1024,
        kib * 1024.0 / n as f64
    );
    // Compact: open with a zero floor and wait for the writer's snapshot.
    {
        let mut o = PersistOptions::new(d.path(), Fsync::Everysec);
        o.compact_min_bytes = 0;
        let s = MemoryStore::open(settings(), &o).unwrap_or_else(|e| panic!("{e}"));
        let start = Instant::now();
        while dir_bytes(d.path(), "snapshot.") == 0 {
            assert!(start.elapsed() < Duration::from_secs(60), "compaction within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(s);
    }
    let (ms, kib) = load(d.path(), n, loads);
    println!(
        "  start from a snapshot ({} KiB): load {ms:.1} ms, RSS +{kib:.0} KiB",
        dir_bytes(d.path(), "snapshot.") / 1024
    );

    // Verify: memory only vs kept on disk.
    let keys = Arc::new(Keyring::fixed(KeySet::single(Kid(1), [7; 32])));
    let vs = VerifierSettings::from_config(&Config::for_test());
    let disk_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mem = Arc::new(Store::Memory(Box::new(MemoryStore::new(settings()))));
    let disk = Arc::new(Store::Memory(Box::new(
        MemoryStore::open(settings(), &PersistOptions::new(disk_dir.path(), Fsync::Everysec))
            .unwrap_or_else(|e| panic!("{e}")),
    )));
    let now = UnixMs(T0.0 + 1000);
    let verifiers: Vec<_> = [mem.clone(), disk.clone()]
        .into_iter()
        .map(|s| Verifier::new(keys.clone(), s, vs.clone()))
        .collect();
    let tokens: Vec<_> = verifiers
        .iter()
        .map(|v| {
            rt.block_on(v.login(uid(1), None, None, now))
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let names = ["memory only", "kept on disk"];
    let mut short = [Vec::new(), Vec::new()];
    let mut long = [Vec::new(), Vec::new()];
    let mut renew = [Vec::new(), Vec::new()];
    let stores = [mem, disk];
    let mut renew_now = [now, now];
    for _ in 0..rounds {
        for k in 0..2 {
            let (v, t) = (&verifiers[k], &tokens[k]);
            let start = Instant::now();
            for _ in 0..per_round {
                let r = v.verify(Some(&t.short.token), Some(&t.long.token), now).now_or_never();
                assert!(matches!(r, Some(Ok(ref x)) if x.path == AuthPath::Short), "{r:?}");
            }
            short[k].push(start.elapsed().as_nanos() as f64 / per_round as f64);
            let start = Instant::now();
            for _ in 0..per_round {
                let r = rt.block_on(v.verify(None, Some(&t.long.token), now));
                assert!(matches!(r, Ok(ref x) if x.path == AuthPath::Long), "{r:?}");
            }
            long[k].push(start.elapsed().as_nanos() as f64 / per_round as f64);
            // Store verifies that renew: each 91 minutes after the last, inside
            // the 30-minute renew window of a 2-hour idle lifetime.
            let q = VerifyRequest {
                uid: uid(1),
                sid: t.sid,
                iat: renew_now[k],
                login: now,
                candidate: Sid([9; 16]),
                device: None,
            };
            let start = Instant::now();
            for _ in 0..per_round / 10 {
                renew_now[k] = UnixMs(renew_now[k].0 + 91 * 60_000);
                let q = VerifyRequest { iat: renew_now[k], ..q };
                let r = rt.block_on(stores[k].verify(&q, renew_now[k]));
                assert!(
                    matches!(r, Ok(VerifyOutcome::Valid { idle_expires }) if idle_expires.0 == renew_now[k].0 + 7_200_000),
                    "{r:?}"
                );
            }
            renew[k].push(start.elapsed().as_nanos() as f64 / (per_round / 10) as f64);
        }
    }
    println!("verify, {rounds} interleaved rounds, medians (ns per verify):");
    for k in 0..2 {
        println!(
            "  {:<13} short path {:>7.0}   long path {:>7.0}   renewing store verify {:>7.0}",
            names[k],
            median(&mut short[k]),
            median(&mut long[k]),
            median(&mut renew[k])
        );
    }
    println!(
        "ratios kept on disk / memory only: short {:.3}, long {:.3}, renewing {:.3}",
        median(&mut short[1]) / median(&mut short[0]),
        median(&mut long[1]) / median(&mut long[0]),
        median(&mut renew[1]) / median(&mut renew[0])
    );
}
