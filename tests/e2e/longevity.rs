//! A node that runs for years: provisioning before the first start, a journal of a million
//! transfers that still opens fast and small, and many files over restarts.

use std::fs;
use std::time::{Duration, Instant};

use fsnode::core::{DeviceId, Direction, Event, Stamped, State, TransferId};
use fsnode::record::{self, JournalEntry};
use fsnode_journal::{Journal, Options};
use fsnode_testkit::{Lan, NodeHome};
use serde_json::Value;

use crate::fsnode_bin;
use crate::support::{Node, trusting_pair, wait_for};

fn trusted_ids(home: &NodeHome) -> Vec<String> {
    let out = home.run(&["trust", "list", "--json"]).unwrap();
    assert!(out.success(), "{out:?}");
    let json: Value = serde_json::from_str(&out.stdout).unwrap();
    json["trusted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `trust add|remove|list` without a running node append to and read the journal; the node
/// then starts with that trust, and with a node running they go through its control socket.
#[test]
fn trust_is_provisioned_without_a_running_node() {
    let lan = Lan::new(1).expect("a test namespace");
    let mut home = NodeHome::in_host(fsnode_bin(), lan.host(0)).unwrap();
    let friend = DeviceId::from_sha256(&[5; 32]).to_string();
    let other = DeviceId::from_sha256(&[6; 32]).to_string();

    // Before the first start: nothing exists yet.
    let added = home.run(&["trust", "add", &friend, "--json"]).unwrap();
    assert!(added.success(), "{added:?}");
    assert!(added.stdout.contains(&friend), "{added:?}");
    let added = home.run(&["trust", "add", &other]).unwrap();
    assert!(added.success(), "{added:?}");
    assert_eq!(trusted_ids(&home).len(), 2);
    let removed = home.run(&["trust", "remove", &other[..12]]).unwrap();
    assert!(removed.success(), "a prefix of a known device: {removed:?}");
    assert_eq!(trusted_ids(&home), vec![friend.clone()]);
    let unknown = home.run(&["trust", "add", "abcdefgh"]).unwrap();
    assert!(!unknown.success(), "a prefix of nothing known: {unknown:?}");

    // The node starts with it, and the projection file says so.
    home.start(&["--name", "server", "--interface", "eth0"])
        .unwrap();
    home.wait_until(Duration::from_secs(20), |h| {
        Ok(h.run(&["peers", "--json"])?.success())
    })
    .expect("the node answers");
    assert_eq!(trusted_ids(&home), vec![friend.clone()]);
    let projection = fs::read_to_string(home.path().join("data/trusted-devices.toml")).unwrap();
    assert!(projection.contains(&friend), "{projection}");
    // Running: through the control socket (the journal is locked).
    let added = home.run(&["trust", "add", &other]).unwrap();
    assert!(added.success(), "{added:?}");
    assert_eq!(trusted_ids(&home).len(), 2);
    home.stop_with(rustix::process::Signal::TERM, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        trusted_ids(&home).len(),
        2,
        "offline again, read from the journal"
    );
    let verify = home.run(&["journal", "verify"]).unwrap();
    assert!(verify.success(), "{verify:?}");
}

fn transfer_id(n: u64) -> TransferId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[8] = 0xa5;
    TransferId(b)
}

/// Writes a journal as a node that has finished `transfers` transfers would have: every
/// transfer's events, a snapshot, a stop. Records go straight through the journal crate.
fn synthesise(dir: &std::path::Path, transfers: u64) -> State {
    // History kept, as under the node's default retention (30 days, 256 MiB is far more than
    // this needs), so `transfers --all` has it to read.
    let opts = Options {
        preallocate_bytes: 0,
        retention: fsnode_journal::Retention {
            max_bytes: u64::MAX,
            max_age: None,
        },
        ..Options::default()
    };
    let (journal, _) = Journal::<JournalEntry>::open(dir, opts).unwrap();
    let peer = DeviceId::from_sha256(&[7; 32]);
    let mut state = State::default();
    let mut seq_time = 1_700_000_000_000i64;
    let mut put = |state: &mut State, event: Event| {
        seq_time += 1;
        let stamped = Stamped {
            time_ms: seq_time,
            event,
        };
        state.apply(&stamped);
        journal.append(&JournalEntry::Event(stamped)).unwrap()
    };
    let _authorized = put(
        &mut state,
        Event::PeerAuthorized {
            peer: peer.clone(),
            name: Some("laptop".into()),
            by: fsnode::core::Authority::Operator,
        },
    );
    let mut last = None;
    for n in 0..transfers {
        let id = transfer_id(n);
        let _queued = put(
            &mut state,
            Event::TransferQueued {
                id,
                peer: peer.clone(),
                direction: Direction::Receive,
                name: format!("inbox/file-{n}.dat"),
                size: 4096,
                path: None,
                mime: None,
                mode: Some(0o644),
                mtime: None,
                sha256: None,
                dir: None,
            },
        );
        last = Some(put(
            &mut state,
            Event::TransferCompleted {
                id,
                path: Some(format!("/srv/inbox/file-{n}.dat").into()),
            },
        ));
        // The node records its `done`s as delivered about once a second, in batches.
        if n % 100 == 99 {
            last = Some(put(
                &mut state,
                Event::OutcomesDelivered {
                    ids: (n - 99..=n).map(transfer_id).collect(),
                },
            ));
        }
    }
    if let Some(last) = last {
        last.wait().unwrap();
    }
    journal
        .snapshot_stream(|| record::snapshot_parts(&state, seq_time))
        .unwrap()
        .wait()
        .unwrap();
    journal.close().unwrap();
    state
}

/// After a million transfers the node starts (control socket answering) within a second and
/// idles in at most 50 MiB; `transfers` shows the recent ones, `--all` pages the history.
/// The start does not depend on the count (history is never replayed); writing the journal
/// does, and a debug build writes ~40,000 records/s, so CI synthesises 100,000 transfers.
/// `FSNODE_LONGEVITY_TRANSFERS=1000000` is the full size.
#[test]
fn a_journal_of_a_million_transfers_opens_fast_and_small() {
    let count: u64 = std::env::var("FSNODE_LONGEVITY_TRANSFERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let lan = Lan::new(1).expect("a test namespace");
    let mut home = NodeHome::in_host(fsnode_bin(), lan.host(0)).unwrap();
    // Keep all history: the worst case for opening is to have it all on disk.
    fs::create_dir_all(home.path().join("config")).unwrap();
    fs::write(
        home.path().join("config/fsnode.toml"),
        "[journal]\nretain-days = 36500\nretain-mib = 100000\n",
    )
    .unwrap();
    let made = Instant::now();
    let state = synthesise(&home.journal_dir(), count);
    eprintln!("synthesised {count} transfers in {:?}", made.elapsed());
    assert!(state.transfers.len() <= 1000);

    let started = Instant::now();
    home.start(&["--name", "old-server", "--interface", "eth0"])
        .unwrap();
    let answered = loop {
        if home.run(&["peers", "--json"]).unwrap().success() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the node never answered"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("control socket answered {answered:?} after the start");
    assert!(answered <= Duration::from_secs(1), "{answered:?}");
    std::thread::sleep(Duration::from_millis(500));
    let node = Node {
        home,
        name: "old-server".into(),
    };
    let rss_mib = node.rss_kib() / 1024;
    eprintln!("idle RSS {rss_mib} MiB");
    assert!(rss_mib <= 50, "{rss_mib} MiB");

    let recent = node.json(&["transfers", "--json"]);
    let rows = recent["transfers"].as_array().unwrap();
    assert_eq!(rows.len() as u64, count.min(1000));
    let read = Instant::now();
    let page = node.json(&[
        "transfers",
        "--all",
        "--limit",
        "10",
        "--skip",
        "5",
        "--json",
    ]);
    eprintln!("transfers --all read the history in {:?}", read.elapsed());
    assert_eq!(page["total"].as_u64(), Some(count));
    let ids: Vec<&str> = page["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 10);
    assert_eq!(
        ids[0],
        transfer_id(count - 6).to_string(),
        "newest first, after the skip"
    );
    let mut node = node;
    node.stop();
}

/// Three rounds of a directory of small files, both nodes restarted after each round: every
/// round arrives whole (the middle one through `send --wait`), and the nodes start again each
/// time. `FSNODE_ROUND_FILES` sets the
/// files per round (default 2,000 for CI's two cores; the full size is 10,000).
#[test]
fn rounds_of_many_files_with_restarts_between() {
    let files: usize = std::env::var("FSNODE_ROUND_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let lan = Lan::new(2).expect("a test namespace");
    let (mut a, mut b, _a_id, b_id) = trusting_pair(&lan);
    let source = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let dir = source.path().join(format!("round{round}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..files {
            let body: Vec<u8> = (0..1024)
                .map(|j| ((i * 7 + j + round) % 251) as u8)
                .collect();
            fs::write(dir.join(format!("f{i:05}.bin")), body).unwrap();
        }
        // The middle round waits with `send --wait`: it returns only once every file has
        // arrived (a send of more than ~1,800 files once returned at once).
        let wait = round == 1;
        let mut args = vec!["send", dir.to_str().unwrap(), "--to", &b_id];
        if wait {
            args.push("--wait");
        }
        let sent = a.home.run(&args).unwrap();
        assert!(sent.success(), "{sent:?}");
        let received = b.home.path().join(format!("received/round{round}"));
        if wait {
            let arrived = fs::read_dir(&received).map(|d| d.count()).unwrap_or(0);
            assert_eq!(
                arrived, files,
                "send --wait returned before every file arrived"
            );
        }
        wait_for(
            "every file of the round arrives",
            Duration::from_secs(60 + files as u64 / 20),
            || {
                fs::read_dir(&received).map(|d| d.count()).unwrap_or(0) == files
                    && a.json(&["transfers", "--json"])["transfers"]
                        .as_array()
                        .is_some_and(|t| t.iter().all(|t| t["status"] == "completed"))
            },
        );
        for i in 0..files {
            let name = format!("f{i:05}.bin");
            assert_eq!(
                fs::read(received.join(&name)).unwrap(),
                fs::read(dir.join(&name)).unwrap(),
                "round {round} {name}"
            );
        }
        a.stop();
        b.stop();
        a.restart(&[]);
        b.restart(&[]);
    }
    let verify = b.home.run(&["journal", "verify"]).unwrap();
    assert!(verify.success(), "{verify:?}");
    eprintln!("{}", verify.stdout);
    if files >= 10_000 {
        // ~5 records per file on the receiver: it crossed 100,000 records and compacted
        // (while running, or at a restart), and started again after it.
        assert!(
            !verify.stdout.contains(" 0 snapshot(s)"),
            "{}",
            verify.stdout
        );
    }
}
