//! A real `redis-server` on a free loopback port, started by the test and
//! killed when dropped. Never a Redis that happens to be running.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server owned by one test.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Extra arguments, kept so a restart runs the same configuration.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server with persistence off and waits until it answers.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra arguments (e.g. cluster mode).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut dir = tempfile::tempdir().expect("temp dir for redis");
        for _ in 0..5 {
            let port = free_port();
            let extra_owned: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
            let child = server_command(port, dir.path(), &extra_owned)
                .spawn()
                .expect("redis-server must be installed (./scripts/test installs it)");
            let mut s = RedisServer {
                child,
                port,
                dir,
                extra: extra.iter().map(|a| a.to_string()).collect(),
            };
            if s.wait_ready(Duration::from_secs(5)) {
                return s;
            }
            // Lost the port to someone else: try another.
            let _ = s.child.kill();
            let _ = s.child.wait();
            dir = s.take_dir();
        }
        panic!("could not start redis-server on a free port");
    }

    fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A blocking connection for setting up or inspecting state.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to test redis")
    }

    /// Kills the server (SIGKILL): connections drop, nothing is saved.
    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new server on the same port, directory and arguments (after
    /// `kill`): empty unless started with persistence on.
    pub fn restart(&mut self) {
        self.child = server_command(self.port, self.dir.path(), &self.extra)
            .spawn()
            .expect("redis-server restarts");
        assert!(
            self.wait_ready(Duration::from_secs(10)),
            "restarted redis-server answers on port {}",
            self.port
        );
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        signal(self.child.id(), "STOP");
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn thaw(&self) {
        signal(self.child.id(), "CONT");
    }
}

/// The one way tests start redis-server: loopback only, persistence off
/// unless `extra` turns it on, output discarded.
fn server_command(port: u16, dir: &std::path::Path, extra: &[String]) -> Command {
    let mut c = Command::new("redis-server");
    c.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .args(extra)
    .arg("--dir")
    .arg(dir)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .map(|s| s.success());
    assert!(matches!(ok, Ok(true)), "kill -{sig} {pid} failed");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A frozen server ignores SIGKILL until continued on some kernels' views
        // of the process; thaw first. No assertions here: never panic in drop.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port whose cluster bus port (+10000) is free too.
///
/// Picked below Linux's ephemeral range (32768-60999 by default), never by
/// binding port 0: an ephemeral port can be handed to another test's socket
/// or outgoing connection while a server is down between a kill and a
/// restart, and the restart would then find its port taken. Each pick in a
/// process is a different port (counter from a per-process random start).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const COUNT: u32 = 12_000; // ports 10000-21999, bus ports 20000-31999
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()))
            % COUNT,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for redis")
}

/// A 3-master Redis Cluster of real redis-server processes.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::start_shaped(3, 0)
    }

    /// Three masters, each with one replica.
    pub fn start_with_replicas() -> RedisCluster {
        RedisCluster::start_shaped(6, 1)
    }

    fn start_shaped(n: usize, replicas: u32) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| RedisServer::start_with(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]))
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli (package redis-tools) must be installed");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let start = Instant::now();
        loop {
            let ok = nodes.iter().all(|n| {
                let info: Result<String, _> = redis::cmd("CLUSTER").arg("INFO").query(&mut n.conn());
                info.map(|i| i.contains("cluster_state:ok")).unwrap_or(false)
            });
            if ok {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "cluster did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }
}
