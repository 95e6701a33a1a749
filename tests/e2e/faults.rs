//! Fault injection: packet loss, a long cut, a torn journal. Each case checks that the
//! file arrives byte-identical, that both journals verify, and that no `.part` is left behind.
//! The kill -9, full-disk and hostile-input cases live with the transfer tests.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use fsnode_testkit::Lan;

use crate::support::{Node, trust_star, wait_for};
use crate::transfer::{connected_pair, digest, random_file, received, transfers};

fn assert_clean(node: &Node, expected: &[&str]) {
    let mut names: Vec<String> = fs::read_dir(node.home.path().join("received"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names, expected,
        "no .part or temp file left on {}",
        node.name
    );
    let verify = node.home.run(&["journal", "verify"]).unwrap();
    assert!(verify.success(), "{verify:?}");
}

fn done_bytes(node: &Node) -> u64 {
    transfers(node)
        .first()
        .and_then(|t| t["done_bytes"].as_u64())
        .unwrap_or(0)
}

/// 5 % loss each way. webrtc-rs's SCTP recovers slowly from loss (its RTO is fixed at 1 s
/// minimum, doubling to 60 s; see BENCHMARKS.md), about 0.1 MB/s here, so the suite moves
/// 4 MiB; `FSNODE_LOSS_MIB=64` runs the issue's full 64 MiB case by hand.
#[test]
fn five_percent_packet_loss_during_a_transfer() {
    let mib: usize = std::env::var("FSNODE_LOSS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let lan = Lan::new(2).unwrap();
    let (a, b, _a_id, b_id) = connected_pair(&lan);
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "lossy.bin", mib * 1024 * 1024, 51);
    // 5 % of what B receives and, independently, of what it sends.
    lan.drop_percent(1, 5).unwrap();
    let started = Instant::now();
    a.json(&["send", file.to_str().unwrap(), "--to", &b_id, "--json"]);
    let target = received(&b, "lossy.bin");
    let mut last_report = Instant::now();
    let limit = Duration::from_secs(60 + 30 * mib as u64);
    wait_for("the file arrives despite the loss", limit, || {
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "{:>5.1} s: {:.1} MiB durable, {}",
                started.elapsed().as_secs_f64(),
                done_bytes(&b) as f64 / 1048576.0,
                a.connection(&b_id)
            );
        }
        target.exists()
    });
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{mib} MiB under 5 % loss each way: {secs:.1} s, {:.2} MB/s",
        mib as f64 * 1.048576 / secs
    );
    lan.clear_drop(1).unwrap();
    assert_eq!(digest(&target), digest(&file));
    assert_clean(&b, &["lossy.bin"]);
    assert_clean(&a, &[]);
}

#[test]
fn a_link_cut_for_20_s_mid_transfer_resumes_by_itself() {
    let lan = Lan::new(2).unwrap();
    let (a, b, a_id, b_id) = connected_pair(&lan);
    lan.shape_rate(0, "40mbit").unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "cut20.bin", 16 * 1024 * 1024, 52);
    a.json(&["send", file.to_str().unwrap(), "--to", &b_id, "--json"]);
    wait_for("progress before the cut", Duration::from_secs(20), || {
        done_bytes(&b) > 2 * 1024 * 1024
    });
    lan.link_down(1).unwrap();
    std::thread::sleep(Duration::from_secs(20));
    let before = done_bytes(&b);
    lan.clear_shape(0).unwrap();
    lan.link_up(1).unwrap();
    let restored = Instant::now();
    let target = received(&b, "cut20.bin");
    wait_for("resumes and completes", Duration::from_secs(90), || {
        target.exists()
    });
    eprintln!(
        "completed {:.1} s after the link came back ({:.1} MiB were durable before)",
        restored.elapsed().as_secs_f64(),
        before as f64 / 1048576.0
    );
    assert_eq!(digest(&target), digest(&file));
    assert_eq!(b.connection(&a_id), "connected");
    assert_clean(&b, &["cut20.bin"]);
}

/// The newest segment's data ends at its last non-zero byte (segments are preallocated with
/// zeros); cut a few bytes off it, which leaves the last record torn.
fn tear_last_record(journal: &Path) -> u64 {
    let newest = fs::read_dir(journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    let bytes = fs::read(&newest).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
    let cut = end - 3;
    fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(cut)
        .unwrap();
    cut
}

#[test]
fn a_node_restarted_with_a_torn_last_record_starts_reports_and_resumes() {
    let lan = Lan::new(2).unwrap();
    let (a, mut b, _a_id, b_id) = connected_pair(&lan);
    lan.shape_rate(0, "40mbit").unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "torn.bin", 16 * 1024 * 1024, 53);
    a.json(&["send", file.to_str().unwrap(), "--to", &b_id, "--json"]);
    wait_for("B has durable progress", Duration::from_secs(20), || {
        done_bytes(&b) > 2 * 1024 * 1024
    });
    b.kill();
    let cut = tear_last_record(&b.home.journal_dir());
    let verify = b.home.run(&["journal", "verify"]).unwrap();
    assert!(
        verify.success() && verify.stdout.contains("torn"),
        "verify names the torn record (cut at {cut}): {verify:?}"
    );
    lan.clear_shape(0).unwrap();
    b.restart(&[]);
    let target = received(&b, "torn.bin");
    wait_for("resumes and completes", Duration::from_secs(60), || {
        target.exists()
    });
    assert_eq!(digest(&target), digest(&file));
    let verify = b.home.run(&["journal", "verify"]).unwrap();
    assert!(
        verify.success() && !verify.stdout.contains("torn"),
        "{verify:?}"
    );
    let out = b
        .home
        .stop_with(rustix::process::Signal::TERM, Duration::from_secs(10))
        .unwrap();
    assert!(
        out.stderr.contains("torn"),
        "the node reported the torn record when it started: {}",
        out.stderr
    );
    b.restart(&[]);
    assert_clean(&b, &["torn.bin"]);
}

/// Sends `mib` MiB from A to B and returns the seconds it took.
fn timed_send(a: &Node, b: &Node, b_id: &str, name: &str, mib: usize, seed: u64) -> f64 {
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), name, mib * 1024 * 1024, seed);
    let started = Instant::now();
    let out = a
        .home
        .run(&["send", file.to_str().unwrap(), "--to", b_id, "--wait"])
        .unwrap();
    assert!(out.success(), "{out:?}");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(digest(&received(b, name)), digest(&file));
    secs
}

/// An untrusted device floods the receiver with 1,000 connections (offers with consistent
/// fingerprints from 1,000 made-up devices, and garbage) at a bounded rate while a trusted
/// transfer runs: the transfer keeps at least half its undisturbed rate and completes.
#[test]
fn an_offer_and_garbage_flood_leaves_trusted_transfers_at_least_half_their_rate() {
    let lan = Lan::new(3).unwrap();
    let a = Node::start(&lan, 0, "alpha", &[]);
    let b = Node::start(&lan, 1, "beta", &["--port", "7600"]);
    let (a_id, b_id) = (a.id(), b.id());
    trust_star(&a, &[&b]);
    // A gigabit-class LAN would make this a CPU contest on a 2-core machine; a 100 Mbit link
    // makes the rate the link's, so the ratio measures what the flood takes away.
    lan.shape_rate(0, "100mbit").unwrap();
    let quiet = timed_send(&a, &b, &b_id, "quiet.bin", 24, 61);
    let (rss_before, records_before) = (b.rss_kib(), b.events().len());

    let target = format!("{}:7600", lan.host(1).addr());
    let mut flood = fsnode_testkit::Background::spawn(
        lan.host(2).command("python3").args(["-c", FLOOD, &target]),
    )
    .unwrap();
    let flooded = timed_send(&a, &b, &b_id, "flooded.bin", 24, 62);
    let out = flood.finish(Duration::from_secs(60)).unwrap();
    eprintln!(
        "24 MiB: {quiet:.2} s quiet, {flooded:.2} s under the flood ({:.0} % of the quiet rate); flood: {}",
        100.0 * quiet / flooded,
        out.stdout.trim()
    );
    assert!(
        flooded <= 2.0 * quiet,
        "the flood took more than half the rate: {quiet:.2} s -> {flooded:.2} s"
    );
    let t = Instant::now();
    let peers = b.peers();
    eprintln!(
        "B answers `peers` in {:?} and lists {} devices; RSS {rss_before} -> {} KiB; {} records journaled",
        t.elapsed(),
        peers.len(),
        b.rss_kib(),
        b.events().len() - records_before,
    );
    let requested = b
        .events()
        .iter()
        .filter(|e| e["type"] == "AuthorizationRequested")
        .count();
    assert!(requested > 0, "the flood's offers were seen and journaled");
    assert_eq!(b.connection(&a_id), "connected");
    for node in [&a, &b] {
        let verify = node.home.run(&["journal", "verify"]).unwrap();
        assert!(verify.success(), "{verify:?}");
    }
}

/// 1,000 connections over about 10 s: two in three say hello as a new made-up device and
/// send an offer whose fingerprint matches it; one in three sends garbage.
const FLOOD: &str = r#"
import base64, hashlib, json, os, socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
port = int(port)
count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
stats = {"connections": 0, "refused": 0, "offers": 0, "garbage": 0}
def sdp_for(digest):
    fp = ":".join("%02X" % b for b in digest)
    return "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 %s\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n" % fp
start = time.time()
open_socks = []
for i in range(count):
    try:
        s = socket.create_connection((host, port), timeout=2)
        stats["connections"] += 1
    except OSError:
        stats["refused"] += 1
        continue
    try:
        if i % 3 == 2:
            s.sendall(os.urandom(512) + b"\n")
            stats["garbage"] += 1
        else:
            digest = hashlib.sha256(os.urandom(16)).digest()
            id_ = base64.b32encode(digest).decode().lower().rstrip("=")
            hello = {"type": "hello", "v": 1, "id": id_, "name": "flood%d" % i, "device_type": "desktop", "port": 1}
            s.sendall((json.dumps(hello) + "\n").encode())
            s.sendall((json.dumps({"type": "offer", "seq": 1, "sdp": sdp_for(digest)}) + "\n").encode())
            stats["offers"] += 1
    except OSError:
        pass
    open_socks.append(s)
    if len(open_socks) > 50:
        open_socks.pop(0).close()
    # Bounded rate: 100 connections a second.
    time.sleep(max(0.0, start + (i + 1) / 100.0 - time.time()))
for s in open_socks:
    s.close()
stats["seconds"] = round(time.time() - start, 1)
print(json.dumps(stats))
"#;

/// A device announces B's id over mDNS from its own address and, when dialed, says hello as B
/// and answers offers with its own certificate's fingerprint: A refuses it (journaled as a
/// fingerprint mismatch), and the real B still connects.
#[test]
fn an_impostor_announcing_anothers_id_is_refused_and_the_real_device_connects() {
    let lan = Lan::new(3).unwrap();
    let a = Node::start(&lan, 0, "alpha", &[]);
    let b = Node::start(&lan, 1, "beta", &[]);
    let (a_id, b_id) = (a.id(), b.id());
    wait_for("A sees B", Duration::from_secs(5), || {
        a.peer(&b_id).is_some()
    });
    let mut impostor = fsnode_testkit::Background::spawn(
        lan.host(2)
            .command("python3")
            .args(["-c", IMPOSTOR, &b_id, "7700"]),
    )
    .unwrap();
    impostor
        .wait_line(|l| l == "listening", Duration::from_secs(10))
        .unwrap();
    let txt = [("v", "1"), ("id", b_id.as_str()), ("name", "beta")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let registration = lan
        .host(2)
        .register_mdns(
            "_fileshare._tcp",
            &format!("Peer-{b_id}"),
            7700,
            &txt,
            Duration::from_secs(60),
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "A's record of B after the fake announcement: {:?}",
        a.peer(&b_id)
    );
    a.json(&["trust", "add", &b_id, "--json"]);
    b.json(&["trust", "add", &a_id, "--json"]);
    let took = wait_for("the real A and B connect", Duration::from_secs(60), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    registration.stop().unwrap();
    let out = impostor.finish(Duration::from_secs(70)).unwrap();
    let offers: u64 = out
        .stdout
        .trim()
        .lines()
        .last()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let mismatches = a
        .events()
        .into_iter()
        .filter(|e| e["type"] == "FingerprintMismatch" && e["claimed"] == b_id.as_str())
        .count();
    eprintln!(
        "connected {took:?} after trusting; the impostor got {offers} offer(s); A journaled {mismatches} fingerprint mismatch(es)"
    );
    if offers > 0 {
        assert!(
            mismatches > 0,
            "every answer from the impostor is refused and journaled"
        );
    }
    // The data channel really is B's: a file arrives there.
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "for-b.bin", 100_000, 71);
    let out = a
        .home
        .run(&["send", file.to_str().unwrap(), "--to", &b_id, "--wait"])
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(digest(&received(&b, "for-b.bin")), digest(&file));
}

/// Listens on port argv[2] for 20 s; says hello as device argv[1]; answers every offer with
/// an SDP carrying its own fingerprint. Prints the number of offers it saw.
const IMPOSTOR: &str = r#"
import base64, hashlib, json, socket, sys, threading, time
claimed, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port)); srv.listen(16); srv.settimeout(1.0)
print("listening", flush=True)
offers = [0]
fp = ":".join("%02X" % b for b in hashlib.sha256(b"impostor").digest())
sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 %s\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n" % fp
def serve(c):
    c.settimeout(15)
    f = c.makefile("rb")
    try:
        for line in f:
            msg = json.loads(line)
            if msg.get("type") == "hello":
                c.sendall((json.dumps({"type": "hello", "v": 1, "id": claimed, "name": "beta", "device_type": "desktop", "port": port}) + "\n").encode())
            elif msg.get("type") == "offer":
                offers[0] += 1
                c.sendall((json.dumps({"type": "answer", "seq": msg.get("seq", 0), "sdp": sdp}) + "\n").encode())
    except Exception:
        pass
    c.close()
end = time.time() + 20
while time.time() < end:
    try:
        c, _ = srv.accept()
    except socket.timeout:
        continue
    threading.Thread(target=serve, args=(c,), daemon=True).start()
print(offers[0], flush=True)
"#;
