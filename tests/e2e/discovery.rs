//! Discovery, trust and the control socket, end to end: real `fsnode run` processes on a LAN
//! of network namespaces, real multicast inside it, an independent mDNS implementation
//! (python-zeroconf) on the same LAN.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use fsnode_testkit::{Lan, NodeHome};
use serde_json::Value;

use crate::fsnode_bin;
use crate::support::{Node, wait_for};

const SERVICE: &str = "_fileshare._tcp.local.";

#[test]
fn two_nodes_see_each_other_within_3s_and_a_stopped_node_disappears_within_3s() {
    let lan = Lan::new(2).unwrap();
    let a = Node::start(&lan, 0, "alpha", &["--device-type", "server"]);
    let mut b = Node::start(
        &lan,
        1,
        "beta",
        &["--device-type", "mobile", "--port", "7100"],
    );
    let (a_id, b_id) = (a.id(), b.id());
    let seen = wait_for("A sees B", Duration::from_secs(3), || {
        a.peer(&b_id).is_some()
    });
    wait_for("B sees A", Duration::from_secs(3), || {
        b.peer(&a_id).is_some()
    });
    eprintln!("discovered after {seen:?}");
    let peer = a.peer(&b_id).unwrap();
    assert_eq!(peer["name"], "beta");
    assert_eq!(peer["device_type"], "mobile");
    assert_eq!(peer["port"], 7100);
    assert_eq!(peer["addresses"][0], lan.host(1).addr().to_string());
    assert_eq!(peer["discovered"], true);
    assert_eq!(peer["trusted"], false);
    assert_eq!(b.peer(&a_id).unwrap()["device_type"], "server");
    // Both sides show the same verification code for the pair.
    assert_eq!(
        peer["verification_code"],
        b.peer(&a_id).unwrap()["verification_code"]
    );

    b.stop();
    let gone = wait_for("B disappears from A's list", Duration::from_secs(3), || {
        a.peer(&b_id).is_some_and(|p| p["discovered"] == false)
    });
    eprintln!("lost after {gone:?}");
    let types = a.journal_types();
    assert!(types.contains(&"PeerDiscovered".into()) && types.contains(&"PeerLost".into()));
}

#[test]
fn trust_survives_a_restart_and_is_projected_to_a_file() {
    let lan = Lan::new(2).unwrap();
    let mut a = Node::start(&lan, 0, "alpha", &[]);
    let b = Node::start(&lan, 1, "beta", &[]);
    let b_id = b.id();
    wait_for("A sees B", Duration::from_secs(3), || {
        a.peer(&b_id).is_some()
    });

    let trusted = a.json(&["trust", "add", &b_id[..10], "--json"]);
    assert_eq!(trusted["result"], "trusted");
    assert_eq!(trusted["peer"]["id"], b_id.as_str());
    let human = a.home.run(&["trust", "add", &b_id[..10]]).unwrap();
    assert!(human.stdout.contains("verification code"), "{human:?}");

    let file = a.home.path().join("data/trusted-devices.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(&b_id) && text.contains("beta"), "{text}");

    a.stop();
    a.restart(&[]);
    let list = a.json(&["trust", "list", "--json"]);
    let ids: Vec<&str> = list["trusted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b_id.as_str()]);

    let removed = a.json(&["trust", "remove", &b_id[..12], "--json"]);
    assert_eq!(removed["result"], "revoked");
    assert!(!std::fs::read_to_string(&file).unwrap().contains(&b_id));
    let types = a.journal_types();
    assert!(types.contains(&"PeerAuthorized".into()) && types.contains(&"PeerRevoked".into()));
}

#[test]
fn an_independent_mdns_browser_sees_the_spec_records() {
    let lan = Lan::new(2).unwrap();
    let a = Node::start(
        &lan,
        0,
        "alpha ✓",
        &["--device-type", "server", "--port", "7200"],
    );
    let id = a.id();
    let services = lan
        .host(1)
        .browse_mdns(SERVICE, Duration::from_secs(3))
        .unwrap();
    let ours = services
        .iter()
        .find(|s| s.instance == format!("Peer-{id}.{SERVICE}"))
        .unwrap_or_else(|| panic!("Peer-{id} not among {services:?}"));
    assert_eq!(ours.port, 7200);
    assert_eq!(ours.addresses, vec![lan.host(0).addr().to_string()]);
    let expected: BTreeMap<String, String> = [
        ("v", "1"),
        ("id", id.as_str()),
        ("name", "alpha ✓"),
        ("type", "server"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(ours.txt, expected);
}

#[test]
fn spec_breaking_announcements_and_garbage_packets_are_ignored_and_the_node_stays_up() {
    let lan = Lan::new(3).unwrap();
    let a = Node::start(&lan, 0, "alpha", &[]);
    let liar = "b".repeat(52);
    let mut txt = BTreeMap::new();
    txt.insert("v".to_owned(), "1".to_owned());
    txt.insert("id".to_owned(), "c".repeat(52));
    txt.insert("name".to_owned(), "liar".to_owned());
    let registration = lan
        .host(1)
        .register_mdns(
            SERVICE,
            &format!("Peer-{liar}"),
            7300,
            &txt,
            Duration::from_secs(20),
        )
        .unwrap();
    wait_for(
        "the bad announcement is journaled",
        Duration::from_secs(5),
        || a.journal_types().contains(&"AnnouncementIgnored".into()),
    );
    // 1,000 garbage datagrams and 1,000 well-formed announcements of bogus devices, in a burst.
    let out = lan
        .host(1)
        .command("python3")
        .args(["-c", FLOOD, &lan.host(1).addr().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    let peers = a.peers();
    assert!(peers.iter().all(|p| p["id"] != liar.as_str()));
    assert!(
        peers.len() <= 1024,
        "known devices stay bounded: {}",
        peers.len()
    );
    registration.stop().unwrap();
    // Still serving: a real node is discovered after the flood. (On another host: the flood
    // spent host 1's budget of new device ids, so a new device there waits for it to refill.)
    let b = Node::start(&lan, 2, "beta", &[]);
    let b_id = b.id();
    wait_for("A still discovers B", Duration::from_secs(3), || {
        a.peer(&b_id).is_some()
    });
}

/// Sends 1,000 random datagrams and 1,000 announcements with random instance names and ids
/// to the mDNS group (bounded: 2,000 packets, then exits).
const FLOOD: &str = r#"
import os, socket, sys
from zeroconf import DNSOutgoing, DNSPointer, DNSService, DNSText, DNSAddress, const
src = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
for i in range(1000):
    s.sendto(os.urandom(1 + i % 700), ("224.0.0.251", 5353))
alphabet = "abcdefghijklmnopqrstuvwxyz234567"
st = "_fileshare._tcp.local."
for i in range(1000):
    fake = "".join(alphabet[b % 32] for b in os.urandom(52))
    name = "Peer-%s.%s" % (fake, st)
    host = "h%d.local." % i
    out = DNSOutgoing(const._FLAGS_QR_RESPONSE | const._FLAGS_AA)
    out.add_answer_at_time(DNSPointer(st, const._TYPE_PTR, const._CLASS_IN, 120, name), 0)
    out.add_answer_at_time(DNSService(name, const._TYPE_SRV, const._CLASS_IN | const._CLASS_UNIQUE, 120, 0, 0, 7000, host), 0)
    txt = b"".join(bytes([len(x)]) + x for x in [b"v=1", ("id=" + fake).encode(), b"name=bogus", b"type=desktop"])
    out.add_answer_at_time(DNSText(name, const._TYPE_TXT, const._CLASS_IN | const._CLASS_UNIQUE, 120, txt), 0)
    out.add_answer_at_time(DNSAddress(host, const._TYPE_A, const._CLASS_IN | const._CLASS_UNIQUE, 120, socket.inet_aton(src)), 0)
    for packet in out.packets():
        s.sendto(packet, ("224.0.0.251", 5353))
"#;

#[test]
fn the_control_socket_refuses_bad_requests_and_stays_up() {
    let lan = Lan::new(1).unwrap();
    let a = Node::start(&lan, 0, "alpha", &[]);
    let socket = a.home.path().join("run/fsnode.sock");
    let mode = std::fs::metadata(&socket).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    let ask = |line: &[u8]| -> Value {
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(line).unwrap();
        let mut reply = String::new();
        BufReader::new(&stream).read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
    };
    let garbage = ask(b"\x00\xffnot json\n");
    assert_eq!(garbage["result"], "error");
    assert_eq!(garbage["kind"], "bad_request");
    let version = ask(b"{\"v\":99,\"op\":\"peers\"}\n");
    assert_eq!(version["kind"], "version");
    let unknown = ask(b"{\"v\":1,\"op\":\"format_disk\"}\n");
    assert_eq!(unknown["kind"], "bad_request");
    let mut huge = vec![b'x'; 200 * 1024];
    huge.push(b'\n');
    let oversized = ask(&huge);
    assert_eq!(oversized["kind"], "bad_request");
    assert!(
        oversized["message"]
            .as_str()
            .unwrap()
            .contains("longer than")
    );
    // Still up.
    assert!(a.home.run(&["peers"]).unwrap().success());
}

#[test]
fn commands_say_clearly_when_no_node_is_running() {
    let home = NodeHome::new(fsnode_bin()).unwrap();
    let out = home.run(&["peers"]).unwrap();
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(
        out.stderr.contains("no fsnode is running"),
        "{}",
        out.stderr
    );
    let out = home.run(&["transfers"]).unwrap();
    assert_eq!(out.code, Some(3));
    // Trust is provisioned without a node: it reads the journal instead.
    let out = home.run(&["trust", "list"]).unwrap();
    assert!(out.success(), "{out:?}");
}

#[test]
fn with_multicast_blocked_peers_add_dials_directly_and_trusted_peers_are_probed() {
    let lan = Lan::new(2).unwrap();
    for i in 0..2 {
        lan.host(i)
            .nft(
                "table inet fsn-nomdns {\n  chain out { type filter hook output priority 0; udp dport 5353 drop; }\n  \
                 chain in { type filter hook input priority 0; udp dport 5353 drop; }\n}\n",
            )
            .unwrap();
    }
    let mut a = Node::start(&lan, 0, "alpha", &[]);
    let b = Node::start(&lan, 1, "beta", &["--port", "7400"]);
    let b_id = b.id();
    std::thread::sleep(Duration::from_secs(2));
    assert!(a.peer(&b_id).is_none(), "multicast is blocked");
    let address = format!("{}:7400", lan.host(1).addr());
    let added = a.json(&["peers", "add", &address, "--json"]);
    assert_eq!(added["peers"][0]["id"], b_id.as_str());
    assert_eq!(added["peers"][0]["name"], "beta");
    let unreachable = a.home.run(&["peers", "add", "10.77.250.250:1"]).unwrap();
    assert!(!unreachable.success());
    assert!(
        unreachable.stderr.contains("10.77.250.250"),
        "{}",
        unreachable.stderr
    );

    a.json(&["trust", "add", &b_id, "--json"]);
    a.stop();
    a.restart(&[]);
    // After a restart nothing is discovered; the unicast probe finds B at its last address.
    wait_for("A probes B", Duration::from_secs(10), || {
        a.peer(&b_id).is_some_and(|p| p["discovered"] == true)
    });
}

#[test]
fn watch_streams_journaled_events_and_transfers_lists_none_yet() {
    let lan = Lan::new(2).unwrap();
    let a = Node::start(&lan, 0, "alpha", &[]);
    let mut watch =
        fsnode_testkit::Background::spawn(&mut a.home.command(&["watch", "--json"])).unwrap();
    let b = Node::start(&lan, 1, "beta", &[]);
    let b_id = b.id();
    let line = watch
        .wait_line(
            |l| l.contains("PeerDiscovered") && l.contains(&b_id),
            Duration::from_secs(5),
        )
        .unwrap();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["event"]["name"], "beta");
    assert!(event["seq"].as_u64().unwrap() > 1);
    a.json(&["trust", "add", &b_id, "--json"]);
    watch
        .wait_line(|l| l.contains("PeerAuthorized"), Duration::from_secs(5))
        .unwrap();
    let transfers = a.json(&["transfers", "--json"]);
    assert_eq!(transfers["transfers"], serde_json::json!([]));
    assert!(
        a.home
            .run(&["transfers"])
            .unwrap()
            .stdout
            .contains("no transfers")
    );
}
