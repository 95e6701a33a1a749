//! The receive directory as an operator meets it: full when a file is offered, read-only, and
//! a sparse file arriving.

use std::process::Stdio;
use std::time::Duration;

use fsnode_testkit::{Lan, NodeHome, run_bounded};
use rustix::process::Signal;

use crate::fsnode_bin;
use crate::support::{Node, trust_star, wait_for};
use crate::transfer::{connected_pair, digest, random_file, received, transfers};

/// Files offered to a receiver whose disk cannot hold them are paused on both sides with the
/// reason: the receiver's `transfers` and journal show it as the sender's do, and its log warns
/// once for the cause (not once per file). They used to be invisible on the receiver.
#[test]
fn a_receiver_without_room_shows_the_pause_and_warns_once() {
    let lan = Lan::new(2).unwrap();
    let a = Node::start(&lan, 0, "alpha", &[]);
    let mut b = Node::start_with_small_disk(&lan, 1, "beta", 8 << 20);
    trust_star(&a, &[&b]);
    let b_id = b.id();
    let src = tempfile::tempdir().unwrap();
    for (name, size, seed) in [("big.bin", 12 << 20, 1), ("bigger.bin", 10 << 20, 2)] {
        let file = random_file(src.path(), name, size, seed);
        a.json(&["send", file.to_str().unwrap(), "--to", &b_id, "--json"]);
    }
    let paused = |node: &Node| {
        transfers(node)
            .iter()
            .filter(|t| {
                t["status"] == "paused"
                    && t["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("no space") && r.contains("bytes needed"))
            })
            .count()
    };
    wait_for(
        "both files paused on both sides",
        Duration::from_secs(20),
        || paused(&a) == 2 && paused(&b) == 2,
    );
    let journaled = b
        .events()
        .iter()
        .filter(|e| e["type"] == "TransferPaused")
        .count();
    assert_eq!(journaled, 2);
    let out = b
        .home
        .stop_with(Signal::TERM, Duration::from_secs(10))
        .unwrap();
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("receiving paused"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("/received"),
        "{}",
        warnings[0]
    );
}

/// A receive directory on a read-only file system is refused at start, naming it, with the
/// exit code of an invalid configuration (6); it used to be accepted, and every file offered
/// then failed with `Read-only file system (os error 30)` and no path.
#[test]
fn a_read_only_receive_directory_is_refused_at_start() {
    let lan = Lan::new(1).unwrap();
    let home = NodeHome::in_host(fsnode_bin(), lan.host(0)).unwrap();
    let receive = home.path().join("received");
    std::fs::create_dir_all(&receive).unwrap();
    // A read-only bind mount of the directory, seen by this one process only.
    let mut command = lan.host(0).command("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg(&receive)
        .arg(fsnode_bin())
        .args(["run", "--name", "ro", "--interface", "eth0"])
        .env("FSNODE_HOME", home.path())
        .env_remove("FSNODE_LOG")
        .stdout(Stdio::null());
    let out = run_bounded(&mut command, Duration::from_secs(20)).unwrap();
    assert_eq!(out.code, Some(6), "{out:?}");
    assert!(
        out.stderr.contains(&receive.display().to_string())
            && out.stderr.contains("Read-only file system"),
        "{}",
        out.stderr
    );
    // Nothing was started: no journal was written.
    assert!(!home.journal_dir().exists());
}

/// A sparse source (a disk image: 32 MiB of which a few KiB are data) arrives sparse, with
/// far fewer allocated blocks than its size and the same SHA-256; it used to arrive fully
/// allocated.
#[test]
fn a_sparse_file_arrives_sparse() {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    let lan = Lan::new(2).unwrap();
    let (a, b, _a_id, b_id) = connected_pair(&lan);
    let src = tempfile::tempdir().unwrap();
    let image = src.path().join("disk.img");
    let mut file = std::fs::File::create(&image).unwrap();
    file.set_len(32 << 20).unwrap();
    for (offset, text) in [(0, "boot"), (9 << 20, "middle"), ((32 << 20) - 4, "tail")] {
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);
    let sent = a
        .home
        .run(&["send", image.to_str().unwrap(), "--to", &b_id, "--wait"])
        .unwrap();
    assert!(sent.success(), "{sent:?}");
    let arrived = received(&b, "disk.img");
    assert_eq!(digest(&arrived), digest(&image));
    let meta = std::fs::metadata(&arrived).unwrap();
    assert_eq!(meta.len(), 32 << 20);
    let allocated = meta.blocks() * 512;
    eprintln!(
        "disk.img: 32 MiB, {} KiB allocated on the receiver",
        allocated / 1024
    );
    assert!(allocated < 2 << 20, "{allocated} bytes allocated");
}
