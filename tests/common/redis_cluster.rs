//! A Redis Cluster of the test's own: three masters (Debian's redis-server with
//! `--cluster-enabled yes`) on free loopback ports, joined by `redis-cli --cluster create`,
//! ready once every node says `cluster_state:ok`; slots moved between masters on demand
//! (`CLUSTER SETSLOT` and `MIGRATE`, as `redis-cli --cluster reshard` does); nodes
//! stopped and started again on their own config files.
#![allow(dead_code)] // each test crate uses part of it

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common_redis::{free_port, redis_server_found, require_services};
use crate::unique::unique_name;

pub(crate) struct OwnCluster {
    dir: PathBuf,
    pub(crate) ports: Vec<u16>,
    buses: Vec<u16>,
    children: Vec<Option<Child>>,
}

fn redis_cli_found() -> bool {
    let found = Command::new("redis-cli")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            !require_services(),
            "redis-cli is not on the PATH and TOWER_API_KEY_REQUIRE_SERVICES=1 requires it"
        );
        eprintln!("skipped: redis-cli is not on the PATH");
    }
    found
}

impl OwnCluster {
    pub(crate) fn start() -> Option<Self> {
        if !redis_server_found() || !redis_cli_found() {
            return None;
        }
        let dir = std::env::temp_dir().join(unique_name("redis-cluster"));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let buses: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut cluster = Self {
            dir,
            ports,
            buses,
            children: vec![None, None, None],
        };
        for i in 0..3 {
            cluster.start_node(i);
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok();
        Some(cluster)
    }

    fn start_node(&mut self, i: usize) {
        let port = self.ports[i].to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &self.buses[i].to_string()])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", "2000"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.children[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.try_conn(i).is_none() {
            assert!(Instant::now() < deadline, "cluster node {i} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until every node says `cluster_state:ok` and knows three nodes (30 s at
    /// most).
    pub(crate) fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = (0..3).all(|i| {
                self.try_conn(i).is_some_and(|mut c| {
                    redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query::<String>(&mut c)
                        .is_ok_and(|info| {
                            info.contains("cluster_state:ok")
                                && info.contains("cluster_known_nodes:3")
                                && info.contains("cluster_slots_ok:16384")
                        })
                })
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}/", self.ports[i])
    }

    fn try_conn(&self, i: usize) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url(i)).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut conn).ok()?;
        Some(conn)
    }

    /// A plain connection to node `i` (no redirects followed).
    pub(crate) fn conn(&self, i: usize) -> redis::Connection {
        self.try_conn(i).expect("the node answers")
    }

    pub(crate) fn slot_of(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.conn(0))
            .unwrap()
    }

    fn node_id(&self, i: usize) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.conn(i))
            .unwrap()
    }

    /// The node that serves `slot`, as node 0 sees it.
    pub(crate) fn owner(&self, slot: u16) -> usize {
        let slots: Vec<(u16, u16, (String, u16))> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query::<Vec<redis::Value>>(&mut self.conn(0))
            .unwrap()
            .into_iter()
            .map(|range| {
                let redis::Value::Array(items) = range else {
                    panic!("CLUSTER SLOTS: {range:?}")
                };
                let start: u16 = redis::from_redis_value(items[0].clone()).unwrap();
                let end: u16 = redis::from_redis_value(items[1].clone()).unwrap();
                let redis::Value::Array(node) = items[2].clone() else {
                    panic!("CLUSTER SLOTS node")
                };
                let port: u16 = redis::from_redis_value(node[1].clone()).unwrap();
                (start, end, (String::new(), port))
            })
            .collect();
        let (_, _, (_, port)) = slots
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .expect("every slot is served");
        self.ports.iter().position(|p| p == port).unwrap()
    }

    /// Starts moving `slot` from node `from` to node `to` and moves its keys, but leaves
    /// the slot marked migrating/importing: the source answers `ASK` for its keys.
    pub(crate) fn begin_migration(&self, slot: u16, from: usize, to: usize) {
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id)
            .query(&mut self.conn(to))
            .unwrap();
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id)
            .query(&mut self.conn(from))
            .unwrap();
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1000)
            .query(&mut self.conn(from))
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.ports[to])
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut self.conn(from))
                .unwrap();
        }
    }

    /// Ends a migration: every node is told that `to` serves `slot` (the source then
    /// answers `MOVED`): the new owner first, then the old one, as Redis's docs order
    /// it (the other way round, each would send a client to the other for a moment).
    pub(crate) fn end_migration(&self, slot: u16, from: usize, to: usize) {
        let to_id = self.node_id(to);
        let other = 3 - from - to;
        for i in [to, from, other] {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id)
                .query(&mut self.conn(i))
                .unwrap();
        }
    }

    /// Kills every node.
    pub(crate) fn kill(&mut self) {
        for child in &mut self.children {
            if let Some(mut c) = child.take() {
                c.kill().unwrap();
                c.wait().unwrap();
            }
        }
    }

    /// Starts every node again on its config file (same ids, same slots, no data), and
    /// waits until the cluster is ok.
    pub(crate) fn restart(&mut self) {
        for i in 0..3 {
            self.start_node(i);
        }
        self.wait_ok();
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
