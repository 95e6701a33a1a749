//! `fsnode watch` as an operator uses it: during a busy send, with a client that reads slowly.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fsnode_testkit::Lan;
use serde_json::Value;

use crate::support::{Node, wait_for};

/// A watcher that stops reading while 10,000 small files are sent (its pipe, its socket and
/// its queue in the node fill up within the first ~2,000 events) falls behind, is told so on
/// stderr (`lagged N events`), and is caught up from the journal: it shows every event of the
/// send, each once and in order, and when the node stops it says why and exits 0. (It used to
/// exit 0 silently after ~1,700 lines.)
#[test]
fn a_slow_watcher_is_caught_up_from_the_journal_and_told_why_it_ends() {
    const FILES: usize = 10_000;
    // Sources in memory, and the receiver's files on a tmpfs: on a disk mounted with
    // `discard`, deleting 10,000 written files takes half a minute.
    let source = tempfile::Builder::new()
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let dir = source.path().join("many");
    fs::create_dir(&dir).unwrap();
    for i in 0..FILES {
        fs::write(dir.join(format!("f{i:05}.txt")), format!("file {i}\n")).unwrap();
    }
    let lan = Lan::new(2).expect("test namespaces");
    let mut a = Node::start(&lan, 0, "alpha", &[]);
    let b = Node::start_with_small_disk(&lan, 1, "beta", 256 << 20);
    let (a_id, b_id) = (a.id(), b.id());

    let mut watch = a
        .home
        .command(&["watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let mut stderr_pipe = watch.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    // The client reads until the pair is trusted (so it surely follows before the send), then
    // reads nothing until told to go on.
    let (lines_tx, lines) = mpsc::channel::<String>();
    let (go_tx, go) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut paused = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let trusted = line.contains("PeerAuthorized");
            if lines_tx.send(line).is_err() {
                break;
            }
            if trusted && !paused {
                paused = true;
                let _ = go.recv();
            }
        }
    });

    wait_for("A sees B", Duration::from_secs(5), || {
        a.peer(&b_id).is_some()
    });
    wait_for("B sees A", Duration::from_secs(5), || {
        b.peer(&a_id).is_some()
    });
    a.json(&["trust", "add", &b_id, "--json"]);
    b.json(&["trust", "add", &a_id, "--json"]);
    let mut shown: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shown
        .last()
        .is_some_and(|e| e["event"]["type"] == "PeerAuthorized")
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("watch shows the trust");
        shown.push(serde_json::from_str(&line).unwrap());
    }

    let started = Instant::now();
    let sent = a
        .home
        .run(&["send", dir.to_str().unwrap(), "--to", &b_id, "--wait"])
        .unwrap();
    assert!(sent.success(), "{sent:?}");
    eprintln!("sent {FILES} files in {:?}", started.elapsed());

    // Everything journaled so far, by sequence number (snapshot records are no events).
    let journal: Vec<Value> = a
        .home
        .run(&["journal", "show", "--json"])
        .unwrap()
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r.get("event").is_some())
        .collect();
    let last = journal.last().unwrap()["seq"].as_u64().unwrap();

    go_tx.send(()).unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    while shown.last().and_then(|e| e["seq"].as_u64()) < Some(last) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => shown.push(serde_json::from_str(&line).unwrap()),
            Err(e) => panic!(
                "watch ended at seq {:?} before the send's last event ({last}): {e}; exit {:?}",
                shown.last().map(|e| &e["seq"]),
                watch.try_wait()
            ),
        }
    }
    eprintln!(
        "the watcher caught up with {} events in {:?}",
        shown.len(),
        started.elapsed()
    );

    // Every event from the first one shown, once each, in order, as journaled.
    let first = shown[0]["seq"].as_u64().unwrap();
    let expected: Vec<(u64, &Value)> = journal
        .iter()
        .map(|r| (r["seq"].as_u64().unwrap(), &r["event"]))
        .filter(|(seq, _)| (first..=last).contains(seq))
        .collect();
    let got: Vec<(u64, &Value)> = shown
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), &e["event"]))
        .collect();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "watch differs from the journal");
    let completed: BTreeSet<&str> = shown
        .iter()
        .filter(|e| e["event"]["type"] == "TransferCompleted")
        .filter_map(|e| e["event"]["id"].as_str())
        .collect();
    assert_eq!(completed.len(), FILES);

    // The node stops: the watcher is told why and exits 0.
    a.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "watch did not end with the node");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("lagged "), "{stderr}");
    assert!(
        stderr.contains("the node is stopping (SIGTERM)"),
        "{stderr}"
    );
}
