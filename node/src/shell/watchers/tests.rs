use fsnode_journal::Options;

use super::*;
use crate::core::{Event, State};

fn stamped(n: u64) -> Stamped {
    Stamped {
        time_ms: n as i64,
        event: Event::NodeStopped {
            reason: format!("event {n}"),
        },
    }
}

/// One durable batch of the events `first..=last`.
fn batch(first: u64, last: u64) -> Vec<(u64, Stamped)> {
    (first..=last).map(|seq| (seq, stamped(seq))).collect()
}

fn tell(watchers: &mut Watchers, first: u64, last: u64) {
    watchers.tell(&batch(first, last), Some(last));
}

/// Takes everything queued: the sequence numbers of its events and the item that ended it.
fn drain(items: &Receiver<WatchItem>) -> (Vec<u64>, Option<WatchItem>) {
    let mut seqs = Vec::new();
    let mut end = None;
    while let Ok(item) = items.try_recv() {
        match item {
            WatchItem::Event { seq, .. } => seqs.push(seq),
            other => {
                assert!(end.is_none(), "one item ends a registration: {other:?}");
                end = Some(other);
            }
        }
    }
    (seqs, end)
}

/// A watcher that reads nothing while more than its queue holds is journaled is told where it
/// fell behind (not dropped), is told how far to read the journal when it registers again from
/// there, and then follows live from the end of that range: every event exactly once.
#[test]
fn a_watcher_that_falls_behind_is_told_where_and_catches_up_without_a_gap() {
    let mut watchers = Watchers::new(10);
    let (tx, items) = async_channel::bounded(WATCH_QUEUE);
    watchers.register(
        WatchRequest {
            from: None,
            items: tx.clone(),
        },
        11,
    );
    // 3,000 events in three batches; the client reads nothing meanwhile.
    tell(&mut watchers, 11, 1010);
    tell(&mut watchers, 1011, 2010);
    tell(&mut watchers, 2011, 3010);
    let (seqs, end) = drain(&items);
    let queued = (WATCH_QUEUE - RESERVED_SLOTS) as u64;
    assert_eq!(seqs, (11..11 + queued).collect::<Vec<_>>());
    let behind_at = 11 + queued;
    assert_eq!(end, Some(WatchItem::Behind { from: behind_at }));
    assert!(
        !watchers.is_empty(),
        "a watcher behind is kept: its events stay needed"
    );

    // While it reads the journal, the node goes on.
    tell(&mut watchers, 3011, 3020);
    assert!(
        items.try_recv().is_err(),
        "nothing is queued for a watcher behind"
    );
    watchers.register(
        WatchRequest {
            from: Some(behind_at),
            items: tx.clone(),
        },
        3021,
    );
    let missed = 3020 - behind_at + 1;
    assert_eq!(
        drain(&items),
        (
            vec![],
            Some(WatchItem::CatchUp {
                until: 3020,
                events: missed
            })
        )
    );
    // Events delivered while it read: another round, counted from the last one.
    tell(&mut watchers, 3021, 3025);
    watchers.register(
        WatchRequest {
            from: Some(3021),
            items: tx.clone(),
        },
        3026,
    );
    assert_eq!(
        drain(&items),
        (
            vec![],
            Some(WatchItem::CatchUp {
                until: 3025,
                events: 5
            })
        )
    );
    // Caught up: live from the next event, nothing twice, nothing left out.
    watchers.register(
        WatchRequest {
            from: Some(3026),
            items: tx.clone(),
        },
        3026,
    );
    tell(&mut watchers, 3026, 3030);
    assert_eq!(drain(&items), ((3026..=3030).collect(), None));
    assert_eq!(watchers.list.len(), 1, "re-registering reuses the entry");
}

/// A batch appended before a new watcher registered (still committing) is not sent to it: it
/// follows from the next record on.
#[test]
fn a_new_watcher_follows_from_the_next_record() {
    let mut watchers = Watchers::new(4);
    let (tx, items) = async_channel::bounded(WATCH_QUEUE);
    watchers.register(
        WatchRequest {
            from: None,
            items: tx,
        },
        8,
    );
    tell(&mut watchers, 5, 9);
    assert_eq!(drain(&items), (vec![8, 9], None));
}

/// A stopping node tells every watcher after what is queued for it: also one that read
/// nothing (its queue full up to the reserved slots) and one reading the journal.
#[test]
fn every_watcher_hears_that_the_node_stops() {
    let mut watchers = Watchers::new(0);
    let (unread_tx, unread) = async_channel::bounded(WATCH_QUEUE);
    let (behind_tx, behind) = async_channel::bounded(WATCH_QUEUE);
    for tx in [unread_tx, behind_tx] {
        watchers.register(
            WatchRequest {
                from: None,
                items: tx,
            },
            1,
        );
    }
    let queued = (WATCH_QUEUE - RESERVED_SLOTS) as u64;
    tell(&mut watchers, 1, queued + 1);
    let (_, end) = drain(&behind);
    assert_eq!(end, Some(WatchItem::Behind { from: queued + 1 }));
    watchers.stop("SIGTERM");
    let stopping = WatchItem::Stopping {
        reason: "SIGTERM".into(),
    };
    let items: Vec<WatchItem> = std::iter::from_fn(|| unread.try_recv().ok()).collect();
    assert_eq!(items.len() as u64, queued + 2);
    assert_eq!(
        items[items.len() - 2..],
        [WatchItem::Behind { from: queued + 1 }, stopping.clone()]
    );
    assert_eq!(drain(&behind), (vec![], Some(stopping)));
    assert!(!watchers.all_gone());
    drop((unread, behind));
    assert!(watchers.all_gone());
}

/// A watcher whose connection went away is dropped at the next batch.
#[test]
fn a_watcher_that_went_away_is_dropped() {
    let mut watchers = Watchers::new(0);
    let (tx, items) = async_channel::bounded(WATCH_QUEUE);
    watchers.register(
        WatchRequest {
            from: None,
            items: tx,
        },
        1,
    );
    drop(items);
    tell(&mut watchers, 1, 1);
    assert!(watchers.is_empty());
}

fn journal_with_snapshot() -> (tempfile::TempDir, Journal<JournalEntry>) {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::<JournalEntry>::open(dir.path(), Options::default()).unwrap();
    for n in 1..=5 {
        journal
            .append(&JournalEntry::Event(stamped(n)))
            .unwrap()
            .wait()
            .unwrap();
    }
    // Seq 6; the default options keep no history, so 1-5 are retired.
    let snapshot = JournalEntry::Snapshot {
        time_ms: 6,
        state: State::default(),
    };
    journal.snapshot(&snapshot).unwrap().wait().unwrap();
    for n in 7..=9 {
        journal
            .append(&JournalEntry::Event(stamped(n)))
            .unwrap()
            .wait()
            .unwrap();
    }
    (dir, journal)
}

/// Catching up reads the range's events in batches, skipping snapshot records, and stops at
/// the end of the range.
#[test]
fn catching_up_reads_the_events_of_the_range_only() {
    let (_dir, journal) = journal_with_snapshot();
    let mut cursor = JournalCursor::open(&journal, 6, 8).unwrap();
    let seqs = |items: Vec<WatchItem>| -> Vec<u64> {
        items
            .into_iter()
            .map(|item| match item {
                WatchItem::Event { seq, .. } => seq,
                other => panic!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(seqs(cursor.read(1).unwrap()), vec![7]);
    assert!(!cursor.is_done());
    assert_eq!(seqs(cursor.read(10).unwrap()), vec![8]);
    assert!(cursor.is_done());
}

/// A watcher that missed events the journal no longer holds is told so (it is then dropped
/// with that reason), and so is one asked to read past the journal's end.
#[test]
fn events_retired_from_the_journal_end_the_watch_with_the_reason() {
    let (_dir, journal) = journal_with_snapshot();
    let mut cursor = JournalCursor::open(&journal, 2, 8).unwrap();
    let err = cursor.read(10).unwrap_err();
    assert!(
        matches!(
            err,
            CatchUpError::Retired {
                from: 2,
                oldest_missing: 5
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("retired"), "{err}");

    let mut cursor = JournalCursor::open(&journal, 8, 12).unwrap();
    let err = cursor.read(10).unwrap_err();
    assert!(
        matches!(err, CatchUpError::Short { last: 9, until: 12 }),
        "{err:?}"
    );
}
