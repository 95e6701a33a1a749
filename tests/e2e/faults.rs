//! Fault injection (issue 8): packet loss, a long cut, a torn journal. Each case checks that the
//! file arrives byte-identical, that both journals verify, and that no `.part` is left behind.
//! The kill -9, full-disk and hostile-input cases live with the transfer tests.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use fsnode_testkit::Lan;

use crate::support::{Node, wait_for};
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
/// 4 MiB; `FSNODE_LOSS_MIB=64` runs the full 64 MiB case by hand.
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
