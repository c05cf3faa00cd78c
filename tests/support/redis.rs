//! A redis-server of the test's own on a free port (never the shared 127.0.0.1:6379), killed
//! and restarted at will; nothing on disk, unless started persistent (an append-only file in a
//! temporary directory of its own, fsynced before each reply and replayed on restart).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// The append-only file's directory, when persistent; removed on drop.
    dir: Option<PathBuf>,
    /// TLS only (no plain port): the certificate (also its own CA) and key files.
    tls: Option<(PathBuf, PathBuf)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::launch(None, None)
    }

    /// TLS only, with this certificate (self-signed for 127.0.0.1) and key.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> RedisServer {
        Self::launch(None, Some((cert.to_path_buf(), key.to_path_buf())))
    }

    /// Keeps every acknowledged write across a kill -9: `appendfsync always` writes and fsyncs
    /// the append-only file before a reply is sent, and `restart` replays it.
    pub fn start_persistent() -> RedisServer {
        let dir = std::env::temp_dir().join(format!("offramp-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        Self::launch(Some(dir), None)
    }

    fn launch(dir: Option<PathBuf>, tls: Option<(PathBuf, PathBuf)>) -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            dir,
            tls,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Starts it again on the same port: empty, or, when persistent, with what it had
    /// acknowledged (it answers PING only once the append-only file is loaded).
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new("redis-server");
        let port = self.port.to_string();
        match &self.tls {
            None => cmd.args(["--port", &port]),
            Some((cert, key)) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(cert),
        };
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "yes"]);
        match &self.dir {
            None => cmd.args(["--appendonly", "no"]),
            Some(dir) => cmd
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A redis-cli command against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        if let Some((cert, _)) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(cert);
        }
        cmd.args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
