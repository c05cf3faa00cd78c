//! A 3-node Redis Cluster of the test's own (masters only, no disk), on free loopback ports.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
    children: Vec<Child>,
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_pair() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("offramp-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut c = RedisCluster {
            ports: vec![],
            dir,
            children: vec![],
        };
        for _ in 0..3 {
            let port = free_pair();
            let conf = c.dir.join(format!("nodes-{port}.conf"));
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(&conf)
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&c.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            c.ports.push(port);
            c.children.push(child);
        }
        for p in &c.ports {
            c.wait_for(|| cli(*p, &["PING"]).trim() == "PONG", "node start");
        }
        let nodes: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ports = c.ports.clone();
        c.wait_for(
            || {
                ports
                    .iter()
                    .all(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            },
            "cluster_state:ok",
        );
        c
    }

    fn wait_for(&self, ok: impl Fn() -> bool, what: &str) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis cluster: {what} not reached");
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// A command against the cluster (-c follows redirections), from the first node.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        cli(self.ports[0], &all)
    }

    /// Every key on every node.
    pub fn keys(&self) -> Vec<String> {
        self.ports
            .iter()
            .flat_map(|p| {
                cli(*p, &["--scan"])
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The nodes holding at least one key: proof the keys are spread over the cluster.
    pub fn nodes_with_keys(&self) -> usize {
        self.ports
            .iter()
            .filter(|p| cli(**p, &["DBSIZE"]).trim().parse::<u64>().unwrap_or(0) > 0)
            .count()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
