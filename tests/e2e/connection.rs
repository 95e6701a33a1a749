//! Signaling and WebRTC connections with perfect negotiation, end to end: real nodes on a
//! namespace LAN, real webrtc-rs data channels.

use std::time::{Duration, Instant};

use fsnode_testkit::Lan;

use crate::support::{Node, trusting_pair, wait_for};

#[test]
fn mutually_trusting_nodes_connect_and_reconnect_after_a_simultaneous_restart() {
    let lan = Lan::new(2).unwrap();
    let (mut a, mut b, a_id, b_id) = trusting_pair(&lan);
    wait_for("connected after trusting", Duration::from_secs(5), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    // Two fsnode nodes run QUIC (spec 6), and say so in `peers`, `peers --json` and the journal.
    assert_eq!(a.transport(&b_id), "quic");
    assert_eq!(b.transport(&a_id), "quic");
    assert_eq!(a.connected_transports(&b_id), ["quic"]);
    let table = a.home.run(&["peers"]).unwrap().stdout;
    assert!(table.contains("connected (quic)"), "{table}");
    let shown = a.home.run(&["journal", "show"]).unwrap().stdout;
    assert!(shown.contains("transport=quic"), "{shown}");
    // Both stop, then both start at once (glare): exactly one connection comes up.
    a.stop();
    b.stop();
    let before = (a.count("Connected", &b_id), b.count("Connected", &a_id));
    let answers_before = a.count("AnswerReceived", &b_id) + b.count("AnswerReceived", &a_id);
    let started = Instant::now();
    a.home
        .start(&["--name", "alpha", "--interface", "eth0"])
        .unwrap();
    b.home
        .start(&["--name", "beta", "--interface", "eth0"])
        .unwrap();
    a.wait_ready();
    b.wait_ready();
    let took = wait_for(
        "connected after both restarted",
        Duration::from_secs(3),
        || a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected",
    );
    eprintln!(
        "connected {:?} after both started ({:?} of it waiting for control sockets)",
        started.elapsed(),
        took
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        a.count("Connected", &b_id),
        before.0 + 1,
        "one connection on A"
    );
    assert_eq!(
        b.count("Connected", &a_id),
        before.1 + 1,
        "one connection on B"
    );
    let answers = a.count("AnswerReceived", &b_id) + b.count("AnswerReceived", &a_id);
    assert_eq!(
        answers,
        answers_before + 1,
        "exactly one offer was answered"
    );
}

#[test]
fn an_untrusting_peer_refuses_offers_lists_the_asker_and_connects_once_it_trusts() {
    let lan = Lan::new(2).unwrap();
    let a = Node::start(&lan, 0, "alpha", &[]);
    let b = Node::start(&lan, 1, "beta", &[]);
    let (a_id, b_id) = (a.id(), b.id());
    wait_for("A sees B", Duration::from_secs(5), || {
        a.peer(&b_id).is_some()
    });
    a.json(&["trust", "add", &b_id, "--json"]);
    wait_for("B lists A as asking", Duration::from_secs(5), || {
        let list = b.json(&["trust", "list", "--json"]);
        list["requests"]
            .as_array()
            .is_some_and(|r| r.iter().any(|p| p["id"] == a_id.as_str()))
    });
    wait_for(
        "A marks B failed: unauthorized",
        Duration::from_secs(5),
        || a.connection(&b_id).contains("unauthorized"),
    );
    assert_eq!(b.count("AuthorizationRequested", &a_id), 1);
    assert_eq!(a.count("Connected", &b_id), 0);
    assert_eq!(b.connection(&a_id), "not connected");
    let requested = b.peer(&a_id).unwrap();
    assert_eq!(requested["requested"], true);

    // Once B trusts A, B initiates and they connect.
    b.json(&["trust", "add", &a_id, "--json"]);
    wait_for("connected once B trusts A", Duration::from_secs(5), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    assert!(b.count("OfferSent", &a_id) >= 1, "B initiated");
}

#[test]
fn a_killed_peer_shows_not_connected_and_reconnects_by_itself_after_restarting() {
    let lan = Lan::new(2).unwrap();
    let (a, mut b, a_id, b_id) = trusting_pair(&lan);
    wait_for("connected", Duration::from_secs(5), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    b.kill();
    let lost = wait_for("A notices B is gone", Duration::from_secs(40), || {
        a.connection(&b_id) != "connected"
    });
    eprintln!("A noticed the loss after {lost:?}");
    assert!(a.count("Disconnected", &b_id) >= 1);
    b.restart(&[]);
    let back = wait_for("reconnected by itself", Duration::from_secs(15), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    eprintln!("reconnected {back:?} after B restarted");
}

/// Hostile signaling traffic against A while A and B connect: each bad input gets its
/// documented treatment and the real peers connect anyway.
#[test]
fn hostile_signaling_is_contained_and_real_peers_keep_connecting() {
    let lan = Lan::new(3).unwrap();
    let a = Node::start(&lan, 0, "alpha", &["--port", "7500"]);
    let b = Node::start(&lan, 1, "beta", &[]);
    let (a_id, b_id) = (a.id(), b.id());
    wait_for("A sees B", Duration::from_secs(5), || {
        a.peer(&b_id).is_some()
    });
    a.json(&["trust", "add", &b_id, "--json"]);
    let rss_before = a.rss_kib();

    let target = format!("{}:7500", lan.host(0).addr());
    let attack = lan
        .host(2)
        .command("python3")
        .args(["-c", ATTACK, &target, &b_id])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&attack.stdout).into_owned();
    assert!(
        attack.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&attack.stderr)
    );
    eprintln!("{report}");
    let result: serde_json::Value = serde_json::from_str(report.lines().last().unwrap()).unwrap();
    assert_eq!(
        result["garbage"], "closed",
        "garbage bytes close the connection"
    );
    assert_eq!(
        result["huge_line"], "closed",
        "a 10 MiB line closes the connection"
    );
    assert_eq!(
        result["half_line"], "closed",
        "a stalled half line is closed by the hello timeout"
    );
    assert!(result["half_line_secs"].as_f64().unwrap() < 15.0);
    assert!(
        result["idle_accepted"].as_u64().unwrap() <= 64,
        "at most 64 concurrent inbound connections: {}",
        result["idle_accepted"]
    );
    assert_eq!(result["wrong_fingerprint"], "closed");
    assert_eq!(result["unsolicited_answer"], "ignored");
    assert_eq!(result["stray_candidates"], "ignored");

    // The impostor's offer is journaled as a fingerprint mismatch; nothing connected to it.
    let mismatches: Vec<_> = a
        .events()
        .into_iter()
        .filter(|e| e["type"] == "FingerprintMismatch")
        .collect();
    assert!(!mismatches.is_empty());
    assert!(mismatches.iter().all(|e| e["claimed"] == b_id.as_str()));

    // Real peers still connect.
    b.json(&["trust", "add", &a_id, "--json"]);
    wait_for("A and B connect", Duration::from_secs(20), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    let rss_after = a.rss_kib();
    eprintln!("A's RSS: {rss_before} KiB before, {rss_after} KiB after the attack");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory stays bounded: {rss_before} -> {rss_after} KiB"
    );
}

/// The attacker: every case bounded in count and time; prints one JSON line of outcomes.
const ATTACK: &str = r#"
import base64, hashlib, json, socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
port = int(port)
victim_trusted = sys.argv[2]
out = {}

def conn(timeout=15):
    s = socket.create_connection((host, port), timeout=timeout)
    s.settimeout(timeout)
    return s

def closed(s, timeout=15):
    s.settimeout(timeout)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False

def hello(id_):
    return (json.dumps({"type": "hello", "v": 1, "id": id_, "name": "x", "device_type": "desktop", "port": 1}) + "\n").encode()

def sdp_for(digest):
    fp = ":".join("%02X" % b for b in digest)
    return "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 %s\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n" % fp

def device_id(digest):
    return base64.b32encode(digest).decode().lower().rstrip("=")

s = conn(); s.sendall(b"\x00\xff\xfegarbage\n"); out["garbage"] = "closed" if closed(s) else "open"

s = conn()
try:
    chunk = b"x" * 65536
    for _ in range(160):
        s.sendall(chunk)
    out["huge_line"] = "closed" if closed(s) else "open"
except (ConnectionResetError, BrokenPipeError):
    out["huge_line"] = "closed"

s = conn(); s.sendall(b'{"type":"hel'); t = time.time()
out["half_line"] = "closed" if closed(s, 20) else "open"; out["half_line_secs"] = time.time() - t

idle = []
for _ in range(200):
    try:
        idle.append(conn(2))
    except OSError:
        pass
time.sleep(0.5)
accepted = 0
for s in idle:
    s.settimeout(0.2)
    try:
        data = s.recv(1)
        if data != b"":
            accepted += 1
    except socket.timeout:
        accepted += 1
    except OSError:
        pass
out["idle_accepted"] = accepted
for s in idle:
    s.close()

# An impostor claims the trusted device's id but its SDP carries another fingerprint.
s = conn(); s.sendall(hello(victim_trusted)); s.recv(65536)
s.sendall((json.dumps({"type": "offer", "seq": 1, "sdp": sdp_for(hashlib.sha256(b"impostor").digest())}) + "\n").encode())
out["wrong_fingerprint"] = "closed" if closed(s) else "open"

# A stranger (consistent id and fingerprint) answers an offer nobody made, and trickles
# candidates: ignored, the connection stays up.
digest = hashlib.sha256(b"stranger").digest()
s = conn(); s.sendall(hello(device_id(digest))); s.recv(65536)
s.sendall((json.dumps({"type": "answer", "seq": 9, "sdp": sdp_for(digest)}) + "\n").encode())
for i in range(100):
    s.sendall((json.dumps({"type": "candidate", "candidate": "candidate:%d 1 udp 1 10.77.0.9 9 typ host" % i, "sdpMid": "0", "sdpMLineIndex": 0}) + "\n").encode())
s.settimeout(1.0)
try:
    data = s.recv(65536)
    out["unsolicited_answer"] = "closed" if data == b"" else "replied"
except socket.timeout:
    out["unsolicited_answer"] = "ignored"
out["stray_candidates"] = out["unsolicited_answer"]
s.close()
print(json.dumps(out))
"#;

/// A node with QUIC switched off (`--no-quic`, or `[link] quic = false`) and a node with it:
/// the data channel, and a file moves over it.
#[test]
fn a_node_with_quic_off_connects_on_the_data_channel() {
    let lan = Lan::new(2).unwrap();
    let a = Node::start(&lan, 0, "alpha", &["--no-quic"]);
    let b = Node::start(&lan, 1, "beta", &[]);
    let (a_id, b_id) = (a.id(), b.id());
    wait_for("both see each other", Duration::from_secs(5), || {
        a.peer(&b_id).is_some() && b.peer(&a_id).is_some()
    });
    a.json(&["trust", "add", &b_id, "--json"]);
    b.json(&["trust", "add", &a_id, "--json"]);
    wait_for("connected", Duration::from_secs(10), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    assert_eq!(a.transport(&b_id), "data-channel");
    assert_eq!(b.transport(&a_id), "data-channel");
    assert_eq!(b.connected_transports(&a_id), ["data-channel"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("over-sctp.bin");
    std::fs::write(&file, vec![0x5a; 3 * 1024 * 1024]).unwrap();
    let out = a
        .home
        .run(&["send", file.to_str().unwrap(), "--to", &b_id, "--wait"])
        .unwrap();
    assert!(out.success(), "{out:?}");
    let got = std::fs::read(b.home.path().join("received").join("over-sctp.bin")).unwrap();
    assert_eq!(got, vec![0x5a; 3 * 1024 * 1024]);
}

/// A path that drops QUIC but carries STUN and DTLS (a middlebox, nftables on the receiver's
/// link): the first session is lost 5 s after ICE selected a pair, journaled with a reason
/// naming QUIC; the nodes reconnect on the data channel and a file arrives.
#[test]
fn a_path_that_drops_quic_falls_back_to_the_data_channel() {
    let lan = Lan::new(2).unwrap();
    lan.drop_quic(1).unwrap();
    let (a, b, a_id, b_id) = trusting_pair(&lan);
    let took = wait_for(
        "connected on the data channel",
        Duration::from_secs(30),
        || a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected",
    );
    eprintln!("connected {took:?} after trusting, through a QUIC-dropping path");
    assert_eq!(a.transport(&b_id), "data-channel");
    assert_eq!(b.transport(&a_id), "data-channel");
    let quic_lost = a.events().iter().any(|e| {
        e["type"] == "Disconnected" && e["reason"].as_str().is_some_and(|r| r.contains("QUIC"))
    });
    assert!(quic_lost, "{:?}", a.journal_types());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("around.bin");
    std::fs::write(&file, vec![7u8; 1024 * 1024]).unwrap();
    let out = a
        .home
        .run(&["send", file.to_str().unwrap(), "--to", &b_id, "--wait"])
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(
        std::fs::read(b.home.path().join("received").join("around.bin"))
            .unwrap()
            .len(),
        1024 * 1024
    );
}
