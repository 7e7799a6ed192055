//! A real `twintoken serve` process (the built binary), for tests that kill
//! and restart service nodes. Its log goes to a file in its directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Node {
    child: Child,
    pub base: String,
    dir: PathBuf,
    config: PathBuf,
    starts: u32,
}

impl Node {
    /// Starts `twintoken serve --config <config>` in `dir` and waits until it
    /// listens.
    pub fn start(dir: &Path, config: &Path) -> Node {
        let (child, base) = spawn(dir, config, 0);
        Node {
            child,
            base,
            dir: dir.to_path_buf(),
            config: config.to_path_buf(),
            starts: 1,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGKILL: no shutdown, no draining.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the graceful shutdown to finish.
    pub fn terminate(&mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM {}", self.child.id());
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "node stops within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the running (or last) process logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(&self.dir, &self.config, self.starts - 1)).unwrap_or_default()
    }

    /// Starts the node again with the same configuration (a new port).
    pub fn restart(&mut self) {
        let (child, base) = spawn(&self.dir, &self.config, self.starts);
        self.child = child;
        self.base = base;
        self.starts += 1;
    }
}

// The child is returned to a `Node`, which kills and waits for it in `kill9`
// and in `Drop`.
#[allow(clippy::zombie_processes)]
fn spawn(dir: &Path, config: &Path, n: u32) -> (Child, String) {
    let log = log_path(dir, config, n);
    let mut child = Command::new(env!("CARGO_BIN_EXE_twintoken"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(rest) = text.split("open http://").nth(1) {
            let addr = rest.split('/').next().unwrap().to_string();
            return (child, format!("http://{addr}"));
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node did not start: {text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_path(dir: &Path, config: &Path, n: u32) -> PathBuf {
    let stem = config.file_stem().and_then(|s| s.to_str()).unwrap_or("node");
    dir.join(format!("{stem}-{n}.log"))
}
