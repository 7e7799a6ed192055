//! The chaos run: several real `twintoken serve` nodes on a real
//! redis-server (or one node on the embedded store), a seeded random
//! schedule of client operations and faults, every request and answer
//! recorded as JSON lines under `target/chaos/`, and the whole history
//! checked against the invariants of `docs/security.md` by `check.rs`.
//!
//! `scripts/chaos --seed N --seconds S [--nodes K] [--topology
//! single|embedded]` builds the release binary and runs this;
//! `scripts/chaos --self-test` runs it against two broken builds and
//! requires it to fail. Under plain `cargo test` (no `--seed`) it checks
//! the checker on hand-written histories (`selfcheck.rs`).
//!
//! The seed fixes the schedule (which operation each actor sends next,
//! which fault comes when, the cancellation delays); the interleaving
//! with the service's own timing is the machine's, as in any test of a
//! real distributed system, so two runs of one seed are alike, not equal.

#[path = "../it/support/node.rs"]
#[allow(dead_code)]
mod node;
#[path = "../it/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

mod check;
mod history;
mod selfcheck;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Client, RequestBuilder};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use history::{Op, Rec, RunInfo};
use node::Node;
use redis_server::RedisServer;

const ADMIN: &str = "chaos-admin-token-of-at-least-32-bytes";
const PASSWORD: &str = "chaos password";
const ACTORS: usize = 6;
const USERS_PER_ACTOR: usize = 3;
const SHORT_TTL_MS: f64 = 1000.0;
const ROTATE_GRACE_MS: f64 = 1000.0;
const KEY_RELOAD_MS: f64 = 1000.0;

/// splitmix64: a small, well-mixed generator; every actor and the fault
/// schedule get their own stream from the seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn range_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone)]
struct Args {
    seed: u64,
    seconds: u64,
    nodes: usize,
    topology: String,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(file) = arg(&argv, "--check") {
        return check_file(Path::new(&file));
    }
    let Some(seed) = arg(&argv, "--seed") else {
        // `cargo test`: the checker against hand-written histories.
        return selfcheck::run();
    };
    let parsed = (|| -> Result<Args, String> {
        let topology = arg(&argv, "--topology").unwrap_or_else(|| "single".into());
        if !matches!(topology.as_str(), "single" | "embedded") {
            return Err(format!(
                "--topology {topology}: the chaos run drives `single` (one redis-server) and `embedded` \
                 (the on-disk store); Sentinel and Cluster have their own failover tests in tests/it"
            ));
        }
        let nodes = match arg(&argv, "--nodes") {
            Some(n) => n.parse().map_err(|_| format!("--nodes {n}: a number"))?,
            None if topology == "embedded" => 1,
            None => 3,
        };
        if topology == "embedded" && nodes != 1 {
            return Err("--topology embedded: one node (the embedded store is one process's)".into());
        }
        if nodes == 0 {
            return Err("--nodes: at least 1".into());
        }
        Ok(Args {
            seed: seed.parse().map_err(|_| format!("--seed {seed}: a number"))?,
            seconds: match arg(&argv, "--seconds") {
                Some(s) => s.parse().map_err(|_| format!("--seconds {s}: a number"))?,
                None => 60,
            },
            nodes,
            topology,
        })
    })();
    let args = match parsed {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(path) => check_file(&path),
        Err(e) => {
            eprintln!("chaos: the run could not be carried out: {e}");
            ExitCode::from(2)
        }
    }
}

/// Reads a history and checks it; prints each violation with the
/// operations that led to it, then the summary line.
fn check_file(path: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("chaos: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let mut history = Vec::new();
    for (n, line) in text.lines().enumerate() {
        match serde_json::from_str::<Rec>(line) {
            Ok(r) => history.push(r),
            Err(e) => {
                eprintln!("chaos: {}:{}: {e}", path.display(), n + 1);
                return ExitCode::from(2);
            }
        }
    }
    let mut checker = match check::Checker::new(&history) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chaos: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    checker.check();
    for v in checker.violations.iter().take(20) {
        println!("{}", checker.describe(v));
    }
    if checker.violations.len() > 20 {
        println!("... and {} more", checker.violations.len() - 20);
    }
    if !checker.violations.is_empty() {
        // Every violation, with its operations, beside the history.
        let all: String = checker.violations.iter().map(|v| checker.describe(v) + "\n").collect();
        let out = path.with_file_name("violations.txt");
        match std::fs::write(&out, all) {
            Ok(()) => println!("all {} violations: {}", checker.violations.len(), out.display()),
            Err(e) => eprintln!("chaos: {}: {e}", out.display()),
        }
    }
    println!("{}", summary(&history, &checker));
    if checker.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn summary(history: &[Rec], checker: &check::Checker) -> String {
    let mut ops: BTreeMap<String, u64> = BTreeMap::new();
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let (mut n, mut cancelled, mut rotations, mut fallback) = (0u64, 0u64, 0u64, 0u64);
    let mut info = None;
    let mut last = 0.0f64;
    for r in history {
        match r {
            Rec::Run(i) => info = Some(i.clone()),
            Rec::Op(o) => {
                n += 1;
                last = last.max(o.tr);
                let key = match o.status {
                    202 => format!("{}(pending)", o.op),
                    _ => o.op.clone(),
                };
                *ops.entry(key).or_default() += 1;
                cancelled += u64::from(o.cancelled);
                rotations += u64::from(o.rotated);
                fallback += u64::from(o.path == "fallback");
            }
            Rec::Outage { fault, .. } => *faults.entry(fault.clone()).or_default() += 1,
            Rec::Node { event, .. } if event == "kill" => *faults.entry("node_kill9".into()).or_default() += 1,
            Rec::Key { event, .. } => *faults.entry(format!("key_{event}")).or_default() += 1,
            Rec::Node { .. } => {}
        }
    }
    let secs = (last / 1000.0).max(0.001);
    let join = |m: &BTreeMap<String, u64>| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
    let (seed, topo, nodes) = info.map_or((0, String::new(), 0), |i| (i.seed, i.topology, i.nodes));
    format!(
        "chaos: seed {seed}, {topo}, {nodes} node(s), {secs:.0} s: {n} operations ({:.0}/s) over {} sessions of {} users [{}]; \
         {cancelled} cancelled mid-request, {rotations} token rotations, {fallback} fallback answers; \
         faults: {}; violations: {}",
        n as f64 / secs,
        checker.sessions(),
        check::distinct_users(history),
        join(&ops),
        if faults.is_empty() {
            "none".into()
        } else {
            join(&faults)
        },
        checker.violations.len()
    )
}

/// What every task shares: the clock, the nodes' addresses, the history.
struct World {
    t0: Instant,
    until: Instant,
    bases: RwLock<Vec<String>>,
    out: Mutex<std::io::BufWriter<std::fs::File>>,
    next_op: AtomicU64,
    next_session: AtomicU64,
    next_burst: AtomicU64,
    redis_url: Option<String>,
    /// Users banned until (ms): not logged in until then.
    banned: Mutex<BTreeMap<String, f64>>,
}

impl World {
    fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1000.0
    }

    fn record(&self, r: &Rec) {
        let line = serde_json::to_string(r).unwrap_or_default();
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{line}");
    }

    fn base(&self, node: usize) -> String {
        self.bases.read().unwrap_or_else(|p| p.into_inner())[node].clone()
    }

    fn nodes(&self) -> usize {
        self.bases.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn op(&self, actor: usize, node: usize, op: &str, user: &str, session: Option<u64>) -> Op {
        Op {
            id: self.next_op.fetch_add(1, Ordering::Relaxed),
            actor,
            node,
            op: op.into(),
            user: user.into(),
            session,
            ts: self.ms(),
            ..Op::default()
        }
    }
}

/// The key id a token names (bytes 2..6 of its decoded form: version,
/// kind, kid; `docs/token-format.md`); 0 if it does not decode.
fn kid(token: &str) -> u32 {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| b.get(2..6).map(|k| u32::from_be_bytes([k[0], k[1], k[2], k[3]])))
        .unwrap_or(0)
}

fn node_config(dir: &Path, i: usize, store: &str) -> Result<PathBuf, String> {
    let path = dir.join(format!("node{i}.toml"));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN}\"\n\
         [store]\n{store}\ntimeout = \"200ms\"\nfallback = \"crypto\"\n\
         [keys]\ndir = \"{keys}\"\nreload_interval = \"{KEY_RELOAD_MS}ms\"\n\
         [users]\nfile = \"{users}\"\n\
         [tokens]\nshort_ttl = \"{SHORT_TTL_MS}ms\"\nrotate_interval = \"4s\"\nrotate_grace = \"{ROTATE_GRACE_MS}ms\"\n\
         [login]\nmax_sessions = 1000\n\
         [cookies]\nsecure = false\n\
         [dbsc]\nenabled = true\n",
        keys = dir.join("keys").display(),
        users = dir.join("users.toml").display(),
    );
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Starts everything, runs the actors and the faults for the given time,
/// and returns the history's path.
async fn run(args: Args) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("chaos");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = root.join(format!("{}-{}-{stamp}", args.topology, args.seed));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    twintoken::keys::init(
        &dir.join("keys"),
        twintoken::time::UnixMs::from_system_time(std::time::SystemTime::now()),
    )
    .map_err(|e| format!("keys init: {e}"))?;
    let mut users = twintoken::users::Users::default();
    let names: Vec<String> = (0..ACTORS * USERS_PER_ACTOR).map(|i| format!("chaos{i}")).collect();
    for n in &names {
        users.add(n, None, PASSWORD).map_err(|e| format!("users: {e}"))?;
    }
    users.save(&dir.join("users.toml")).map_err(|e| format!("users: {e}"))?;

    let redis = if args.topology == "single" {
        Some(RedisServer::start_with(&[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]))
    } else {
        None
    };
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let store = match &redis {
            Some(r) => format!(
                "redis = \"{}\"\noutbox = \"{}\"",
                r.url(),
                dir.join(format!("outbox{i}")).display()
            ),
            None => format!(
                "path = \"{}\"\nfsync = \"always\"",
                dir.join(format!("sessions{i}")).display()
            ),
        };
        let config = node_config(&dir, i, &store)?;
        nodes.push(Node::start(&dir, &config));
    }
    let history = dir.join("history.jsonl");
    let file = std::fs::File::create(&history).map_err(|e| format!("{}: {e}", history.display()))?;
    let t0 = Instant::now();
    let world = Arc::new(World {
        t0,
        until: t0 + Duration::from_secs(args.seconds),
        bases: RwLock::new(nodes.iter().map(|n| n.base.clone()).collect()),
        out: Mutex::new(std::io::BufWriter::new(file)),
        next_op: AtomicU64::new(1),
        next_session: AtomicU64::new(1),
        next_burst: AtomicU64::new(1),
        redis_url: redis.as_ref().map(|r| r.url()),
        banned: Mutex::new(BTreeMap::new()),
    });
    world.record(&Rec::Run(RunInfo {
        seed: args.seed,
        seconds: args.seconds,
        nodes: args.nodes,
        topology: args.topology.clone(),
        short_ttl: SHORT_TTL_MS,
        rotate_grace: ROTATE_GRACE_MS,
        key_reload: KEY_RELOAD_MS,
    }));
    for i in 0..args.nodes {
        world.record(&Rec::Node {
            node: i,
            event: "start".into(),
            t: 0.0,
        });
    }
    println!(
        "chaos: seed {}, {} s, {} node(s) on {}; history {}",
        args.seed,
        args.seconds,
        args.nodes,
        args.topology,
        history.display()
    );
    let actors: Vec<_> = (0..ACTORS)
        .map(|a| {
            let users = names[a * USERS_PER_ACTOR..(a + 1) * USERS_PER_ACTOR].to_vec();
            tokio::spawn(actor(a, world.clone(), Rng::new(args.seed, a as u64 + 1), users))
        })
        .collect();
    let monitor = world
        .redis_url
        .clone()
        .map(|url| tokio::spawn(monitor(world.clone(), url)));
    let faults = faults(world.clone(), Rng::new(args.seed, 0), nodes, redis, dir.clone()).await;
    if let Some(m) = monitor {
        m.abort();
    }
    for a in actors {
        let _ = a.await;
    }
    drop(faults);
    world
        .out
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .flush()
        .map_err(|e| e.to_string())?;
    Ok(history)
}

/// A write to Redis slower than this counts as the store not answering
/// (the nodes' `store.timeout` is 200 ms; a slow fsync under
/// `appendfsync always` on a busy machine stalls every writer).
const STALL_MS: f64 = 100.0;

/// Watches the store from outside: a write every 50 ms; one slower than
/// [`STALL_MS`] (or failing) is recorded as an observed outage, so the
/// checker does not hold the nodes to "the store answers" while it did
/// not, whoever caused it.
async fn monitor(w: Arc<World>, url: String) {
    let mut conn = None;
    let mut n = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = w.ms();
        if conn.is_none() {
            let c = async {
                let client = redis::Client::open(url.as_str()).ok()?;
                client.get_multiplexed_async_connection().await.ok()
            };
            conn = tokio::time::timeout(Duration::from_millis(500), c).await.ok().flatten();
        }
        let ok = match conn.as_mut() {
            Some(c) => {
                n += 1;
                let mut set = redis::cmd("SET");
                set.arg("chaos:monitor").arg(n);
                let call = set.query_async::<()>(c);
                matches!(tokio::time::timeout(Duration::from_secs(1), call).await, Ok(Ok(())))
            }
            None => false,
        };
        if !ok {
            conn = None;
        }
        let end = w.ms();
        if !ok || end - start > STALL_MS {
            w.record(&Rec::Outage {
                fault: "observed_stall".into(),
                start,
                end,
            });
        }
    }
}

/// The fault schedule: until the end of the run, every 2-5 s one of
/// Redis SIGSTOP/SIGCONT, Redis SIGKILL and restart (AOF, fsync always),
/// a node's SIGKILL and restart, `keys rotate`, `keys retire --force`.
/// Returns what it owns, to be dropped (killed) after the actors end.
async fn faults(
    w: Arc<World>,
    mut rng: Rng,
    nodes: Vec<Node>,
    mut redis: Option<RedisServer>,
    dir: PathBuf,
) -> (Vec<Node>, Option<RedisServer>) {
    let nodes = Arc::new(Mutex::new(nodes));
    let keys = tokio::spawn(key_rotations(w.clone(), dir.join("keys")));
    loop {
        tokio::time::sleep(rng.range_ms(2000, 5000)).await;
        if Instant::now() + Duration::from_secs(3) > w.until {
            break;
        }
        let pick = rng.below(70);
        match (&mut redis, pick) {
            (Some(r), 0..=29) => {
                let hold = rng.range_ms(1000, 4000);
                let start = w.ms();
                r.freeze();
                tokio::time::sleep(hold).await;
                r.thaw();
                w.record(&Rec::Outage {
                    fault: "redis_sigstop".into(),
                    start,
                    end: w.ms(),
                });
            }
            (Some(r), 30..=49) => {
                let down = rng.range_ms(300, 2000);
                let start = w.ms();
                r.kill();
                tokio::time::sleep(down).await;
                let mut owned = redis.take();
                owned = tokio::task::spawn_blocking(move || {
                    if let Some(r) = owned.as_mut() {
                        r.restart();
                    }
                    owned
                })
                .await
                .unwrap_or(None);
                redis = owned;
                w.record(&Rec::Outage {
                    fault: "redis_sigkill_restart".into(),
                    start,
                    end: w.ms(),
                });
            }
            _ => {
                let i = rng.below(w.nodes() as u64) as usize;
                w.record(&Rec::Node {
                    node: i,
                    event: "kill".into(),
                    t: w.ms(),
                });
                let ns = nodes.clone();
                let base = tokio::task::spawn_blocking(move || {
                    let mut ns = ns.lock().unwrap_or_else(|p| p.into_inner());
                    ns[i].kill9();
                    ns[i].restart();
                    ns[i].base.clone()
                })
                .await
                .unwrap_or_default();
                w.bases.write().unwrap_or_else(|p| p.into_inner())[i] = base;
                w.record(&Rec::Node {
                    node: i,
                    event: "start".into(),
                    t: w.ms(),
                });
            }
        }
    }
    keys.abort();
    let nodes = std::mem::take(&mut *nodes.lock().unwrap_or_else(|p| p.into_inner()));
    (nodes, redis)
}

/// Key rotation on its own clock: `keys rotate --delay 1s` every 8 s, and
/// `keys retire --force` of the oldest key once two newer ones exist (it
/// stopped signing 7 s before; sessions idle since still hold tokens of the
/// retired key: the checker knows which key sealed each token).
async fn key_rotations(w: Arc<World>, keys: PathBuf) {
    let mut next_kid = 2u32;
    let mut live: Vec<u32> = vec![1];
    loop {
        tokio::time::sleep(Duration::from_secs(8)).await;
        let k = keys.clone();
        if tokio::task::spawn_blocking(move || keys_cli(&k, &["rotate", "--delay", "1s"]))
            .await
            .unwrap_or(false)
        {
            w.record(&Rec::Key {
                event: "rotate".into(),
                kid: next_kid,
                t: w.ms(),
            });
            live.push(next_kid);
            next_kid += 1;
        }
        if live.len() >= 3 {
            let old = live.remove(0);
            let k = keys.clone();
            let id = old.to_string();
            if tokio::task::spawn_blocking(move || keys_cli(&k, &["retire", &id, "--force"]))
                .await
                .unwrap_or(false)
            {
                w.record(&Rec::Key {
                    event: "retire".into(),
                    kid: old,
                    t: w.ms(),
                });
            }
        }
    }
}

fn keys_cli(dir: &Path, args: &[&str]) -> bool {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twintoken"))
        .arg("keys")
        .args(args)
        .arg("--keys-dir")
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!("chaos: keys {args:?}: {}", String::from_utf8_lossy(&o.stderr).trim());
            false
        }
        Err(e) => {
            eprintln!("chaos: keys {args:?}: {e}");
            false
        }
    }
}

/// One client session as its holder sees it.
struct Session {
    id: u64,
    user: String,
    long: String,
    short: String,
    sid: String,
    /// Long tokens replaced by rotation, with when their successor was
    /// first accepted by the store (its predecessor's grace starts then).
    old: Vec<(String, Option<f64>)>,
    /// The holder has been told it ended (or does not know any more).
    over: bool,
    /// The registration challenge the login answer offered.
    offer: Option<String>,
    /// Bound to this device key (device-bound sessions).
    device: Option<Arc<aws_lc_rs::signature::EcdsaKeyPair>>,
    /// The long token from before the binding (worthless since).
    pre_bind: Option<String>,
}

/// One actor: owns a few users and their sessions, and sends one
/// operation after another (never two for the same user at once, except
/// bursts, so every answer is attributable).
async fn actor(a: usize, w: Arc<World>, mut rng: Rng, users: Vec<String>) {
    let Ok(c) = Client::builder()
        .timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    else {
        return;
    };
    let Ok(h2) = Client::builder()
        .timeout(Duration::from_secs(3))
        .http2_prior_knowledge()
        .build()
    else {
        return;
    };
    let mut sessions: Vec<Session> = Vec::new();
    while Instant::now() < w.until {
        tokio::time::sleep(rng.range_ms(5, 30)).await;
        let node = rng.below(w.nodes() as u64) as usize;
        let live: Vec<usize> = (0..sessions.len()).filter(|&i| !sessions[i].over).collect();
        let pick = rng.below(100);
        if live.len() < 4 || (pick < 8 && live.len() < 15) {
            let user = &users[rng.below(users.len() as u64) as usize];
            let banned = w
                .banned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(user)
                .is_some_and(|&until| until > w.ms());
            if !banned && let Some(s) = login(a, &w, &c, node, user, rng.chance(30)).await {
                sessions.push(s);
            }
            continue;
        }
        let i = if pick < 70 && !live.is_empty() || sessions.iter().all(|s| !s.over) {
            live[rng.below(live.len() as u64) as usize]
        } else {
            let over: Vec<usize> = (0..sessions.len()).filter(|&i| sessions[i].over).collect();
            over[rng.below(over.len() as u64) as usize]
        };
        // Device-bound sessions are made of live ones.
        let i = if (79..=80).contains(&pick) && !live.is_empty() {
            live[rng.below(live.len() as u64) as usize]
        } else {
            i
        };
        match pick {
            // A bound session renews its short token as a browser does.
            0..=54 if sessions[i].device.is_some() && rng.chance(40) => {
                refresh(a, &w, &c, node, &mut sessions[i]).await;
            }
            0..=54 => {
                let variant = ["both", "both", "long", "strict", "cookie", "short", "aged"][rng.below(7) as usize];
                verify(a, &w, &c, node, &mut sessions[i], variant, 0).await;
            }
            55..=64 => burst(a, &w, &c, &h2, node, &mut sessions[i], &mut rng).await,
            65..=69 => logout(a, &w, &c, node, &mut sessions[i]).await,
            70..=71 => {
                let sid = sessions[i].sid.clone();
                let user = sessions[i].user.clone();
                let rq = c
                    .delete(format!("{}/v1/admin/users/{user}/sessions/{sid}", w.base(node)))
                    .bearer_auth(ADMIN);
                let mut o = w.op(a, node, "kick", &user, Some(sessions[i].id));
                let _ = send(&mut o, rq).await;
                done(&w, &mut o);
                if o.status == 200 || o.status == 0 && o.error != "connect" {
                    sessions[i].over = true;
                }
                w.record(&Rec::Op(o));
            }
            72..=74 => {
                let kind = match rng.below(10) {
                    0..=3 => "logout_all",
                    4..=5 => "kick_user",
                    6 => "ban",
                    _ if w.redis_url.is_some() => "expire",
                    _ => "kick_user",
                };
                end_user(a, &w, &c, node, &mut sessions, i, kind).await;
            }
            // Device-bound sessions: bind an unbound session; present the
            // long token from before a binding (a copy an infostealer took
            // earlier).
            79..=80 if sessions[i].device.is_none() => bind(a, &w, &c, node, &mut sessions[i]).await,
            79..=80 if sessions[i].pre_bind.is_some() => {
                let s = &sessions[i];
                let old = s.pre_bind.clone().unwrap_or_default();
                let rq = c.get(format!("{}/v1/verify", w.base(node))).bearer_auth(&old);
                let mut o = w.op(a, node, "prebind", &s.user, Some(s.id));
                o.variant = "long".into();
                o.kid_long = kid(&old);
                let b = send(&mut o, rq).await;
                done(&w, &mut o);
                o.path = b.as_ref().and_then(|b| b["path"].as_str()).unwrap_or("").into();
                w.record(&Rec::Op(o));
            }
            75..=82 => {
                let s = &sessions[i];
                let rq = with_short(c.get(format!("{}/v1/sessions", w.base(node))).bearer_auth(&s.long), s);
                let mut o = w.op(a, node, "list", &s.user, Some(s.id));
                o.kid_long = kid(&s.long);
                let b = send(&mut o, rq).await;
                done(&w, &mut o);
                if let Some(b) = b {
                    o.listed = b["sessions"]
                        .as_array()
                        .map(|v| {
                            v.iter()
                                .filter_map(|x| x["session_id"].as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                }
                w.record(&Rec::Op(o));
            }
            _ => {
                // A rotated-away long token, presented after its grace.
                let now = w.ms();
                let s = &mut sessions[i];
                let Some(pos) = s
                    .old
                    .iter()
                    .position(|(_, at)| at.is_some_and(|at| now - at > ROTATE_GRACE_MS + 500.0))
                else {
                    verify(a, &w, &c, node, s, "long", 0).await;
                    continue;
                };
                let (old, _) = s.old.remove(pos);
                let rq = c.get(format!("{}/v1/verify", w.base(node))).bearer_auth(&old);
                let mut o = w.op(a, node, "replay", &s.user, Some(s.id));
                o.kid_long = kid(&old);
                let b = send(&mut o, rq).await;
                done(&w, &mut o);
                o.path = b.as_ref().and_then(|b| b["path"].as_str()).unwrap_or("").into();
                if o.status != 0 || o.error != "connect" {
                    s.over = true;
                }
                w.record(&Rec::Op(o));
            }
        }
    }
}

/// Sends `rq`; fills status and error into `o` (status 0 and the
/// transport error when no answer came); the JSON body of a 2xx answer,
/// with re-issued tokens (headers or cookies) as `_short` and `_long`.
async fn send(o: &mut Op, rq: RequestBuilder) -> Option<Value> {
    let r = match rq.send().await {
        Ok(r) => r,
        Err(e) => {
            o.status = 0;
            o.error = if e.is_connect() {
                "connect"
            } else if e.is_timeout() {
                "timeout"
            } else {
                "transport"
            }
            .into();
            return None;
        }
    };
    let status = r.status();
    o.status = status.as_u16();
    let headers = r.headers().clone();
    let mut body: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        o.error = body["error"].as_str().unwrap_or("").into();
        if let Some(v) = headers.get("secure-session-challenge").and_then(|v| v.to_str().ok()) {
            return Some(json!({ "_challenge": v }));
        }
        return None;
    }
    if let Value::Object(m) = &mut body {
        if let Some(v) = headers.get("secure-session-registration").and_then(|v| v.to_str().ok())
            && let Some(c) = v.split("challenge=\"").nth(1).and_then(|r| r.split('"').next())
        {
            m.insert("_offer".into(), c.into());
        }
        if let Some(v) = headers.get("x-auth-path").and_then(|v| v.to_str().ok()) {
            m.insert("_path".into(), v.into());
        }
        for (h, k) in [("x-short-token", "_short"), ("x-long-token", "_long")] {
            if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) {
                m.insert(k.into(), v.into());
            }
        }
        for c in headers.get_all(reqwest::header::SET_COOKIE) {
            let pair = c.to_str().unwrap_or("").split(';').next().unwrap_or("");
            if let Some(v) = pair.strip_prefix("tt_short=").filter(|v| !v.is_empty()) {
                m.insert("_short".into(), v.into());
            }
            if let Some(v) = pair.strip_prefix("tt_long=").filter(|v| !v.is_empty()) {
                m.insert("_long".into(), v.into());
            }
        }
    }
    Some(body)
}

/// Stamps `tr` (the answer, or the failure, came back now).
fn done(w: &World, o: &mut Op) {
    o.tr = w.ms();
}

async fn login(a: usize, w: &World, c: &Client, node: usize, user: &str, trusted: bool) -> Option<Session> {
    let id = w.next_session.fetch_add(1, Ordering::Relaxed);
    let (kind, rq) = if trusted {
        (
            "issue",
            c.post(format!("{}/v1/admin/sessions", w.base(node)))
                .bearer_auth(ADMIN)
                .json(&json!({ "user_id": user })),
        )
    } else {
        (
            "login",
            c.post(format!("{}/v1/login", w.base(node)))
                .json(&json!({ "username": user, "password": PASSWORD })),
        )
    };
    let mut o = w.op(a, node, kind, user, Some(id));
    let b = send(&mut o, rq).await;
    done(w, &mut o);
    let s = b.and_then(|b| {
        Some(Session {
            id,
            user: b["user_id"].as_str()?.into(),
            long: b["long_token"].as_str()?.into(),
            short: b["short_token"].as_str()?.into(),
            sid: b["session_id"].as_str()?.into(),
            old: Vec::new(),
            over: false,
            offer: b["_offer"].as_str().map(String::from),
            device: None,
            pre_bind: None,
        })
    });
    if let Some(s) = &s {
        o.sid = s.sid.clone();
        o.user = s.user.clone();
        o.kid_long = kid(&s.long);
    } else {
        o.session = None;
    }
    w.record(&Rec::Op(o));
    s
}

fn verify_request(c: &Client, base: &str, s: &Session, variant: &str) -> RequestBuilder {
    let url = format!("{base}/v1/verify");
    match variant {
        "both" => c.get(url).bearer_auth(&s.long).header("x-short-token", &s.short),
        "strict" => c
            .get(url)
            .bearer_auth(&s.long)
            .header("x-short-token", &s.short)
            .header("x-verify-strict", "true"),
        "cookie" => c
            .get(url)
            .header("cookie", format!("tt_short={}; tt_long={}", s.short, s.long)),
        "short" => c.get(url).header("x-short-token", &s.short),
        // The long cookie alone: the long path of a cookie client, which
        // offers device-bound registration.
        "cookielong" => c.get(url).header("cookie", format!("tt_long={}", s.long)),
        // Step-up: authenticated within the hour (every session here is).
        "aged" => c
            .get(url)
            .bearer_auth(&s.long)
            .header("x-short-token", &s.short)
            .header("x-max-auth-age", "3600"),
        _ => c.get(url).bearer_auth(&s.long),
    }
}

/// Takes what a verify's answer re-issued.
fn adopt(w: &World, s: &mut Session, o: &mut Op, b: &Value, presented: &str) {
    if let Some(t) = b["_short"].as_str() {
        s.short = t.into();
    }
    if let Some(c) = b["_offer"].as_str() {
        s.offer = Some(c.into());
    }
    let path = b["path"].as_str().unwrap_or("");
    if path == "long" && presented == s.long {
        // The store accepted the current long token: if it is a successor,
        // its predecessor's grace runs from now. (Not an answer to an older
        // token, as the other requests of a burst that rotated get.)
        if let Some(last) = s.old.last_mut()
            && last.1.is_none()
        {
            last.1 = Some(w.ms());
        }
    }
    if let Some(t) = b["_long"].as_str()
        && *t != s.long
    {
        let old = std::mem::replace(&mut s.long, t.into());
        // A rotation only when the session id moved on: the concurrent
        // requests of a burst each get a new token of the same successor,
        // and those older tokens are not rotated away.
        if b["session_id"].as_str().is_some_and(|sid| sid != s.sid) {
            s.old.push((old, None));
            if s.old.len() > 4 {
                s.old.remove(0);
            }
            o.rotated = true;
        }
    }
    if let Some(sid) = b["session_id"].as_str() {
        o.sid = sid.into();
        s.sid = sid.into();
    }
    o.path = b["path"].as_str().unwrap_or("").into();
}

async fn verify(a: usize, w: &World, c: &Client, node: usize, s: &mut Session, variant: &str, burst: u64) {
    let rq = verify_request(c, &w.base(node), s, variant);
    let presented = if variant == "short" {
        String::new()
    } else {
        s.long.clone()
    };
    let mut o = w.op(a, node, "verify", &s.user, Some(s.id));
    o.variant = variant.into();
    o.burst = burst;
    o.kid_long = if variant == "short" { 0 } else { kid(&s.long) };
    o.kid_short = if variant == "long" { 0 } else { kid(&s.short) };
    let b = send(&mut o, rq).await;
    done(w, &mut o);
    if let Some(b) = b {
        adopt(w, s, &mut o, &b, &presented);
    } else if variant != "short"
        && (o.status == 401 && o.error != "proof_required" || o.status == 0 && o.error != "connect")
    {
        // Refused, or the answer was lost (it may have rotated the token).
        // A bound session's long token alone is refused by design.
        s.over = true;
    }
    w.record(&Rec::Op(o));
}

/// Several long-only verifies of one session at once, about half of them
/// reset mid-request (HTTP/1.1: TCP RST; HTTP/2: RST_STREAM): single
/// flight's leaders and followers, and leaders that vanish.
async fn burst(a: usize, w: &World, c: &Client, h2: &Client, node: usize, s: &mut Session, rng: &mut Rng) {
    let id = w.next_burst.fetch_add(1, Ordering::Relaxed);
    let base = w.base(node);
    let presented = s.long.clone();
    let addr = base.trim_start_matches("http://").to_string();
    let mut cancels = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let mut o = w.op(a, node, "verify", &s.user, Some(s.id));
        o.variant = "long".into();
        o.burst = id;
        o.cancelled = true;
        o.kid_long = kid(&s.long);
        let delay = rng.range_ms(0, 15);
        if rng.chance(50) {
            let request = format!(
                "GET /v1/verify HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
                s.long
            );
            let addr = addr.clone();
            cancels.push(tokio::spawn(async move {
                if let Ok(mut conn) = tokio::net::TcpStream::connect(&addr).await {
                    let _ = conn.write_all(request.as_bytes()).await;
                    tokio::time::sleep(delay).await;
                    let _ = conn.set_zero_linger();
                    drop(conn);
                    o.error = "reset (HTTP/1.1 RST)".into();
                } else {
                    o.error = "connect".into();
                }
                o
            }));
        } else {
            let rq = h2.get(format!("{base}/v1/verify")).bearer_auth(&s.long);
            cancels.push(tokio::spawn(async move {
                let call = tokio::spawn(rq.send());
                tokio::time::sleep(delay).await;
                call.abort();
                o.error = "reset (HTTP/2 RST_STREAM)".into();
                o
            }));
        }
    }
    tokio::task::yield_now().await;
    let followers = 2 + rng.below(4);
    let mut calls = Vec::new();
    for k in 0..followers {
        let client = if k % 2 == 0 { c.clone() } else { h2.clone() };
        let rq = client.get(format!("{base}/v1/verify")).bearer_auth(&s.long);
        let mut o = w.op(a, node, "verify", &s.user, Some(s.id));
        o.variant = "long".into();
        o.burst = id;
        o.kid_long = kid(&s.long);
        calls.push(async move {
            let b = send(&mut o, rq).await;
            (o, b)
        });
    }
    // Each member's answer time is its own: stamped as it completes.
    let calls = calls.into_iter().map(|call| async {
        let (mut o, b) = call.await;
        done(w, &mut o);
        (o, b)
    });
    for (mut o, b) in futures_util::future::join_all(calls).await {
        if let Some(b) = b {
            adopt(w, s, &mut o, &b, &presented);
        } else if o.status == 401 && o.error != "proof_required" || o.status == 0 && o.error != "connect" {
            s.over = true;
        }
        w.record(&Rec::Op(o));
    }
    for h in cancels {
        if let Ok(mut o) = h.await {
            o.tr = w.ms();
            o.status = 0;
            if o.error != "connect" {
                // A reset request may have rotated the token: the holder
                // no longer knows its state.
                s.over = true;
            }
            w.record(&Rec::Op(o));
        }
    }
}

/// A bound session's requests carry its short token beside the long one
/// (the long token alone earns nothing); others are sent as they are.
fn with_short(rq: RequestBuilder, s: &Session) -> RequestBuilder {
    if s.device.is_some() {
        rq.header("x-short-token", &s.short)
    } else {
        rq
    }
}

/// A DBSC proof (`typ` `dbsc+jwt`, ES256) over `challenge`, with the
/// public key as `jwk` for a registration.
fn proof(key: &aws_lc_rs::signature::EcdsaKeyPair, challenge: &str, registration: bool) -> String {
    use aws_lc_rs::signature::KeyPair as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut header = json!({ "alg": "ES256", "typ": "dbsc+jwt" });
    if registration {
        let p = key.public_key().as_ref();
        header["jwk"] = json!({ "kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65]) });
    }
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(json!({ "jti": challenge }).to_string().as_bytes())
    );
    let sig = key
        .sign(&aws_lc_rs::rand::SystemRandom::new(), signed.as_bytes())
        .map(|s| b64(s.as_ref()))
        .unwrap_or_default();
    format!("{signed}.{sig}")
}

/// Binds the session to a new device key as Chromium does: the long path
/// of a cookie verify offers a challenge for the current session id, the
/// registration signs it. The session continues under a new session id,
/// learned from a verify with both tokens right after.
async fn bind(a: usize, w: &World, c: &Client, node: usize, s: &mut Session) {
    s.offer = None;
    verify(a, w, c, node, s, "cookielong", 0).await;
    let Some(offer) = s.offer.take().filter(|_| !s.over) else {
        return;
    };
    let Ok(key) = aws_lc_rs::signature::EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING)
    else {
        return;
    };
    let rq = c
        .post(format!("{}/v1/dbsc/start", w.base(node)))
        .header("cookie", format!("tt_long={}", s.long))
        .header("secure-session-response", proof(&key, &offer, true));
    let mut o = w.op(a, node, "bind", &s.user, Some(s.id));
    o.kid_long = kid(&s.long);
    let b = send(&mut o, rq).await;
    done(w, &mut o);
    let tokens = b
        .as_ref()
        .and_then(|b| Some((b["_long"].as_str()?, b["_short"].as_str()?)));
    match tokens {
        Some((long, short)) => {
            s.pre_bind = Some(std::mem::replace(&mut s.long, long.into()));
            s.short = short.into();
            s.device = Some(Arc::new(key));
            // The old lineage ended with the binding.
            s.old.clear();
            w.record(&Rec::Op(o));
            verify(a, w, c, node, s, "both", 0).await;
        }
        None => {
            // Ended, or the answer was lost (the binding may have
            // happened: the token held may be dead).
            if o.status == 401 || o.status >= 500 || o.status == 0 && o.error != "connect" {
                s.over = true;
            }
            w.record(&Rec::Op(o));
        }
    }
}

/// A refresh as Chromium makes it: without a proof (403 and a challenge),
/// then signed by the session's key. Recorded as one operation from the
/// first request to the signed one's answer; `path` is `X-Auth-Path`, or
/// `ended` for `{"continue": false}`.
async fn refresh(a: usize, w: &World, c: &Client, node: usize, s: &mut Session) {
    let Some(key) = s.device.clone() else { return };
    let url = format!("{}/v1/dbsc/refresh", w.base(node));
    let cookie = format!("tt_long={}", s.long);
    let mut o = w.op(a, node, "refresh", &s.user, Some(s.id));
    o.variant = "dbsc".into();
    o.kid_long = kid(&s.long);
    let b = send(&mut o, c.post(&url).header("cookie", &cookie)).await;
    let challenge = b
        .as_ref()
        .and_then(|b| b["_challenge"].as_str())
        .and_then(|v| v.strip_prefix('"'))
        .and_then(|v| v.split('"').next())
        .map(String::from);
    let b = match (o.status, challenge) {
        (403, Some(ch)) => {
            o.status = 0;
            o.error.clear();
            let rq = c
                .post(&url)
                .header("cookie", &cookie)
                .header("secure-session-response", proof(&key, &ch, false));
            send(&mut o, rq).await
        }
        _ => None,
    };
    done(w, &mut o);
    match b {
        Some(b) if b["continue"] == false => {
            o.path = "ended".into();
            s.over = true;
        }
        Some(b) => {
            o.path = b["_path"].as_str().unwrap_or("").into();
            if let Some(t) = b["_short"].as_str() {
                s.short = t.into();
            }
            if let Some(t) = b["_long"].as_str()
                && *t != s.long
            {
                s.long = t.into();
                o.rotated = true;
            }
        }
        None => {
            if o.status == 401 || o.status == 0 && o.error != "connect" {
                s.over = true;
            }
        }
    }
    w.record(&Rec::Op(o));
}

async fn logout(a: usize, w: &World, c: &Client, node: usize, s: &mut Session) {
    let rq = with_short(c.post(format!("{}/v1/logout", w.base(node))).bearer_auth(&s.long), s);
    let mut o = w.op(a, node, "logout", &s.user, Some(s.id));
    o.kid_long = kid(&s.long);
    let _ = send(&mut o, rq).await;
    done(w, &mut o);
    if o.error != "connect" {
        s.over = true;
    }
    w.record(&Rec::Op(o));
}

/// Ends every session of session `i`'s user: logout-all (with that
/// session), an admin kick of the user, a ban, or the store itself
/// dropping the user's sessions (as idle expiry does; Redis only).
async fn end_user(a: usize, w: &World, c: &Client, node: usize, sessions: &mut [Session], i: usize, kind: &str) {
    let user = sessions[i].user.clone();
    let ends: Vec<u64> = sessions.iter().filter(|s| s.user == user).map(|s| s.id).collect();
    let base = w.base(node);
    let mut o = w.op(a, node, kind, &user, Some(sessions[i].id));
    o.ends = ends;
    match kind {
        "logout_all" => {
            let rq = with_short(
                c.post(format!("{base}/v1/logout-all")).bearer_auth(&sessions[i].long),
                &sessions[i],
            );
            let _ = send(&mut o, rq).await;
        }
        "kick_user" => {
            let rq = c
                .delete(format!("{base}/v1/admin/users/{user}/sessions"))
                .bearer_auth(ADMIN);
            let _ = send(&mut o, rq).await;
        }
        "ban" => {
            w.banned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(user.clone(), w.ms() + 4000.0);
            let rq = c
                .post(format!("{base}/v1/admin/users/{user}/ban"))
                .bearer_auth(ADMIN)
                .json(&json!({ "duration": "2s", "reason": "chaos" }));
            let _ = send(&mut o, rq).await;
        }
        _ => {
            let url = w.redis_url.clone().unwrap_or_default();
            let del = async {
                let client = redis::Client::open(url).ok()?;
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("DEL")
                    .arg(format!("tt:{{{user}}}"))
                    .arg(format!("tt:{{{user}}}:r"))
                    .query_async::<i64>(&mut conn)
                    .await
                    .ok()
            };
            match tokio::time::timeout(Duration::from_secs(1), del).await {
                Ok(Some(_)) => o.status = 200,
                _ => o.error = "redis unreachable".into(),
            }
        }
    }
    done(w, &mut o);
    // The logout-all's own session is the one presented: a 401 says it
    // was over already; every session of the user is over for the holder
    // unless the request certainly changed nothing.
    if !(o.status == 0 && o.error == "connect") {
        for s in sessions.iter_mut().filter(|s| s.user == user) {
            s.over = true;
        }
    }
    w.record(&Rec::Op(o));
}
