//! What the commands say to an operator around a send: a summary when not on a terminal,
//! Ctrl-C on `send --wait`, cancel of a finished transfer, a send to a device not trusted,
//! hashes as `sha256sum` prints them.

use std::process::Stdio;
use std::time::Duration;

use fsnode_testkit::{Background, Lan};
use rustix::process::Signal;
use sha2::{Digest, Sha256};

use crate::support::wait_for;
use crate::transfer::{connected_pair, random_file, transfers};

#[test]
fn the_cli_says_what_happened_around_a_send() {
    let lan = Lan::new(2).unwrap();
    let (a, _b, _a_id, b_id) = connected_pair(&lan);
    let src = tempfile::tempdir().unwrap();
    let small = random_file(src.path(), "small.bin", 3000, 7);
    let notes = src.path().join("notes.txt");
    std::fs::write(&notes, "hello\n").unwrap();

    // Not on a terminal (stdout is a pipe here): one line per finished transfer and a total.
    let sent = a
        .home
        .run(&[
            "send",
            small.to_str().unwrap(),
            notes.to_str().unwrap(),
            "--to",
            &b_id,
            "--wait",
        ])
        .unwrap();
    assert!(sent.success(), "{sent:?}");
    let lines: Vec<&str> = sent.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", sent.stdout);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("notes.txt → beta: completed (6 B")),
        "{}",
        sent.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("small.bin → beta: completed (2.93 KiB")),
        "{}",
        sent.stdout
    );
    assert_eq!(lines[2], "2 of 2 transfer(s) completed (2.94 KiB)");

    // Hashes in the journal are the hex `sha256sum` prints.
    let expected = hex::encode(Sha256::digest(std::fs::read(&small).unwrap()));
    let journal = a.home.run(&["journal", "show"]).unwrap();
    assert!(
        journal.stdout.contains(&format!("sha256={expected}")),
        "{}",
        journal.stdout
    );

    // Cancel of a finished transfer says how it ended.
    let done = transfers(&a)
        .into_iter()
        .find(|t| t["name"] == "notes.txt")
        .unwrap();
    let id = done["id"].as_str().unwrap()[..8].to_owned();
    let cancel = a.home.run(&["cancel", &id]).unwrap();
    assert_eq!(cancel.code, Some(1), "{cancel:?}");
    assert!(
        cancel.stderr.contains(&format!(
            "transfer {id} (notes.txt) already completed; nothing to cancel"
        )),
        "{}",
        cancel.stderr
    );

    // A full id nobody has seen is refused like a prefix, with the way to trust it.
    let stranger = fsnode::core::DeviceId::from_sha256(&[42; 32]).to_string();
    let refused = a
        .home
        .run(&["send", notes.to_str().unwrap(), "--to", &stranger])
        .unwrap();
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("trusted devices only")
            && refused
                .stderr
                .contains(&format!("fsnode trust add {stranger}")),
        "{}",
        refused.stderr
    );

    // Ctrl-C on `send --wait` stops following, not sending, and says so.
    lan.shape_rate(0, "4mbit").unwrap();
    let big = random_file(src.path(), "big.bin", 8 << 20, 8);
    let mut command = a
        .home
        .command(&["send", big.to_str().unwrap(), "--to", &b_id, "--wait"]);
    command.stdout(Stdio::piped());
    let mut waiting = Background::spawn(&mut command).unwrap();
    let active = || {
        transfers(&a)
            .into_iter()
            .find(|t| t["name"] == "big.bin" && t["status"] == "active")
    };
    wait_for("the big file is sending", Duration::from_secs(20), || {
        active().is_some()
    });
    waiting.signal(Signal::INT).unwrap();
    let out = waiting.finish(Duration::from_secs(10)).unwrap();
    assert_eq!(out.code, Some(130), "{out:?}");
    let id = active().expect("still sending")["id"].as_str().unwrap()[..8].to_owned();
    assert!(
        out.stderr
            .contains("still sending in the background; `fsnode transfers` follows it")
            && out
                .stderr
                .contains(&format!("`fsnode cancel {id}` stops it")),
        "{}",
        out.stderr
    );
    let cancelled = a.home.run(&["cancel", &id]).unwrap();
    assert!(cancelled.success(), "{cancelled:?}");
    lan.clear_shape(0).unwrap();
}
