//! A redis-server that speaks only TLS, with certificates this test makes
//! with the system's `openssl`: a test CA, a server certificate for
//! 127.0.0.1 and a client certificate (for mutual TLS).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::free_port;

/// A CA with one server and one client certificate, as PEM files.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (./scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// `ca.crt`; `server.crt`/`server.key` (SAN IP 127.0.0.1, localhost);
    /// `client.crt`/`client.key`; `other-ca.crt` (a CA that signed nothing).
    pub fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for ca in ["ca", "other-ca"] {
            let (key, crt, subj) = (
                format!("{ca}.key"),
                format!("{ca}.crt"),
                format!("/CN=twintoken test {ca}"),
            );
            let mut a = vec!["req", "-x509"];
            a.extend(ec);
            a.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
            openssl(d, &a);
        }
        std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for who in ["server", "client"] {
            let (key, csr, crt, ext) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.crt"),
                format!("{who}.ext"),
            );
            let subj = format!("/CN=twintoken test {who}");
            let mut a = vec!["req"];
            a.extend(ec);
            a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(d, &a);
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
            );
        }
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// redis-server with TLS only (`--port 0 --tls-port P`).
pub struct TlsRedis {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    /// With `clients`: client certificates are required (mutual TLS).
    pub fn start(certs: &Certs, clients: bool) -> TlsRedis {
        TlsRedis::start_with(certs, clients, &[])
    }

    /// With extra arguments (an ACL `--user`, cluster mode).
    pub fn start_with(certs: &Certs, clients: bool, extra: &[&str]) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(certs.path("server.crt"))
            .arg("--tls-key-file")
            .arg(certs.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certs.path("ca.crt"))
            .args(["--tls-auth-clients", if clients { "yes" } else { "no" }])
            .args(extra)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "TLS redis-server listens on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis { child, port, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-cli` over TLS (trusting the test CA) against `port`.
pub fn cli(certs: &Certs, port: u16, args: &[&str]) -> std::process::Output {
    Command::new("redis-cli")
        .arg("--tls")
        .arg("--cacert")
        .arg(certs.path("ca.crt"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (package redis-tools) must be installed")
}

/// A 3-master Redis Cluster speaking only TLS (clients and cluster bus),
/// every node with `extra` arguments.
pub struct TlsCluster {
    pub nodes: Vec<TlsRedis>,
}

impl TlsCluster {
    pub fn start(certs: &Certs, extra: &[&str]) -> TlsCluster {
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "2000",
            "--tls-cluster",
            "yes",
        ];
        args.extend(extra);
        let nodes: Vec<TlsRedis> = (0..3).map(|_| TlsRedis::start_with(certs, false, &args)).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = cli(certs, nodes[0].port, &create);
        assert!(
            out.status.success(),
            "TLS cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let start = Instant::now();
        while !nodes.iter().all(|n| {
            String::from_utf8_lossy(&cli(certs, n.port, &["cluster", "info"]).stdout).contains("cluster_state:ok")
        }) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "TLS cluster ready within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsCluster { nodes }
    }
}
