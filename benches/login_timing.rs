//! Does a login's duration tell whether the user name exists? Measures
//! `UserDb::authenticate` for an unknown name, a known name with a wrong
//! password, and the right password, interleaved (round-robin) so drift
//! hits all three alike; reports medians and the unknown-vs-wrong
//! difference.
//!
//! `cargo bench --bench login_timing`; without `--bench`, a short smoke.

use std::time::Instant;

use twintoken::users::{UserDb, Users};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 60 } else { 3 };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("users.toml");
    let mut users = Users::default();
    users
        .add("alice", Some("1001"), "correct horse battery")
        .unwrap_or_else(|e| panic!("{e}"));
    users.save(&path).unwrap_or_else(|e| panic!("{e}"));
    let db = UserDb::open(&path).unwrap_or_else(|e| panic!("{e}"));
    // (label, name, password, whether the check must succeed)
    let cases = [
        ("unknown user", "mallory", "correct horse battery", false),
        ("wrong password", "alice", "wrong password!", false),
        ("right password", "alice", "correct horse battery", true),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (i, (label, name, pw, accept)) in cases.iter().enumerate() {
            let t = Instant::now();
            let r = std::hint::black_box(db.authenticate(name, pw));
            times[i].push(t.elapsed().as_secs_f64() * 1000.0);
            // A timing figure of a check that answers wrongly means nothing.
            assert_eq!(r.is_ok(), *accept, "{label}: authenticate answered {r:?}");
        }
    }
    let medians: Vec<f64> = times.iter_mut().map(|v| median(v)).collect();
    println!("login check timing, {rounds} interleaved rounds (argon2id m=19 MiB t=2 p=1):");
    for ((label, _, _, _), m) in cases.iter().zip(&medians) {
        println!("  {label:<15} median {m:.2} ms");
    }
    println!(
        "  unknown vs wrong password: {:+.2} ms ({:+.1} %)",
        medians[0] - medians[1],
        (medians[0] / medians[1] - 1.0) * 100.0
    );
}
