//! The checker against hand-written histories (what `cargo test` runs for
//! this target): each broken history must give exactly the violation it
//! was written for, each sound one none. A checker that finds nothing
//! would fail here.

use std::process::ExitCode;

use super::check::Checker;
use super::history::{Op, Rec, RunInfo};

fn run_line() -> Rec {
    Rec::Run(RunInfo {
        seed: 0,
        seconds: 60,
        nodes: 2,
        topology: "single".into(),
        short_ttl: 1000.0,
        rotate_grace: 1000.0,
        key_reload: 1000.0,
    })
}

/// An answered operation of session 1 (user u) on `node`.
fn op(id: u64, node: usize, kind: &str, ts: f64, status: u16, path: &str) -> Rec {
    Rec::Op(Op {
        id,
        node,
        op: kind.into(),
        variant: if kind == "verify" { "both".into() } else { String::new() },
        session: Some(1),
        user: "u".into(),
        ts,
        tr: ts + 5.0,
        status,
        path: path.into(),
        sid: if status == 200 && kind == "login" {
            "sid-1".into()
        } else {
            String::new()
        },
        error: if status == 401 { "revoked".into() } else { String::new() },
        kid_long: 1,
        ..Op::default()
    })
}

fn with(r: Rec, f: impl FnOnce(&mut Op)) -> Rec {
    match r {
        Rec::Op(mut o) => {
            f(&mut o);
            Rec::Op(o)
        }
        other => other,
    }
}

fn outage(start: f64, end: f64) -> Rec {
    Rec::Outage {
        fault: "redis_sigstop".into(),
        start,
        end,
    }
}

fn login() -> Rec {
    op(1, 0, "login", 100.0, 200, "")
}

/// (name, history, the invariants its violations must name, in order).
fn cases() -> Vec<(&'static str, Vec<Rec>, Vec<&'static str>)> {
    vec![
        (
            "sound: login, verifies on both paths, logout, refusals after",
            vec![
                run_line(),
                login(),
                op(2, 0, "verify", 200.0, 200, "short"),
                op(3, 1, "verify", 300.0, 200, "long"),
                op(4, 1, "logout", 400.0, 200, ""),
                op(5, 0, "verify", 500.0, 401, ""),
                op(6, 1, "verify", 3000.0, 401, ""),
            ],
            vec![],
        ),
        (
            "accepted on the long path after an acknowledged logout",
            vec![
                run_line(),
                login(),
                op(2, 0, "logout", 200.0, 200, ""),
                op(3, 1, "verify", 300.0, 200, "long"),
            ],
            vec!["I1"],
        ),
        (
            "a short token within the broadcast delay is tolerated, past it not",
            vec![
                run_line(),
                login(),
                op(2, 0, "logout", 5000.0, 200, ""),
                op(3, 1, "verify", 5500.0, 200, "short"),
                op(4, 1, "verify", 6500.0, 200, "short"),
            ],
            vec!["I1"],
        ),
        (
            "the fallback while the store answers",
            vec![run_line(), login(), op(2, 0, "verify", 200.0, 200, "fallback")],
            vec!["I2"],
        ),
        (
            "a valid session refused while the store answers",
            vec![run_line(), login(), op(2, 0, "verify", 5000.0, 401, "")],
            vec!["I2"],
        ),
        (
            "a 5xx while the store answers",
            vec![run_line(), login(), op(2, 0, "verify", 5000.0, 503, "")],
            vec!["I2"],
        ),
        (
            "during an outage: fallback for a live session is right, a strict accept is not",
            vec![
                run_line(),
                login(),
                outage(1000.0, 9000.0),
                op(2, 0, "verify", 3000.0, 200, "fallback"),
                with(op(3, 0, "verify", 4000.0, 200, "fallback"), |o| {
                    o.variant = "strict".into()
                }),
            ],
            vec!["I3", "I3"],
        ),
        (
            "during an outage: a live session refused under crypto",
            vec![
                run_line(),
                login(),
                outage(5000.0, 9000.0),
                op(2, 0, "verify", 7000.0, 503, ""),
            ],
            vec!["I3"],
        ),
        (
            "a logout made just before an outage may be unheard by other nodes' fallback",
            vec![
                run_line(),
                login(),
                op(2, 0, "logout", 4500.0, 200, ""),
                outage(5000.0, 9000.0),
                op(3, 1, "verify", 7000.0, 200, "fallback"),
            ],
            vec![],
        ),
        (
            "a logout made long before an outage must hold through it, and after it",
            vec![
                run_line(),
                login(),
                op(2, 0, "logout", 1000.0, 200, ""),
                outage(5000.0, 9000.0),
                op(3, 1, "verify", 7000.0, 200, "fallback"),
                op(4, 1, "verify", 13000.0, 200, "long"),
            ],
            vec!["I1", "I4"],
        ),
        (
            "a pending logout: refused at once by its node, by all after the store returns",
            vec![
                run_line(),
                login(),
                outage(1000.0, 9000.0),
                op(2, 0, "logout", 3000.0, 202, ""),
                op(3, 1, "verify", 4000.0, 200, "fallback"),
                op(4, 0, "verify", 5000.0, 200, "fallback"),
                op(5, 1, "verify", 13000.0, 200, "long"),
            ],
            vec!["I4", "I4"],
        ),
        (
            "a token of a retired key accepted",
            vec![
                run_line(),
                login(),
                Rec::Key {
                    event: "retire".into(),
                    kid: 1,
                    t: 1000.0,
                },
                op(2, 0, "verify", 5000.0, 200, "long"),
            ],
            vec!["I5"],
        ),
        (
            "a rotated-away token accepted after its grace",
            vec![run_line(), login(), op(2, 0, "replay", 5000.0, 200, "long")],
            vec!["I6"],
        ),
        (
            "an ended session still listed",
            vec![
                run_line(),
                login(),
                op(2, 0, "logout", 1000.0, 200, ""),
                with(op(3, 0, "list", 2000.0, 200, ""), |o| {
                    o.session = Some(2);
                    o.listed = vec!["sid-1".into()];
                }),
            ],
            vec!["I1"],
        ),
        (
            "sound: a bound session's long token alone is refused with proof_required; it refreshes by the store and on the fallback",
            vec![
                run_line(),
                login(),
                op(2, 0, "bind", 1000.0, 200, ""),
                op(3, 1, "verify", 1100.0, 200, "short"),
                with(op(4, 0, "verify", 5000.0, 401, ""), |o| {
                    o.variant = "long".into();
                    o.error = "proof_required".into();
                }),
                op(5, 1, "refresh", 6000.0, 200, "long"),
                outage(10_000.0, 20_000.0),
                op(6, 1, "refresh", 15_000.0, 200, "fallback"),
                op(7, 0, "prebind", 25_000.0, 401, ""),
            ],
            vec![],
        ),
        (
            "a bound session's long token alone accepted by the store",
            vec![
                run_line(),
                login(),
                op(2, 0, "bind", 1000.0, 200, ""),
                with(op(3, 1, "verify", 2000.0, 200, "long"), |o| o.variant = "long".into()),
            ],
            vec!["I8"],
        ),
        (
            "the long token from before a binding accepted after it, by the store and on the fallback",
            vec![
                run_line(),
                login(),
                op(2, 0, "bind", 1000.0, 200, ""),
                op(3, 1, "prebind", 1100.0, 200, "long"),
                outage(5000.0, 20_000.0),
                op(4, 1, "prebind", 10_000.0, 200, "fallback"),
            ],
            vec!["I8", "I8"],
        ),
        (
            "a live bound session's refresh told it ended while the store answered",
            vec![
                run_line(),
                login(),
                op(2, 0, "bind", 1000.0, 200, ""),
                op(3, 1, "refresh", 5000.0, 200, "ended"),
            ],
            vec!["I2"],
        ),
        (
            "proof_required for a session that was never bound",
            vec![
                run_line(),
                login(),
                with(op(2, 0, "verify", 5000.0, 401, ""), |o| {
                    o.error = "proof_required".into()
                }),
            ],
            vec!["I2"],
        ),
        (
            "a lost answer makes the session uncertain: a later refusal is no violation",
            vec![
                run_line(),
                login(),
                with(op(2, 0, "verify", 1000.0, 0, ""), |o| o.error = "timeout".into()),
                op(3, 0, "verify", 5000.0, 401, ""),
            ],
            vec![],
        ),
    ]
}

pub fn run() -> ExitCode {
    let mut failed = 0;
    let all = cases();
    for (name, history, want) in &all {
        let mut c = match Checker::new(history) {
            Ok(c) => c,
            Err(e) => {
                println!("FAIL {name}: {e}");
                failed += 1;
                continue;
            }
        };
        c.check();
        let got: Vec<&str> = c.violations.iter().map(|v| v.invariant).collect();
        if &got == want {
            println!("ok   {name}: {got:?}");
        } else {
            failed += 1;
            println!("FAIL {name}: want {want:?}, got {got:?}");
            for v in &c.violations {
                println!("{}", c.describe(v));
            }
        }
    }
    println!("chaos checker self-check: {} cases, {failed} failed", all.len());
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
