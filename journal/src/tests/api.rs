//! The journal's API on intact files.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::*;
use crate::{LOCK_FILE, Pending, Stats};

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, report) = Journal::<Ev>::open(dir.path(), Options::default()).unwrap();
    assert_eq!(report.records, 0);
    assert_eq!(report.last_seq, None);
    assert_eq!(report.truncated_tail, None);
    assert_eq!(journal.last_seq(), None);

    let written = vec![
        note("a"),
        Ev::State {
            upto: 1,
            text: "b".into(),
        },
        note(""),
    ];
    assert_eq!(append_all(&journal, written.clone()), vec![1, 2, 3]);
    assert_eq!(journal.last_seq(), Some(3));

    let back = records(journal.replay());
    assert_eq!(seqs(&back), vec![1, 2, 3]);
    assert!(back.iter().all(|r| r.kind == RecordKind::Event));
    let payloads: Vec<Ev> = back.into_iter().map(|r| r.payload).collect();
    assert_eq!(payloads, written);
    journal.close().unwrap();

    let read: Vec<Ev> = records(reader(dir.path()).replay())
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(read, written);
}

#[test]
fn seq_continues_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), Options::default());
    append_all(&journal, (0..5).map(|i| note(format!("{i}"))));
    journal.close().unwrap();

    let (journal, report) = Journal::<Ev>::open(dir.path(), Options::default()).unwrap();
    assert_eq!(
        (report.records, report.last_seq, report.segments),
        (5, Some(5), 1)
    );
    assert_eq!(journal.last_seq(), Some(5));
    assert_eq!(append_all(&journal, [note("x"), note("y")]), vec![6, 7]);
    assert_eq!(
        seqs(&records(journal.replay())),
        (1..=7).collect::<Vec<_>>()
    );
    drop(journal); // dropping the last handle also commits and releases the lock

    let (_journal, report) = Journal::<Ev>::open(dir.path(), Options::default()).unwrap();
    assert_eq!(report.last_seq, Some(7));
}

#[test]
fn segments_roll_at_the_target_size() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), small());
    let text = "x".repeat(100);
    append_all(&journal, (0..20).map(|_| note(text.clone())));
    let stats = journal.stats();
    journal.close().unwrap();

    let paths = segment_paths(dir.path());
    assert!(
        paths.len() >= 5,
        "20 records of ~120 bytes in 256-byte segments: {paths:?}"
    );
    assert_eq!(stats.segments_created as usize, paths.len() - 1);
    let mut next = 1;
    for (i, path) in paths.iter().enumerate() {
        let frames = frames_of(path);
        assert!(!frames.is_empty(), "segment {i} is empty");
        assert_eq!(
            frames[0].seq, next,
            "segment {i} continues the previous one"
        );
        let name_seq: Seq = path.file_name().unwrap().to_str().unwrap()[..20]
            .parse()
            .unwrap();
        assert_eq!(name_seq, next, "segment named by its first seq");
        next += frames.len() as u64;
        let size = fs::metadata(path).unwrap().len();
        // A segment is rolled once it reaches the target, so it exceeds it by at most one frame;
        // sealed segments are trimmed to their data (no preallocated tail left).
        assert_eq!(
            size,
            frames.last().unwrap().end,
            "segment {i} trimmed to its data"
        );
        if i + 1 < paths.len() {
            let before_last = frames[frames.len() - 1].start;
            assert!(before_last < 256, "segment {i} rolled too late");
        }
    }
    assert_eq!(next, 21);
    assert_eq!(
        seqs(&records(reader(dir.path()).replay())),
        (1..=20).collect::<Vec<_>>()
    );
}

#[test]
fn snapshot_compacts_and_replay_starts_at_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), small());
    let text = "y".repeat(100);
    append_all(&journal, (0..10).map(|_| note(text.clone())));
    let before = segment_paths(dir.path());
    assert!(before.len() > 2);

    let snap = Ev::State {
        upto: 10,
        text: "state".into(),
    };
    let pending = journal.snapshot(&snap).unwrap();
    assert_eq!(pending.seq, 11);
    assert_eq!(futures_lite::future::block_on(pending).unwrap(), 11);
    // Compaction finishes before the snapshot's ticket resolves.
    let after = segment_paths(dir.path());
    assert_eq!(
        after.len(),
        1,
        "only the snapshot's segment is left: {after:?}"
    );
    assert!(after[0].ends_with("00000000000000000011.seg"));
    assert_eq!(frames_of(&after[0])[0].kind, RecordKind::Snapshot);
    assert!(journal.stats().segments_removed >= before.len() as u64);

    append_all(&journal, [note("after-1"), note("after-2")]);
    let replayed = records(journal.replay());
    assert_eq!(seqs(&replayed), vec![11, 12, 13]);
    assert_eq!(replayed[0].kind, RecordKind::Snapshot);
    assert_eq!(replayed[0].payload, snap);
    assert_eq!(replayed[2].payload, note("after-2"));
    journal.close().unwrap();

    let (journal, report) = Journal::<Ev>::open(dir.path(), small()).unwrap();
    assert_eq!((report.records, report.last_seq), (3, Some(13)));
    assert_eq!(seqs(&records(journal.replay())), vec![11, 12, 13]);
    assert_eq!(records(journal.replay())[0].kind, RecordKind::Snapshot);
    let r = records(reader(dir.path()).replay());
    assert_eq!(
        (seqs(&r), r[0].kind),
        (vec![11, 12, 13], RecordKind::Snapshot)
    );
}

#[test]
fn a_second_snapshot_replaces_the_first_and_snapshots_can_come_first() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), Options::default());
    // A snapshot into the empty first segment does not roll.
    journal.snapshot(&note("s1")).unwrap().wait().unwrap();
    assert_eq!(segment_paths(dir.path()).len(), 1);
    append_all(&journal, [note("e2")]);
    journal.snapshot(&note("s3")).unwrap().wait().unwrap();
    append_all(&journal, [note("e4")]);
    let r = records(journal.replay());
    assert_eq!(seqs(&r), vec![3, 4]);
    assert_eq!(r[0].payload, note("s3"));
    assert_eq!(segment_paths(dir.path()).len(), 1);
    journal.close().unwrap();
    let v = reader(dir.path()).verify().unwrap();
    assert_eq!(
        (v.records, v.snapshots, v.first_seq, v.last_seq),
        (2, 1, Some(3), Some(4))
    );
}

#[test]
fn replay_from_a_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), small());
    let text = "z".repeat(60);
    append_all(&journal, (0..30).map(|_| note(text.clone())));
    assert!(segment_paths(dir.path()).len() > 3);
    for from in [1, 2, 7, 15, 29, 30] {
        assert_eq!(
            seqs(&records(journal.replay_from(from))),
            (from..=30).collect::<Vec<_>>(),
            "from {from}"
        );
        assert_eq!(
            seqs(&records(reader(dir.path()).replay_from(from))),
            (from..=30).collect::<Vec<_>>()
        );
    }
    assert!(records(journal.replay_from(31)).is_empty());
    assert!(records(journal.replay_from(u64::MAX)).is_empty());

    // After a snapshot, older records are gone: replay_from(1) starts at the oldest remaining.
    journal.snapshot(&note("snap")).unwrap().wait().unwrap();
    append_all(&journal, [note("after")]);
    assert_eq!(seqs(&records(journal.replay_from(1))), vec![31, 32]);
    assert_eq!(seqs(&records(journal.replay_from(32))), vec![32]);
    journal.close().unwrap();
    assert_eq!(
        seqs(&records(reader(dir.path()).replay_from(5))),
        vec![31, 32]
    );
}

#[test]
fn record_too_large_is_rejected_before_taking_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_record_bytes: 64,
        ..Options::default()
    };
    let journal = open(dir.path(), opts.clone());
    append_all(&journal, [note("small")]);
    match journal.append(&note("x".repeat(100))) {
        Err(JournalError::RecordTooLarge { len, max: 64 }) => assert!(len > 100),
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert!(matches!(
        journal.snapshot(&note("x".repeat(64))),
        Err(JournalError::RecordTooLarge { .. })
    ));
    // Exactly at the limit is fine: Note("...") encodes as 1 + 5 + 2 + len bytes here.
    let fits = note("x".repeat(64 - 8));
    let mut encoded = Vec::new();
    ciborium::into_writer(&fits, &mut encoded).unwrap();
    assert_eq!(encoded.len(), 64);
    assert_eq!(
        append_all(&journal, [fits, note("next")]),
        vec![2, 3],
        "no seq was consumed"
    );
    journal.close().unwrap();
    assert_eq!(
        seqs(&records(
            Reader::<Ev>::open(dir.path(), opts).unwrap().replay()
        )),
        vec![1, 2, 3]
    );
}

#[test]
fn a_second_writer_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), Options::default());
    match Journal::<Ev>::open(dir.path(), Options::default()) {
        Err(JournalError::Locked { dir: d }) => assert_eq!(d, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(dir.path().join(LOCK_FILE).exists());
    // A reader needs no lock.
    append_all(&journal, [note("live")]);
    assert_eq!(seqs(&records(reader(dir.path()).replay())), vec![1]);
    let clone = journal.clone();
    journal.close().unwrap();
    assert!(matches!(
        clone.append(&note("late")),
        Err(JournalError::Closed)
    ));
    // Closing released the lock although a clone is still alive.
    let (reopened, _) = Journal::<Ev>::open(dir.path(), Options::default()).unwrap();
    drop(clone);
    assert_eq!(append_all(&reopened, [note("again")]), vec![2]);
}

#[test]
fn pending_resolves_blocking_and_async() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), Options::default());
    let a = journal.append(&note("a")).unwrap();
    let b = journal.append(&note("b")).unwrap();
    assert_eq!((a.seq, b.seq), (1, 2));
    assert_eq!(a.wait().unwrap(), 1);
    assert_eq!(futures_lite::future::block_on(b).unwrap(), 2);

    // Many futures awaited together by one executor task.
    let pendings: Vec<_> = (0..50)
        .map(|i| journal.append(&note(format!("{i}"))).unwrap())
        .collect();
    let got = futures_lite::future::block_on(async {
        let mut out = Vec::new();
        for p in pendings {
            out.push(p.await.unwrap());
        }
        out
    });
    assert_eq!(got, (3..=52).collect::<Vec<_>>());

    // An async appender on another thread, with a future polled before it is ready.
    let j = journal.clone();
    let handle = std::thread::spawn(move || {
        futures_lite::future::block_on(async move {
            let mut last = 0;
            for i in 0..20 {
                last = j.append(&note(format!("t{i}"))).unwrap().await.unwrap();
            }
            last
        })
    });
    let last = handle.join().unwrap();
    assert_eq!(last, 72);
    journal.close().unwrap();
}

#[test]
fn concurrent_appenders_get_gapless_seqs_and_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), Options::default());
    let threads = 8;
    let per_thread = 100;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let j = journal.clone();
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| {
                        let seq = j.append(&note(format!("{t}/{i}"))).unwrap().wait().unwrap();
                        (seq, format!("{t}/{i}"))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<(Seq, String)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    let total = (threads * per_thread) as u64;
    assert_eq!(
        all.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );

    let stats: Stats = journal.stats();
    assert_eq!(stats.records, total);
    assert!(
        stats.batches < total,
        "group commit shares fsyncs: {} batches for {total} records",
        stats.batches
    );
    assert!(stats.bytes > total * FRAME_HEADER_LEN as u64);

    // What each thread was told is what the journal holds.
    let replayed: Vec<(Seq, String)> = records(journal.replay())
        .into_iter()
        .map(|r| match r.payload {
            Ev::Note(s) => (r.seq, s),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(replayed, all);
    journal.close().unwrap();
}

#[test]
fn a_failed_fsync_poisons_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), Options::default());
    append_all(&journal, [note("ok")]);
    journal
        .core()
        .faults
        .fail_sync_of_batch
        .store(1, Ordering::Relaxed);
    let failed = journal.append(&note("lost")).unwrap();
    match failed.wait() {
        Err(JournalError::Poisoned {
            op: "fsync",
            first_seq: 2,
            ..
        }) => {}
        other => panic!("expected Poisoned, got {other:?}"),
    }
    // Every later append fails the same way, and so does close.
    assert!(matches!(
        journal.append(&note("later")),
        Err(JournalError::Poisoned { .. })
    ));
    let message = format!("{}", journal.close().unwrap_err());
    assert!(
        message.contains("may not be durable") && message.contains("reopen"),
        "{message}"
    );

    // Reopening recovers what reached the disk (here the record did reach the page cache).
    let (journal, report) = Journal::<Ev>::open(dir.path(), Options::default()).unwrap();
    assert!(report.last_seq >= Some(1));
    let next = journal.append(&note("after")).unwrap().wait().unwrap();
    assert_eq!(next, report.last_seq.unwrap() + 1);
}

#[test]
fn closing_commits_everything_queued_and_trims_the_preallocation() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), Options::default());
    append_all(&journal, [note("first")]);
    let live_len = fs::metadata(&segment_paths(dir.path())[0]).unwrap().len();
    let pendings: Vec<_> = (0..1000)
        .map(|i| journal.append(&note(format!("{i}"))).unwrap())
        .collect();
    journal.close().unwrap();
    for (i, p) in pendings.into_iter().enumerate() {
        assert_eq!(p.wait().unwrap(), i as u64 + 2);
    }
    let path = &segment_paths(dir.path())[0];
    let frames = frames_of(path);
    assert_eq!(frames.len(), 1001);
    let size = fs::metadata(path).unwrap().len();
    assert_eq!(
        size, frames[1000].end,
        "preallocated tail given back on close"
    );
    assert!(
        live_len >= Options::default().preallocate_bytes,
        "segment was preallocated while open"
    );
    let v = reader(dir.path()).verify().unwrap();
    assert_eq!((v.records, v.torn_tail), (1001, None));
}

#[test]
fn a_reader_sees_a_live_preallocated_journal_without_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), Options::default());
    append_all(&journal, (0..10).map(|i| note(format!("{i}"))));
    let path = &segment_paths(dir.path())[0];
    assert!(fs::metadata(path).unwrap().len() > frames_of(path).last().unwrap().end);
    let v = reader(dir.path()).verify().unwrap();
    assert_eq!((v.records, v.last_seq, v.torn_tail), (10, Some(10), None));
    journal.close().unwrap();
}

#[test]
fn a_crash_between_snapshot_and_compaction_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), small());
    let text = "w".repeat(100);
    append_all(&journal, (0..8).map(|_| note(text.clone())));
    journal.close().unwrap();
    copy_dir(dir.path(), saved.path());
    let old = segment_paths(dir.path()).len();

    let journal = open(dir.path(), small());
    journal.snapshot(&note("snap")).unwrap().wait().unwrap();
    append_all(&journal, [note("after")]);
    journal.close().unwrap();
    // Put the deleted segments back, as if the crash came before their deletion.
    copy_dir(saved.path(), dir.path());
    assert_eq!(segment_paths(dir.path()).len(), old + 1);

    let r = reader(dir.path());
    assert_eq!(
        seqs(&records(r.replay())),
        vec![9, 10],
        "replay starts at the snapshot"
    );
    assert_eq!(
        seqs(&records(r.replay_from(1))),
        (1..=10).collect::<Vec<_>>()
    );
    let v = r.verify().unwrap();
    assert_eq!((v.records, v.snapshots, v.segments), (10, 1, old + 1));

    let (journal, report) = Journal::<Ev>::open(dir.path(), small()).unwrap();
    assert_eq!(report.removed_segments, old);
    assert_eq!(
        (report.segments, report.records, report.last_seq),
        (1, 2, Some(10))
    );
    assert_eq!(segment_paths(dir.path()).len(), 1);
    assert_eq!(seqs(&records(journal.replay_from(1))), vec![9, 10]);
}

#[test]
fn interrupted_segment_creation_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), Options::default());
    append_all(&journal, [note("a")]);
    journal.close().unwrap();
    let tmp = dir.path().join("00000000000000000002.seg.tmp");
    fs::write(&tmp, b"FSNJ").unwrap();
    let (journal, report) = Journal::<Ev>::open(dir.path(), Options::default()).unwrap();
    assert!(!tmp.exists());
    assert_eq!(
        (report.segments, report.last_seq, report.truncated_tail),
        (1, Some(1), None)
    );
    assert_eq!(append_all(&journal, [note("b")]), vec![2]);
}

#[test]
fn stats_count_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), Options::default());
    for i in 0..5 {
        journal
            .append(&note(format!("{i}")))
            .unwrap()
            .wait()
            .unwrap();
    }
    let s = journal.stats();
    assert_eq!(
        (s.records, s.batches),
        (5, 5),
        "each waited-for append is its own batch"
    );
    assert!(s.fsyncs >= 5);
    let frames = frames_of(&segment_paths(dir.path())[0]);
    assert_eq!(s.bytes, frames[4].end - crate::SEGMENT_HEADER_LEN);
}

#[test]
fn errors_explain_themselves() {
    let corrupt = JournalError::Corrupt {
        segment: "j/00000000000000000001.seg".into(),
        offset: 123,
        reason: "CRC mismatch".into(),
    };
    let text = corrupt.to_string();
    assert!(
        text.contains("00000000000000000001.seg") && text.contains("123"),
        "{text}"
    );
    // What to do about it is the application's to say (fsnode names `fsnode journal repair`
    // with what it would keep and cut); the journal says what is still good.
    assert!(
        text.contains("records before this offset are intact"),
        "{text}"
    );
    let newer = JournalError::UnsupportedVersion {
        segment: "s".into(),
        found: 2,
        supported: 1,
    };
    assert!(newer.to_string().contains("newer fsnode") && newer.to_string().contains("upgrade"));
    let locked = JournalError::Locked { dir: "/d".into() }.to_string();
    assert!(
        locked.contains("/d") && locked.contains("locked"),
        "{locked}"
    );
}

#[test]
fn distinct_payloads_survive_reopen_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), small());
    let written: Vec<Ev> = (0..40).map(|i| note("p".repeat(i * 7))).collect();
    append_all(&journal, written.clone());
    journal.close().unwrap();
    let (journal, _) = Journal::<Ev>::open(dir.path(), small()).unwrap();
    let back: Vec<Ev> = records(journal.replay())
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(back, written);
    let distinct: BTreeSet<_> = segment_paths(dir.path()).into_iter().collect();
    assert!(distinct.len() > 5);
}

#[test]
fn replay_while_appending_sees_a_gapless_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), small());
    let writer = journal.clone();
    let handle = std::thread::spawn(move || {
        let mut last = None;
        for i in 0..2000 {
            if i == 1000 {
                writer.snapshot(&note("snap")).unwrap().wait().unwrap();
            }
            last = Some(writer.append(&note(format!("{i}"))).unwrap());
        }
        last.unwrap().wait().unwrap()
    });
    let mut longest = 0;
    while !handle.is_finished() {
        for replay in [journal.replay().unwrap(), journal.replay_from(1).unwrap()] {
            let got = seqs(
                &replay
                    .collect::<Result<Vec<_>, _>>()
                    .expect("no error while appending"),
            );
            if let (Some(&first), Some(&last)) = (got.first(), got.last()) {
                assert_eq!(got, (first..=last).collect::<Vec<_>>(), "gapless");
                longest = longest.max(got.len());
            }
        }
    }
    assert_eq!(handle.join().unwrap(), 2001);
    let r = records(journal.replay());
    assert_eq!(
        (r[0].seq, r[0].kind, r.len()),
        (1001, RecordKind::Snapshot, 1001)
    );
    assert!(longest > 0);
    journal.close().unwrap();
}

#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Journal<Ev>>();
    send_sync::<Pending>();
    send_sync::<Reader<Ev>>();
    send_sync::<JournalError>();
    send::<crate::Replay<Ev>>();
}

/// A reader (`fsnode journal show`, `trust list` without a node) beside a writer that closes
/// meanwhile: the writer trims the zeros it preallocated, and the reader, which measured the
/// segment before, reads the records and an end, not a damaged segment.
#[test]
fn a_reader_sees_the_end_of_a_segment_its_writer_trims_while_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), Options::default());
    append_all(&journal, (0..3).map(|i| note(format!("{i}"))));
    let reading = reader(dir.path()).replay().unwrap();
    journal.close().unwrap();
    let read: Vec<u64> = reading.map(|r| r.unwrap().seq).collect();
    assert_eq!(read, vec![1, 2, 3]);
}
