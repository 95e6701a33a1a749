//! File transfer end to end: real nodes, real data channels, files compared byte for byte.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fsnode_testkit::Lan;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::{Node, trust_star, trusting_pair, wait_for};

/// A file of `size` pseudo-random bytes (seeded, so failures reproduce).
pub(crate) fn random_file(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(size);
    let path = dir.join(name);
    fs::write(&path, &data).unwrap();
    path
}

pub(crate) fn digest(path: &Path) -> Vec<u8> {
    Sha256::digest(fs::read(path).unwrap()).to_vec()
}

pub(crate) fn transfers(node: &Node) -> Vec<Value> {
    node.json(&["transfers", "--json"])["transfers"]
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn connected_pair(lan: &Lan) -> (Node, Node, String, String) {
    let (a, b, a_id, b_id) = trusting_pair(lan);
    wait_for("connected", Duration::from_secs(10), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    (a, b, a_id, b_id)
}

pub(crate) fn received(node: &Node, name: &str) -> PathBuf {
    node.home.path().join("received").join(name)
}

#[test]
fn a_64_mib_file_arrives_byte_identical_with_mode_and_mtime() {
    let lan = Lan::new(2).unwrap();
    let (a, b, _a_id, b_id) = connected_pair(&lan);
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "big.bin", 64 * 1024 * 1024 + 123, 1);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o750)).unwrap();
    let out = a
        .home
        .run(&[
            "send",
            file.to_str().unwrap(),
            "--to",
            &b_id[..10],
            "--wait",
            "--json",
        ])
        .unwrap();
    assert!(out.success(), "{out:?}");
    let target = received(&b, "big.bin");
    wait_for("the file is complete on B", Duration::from_secs(60), || {
        target.exists()
    });
    assert_eq!(digest(&target), digest(&file));
    let meta = fs::metadata(&target).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o750 & !0o022);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        meta.mtime(),
        fs::metadata(&file).unwrap().mtime(),
        "mtime kept"
    );
    // No .part left behind; both sides say completed.
    let leftovers: Vec<_> = fs::read_dir(b.home.path().join("received"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(leftovers, ["big.bin"]);
    wait_for("B's journal says completed", Duration::from_secs(5), || {
        transfers(&b).iter().any(|t| t["status"] == "completed")
    });
    assert_eq!(transfers(&a)[0]["status"], "completed");
    let verify = b.home.run(&["journal", "verify"]).unwrap();
    assert!(verify.success(), "{verify:?}");
}

#[test]
fn one_file_to_three_peers_and_a_directory() {
    let lan = Lan::new(4).unwrap();
    let a = Node::start(&lan, 0, "alpha", &[]);
    let a_id = a.id();
    let others: Vec<Node> = (1..4)
        .map(|i| Node::start(&lan, i, &format!("peer{i}"), &[]))
        .collect();
    let ids: Vec<String> = others.iter().map(Node::id).collect();
    for (node, id) in others.iter().zip(&ids) {
        wait_for("A sees the peer", Duration::from_secs(5), || {
            a.peer(id).is_some()
        });
        a.json(&["trust", "add", id, "--json"]);
        node.json(&["trust", "add", &a_id, "--json"]);
    }
    for id in &ids {
        wait_for("connected", Duration::from_secs(10), || {
            a.connection(id) == "connected"
        });
    }
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "shared.bin", 3 * 1024 * 1024 + 7, 2);
    let dir = src.path().join("album");
    fs::create_dir_all(dir.join("2026")).unwrap();
    random_file(&dir, "a.jpg", 100_000, 3);
    random_file(&dir.join("2026"), "b.txt", 0, 4);
    let mut args = vec!["send", file.to_str().unwrap(), dir.to_str().unwrap()];
    for id in &ids {
        args.extend(["--to", id.as_str()]);
    }
    args.extend(["--wait", "--json"]);
    let out = a.home.run(&args).unwrap();
    assert!(out.success(), "{out:?}");
    for node in &others {
        assert_eq!(digest(&received(node, "shared.bin")), digest(&file));
        assert_eq!(
            digest(&received(node, "album/a.jpg")),
            digest(&dir.join("a.jpg"))
        );
        assert_eq!(fs::read(received(node, "album/2026/b.txt")).unwrap(), b"");
    }
    let done: Vec<_> = transfers(&a)
        .into_iter()
        .filter(|t| t["status"] == "completed")
        .collect();
    assert_eq!(done.len(), 9, "3 files × 3 peers");
}

#[test]
fn a_second_file_with_the_same_name_never_overwrites() {
    let lan = Lan::new(2).unwrap();
    let (a, b, _, b_id) = connected_pair(&lan);
    let src = tempfile::tempdir().unwrap();
    let first = random_file(src.path(), "notes.txt", 5000, 5);
    let out = a
        .home
        .run(&["send", first.to_str().unwrap(), "--to", &b_id, "--wait"])
        .unwrap();
    assert!(out.success(), "{out:?}");
    let second = random_file(src.path(), "notes.txt", 6000, 6);
    let out = a
        .home
        .run(&["send", second.to_str().unwrap(), "--to", &b_id, "--wait"])
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(fs::read(received(&b, "notes.txt")).unwrap().len(), 5000);
    assert_eq!(digest(&received(&b, "notes (1).txt")), digest(&second));
}

#[test]
fn a_file_queued_while_the_peer_is_offline_arrives_after_it_starts() {
    let lan = Lan::new(2).unwrap();
    let (a, mut b, _a_id, b_id) = connected_pair(&lan);
    b.stop();
    wait_for("A sees B gone", Duration::from_secs(10), || {
        a.connection(&b_id) != "connected"
    });
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "later.bin", 2 * 1024 * 1024, 7);
    let queued = a.json(&["send", file.to_str().unwrap(), "--to", &b_id, "--json"]);
    assert_eq!(queued[0]["status"], "queued");
    // Restart A too: the queue is in the journal.
    let mut a = a;
    a.stop();
    a.restart(&[]);
    b.restart(&[]);
    let target = received(&b, "later.bin");
    wait_for("the queued file arrives", Duration::from_secs(30), || {
        target.exists()
    });
    assert_eq!(digest(&target), digest(&file));
}

#[test]
fn cancel_from_the_sender_deletes_the_part_on_the_receiver() {
    let lan = Lan::new(2).unwrap();
    let (a, b, _a_id, b_id) = connected_pair(&lan);
    lan.shape_rate(0, "20mbit").unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "slow.bin", 32 * 1024 * 1024, 8);
    let queued = a.json(&["send", file.to_str().unwrap(), "--to", &b_id, "--json"]);
    let id = queued[0]["id"].as_str().unwrap().to_owned();
    let part_exists = || {
        fs::read_dir(b.home.path().join("received"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".part"))
            })
            .unwrap_or(false)
    };
    wait_for(
        "the .part appears on B",
        Duration::from_secs(10),
        part_exists,
    );
    let out = a.home.run(&["cancel", &id[..8]]).unwrap();
    assert!(out.success(), "{out:?}");
    wait_for("B deleted its .part", Duration::from_secs(10), || {
        !part_exists()
    });
    wait_for("both journals record it", Duration::from_secs(10), || {
        transfers(&b).iter().any(|t| t["status"] == "cancelled")
            && transfers(&a).iter().any(|t| t["status"] == "cancelled")
    });
    assert!(!received(&b, "slow.bin").exists());
}

#[test]
fn kill_dash_nine_of_the_receiver_mid_transfer_then_restart_resumes() {
    let lan = Lan::new(2).unwrap();
    let (a, mut b, _a_id, b_id) = connected_pair(&lan);
    lan.shape_rate(0, "40mbit").unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "resume.bin", 24 * 1024 * 1024, 9);
    a.json(&["send", file.to_str().unwrap(), "--to", &b_id, "--json"]);
    wait_for("B has durable progress", Duration::from_secs(20), || {
        transfers(&b)
            .iter()
            .any(|t| t["done_bytes"].as_u64().unwrap_or(0) > 4 * 1024 * 1024)
    });
    b.kill();
    lan.clear_shape(0).unwrap();
    b.restart(&[]);
    let target = received(&b, "resume.bin");
    wait_for(
        "the file completes after the restart",
        Duration::from_secs(60),
        || target.exists(),
    );
    assert_eq!(digest(&target), digest(&file));
    let verify = b.home.run(&["journal", "verify"]).unwrap();
    assert!(verify.success(), "{verify:?}");
}

#[test]
fn a_cut_link_then_restored_resumes_by_itself() {
    let lan = Lan::new(2).unwrap();
    let (a, b, a_id, b_id) = connected_pair(&lan);
    lan.shape_rate(0, "40mbit").unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "cut.bin", 16 * 1024 * 1024, 10);
    a.json(&["send", file.to_str().unwrap(), "--to", &b_id, "--json"]);
    wait_for("progress before the cut", Duration::from_secs(20), || {
        transfers(&b)
            .iter()
            .any(|t| t["done_bytes"].as_u64().unwrap_or(0) > 2 * 1024 * 1024)
    });
    lan.link_down(1).unwrap();
    wait_for("A notices the cut", Duration::from_secs(40), || {
        a.connection(&b_id) != "connected"
    });
    lan.clear_shape(0).unwrap();
    lan.link_up(1).unwrap();
    let target = received(&b, "cut.bin");
    wait_for(
        "the transfer resumes and completes",
        Duration::from_secs(90),
        || target.exists(),
    );
    assert_eq!(digest(&target), digest(&file));
    assert_eq!(b.connection(&a_id), "connected");
}

#[test]
fn kill_dash_nine_of_the_sender_then_restart_resumes_and_cancel_from_the_receiver() {
    let lan = Lan::new(2).unwrap();
    let (mut a, b, _a_id, b_id) = connected_pair(&lan);
    lan.shape_rate(0, "40mbit").unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "sender-crash.bin", 16 * 1024 * 1024, 11);
    a.json(&["send", file.to_str().unwrap(), "--to", &b_id, "--json"]);
    wait_for("progress before the crash", Duration::from_secs(20), || {
        transfers(&b)
            .iter()
            .any(|t| t["done_bytes"].as_u64().unwrap_or(0) > 2 * 1024 * 1024)
    });
    a.kill();
    lan.clear_shape(0).unwrap();
    a.restart(&[]);
    let target = received(&b, "sender-crash.bin");
    wait_for(
        "completes after the sender restarts",
        Duration::from_secs(60),
        || target.exists(),
    );
    assert_eq!(digest(&target), digest(&file));

    // Now a receiver-side cancel of a second, slow transfer.
    lan.shape_rate(0, "10mbit").unwrap();
    let slow = random_file(src.path(), "second.bin", 16 * 1024 * 1024, 12);
    a.json(&["send", slow.to_str().unwrap(), "--to", &b_id, "--json"]);
    let id = loop {
        if let Some(t) = transfers(&b)
            .into_iter()
            .find(|t| t["name"] == "second.bin")
        {
            break t["id"].as_str().unwrap().to_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = b.home.run(&["cancel", &id[..8]]).unwrap();
    assert!(out.success(), "{out:?}");
    wait_for(
        "the sender records the cancel",
        Duration::from_secs(10),
        || {
            transfers(&a)
                .iter()
                .any(|t| t["name"] == "second.bin" && t["status"] == "cancelled")
        },
    );
    assert!(!received(&b, "second.bin").exists());
}

/// Fills the file system holding `dir` until a write fails, in 1 MiB blocks; returns the
/// filler's path.
fn fill_up(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = fs::File::create(&path).unwrap();
    let block = vec![0xa5u8; 1024 * 1024];
    for _ in 0..1024 {
        if file
            .write_all(&block)
            .and_then(|()| file.sync_all())
            .is_err()
        {
            break;
        }
    }
    path
}

#[test]
fn a_full_disk_pauses_with_a_reason_on_both_sides_and_resumes_once_space_is_freed() {
    let lan = Lan::new(3).unwrap();
    let a = Node::start(&lan, 0, "alpha", &[]);
    let b = Node::start_with_small_disk(&lan, 1, "beta", 24 * 1024 * 1024);
    let c = Node::start(&lan, 2, "gamma", &[]);
    let (b_id, c_id) = (b.id(), c.id());
    trust_star(&a, &[&b, &c]);
    lan.shape_rate(0, "40mbit").unwrap();
    let src = tempfile::tempdir().unwrap();
    let big = random_file(src.path(), "big.bin", 16 * 1024 * 1024, 21);
    let other = random_file(src.path(), "other.bin", 6 * 1024 * 1024, 22);
    a.json(&["send", big.to_str().unwrap(), "--to", &b_id, "--json"]);
    a.json(&["send", other.to_str().unwrap(), "--to", &c_id, "--json"]);
    wait_for("B has durable progress", Duration::from_secs(20), || {
        transfers(&b)
            .iter()
            .any(|t| t["done_bytes"].as_u64().unwrap_or(0) > 2 * 1024 * 1024)
    });
    let b_received = b.home.daemon_root(&b.home.path().join("received")).unwrap();
    let filler = fill_up(&b_received);
    let paused = |node: &Node| {
        transfers(node).into_iter().find(|t| {
            t["name"] == "big.bin"
                && t["status"] == "paused"
                && t["reason"].as_str().unwrap_or("").contains("no space")
        })
    };
    let took = wait_for(
        "both sides say paused, no space",
        Duration::from_secs(20),
        || paused(&a).is_some() && paused(&b).is_some(),
    );
    eprintln!("paused on both sides {took:?} after the disk filled up");
    let b_part = fs::read_dir(&b_received)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().ends_with(".part"));
    assert!(b_part, "the .part stays for the resume");
    // The transfer to C is not held up by B's disk.
    wait_for(
        "the other transfer completes",
        Duration::from_secs(30),
        || received(&c, "other.bin").exists(),
    );
    assert_eq!(digest(&received(&c, "other.bin")), digest(&other));
    let verify = b.home.run(&["journal", "verify"]).unwrap();
    assert!(verify.success(), "{verify:?}");

    fs::remove_file(&filler).unwrap();
    lan.clear_shape(0).unwrap();
    let target = b_received.join("big.bin");
    let took = wait_for(
        "the transfer resumes once space is freed",
        Duration::from_secs(60),
        || target.exists(),
    );
    eprintln!("completed {took:?} after the space was freed");
    assert_eq!(digest(&target), digest(&big));
    let leftovers: Vec<_> = fs::read_dir(&b_received)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(leftovers, ["big.bin"]);
    wait_for("the sender says completed", Duration::from_secs(10), || {
        transfers(&a)
            .iter()
            .any(|t| t["name"] == "big.bin" && t["status"] == "completed")
    });
    for node in [&a, &b] {
        let verify = node.home.run(&["journal", "verify"]).unwrap();
        assert!(verify.success(), "{verify:?}");
    }
}

/// Several files to several peers at once: a receiver behind a slow link gets its share and
/// no more; the fast receiver's files finish as if the slow one were not there.
#[test]
fn a_slow_receiver_does_not_stall_the_others() {
    let lan = Lan::new(3).unwrap();
    let a = Node::start(&lan, 0, "alpha", &[]);
    let slow = Node::start(&lan, 1, "slow", &[]);
    let fast = Node::start(&lan, 2, "fast", &[]);
    let (slow_id, fast_id) = (slow.id(), fast.id());
    trust_star(&a, &[&slow, &fast]);
    lan.shape_rate(1, "8mbit").unwrap();
    let src = tempfile::tempdir().unwrap();
    let first = random_file(src.path(), "first.bin", 24 * 1024 * 1024, 31);
    let second = random_file(src.path(), "second.bin", 8 * 1024 * 1024, 32);
    let to_slow = a.json(&["send", first.to_str().unwrap(), "--to", &slow_id, "--json"]);
    a.json(&[
        "send",
        first.to_str().unwrap(),
        second.to_str().unwrap(),
        "--to",
        &fast_id,
        "--json",
    ]);
    let took = wait_for(
        "both files reach the fast receiver",
        Duration::from_secs(30),
        || received(&fast, "first.bin").exists() && received(&fast, "second.bin").exists(),
    );
    assert_eq!(digest(&received(&fast, "first.bin")), digest(&first));
    assert_eq!(digest(&received(&fast, "second.bin")), digest(&second));
    let slow_done = transfers(&slow)
        .first()
        .and_then(|t| t["done_bytes"].as_u64())
        .unwrap_or(0);
    eprintln!(
        "fast receiver done in {took:?}; the slow one had {:.1} MiB of 24 by then",
        slow_done as f64 / 1048576.0
    );
    assert!(
        slow_done < 20 * 1024 * 1024,
        "the slow link really is slower ({slow_done} bytes)"
    );
    // The slow one keeps going: more durable progress a moment later.
    wait_for(
        "the slow transfer still moves",
        Duration::from_secs(15),
        || {
            transfers(&slow)
                .first()
                .and_then(|t| t["done_bytes"].as_u64())
                .unwrap_or(0)
                > slow_done
        },
    );
    let id = to_slow[0]["id"].as_str().unwrap();
    assert!(a.home.run(&["cancel", &id[..8]]).unwrap().success());
}

/// Appends `events` to a stopped node's journal, as a hostile or broken sender's own journal
/// would hold them: the node then sends what they say, through the real wire.
fn forge_journal(node: &Node, events: Vec<fsnode::core::Event>) {
    use fsnode::record::JournalEntry;
    use fsnode_journal::{Journal, Options};
    let (journal, _) =
        Journal::<JournalEntry>::open(&node.home.journal_dir(), Options::default()).unwrap();
    for event in events {
        let entry = JournalEntry::Event(fsnode::core::Stamped { time_ms: 0, event });
        journal.append(&entry).unwrap().wait().unwrap();
    }
    journal.close().unwrap();
}

/// A trusted peer that sends hostile transfers: names that would escape the receive directory,
/// a directory through a symbolic link pointing out, a wrong whole-file hash, a size its file
/// does not have. Each is refused or failed with a reason on both sides, nothing lands outside
/// the receive directory, and a good file still arrives afterwards.
#[test]
fn hostile_transfers_are_refused_with_reasons_on_both_sides() {
    use fsnode::core::{Direction, Event, TransferId};
    let lan = Lan::new(2).unwrap();
    let (mut a, b, _a_id, b_id) = connected_pair(&lan);
    let src = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();

    // A symbolic link inside B's receive directory pointing out of it.
    let b_received = b.home.path().join("received");
    fs::create_dir_all(&b_received).unwrap();
    std::os::unix::fs::symlink(outside.path(), b_received.join("evil")).unwrap();
    let evil = src.path().join("evil");
    fs::create_dir_all(&evil).unwrap();
    random_file(&evil, "x.txt", 1000, 40);
    a.json(&["send", evil.to_str().unwrap(), "--to", &b_id, "--json"]);

    let file = random_file(src.path(), "payload.bin", 100_000, 41);
    let sha: [u8; 32] = Sha256::digest(fs::read(&file).unwrap()).into();
    let peer: fsnode::core::DeviceId = b_id.parse().unwrap();
    let cases: Vec<(&str, u64, [u8; 32], &str)> = vec![
        ("../escape.bin", 100_000, sha, "\"..\" component"),
        ("/tmp/absolute.bin", 100_000, sha, "absolute"),
        ("back\\slash.bin", 100_000, sha, "backslash"),
        ("nul\0.bin", 100_000, sha, "NUL"),
        ("ok/./dot.bin", 100_000, sha, "\".\" component"),
        ("wrong-hash.bin", 100_000, [0xee; 32], "SHA-256"),
        ("too-big.bin", 300_000, sha, "sender"),
    ];
    let long = "x".repeat(300);
    let mut cases = cases;
    cases.push((&long, 100_000, sha, "more than 255"));
    a.stop();
    let ids: Vec<TransferId> = (0..cases.len())
        .map(|i| TransferId([0x40 + i as u8; 16]))
        .collect();
    forge_journal(
        &a,
        cases
            .iter()
            .zip(&ids)
            .map(|((name, size, sha256, _), id)| Event::TransferQueued {
                id: *id,
                peer: peer.clone(),
                direction: Direction::Send,
                name: (*name).to_owned(),
                size: *size,
                path: Some(file.clone()),
                mime: None,
                mode: None,
                mtime: None,
                sha256: Some(*sha256),
                dir: None,
            })
            .collect(),
    );
    a.restart(&[]);
    let took = wait_for(
        "A reconnects after its restart",
        Duration::from_secs(30),
        || a.connection(&b_id) == "connected",
    );
    eprintln!("reconnected {took:?} after A's restart");

    let row = |node: &Node, id: &TransferId| {
        let hex = hex::encode(id.0);
        transfers(node)
            .into_iter()
            .find(|t| t["id"].as_str() == Some(hex.as_str()))
    };
    for ((name, _, _, why), id) in cases.iter().zip(&ids) {
        let ended = |node: &Node| {
            row(node, id).filter(|t| {
                !["queued", "starting", "active"].contains(&t["status"].as_str().unwrap_or(""))
            })
        };
        let start = std::time::Instant::now();
        while ended(&a).is_none() || ended(&b).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name:?} does not end on both sides: A {:?}, B {:?}, A's peers {:?}",
                row(&a, id),
                row(&b, id),
                a.peers()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for node in [&a, &b] {
            let t = ended(node).unwrap();
            assert_ne!(t["status"], "completed", "{name:?}: {t}");
            let reason = t["reason"].as_str().unwrap_or("");
            assert!(reason.contains(why), "{name:?} on {}: {t}", node.name);
        }
    }
    let symlinked = transfers(&a)
        .into_iter()
        .find(|t| t["name"] == "evil/x.txt")
        .unwrap();
    assert_eq!(symlinked["status"], "rejected", "{symlinked}");
    assert!(
        symlinked["reason"]
            .as_str()
            .unwrap()
            .contains("symbolic link")
    );

    // Nothing escaped, nothing half-written stayed.
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    let mut left: Vec<String> = fs::read_dir(&b_received)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["evil"], "only the operator's own symlink");
    assert!(!Path::new("/tmp/absolute.bin").exists());

    // B still serves A.
    let good = random_file(src.path(), "good.bin", 50_000, 42);
    let out = a
        .home
        .run(&["send", good.to_str().unwrap(), "--to", &b_id, "--wait"])
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(digest(&received(&b, "good.bin")), digest(&good));
    for node in [&a, &b] {
        let verify = node.home.run(&["journal", "verify"]).unwrap();
        assert!(verify.success(), "{verify:?}");
    }
}
