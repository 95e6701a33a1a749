//! Helpers shared by the end-to-end tests: a node on a test LAN, bounded waiting.

use std::time::{Duration, Instant};

use fsnode_testkit::{Lan, NodeHome};
use rustix::process::Signal;
use serde_json::Value;

use crate::fsnode_bin;

pub struct Node {
    pub home: NodeHome,
    pub name: String,
}

impl Node {
    pub fn start(lan: &Lan, i: usize, name: &str, extra: &[&str]) -> Node {
        let mut home = NodeHome::in_host(fsnode_bin(), lan.host(i)).unwrap();
        let mut args = vec!["--name", name, "--interface", "eth0"];
        args.extend_from_slice(extra);
        home.start(&args).unwrap();
        let node = Node {
            home,
            name: name.into(),
        };
        node.wait_ready();
        node
    }

    /// A node whose receive directory is a private tmpfs of `disk` bytes.
    pub fn start_with_small_disk(lan: &Lan, i: usize, name: &str, disk: u64) -> Node {
        let mut home = NodeHome::in_host(fsnode_bin(), lan.host(i)).unwrap();
        home.start_with_small_disk(&["--name", name, "--interface", "eth0"], disk)
            .unwrap();
        let node = Node {
            home,
            name: name.into(),
        };
        node.wait_ready();
        node
    }

    pub fn restart(&mut self, extra: &[&str]) {
        let mut args = vec!["--name", &self.name, "--interface", "eth0"];
        args.extend_from_slice(extra);
        self.home.start(&args).unwrap();
        self.wait_ready();
    }

    pub fn wait_ready(&self) {
        self.home
            .wait_until(Duration::from_secs(20), |h| {
                Ok(h.run(&["peers", "--json"])?.success())
            })
            .expect("the node answers on its control socket");
    }

    pub fn stop(&mut self) {
        let out = self
            .home
            .stop_with(Signal::TERM, Duration::from_secs(10))
            .unwrap();
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }

    pub fn id(&self) -> String {
        let out = self.home.run(&["id", "--json"]).unwrap();
        let json: Value = serde_json::from_str(&out.stdout).unwrap();
        json["device_id"].as_str().unwrap().to_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.home.run(args).unwrap();
        assert!(out.success(), "{args:?}: {out:?}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    }

    pub fn peers(&self) -> Vec<Value> {
        self.json(&["peers", "--json"])["peers"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn peer(&self, id: &str) -> Option<Value> {
        self.peers().into_iter().find(|p| p["id"] == id)
    }

    /// Every journaled event (the flat JSON form), oldest first.
    pub fn events(&self) -> Vec<Value> {
        let out = self.home.run(&["journal", "show", "--json"]).unwrap();
        out.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|r| r.get("event").cloned())
            .collect()
    }

    /// Events of `kind` about `peer`.
    pub fn count(&self, kind: &str, peer: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e["type"] == kind && e["peer"] == peer)
            .count()
    }

    pub fn connection(&self, peer: &str) -> String {
        self.peer(peer)
            .map(|p| p["connection"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    }

    /// What carries the connection with `peer` (`quic`, `data-channel`; empty when none).
    pub fn transport(&self, peer: &str) -> String {
        self.peer(peer)
            .and_then(|p| p["transport"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The transports of the `Connected` events about `peer`, oldest first.
    pub fn connected_transports(&self, peer: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["type"] == "Connected" && e["peer"] == peer)
            .map(|e| e["transport"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Resident memory of the running daemon, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.home.daemon_pid().expect("a running daemon");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// `kill -9`: no clean stop, nothing journaled, no goodbyes.
    pub fn kill(&mut self) {
        let _ = self.home.stop_with(Signal::KILL, Duration::from_secs(10));
    }

    pub fn journal_types(&self) -> Vec<String> {
        let out = self.home.run(&["journal", "show", "--json"]).unwrap();
        out.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|r| r["event"]["type"].as_str().map(str::to_owned))
            .collect()
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// Two nodes on `lan` (hosts 0 and 1) that have discovered and trusted each other.
pub fn trusting_pair(lan: &Lan) -> (Node, Node, String, String) {
    let a = Node::start(lan, 0, "alpha", &[]);
    let b = Node::start(lan, 1, "beta", &[]);
    let (a_id, b_id) = (a.id(), b.id());
    wait_for("A sees B", Duration::from_secs(5), || {
        a.peer(&b_id).is_some()
    });
    wait_for("B sees A", Duration::from_secs(5), || {
        b.peer(&a_id).is_some()
    });
    a.json(&["trust", "add", &b_id, "--json"]);
    b.json(&["trust", "add", &a_id, "--json"]);
    (a, b, a_id, b_id)
}

/// `hub` and each of `others` trust each other; returns once the hub is connected to each.
pub fn trust_star(hub: &Node, others: &[&Node]) {
    let hub_id = hub.id();
    for node in others {
        let id = node.id();
        wait_for("the hub sees the peer", Duration::from_secs(5), || {
            hub.peer(&id).is_some()
        });
        hub.json(&["trust", "add", &id, "--json"]);
        node.json(&["trust", "add", &hub_id, "--json"]);
        wait_for("connected", Duration::from_secs(10), || {
            hub.connection(&id) == "connected"
        });
    }
}
