//! Identity, `run` lifecycle and the journal commands, through the real binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use fsnode_testkit::{Lan, NodeHome};
use rustix::process::Signal;

use crate::fsnode_bin;

fn home() -> NodeHome {
    NodeHome::new(fsnode_bin()).expect("temporary home")
}

/// A one-host LAN and a home whose daemon runs on it (nothing leaves the namespace).
fn lan_home() -> (Lan, NodeHome) {
    let lan = Lan::new(1).expect("a test namespace");
    let home = NodeHome::in_host(fsnode_bin(), lan.host(0)).expect("temporary home");
    (lan, home)
}

fn journal_json(home: &NodeHome) -> Vec<serde_json::Value> {
    let out = home.run(&["journal", "show", "--json"]).unwrap();
    assert!(out.success(), "journal show failed: {out:?}");
    out.stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("journal show --json prints JSON lines"))
        .collect()
}

fn event_types(home: &NodeHome) -> Vec<String> {
    journal_json(home)
        .iter()
        .filter_map(|r| r["event"]["type"].as_str().map(str::to_owned))
        .collect()
}

fn starts(home: &NodeHome) -> usize {
    if !home.journal_dir().is_dir() {
        return 0;
    }
    event_types(home)
        .iter()
        .filter(|t| *t == "NodeStarted")
        .count()
}

fn start_and_wait(home: &mut NodeHome) {
    let before = starts(home);
    home.start(&["--name", "e2e-node", "--interface", "eth0"])
        .unwrap();
    home.wait_until(Duration::from_secs(20), |h| Ok(starts(h) > before))
        .expect("the node journals NodeStarted");
}

#[test]
fn id_is_created_once_stable_and_private() {
    let home = home();
    let first = home.run(&["id", "--json"]).unwrap();
    assert!(first.success(), "{first:?}");
    let first: serde_json::Value = serde_json::from_str(&first.stdout).unwrap();
    let id = first["device_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 52);
    assert!(
        id.chars()
            .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
    );
    let second: serde_json::Value =
        serde_json::from_str(&home.run(&["id", "--json"]).unwrap().stdout).unwrap();
    assert_eq!(second["device_id"], first["device_id"]);
    let key = home.path().join("data/identity.pem");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = home.run(&["id"]).unwrap();
    assert!(
        text.stdout.contains(&id) && text.stdout.contains("type:"),
        "{text:?}"
    );
}

#[test]
fn a_corrupt_identity_is_an_error_naming_the_file_and_nothing_is_replaced() {
    let home = home();
    fs::create_dir_all(home.path().join("data")).unwrap();
    let key = home.path().join("data/identity.pem");
    fs::write(&key, "garbage").unwrap();
    let out = home.run(&["id"]).unwrap();
    assert_eq!(out.code, Some(5), "{out:?}");
    assert!(out.stderr.contains("identity.pem"), "{}", out.stderr);
    // `run` refuses too (before it opens any socket), and the file is untouched.
    let run = home.run(&["run", "--interface", "nonexistent0"]).unwrap();
    assert_eq!(run.code, Some(5), "{run:?}");
    assert_eq!(fs::read_to_string(&key).unwrap(), "garbage");
}

#[test]
fn run_journals_start_and_a_clean_stop_on_sigterm_and_sigint() {
    let (_lan, mut home) = lan_home();
    for signal in [Signal::TERM, Signal::INT] {
        start_and_wait(&mut home);
        let out = home.stop_with(signal, Duration::from_secs(10)).unwrap();
        assert_eq!(out.code, Some(0), "{out:?}");
    }
    let types = event_types(&home);
    assert_eq!(
        types,
        ["NodeStarted", "NodeStopped", "NodeStarted", "NodeStopped"]
    );
    let stops: Vec<_> = journal_json(&home)
        .into_iter()
        .filter(|r| r["event"]["type"] == "NodeStopped")
        .map(|r| r["event"]["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stops, ["SIGTERM", "SIGINT"]);
    let verify = home.run(&["journal", "verify"]).unwrap();
    assert!(
        verify.success() && verify.stdout.contains("intact"),
        "{verify:?}"
    );
    let replay = home.run(&["journal", "replay", "--json"]).unwrap();
    let state: serde_json::Value = serde_json::from_str(&replay.stdout).unwrap();
    assert_eq!(state["state"]["starts"], 2);
    assert_eq!(state["state"]["node"]["running"], false);
    assert_eq!(state["state"]["node"]["name"], "e2e-node");
    // --until: after the first start only, the node was running.
    let early = home
        .run(&["journal", "replay", "--json", "--until", "1"])
        .unwrap();
    let early: serde_json::Value = serde_json::from_str(&early.stdout).unwrap();
    assert_eq!(early["seq"], 1);
    assert_eq!(early["state"]["node"]["running"], true);
}

#[test]
fn kill_dash_nine_then_restart_replays_and_counts_both_starts() {
    let (_lan, mut home) = lan_home();
    start_and_wait(&mut home);
    let killed = home
        .stop_with(Signal::KILL, Duration::from_secs(10))
        .unwrap();
    assert_eq!(killed.code, None, "killed by a signal");
    start_and_wait(&mut home);
    home.stop_with(Signal::TERM, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        event_types(&home),
        ["NodeStarted", "NodeStarted", "NodeStopped"]
    );
}

#[test]
fn journal_commands_read_a_copied_directory_and_show_is_human_readable() {
    let (_lan, mut home) = lan_home();
    start_and_wait(&mut home);
    home.stop_with(Signal::TERM, Duration::from_secs(10))
        .unwrap();
    let copy = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(home.journal_dir()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    let elsewhere = NodeHome::new(fsnode_bin()).unwrap();
    let dir = copy.path().to_str().unwrap();
    let show = elsewhere
        .run(&["journal", "--journal", dir, "show"])
        .unwrap();
    assert!(show.success(), "{show:?}");
    let lines: Vec<&str> = show.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", show.stdout);
    assert!(
        lines[0].contains("NodeStarted") && lines[0].contains("name=e2e-node"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("NodeStopped reason=SIGTERM"),
        "{}",
        lines[1]
    );
    let from = elsewhere
        .run(&["journal", "show", "--from", "2", "--journal", dir])
        .unwrap();
    assert_eq!(from.stdout.lines().count(), 1, "{from:?}");
    let verify = elsewhere
        .run(&["journal", "verify", "--journal", dir])
        .unwrap();
    assert!(verify.success(), "{verify:?}");
}

#[test]
fn a_torn_last_record_is_reported_then_dropped_and_the_node_starts() {
    let (_lan, mut home) = lan_home();
    start_and_wait(&mut home);
    home.stop_with(Signal::TERM, Duration::from_secs(10))
        .unwrap();
    // Tear the last record: cut a few bytes off the newest segment.
    let mut segments: Vec<_> = fs::read_dir(home.journal_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    let last = segments.last().unwrap();
    let len = fs::metadata(last).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let verify = home.run(&["journal", "verify"]).unwrap();
    assert!(verify.success(), "{verify:?}");
    assert!(verify.stdout.contains("torn"), "{}", verify.stdout);
    assert_eq!(
        event_types(&home),
        ["NodeStarted"],
        "the torn NodeStopped is not replayed"
    );

    start_and_wait(&mut home);
    let out = home
        .stop_with(Signal::TERM, Duration::from_secs(10))
        .unwrap();
    assert!(
        out.stderr.contains("torn"),
        "the node reports the torn tail: {}",
        out.stderr
    );
    assert_eq!(
        event_types(&home),
        ["NodeStarted", "NodeStarted", "NodeStopped"]
    );
    let verify = home.run(&["journal", "verify"]).unwrap();
    assert!(!verify.stdout.contains("torn"), "{}", verify.stdout);
}

#[test]
fn journal_commands_explain_a_missing_journal() {
    let home = home();
    let out = home.run(&["journal", "show"]).unwrap();
    assert!(!out.success());
    assert!(out.stderr.contains("no journal at"), "{}", out.stderr);
}

/// A journal damaged in its first record: `verify` and `run` say what a repair keeps and cuts
/// and name `fsnode journal repair`; the repair asks (refused without a terminal or `--yes`,
/// nothing changed), then with `--yes` cuts at the damage, moves what it cut beside the journal,
/// and the node starts again.
#[test]
fn a_damaged_journal_is_repaired_keeping_what_it_cuts() {
    let (_lan, mut home) = lan_home();
    for _ in 0..2 {
        start_and_wait(&mut home);
        home.stop_with(Signal::TERM, Duration::from_secs(10))
            .unwrap();
    }
    let mut segments: Vec<_> = fs::read_dir(home.journal_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    let first = &segments[0];
    let mut bytes = fs::read(first).unwrap();
    // A byte inside the first record's payload: its checksum no longer holds.
    let at = fsnode_journal::SEGMENT_HEADER_LEN as usize + fsnode_journal::FRAME_HEADER_LEN + 2;
    bytes[at] ^= 0x55;
    fs::write(first, &bytes).unwrap();

    let verify = home.run(&["journal", "verify"]).unwrap();
    assert_eq!(verify.code, Some(4), "{verify:?}");
    assert!(
        verify.stderr.contains("fsnode journal repair")
            && verify.stderr.contains("keeps the 0 record(s)")
            && verify.stderr.contains("moves the 4 record(s)"),
        "verify names the repair and its count: {}",
        verify.stderr
    );
    let run = home
        .run(&["run", "--name", "e2e-node", "--interface", "eth0"])
        .unwrap();
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(
        run.stderr.contains("fsnode journal repair"),
        "{}",
        run.stderr
    );

    let asked = home.run(&["journal", "repair"]).unwrap();
    assert!(!asked.success(), "{asked:?}");
    assert!(asked.stderr.contains("--yes"), "{}", asked.stderr);
    assert_eq!(
        fs::read(first).unwrap(),
        bytes,
        "nothing changed without a yes"
    );

    let repaired = home.run(&["journal", "repair", "--yes"]).unwrap();
    assert!(repaired.success(), "{repaired:?}");
    assert!(
        repaired.stdout.contains("cuts 4 record(s)"),
        "{}",
        repaired.stdout
    );
    let cut: Vec<_> = fs::read_dir(home.journal_dir().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("journal.cut-")
        })
        .collect();
    assert_eq!(cut.len(), 1, "what was cut is kept beside the journal");
    let kept_bytes: u64 = fs::read_dir(&cut[0])
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        kept_bytes > 0,
        "the cut records are in {}",
        cut[0].display()
    );
    let verify = home.run(&["journal", "verify"]).unwrap();
    assert!(verify.success(), "{verify:?}");

    start_and_wait(&mut home);
    home.stop_with(Signal::TERM, Duration::from_secs(10))
        .unwrap();
    assert_eq!(event_types(&home), ["NodeStarted", "NodeStopped"]);
}
