//! Snapshots in parts, and the retention of history (segments older than the newest snapshot).

use std::time::{Duration, SystemTime};

use super::*;
use crate::Retention;
use crate::writer::{HistorySegment, retired_prefix};

fn keep_all() -> Options {
    Options {
        segment_bytes: 256,
        retention: Retention {
            max_bytes: u64::MAX,
            max_age: None,
        },
        ..Options::default()
    }
}

fn state(upto: Seq, text: &str) -> Ev {
    Ev::State {
        upto,
        text: text.into(),
    }
}

#[test]
fn a_snapshot_in_parts_replays_whole_and_never_straddles_segments() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of 256 bytes, parts of ~300: each part alone overfills a segment.
    let journal = open(dir.path(), small());
    append_all(&journal, (0..6).map(|i| note(format!("e{i}"))));
    let parts: Vec<Ev> = (0..4)
        .map(|i| state(6, &format!("{i}{}", "p".repeat(300))))
        .collect();
    let seq = journal.snapshot_parts(&parts).unwrap().wait().unwrap();
    assert_eq!(seq, 10, "the ticket is the last part's");
    append_all(&journal, [note("after")]);

    let back = records(journal.replay());
    assert_eq!(seqs(&back), vec![7, 8, 9, 10, 11]);
    let kinds: Vec<RecordKind> = back.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RecordKind::SnapshotPart,
            RecordKind::SnapshotPart,
            RecordKind::SnapshotPart,
            RecordKind::Snapshot,
            RecordKind::Event
        ]
    );
    journal.close().unwrap();

    // Default retention: the history before the snapshot is gone; the parts share a segment.
    let paths = segment_paths(dir.path());
    let first = &paths[0];
    assert!(first.ends_with(segment::file_name(7)), "{paths:?}");
    assert_eq!(
        frames_of(first).len(),
        4,
        "all parts in the snapshot's segment"
    );
    let v = reader(dir.path()).verify().unwrap();
    assert_eq!((v.records, v.snapshots, v.torn_tail), (5, 1, None));
    let (journal, report) = Journal::<Ev>::open(dir.path(), small()).unwrap();
    assert_eq!((report.records, report.last_seq), (5, Some(11)));
    assert_eq!(seqs(&records(journal.replay())), vec![7, 8, 9, 10, 11]);
}

#[test]
fn a_part_too_large_refuses_the_whole_snapshot_before_taking_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_record_bytes: 200,
        ..Options::default()
    };
    let journal = open(dir.path(), opts);
    append_all(&journal, [note("a")]);
    let parts = vec![state(1, "small"), state(1, &"x".repeat(500))];
    assert!(matches!(
        journal.snapshot_parts(&parts),
        Err(JournalError::RecordTooLarge { .. })
    ));
    assert_eq!(append_all(&journal, [note("b")]), vec![2]);
}

#[test]
fn a_snapshot_whose_last_part_never_became_durable_is_dropped_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), keep_all());
    append_all(&journal, (0..4).map(|i| note(format!("e{i}"))));
    let parts: Vec<Ev> = (0..3).map(|i| state(4, &format!("part{i}"))).collect();
    journal.snapshot_parts(&parts).unwrap().wait().unwrap();
    journal.close().unwrap();

    // A crash in the middle of the last part: its frame is torn.
    let last = segment_paths(dir.path()).pop().unwrap();
    let frames = frames_of(&last);
    assert_eq!(frames.len(), 3);
    let cut = frames[2].start + 5;
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(cut)
        .unwrap();

    // A reader sees the parts but no complete snapshot: replay starts at the beginning.
    assert_eq!(
        seqs(&records(reader(dir.path()).replay())),
        vec![1, 2, 3, 4, 5, 6]
    );
    let (journal, report) = Journal::<Ev>::open(dir.path(), keep_all()).unwrap();
    let torn = report
        .truncated_tail
        .expect("the incomplete snapshot is reported");
    assert!(torn.reason.contains("snapshot"), "{torn:?}");
    assert_eq!((report.records, report.last_seq), (4, Some(4)));
    assert_eq!(append_all(&journal, [note("next")]), vec![5]);
    assert_eq!(seqs(&records(journal.replay())), vec![1, 2, 3, 4, 5]);
    journal.close().unwrap();
    reader(dir.path()).verify().unwrap();
}

#[test]
fn an_event_inside_a_snapshot_in_parts_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), Options::default());
    append_all(&journal, [note("a")]);
    let parts: Vec<Ev> = (0..3).map(|i| state(1, &format!("part{i}"))).collect();
    journal.snapshot_parts(&parts).unwrap().wait().unwrap();
    append_all(&journal, [note("b")]);
    journal.close().unwrap();
    let path = segment_paths(dir.path()).pop().unwrap();
    let hit = frames_of(&path)[1];
    // The middle part becomes an event: the first part is then left open.
    super::damage::rewrite_frame(&path, 1, hit.seq, 1);
    let reason = expect_corrupt_at(reader(dir.path()).verify(), &path, hit.start);
    assert!(reason.contains("never completed"), "{reason}");
}

fn expect_corrupt_at<T: std::fmt::Debug>(
    r: Result<T, JournalError>,
    segment: &Path,
    offset: u64,
) -> String {
    match r {
        Err(JournalError::Corrupt {
            segment: s,
            offset: o,
            reason,
        }) if s == segment && o == offset => reason,
        other => panic!(
            "expected Corrupt at {} {offset}, got {other:?}",
            segment.display()
        ),
    }
}

#[test]
fn history_is_kept_under_the_retention_and_replay_from_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), keep_all());
    append_all(&journal, (0..6).map(|i| note(format!("e{i}"))));
    journal.snapshot(&state(6, "s1")).unwrap().wait().unwrap();
    append_all(&journal, (0..3).map(|i| note(format!("f{i}"))));
    journal.snapshot(&state(10, "s2")).unwrap().wait().unwrap();
    append_all(&journal, [note("g")]);
    assert_eq!(seqs(&records(journal.replay())), vec![11, 12]);
    assert_eq!(
        seqs(&records(journal.replay_from(1))),
        (1..=12).collect::<Vec<_>>()
    );
    journal.close().unwrap();

    let (journal, report) = Journal::<Ev>::open(dir.path(), keep_all()).unwrap();
    assert_eq!(report.removed_segments, 0);
    assert_eq!(report.records, 2, "open checks from the newest snapshot on");
    assert_eq!(seqs(&records(journal.replay())), vec![11, 12]);
    journal.close().unwrap();
    assert_eq!(reader(dir.path()).verify().unwrap().records, 12);

    // With no room for history, opening retires all of it, whole epochs at a time.
    let none = Options {
        segment_bytes: 256,
        ..Options::default()
    };
    let (journal, report) = Journal::<Ev>::open(dir.path(), none).unwrap();
    assert!(report.removed_segments > 0);
    assert_eq!(seqs(&records(journal.replay_from(1))), vec![11, 12]);
    journal.close().unwrap();
}

#[test]
fn a_size_limit_retires_the_oldest_epochs_and_keeps_history_foldable() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), keep_all());
    for round in 0..4u64 {
        append_all(&journal, (0..5).map(|i| note(format!("r{round}e{i}"))));
        let upto = journal.last_seq().unwrap();
        journal
            .snapshot(&state(upto, &format!("s{round}")))
            .unwrap()
            .wait()
            .unwrap();
    }
    journal.close().unwrap();
    let history_bytes: u64 = segment_paths(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    let half = Options {
        segment_bytes: 256,
        retention: Retention {
            max_bytes: history_bytes / 2,
            max_age: None,
        },
        ..Options::default()
    };
    let (journal, report) = Journal::<Ev>::open(dir.path(), half).unwrap();
    assert!(report.removed_segments > 0, "{report:?}");
    let remaining = records(journal.replay_from(1));
    assert!(
        remaining.len() > 1 && remaining.len() < 24,
        "{}",
        remaining.len()
    );
    assert_eq!(
        remaining[0].kind,
        RecordKind::Snapshot,
        "what remains starts at a snapshot"
    );
    journal.close().unwrap();
}

fn seg(bytes: u64, age_s: u64, starts_with_snapshot: bool, now: SystemTime) -> HistorySegment {
    HistorySegment {
        bytes,
        modified: Some(now - Duration::from_secs(age_s)),
        starts_with_snapshot,
    }
}

#[test]
fn retirement_goes_by_epochs_bytes_and_age() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    // Epochs: [0,1] (from seq 1), [2,3,4] (snapshot at 2), [5] (snapshot at 5).
    let history = [
        seg(100, 500, false, now),
        seg(100, 400, false, now),
        seg(100, 300, true, now),
        seg(100, 200, false, now),
        seg(100, 150, false, now),
        seg(100, 100, true, now),
    ];
    let bytes = |max_bytes| Retention {
        max_bytes,
        max_age: None,
    };
    assert_eq!(retired_prefix(&history, &bytes(0), now), 6, "none kept");
    assert_eq!(retired_prefix(&history, &bytes(u64::MAX), now), 0);
    assert_eq!(retired_prefix(&history, &bytes(600), now), 0);
    assert_eq!(
        retired_prefix(&history, &bytes(599), now),
        2,
        "oldest epoch"
    );
    assert_eq!(retired_prefix(&history, &bytes(400), now), 2);
    assert_eq!(
        retired_prefix(&history, &bytes(399), now),
        5,
        "only the newest epoch fits"
    );
    assert_eq!(retired_prefix(&history, &bytes(99), now), 6);
    let age = |secs| Retention {
        max_bytes: u64::MAX,
        max_age: Some(Duration::from_secs(secs)),
    };
    // An epoch's age is its newest segment's.
    assert_eq!(retired_prefix(&history, &age(1000), now), 0);
    assert_eq!(retired_prefix(&history, &age(399), now), 2);
    assert_eq!(retired_prefix(&history, &age(150), now), 2);
    assert_eq!(retired_prefix(&history, &age(149), now), 5);
    assert_eq!(retired_prefix(&history, &age(10), now), 6);
    assert_eq!(retired_prefix(&[], &bytes(0), now), 0);
}

/// A snapshot many times the stream's queue (16 MiB against 4 MiB) goes out in several
/// batches while another thread keeps appending: the other appends wait, so the parts stay
/// consecutive, the writer never rolls a segment inside the snapshot, and the journal
/// reopens with the snapshot whole and every appended record after it.
#[test]
fn a_streamed_snapshot_larger_than_its_queue_stays_whole_beside_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_bytes: 1024 * 1024,
        ..keep_all()
    };
    let journal = std::sync::Arc::new(open(dir.path(), opts.clone()));
    append_all(&journal, (0..3).map(|i| note(format!("e{i}"))));
    let part = |i: usize| state(3, &format!("{i:03}{}", "p".repeat(256 * 1024)));
    let appender = {
        let journal = std::sync::Arc::clone(&journal);
        std::thread::spawn(move || {
            (0..200)
                .map(|i| journal.append(&note(format!("x{i}"))).unwrap().seq)
                .collect::<Vec<_>>()
        })
    };
    let last = journal
        .snapshot_stream(|| (0..64).map(part))
        .unwrap()
        .wait()
        .unwrap();
    let others = appender.join().unwrap();
    let first = last - 63;
    assert!(
        others.iter().all(|seq| *seq < first || *seq > last),
        "no append lands inside the snapshot"
    );

    let back = records(journal.replay());
    let kinds: Vec<RecordKind> = back.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == RecordKind::SnapshotPart)
            .count(),
        63
    );
    assert_eq!(back[63].kind, RecordKind::Snapshot);
    assert_eq!(
        back[0].payload,
        part(0),
        "replay starts at the snapshot's first part"
    );
    assert_eq!(
        back.len(),
        64 + others.iter().filter(|s| **s > last).count()
    );
    drop(back);
    let Ok(journal) = std::sync::Arc::try_unwrap(journal) else {
        panic!("the appender is done")
    };
    journal.close().unwrap();
    let v = reader(dir.path()).verify().unwrap();
    assert_eq!((v.snapshots, v.torn_tail), (1, None));
    let (journal, report) = Journal::<Ev>::open(dir.path(), opts).unwrap();
    assert_eq!(report.last_seq, Some(3 + 64 + 200));
    assert_eq!(append_all(&journal, [note("next")]), vec![3 + 64 + 200 + 1]);
}

/// Parts that differ between the check and the stream (a caller's bug) leave no
/// half-written snapshot with records after it: the journal fails closed, and reopening it
/// keeps every record before the snapshot.
#[test]
fn a_streamed_snapshot_that_stops_half_way_poisons_the_journal_and_reopens_clean() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), keep_all());
    append_all(&journal, (0..3).map(|i| note(format!("e{i}"))));
    let calls = std::cell::Cell::new(0);
    let result = journal.snapshot_stream(|| {
        calls.set(calls.get() + 1);
        let n = if calls.get() == 1 { 4 } else { 2 };
        (0..n).map(|i| state(3, &format!("part{i}")))
    });
    assert!(
        matches!(result, Err(JournalError::Encode { .. })),
        "{result:?}"
    );
    assert!(matches!(
        journal.append(&note("after")),
        Err(JournalError::Poisoned { .. })
    ));
    drop(journal);
    let (journal, report) = Journal::<Ev>::open(dir.path(), keep_all()).unwrap();
    assert_eq!((report.records, report.last_seq), (3, Some(3)));
    assert_eq!(append_all(&journal, [note("next")]), vec![4]);
}
