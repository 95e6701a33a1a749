//! What an operator meets around the node: README's exit-code table row by row, `fsnode id`
//! with and without a running node, a `run` that starts while read-only commands poll, and
//! errors that say what was wrong.

use std::fs;
use std::time::Duration;

use fsnode_testkit::{Lan, NodeHome};
use serde_json::Value;

use crate::fsnode_bin;
use crate::support::{Node, wait_for};

/// The default signaling port (README, `run --help`).
const DEFAULT_PORT: u64 = 7452;

/// One row per code of README's "Exit codes" table, each provoked for real.
#[test]
fn every_row_of_the_exit_code_table() {
    let lan = Lan::new(2).unwrap();
    let node = Node::start(&lan, 0, "alpha", &[]);
    let home = &node.home;

    // 0: success, and a closed pipe on stdout counts.
    assert_eq!(home.run(&["id"]).unwrap().code, Some(0));
    // 2: bad usage.
    assert_eq!(home.run(&["trust"]).unwrap().code, Some(2));
    let since = home.run(&["transfers", "--since", "garbage"]).unwrap();
    assert_eq!(since.code, Some(2));
    assert!(since.stderr.contains("e.g. 90s"), "{}", since.stderr);
    // 4: a second `run` on the same home (the first holds it).
    let second = home
        .run(&["run", "--name", "again", "--interface", "eth0"])
        .unwrap();
    assert_eq!(second.code, Some(4), "{second:?}");
    assert!(
        second.stderr.contains("already running"),
        "{}",
        second.stderr
    );
    // 8: the port the operator named is taken (the running node holds the default).
    let other = NodeHome::in_host(fsnode_bin(), lan.host(0)).unwrap();
    let taken = other
        .run(&["run", "--port", "7452", "--interface", "eth0"])
        .unwrap();
    assert_eq!(taken.code, Some(8), "{taken:?}");
    assert!(taken.stderr.contains("in use"), "{}", taken.stderr);
    // 6: an interface that does not exist; and a config file that does not parse.
    let bad = other.run(&["run", "--interface", "nosuch0"]).unwrap();
    assert_eq!(bad.code, Some(6), "{bad:?}");
    assert!(bad.stderr.contains("nosuch0"), "{}", bad.stderr);
    fs::create_dir_all(other.path().join("config")).unwrap();
    fs::write(other.path().join("config/fsnode.toml"), "port = \"x\"\n").unwrap();
    assert_eq!(other.run(&["run"]).unwrap().code, Some(6));
    fs::remove_file(other.path().join("config/fsnode.toml")).unwrap();

    // 3: a command that needs a node, without one.
    let idle = NodeHome::new(fsnode_bin()).unwrap();
    assert_eq!(idle.run(&["transfers"]).unwrap().code, Some(3));
    // 5: a damaged identity.
    fs::create_dir_all(idle.path().join("data")).unwrap();
    fs::write(idle.path().join("data/identity.pem"), "garbage").unwrap();
    assert_eq!(idle.run(&["id"]).unwrap().code, Some(5));
    // 4: a damaged journal (a byte flipped inside an early record of a stopped node's).
    let mut stopped = Node::start(&lan, 1, "beta", &[]);
    stopped.stop();
    stopped.restart(&[]);
    stopped.stop();
    let segment = stopped.home.journal_dir().join("00000000000000000001.seg");
    let mut bytes = fs::read(&segment).unwrap();
    bytes[64] ^= 0xff;
    fs::write(&segment, bytes).unwrap();
    let verify = stopped.home.run(&["journal", "verify"]).unwrap();
    assert_eq!(verify.code, Some(4), "{verify:?}");
    let run = stopped.home.run(&["run", "--interface", "eth0"]).unwrap();
    assert_eq!(run.code, Some(4), "{run:?}");

    // 1: any other failure, with a message: `peers add` to a name that does not resolve (in
    // the test namespace, which has no resolver to reach).
    let out = home
        .run(&["peers", "add", "notahost.invalid:1234"])
        .unwrap();
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("did not resolve"), "{}", out.stderr);
    let out = home.run(&["peers", "add", "10.77.0.1"]).unwrap();
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("port is missing"), "{}", out.stderr);
}

/// Row 7 of the table: `send --wait` exits 7 when a transfer does not complete (here the
/// receiver cancels it while it runs).
#[test]
fn send_wait_exits_7_when_a_transfer_is_cancelled() {
    let lan = Lan::new(2).unwrap();
    let (a, b, _a_id, b_id) = crate::support::trusting_pair(&lan);
    wait_for("connected", Duration::from_secs(10), || {
        a.connection(&b_id) == "connected"
    });
    lan.shape_rate(0, "8mbit").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    fs::write(&file, vec![1u8; 16 * 1024 * 1024]).unwrap();
    let mut send = fsnode_testkit::Background::spawn(&mut a.home.command(&[
        "send",
        file.to_str().unwrap(),
        "--to",
        &b_id,
        "--wait",
    ]))
    .unwrap();
    let mut id = String::new();
    wait_for(
        "the receiver lists the transfer",
        Duration::from_secs(20),
        || {
            let rows = b.json(&["transfers", "--json"]);
            match rows["transfers"][0]["id"].as_str() {
                Some(found) => {
                    id = found.to_owned();
                    true
                }
                None => false,
            }
        },
    );
    let cancel = b.home.run(&["cancel", &id]).unwrap();
    assert!(cancel.success(), "{cancel:?}");
    let out = send.finish(Duration::from_secs(60)).unwrap();
    assert_eq!(out.code, Some(7), "{out:?}");
}

#[test]
fn id_shows_the_running_nodes_name_port_and_page_and_says_when_none_runs() {
    let lan = Lan::new(1).unwrap();
    let mut node = Node::start(&lan, 0, "depot", &[]);
    let id: Value = node.json(&["id", "--json"]);
    assert_eq!(id["running"], true);
    assert_eq!(
        id["name"], "depot",
        "the running node's --name, not the host's"
    );
    assert_eq!(id["port"], DEFAULT_PORT);
    let url = format!("http://{}:{DEFAULT_PORT}/", lan.host(0).addr());
    assert_eq!(id["urls"], serde_json::json!([url]));
    let text = node.home.run(&["id", "--qr"]).unwrap();
    assert!(text.stdout.contains(&url), "{}", text.stdout);
    assert!(
        text.stdout.contains('█') || text.stdout.contains('▀'),
        "a QR code: {}",
        text.stdout
    );
    node.stop();
    let id: Value = node.json(&["id", "--json"]);
    assert_eq!(id["running"], false);
    assert_eq!(id["urls"], serde_json::json!([]));
    let text = node.home.run(&["id"]).unwrap();
    assert!(text.stdout.contains("not running"), "{}", text.stdout);
}

/// A service manager starts `run` while a script polls with read-only commands: `run` starts
/// every time (the read-only commands take no lock, and `run` waits briefly for a short
/// command's), and the trust list never claims a connection of a node that is not running.
#[test]
fn run_starts_while_read_only_commands_poll() {
    let lan = Lan::new(1).unwrap();
    let mut node = Node::start(&lan, 0, "alpha", &[]);
    node.stop();
    let home = node.home.path().to_owned();
    let poller = std::thread::spawn(move || {
        let bin = fsnode_bin();
        let mut polls = 0;
        let stop = std::time::Instant::now() + Duration::from_secs(12);
        while std::time::Instant::now() < stop {
            for args in [&["trust", "list"][..], &["journal", "show"], &["id"]] {
                let status = std::process::Command::new(&bin)
                    .args(args)
                    .env("FSNODE_HOME", &home)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success(), "{args:?}: {status}");
                polls += 1;
            }
        }
        polls
    });
    for _ in 0..5 {
        node.restart(&[]);
        node.stop();
    }
    let polls = poller.join().unwrap();
    eprintln!("5 starts during {polls} read-only commands");
    let list = node.home.run(&["trust", "list"]).unwrap();
    assert!(!list.stdout.contains("connected"), "{}", list.stdout);
}

/// `trust list` without a node says when each device was last seen, never `connected` (the
/// journal of a killed node still says connected).
#[test]
fn trust_list_without_a_node_shows_last_seen() {
    let lan = Lan::new(2).unwrap();
    let (mut a, _b, _a_id, b_id) = crate::support::trusting_pair(&lan);
    wait_for("connected", Duration::from_secs(10), || {
        a.connection(&b_id) == "connected"
    });
    a.kill();
    let list = a.home.run(&["trust", "list"]).unwrap();
    assert!(list.success(), "{list:?}");
    assert!(list.stdout.contains("last seen"), "{}", list.stdout);
    assert!(!list.stdout.contains("connected"), "{}", list.stdout);
    let json: Value =
        serde_json::from_str(&a.home.run(&["trust", "list", "--json"]).unwrap().stdout).unwrap();
    assert_eq!(json["trusted"][0]["connection_state"], "not_connected");
}
