// Tests pick an arbitrary epoch for virtual time; the machine itself never reads the clock.
#![allow(clippy::disallowed_methods)]

use sha2::{Digest, Sha256};

use super::*;
use crate::core::TransferId;

const ID: TransferId = TransferId([7; 16]);
const CHUNK: u32 = 1024;

fn start(size: u64) -> StartInfo {
    StartInfo {
        id: ID,
        name: "f.bin".into(),
        size,
        chunk_size: CHUNK,
        chunks: chunk_count(size, CHUNK),
        mime: "application/octet-stream".into(),
        mode: Some(0o640),
        mtime: Some(1_700_000_000),
        start_chunk: 0,
    }
}

fn drain(r: &mut Receiver) -> Vec<RecvOutput> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The bytes of chunk `index` of a file of `size` bytes (a fixed pattern).
fn bytes(size: u64, index: u64) -> Vec<u8> {
    let len = chunk_len(size, CHUNK, index);
    (0..len).map(|i| (index as u8) ^ (i as u8)).collect()
}

fn chunk(size: u64, index: u64) -> RecvInput {
    let data = bytes(size, index);
    RecvInput::Chunk {
        index,
        sha256: sha(&data),
        data,
    }
}

fn send(message: Message) -> RecvOutput {
    RecvOutput::Send(message)
}

fn record(event: Event) -> RecvOutput {
    RecvOutput::Record(event)
}

fn progress(next: u64) -> RecvOutput {
    send(Message::Progress { id: ID, next })
}

fn durable(start: u64, end: u64) -> RecvOutput {
    record(Event::ChunksDurable { id: ID, start, end })
}

/// A receiver for a file of `size` bytes, its accept already drained.
fn receiver(size: u64, durable_next: u64, window: u32) -> (Receiver, Instant) {
    let mut r = Receiver::new(start(size), durable_next, window);
    drain(&mut r);
    (r, Instant::now())
}

/// Delivers chunk `index` and reports it verified (`ok`), returning the outputs.
fn deliver(r: &mut Receiver, size: u64, index: u64, ok: bool, now: Instant) -> Vec<RecvOutput> {
    r.handle(chunk(size, index), now);
    let written = drain(r);
    assert!(
        matches!(written.as_slice(), [RecvOutput::Write { index: i, .. }] if *i == index),
        "chunk {index}: {written:?}"
    );
    r.handle(RecvInput::Verified { index, ok }, now);
    drain(r)
}

fn assert_ignores_everything(r: &mut Receiver, size: u64, now: Instant) {
    assert!(r.is_finished());
    for input in [
        chunk(size, r.next()),
        RecvInput::Verified { index: 0, ok: true },
        RecvInput::Synced,
        RecvInput::End { sha256: [0; 32] },
        RecvInput::Finalized { path: "/x".into() },
        RecvInput::Cancel {
            reason: "late".into(),
        },
        RecvInput::CancelLocal {
            reason: "late".into(),
        },
        RecvInput::WriteFailed {
            reason: "late".into(),
        },
    ] {
        r.handle(input, now);
    }
    r.handle_timeout(now + Duration::from_secs(3600));
    assert_eq!(drain(r), vec![]);
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn check_start_wants_size_chunk_size_and_chunks_to_agree() {
    for (size, chunks) in [(0, 0), (1, 1), (1024, 1), (1025, 2), (10 * 1024, 10)] {
        let info = StartInfo {
            chunks,
            ..start(size)
        };
        assert_eq!(check_start(info.clone()), Ok(info), "size {size}");
    }
    let wrong = StartInfo {
        chunks: 2,
        ..start(1024)
    };
    assert_eq!(
        check_start(wrong),
        Err(RejectReason::ChunkCount {
            size: 1024,
            chunk_size: 1024,
            chunks: 2
        })
    );
    let empty_with_a_chunk = StartInfo {
        chunks: 1,
        ..start(0)
    };
    assert!(check_start(empty_with_a_chunk).is_err());
    for chunk_size in [0, 1023, MAX_CHUNK + 1, u32::MAX] {
        let info = StartInfo {
            chunk_size,
            chunks: chunk_count(5000, chunk_size),
            ..start(5000)
        };
        assert_eq!(
            check_start(info),
            Err(RejectReason::ChunkSize { chunk_size })
        );
    }
    let biggest = StartInfo {
        chunk_size: MAX_CHUNK,
        chunks: 1,
        ..start(5000)
    };
    assert!(check_start(biggest).is_ok());
    // Enormous sizes do not overflow.
    let huge = StartInfo {
        size: u64::MAX,
        chunks: u64::MAX / 1024 + 1,
        ..start(0)
    };
    assert!(check_start(huge).is_ok());
}

#[test]
fn reject_reasons_are_the_spec_words() {
    assert_eq!(RejectReason::Mismatch.to_string(), "mismatch");
    assert_eq!(RejectReason::Cancelled.to_string(), "cancelled");
    let first = start(5000);
    assert_eq!(check_resume(&first, &first.clone()), Ok(()));
    let later = StartInfo {
        start_chunk: 3,
        mime: "text/plain".into(),
        ..first.clone()
    };
    assert_eq!(
        check_resume(&first, &later),
        Ok(()),
        "start_chunk and mime may change"
    );
    for other in [
        StartInfo {
            name: "g.bin".into(),
            ..first.clone()
        },
        StartInfo {
            size: 5001,
            ..first.clone()
        },
        StartInfo {
            chunk_size: 2048,
            ..first.clone()
        },
    ] {
        assert_eq!(check_resume(&first, &other), Err(RejectReason::Mismatch));
    }
}

#[test]
fn a_new_transfer_is_accepted_from_chunk_0() {
    let mut r = Receiver::new(start(10 * 1024), 0, 16);
    assert_eq!(
        drain(&mut r),
        vec![
            record(Event::TransferStarted {
                id: ID,
                chunk_size: CHUNK,
                chunks: 10,
                start_chunk: 0
            }),
            record(Event::TransferAccepted {
                id: ID,
                start_chunk: 0,
                window: 16
            }),
            send(Message::Accept {
                id: ID,
                start_chunk: 0,
                window: 16
            }),
        ]
    );
    assert_eq!((r.next(), r.chunks(), r.window()), (0, 10, 16));
    assert_eq!(r.progress_every(), 4);
    assert_eq!(r.poll_timeout(), None);
    assert!(!r.is_finished());
}

#[test]
fn a_resumed_transfer_is_accepted_from_the_durable_count_whatever_the_sender_believes() {
    let info = StartInfo {
        start_chunk: 9,
        ..start(10 * 1024)
    };
    let mut r = Receiver::new(info, 5, 4);
    let out = drain(&mut r);
    assert_eq!(
        out[2],
        send(Message::Accept {
            id: ID,
            start_chunk: 5,
            window: 4
        })
    );
    assert_eq!(r.next(), 5);
    // Never more than the file has.
    let mut r = Receiver::new(start(10 * 1024), 99, 4);
    assert!(drain(&mut r).contains(&send(Message::Accept {
        id: ID,
        start_chunk: 10,
        window: 4
    })));
    // A zero window would stall: it is at least 1.
    let r = Receiver::new(start(10 * 1024), 0, 0);
    assert_eq!(r.window(), 1);
    assert_eq!(r.progress_every(), 1);
}

#[test]
fn a_chunk_goes_to_the_shell_with_its_offset() {
    let size = 10 * 1024;
    let (mut r, now) = receiver(size, 0, 16);
    r.handle(chunk(size, 3), now);
    let data = bytes(size, 3);
    assert_eq!(
        drain(&mut r),
        vec![RecvOutput::Write {
            index: 3,
            offset: 3 * 1024,
            sha256: sha(&data),
            data,
            sync: false,
        }]
    );
    assert_eq!(r.outstanding_writes(), 1);
}

#[test]
fn chunks_below_next_are_dropped_silently() {
    let size = 10 * 1024;
    let (mut r, now) = receiver(size, 5, 4);
    for index in 0..5 {
        r.handle(chunk(size, index), now);
    }
    assert_eq!(drain(&mut r), vec![]);
    assert!(!r.is_finished());
}

#[test]
fn a_chunk_already_in_hand_is_dropped_silently() {
    let size = 10 * 1024;
    let (mut r, now) = receiver(size, 0, 8);
    r.handle(chunk(size, 1), now);
    assert_eq!(drain(&mut r).len(), 1);
    // While it is being written, after it is verified, while syncing, once durable past a gap.
    r.handle(chunk(size, 1), now);
    assert_eq!(drain(&mut r), vec![]);
    r.handle(RecvInput::Verified { index: 1, ok: true }, now);
    drain(&mut r);
    r.handle(chunk(size, 1), now);
    assert_eq!(drain(&mut r), vec![]);
    deliver(&mut r, size, 2, true, now); // the second verified chunk: sync due
    r.handle(chunk(size, 1), now);
    assert_eq!(drain(&mut r), vec![]);
    r.handle(RecvInput::Synced, now);
    assert_eq!(drain(&mut r), vec![durable(1, 3), progress(0)]);
    r.handle(chunk(size, 2), now);
    assert_eq!(drain(&mut r), vec![]);
}

#[test]
fn a_chunk_index_out_of_range_cancels() {
    let size = 10 * 1024;
    let (mut r, now) = receiver(size, 8, 16);
    r.handle(chunk(size, 10), now);
    let reason = "chunk index out of range".to_string();
    assert_eq!(
        drain(&mut r),
        vec![
            record(Event::TransferFailed {
                id: ID,
                reason: reason.clone()
            }),
            send(Message::Cancel { id: ID, reason }),
            RecvOutput::DeletePart,
        ]
    );
    assert_ignores_everything(&mut r, size, now);
}

#[test]
fn a_chunk_beyond_the_window_cancels() {
    let size = 100 * 1024;
    let (mut r, now) = receiver(size, 10, 4);
    // 10..14 is the window: the last one is fine, the next one is not.
    r.handle(chunk(size, 13), now);
    assert_eq!(drain(&mut r).len(), 1);
    r.handle(chunk(size, 14), now);
    let reason = "chunk beyond the window".to_string();
    assert_eq!(
        drain(&mut r),
        vec![
            record(Event::TransferFailed {
                id: ID,
                reason: reason.clone()
            }),
            send(Message::Cancel { id: ID, reason }),
            RecvOutput::DeletePart,
        ]
    );
    assert!(r.is_finished());
}

#[test]
fn the_window_moves_with_durable_progress_only() {
    let size = 100 * 1024;
    let (mut r, now) = receiver(size, 0, 4);
    // Fill the window; nothing verified yet: every chunk is in the shell's hands.
    for index in 0..4 {
        r.handle(chunk(size, index), now);
    }
    assert_eq!(drain(&mut r).len(), 4);
    assert_eq!(r.outstanding_writes(), 4);
    // Verified but not durable does not move the window.
    for index in 0..4 {
        r.handle(RecvInput::Verified { index, ok: true }, now);
    }
    assert_eq!(r.outstanding_writes(), 0);
    // (A window of 4 reports every chunk: the first sync covers chunk 0, the next the rest.)
    assert_eq!(drain(&mut r), vec![RecvOutput::Sync]);
    assert_eq!(r.next(), 0);
    r.handle(RecvInput::Synced, now);
    assert_eq!(r.next(), 1);
    r.handle(RecvInput::Synced, now);
    assert_eq!(r.next(), 4);
    r.handle(chunk(size, 7), now);
    assert!(matches!(
        drain(&mut r).as_slice(),
        [.., RecvOutput::Write { index: 7, .. }]
    ));
    r.handle(chunk(size, 8), now);
    assert!(r.is_finished(), "8 ≥ 4 + 4");
}

#[test]
fn a_chunk_of_the_wrong_length_cancels() {
    let size = 3 * 1024 + 10;
    let cases: [(u64, usize); 5] = [
        (0, 1023),
        (0, 1025),
        (1, 0),
        (3, 1024), // the last chunk holds 10 bytes
        (3, 9),
    ];
    for (index, len) in cases {
        let (mut r, now) = receiver(size, 0, 8);
        let data = vec![1; len];
        r.handle(
            RecvInput::Chunk {
                index,
                sha256: sha(&data),
                data,
            },
            now,
        );
        let reason = format!("chunk {index} has the wrong length");
        assert_eq!(
            drain(&mut r),
            vec![
                record(Event::TransferFailed {
                    id: ID,
                    reason: reason.clone()
                }),
                send(Message::Cancel { id: ID, reason }),
                RecvOutput::DeletePart,
            ],
            "chunk {index} of {len} bytes"
        );
    }
    // The right lengths, including the short last chunk, are fine.
    let (mut r, now) = receiver(size, 0, 8);
    for index in 0..4 {
        r.handle(chunk(size, index), now);
    }
    assert_eq!(r.outstanding_writes(), 4);
    assert!(!r.is_finished());
}

#[test]
fn a_hash_mismatch_asks_for_a_resend_and_the_third_cancels() {
    let size = 20 * 1024;
    let (mut r, now) = receiver(size, 0, 16);
    assert_eq!(
        deliver(&mut r, size, 2, false, now),
        vec![send(Message::Resend { id: ID, index: 2 })]
    );
    // Chunks after the bad one keep being accepted.
    assert_eq!(deliver(&mut r, size, 3, true, now), vec![]);
    assert_eq!(
        deliver(&mut r, size, 2, false, now),
        vec![send(Message::Resend { id: ID, index: 2 })]
    );
    let reason = "chunk 2 failed its hash 3 times".to_string();
    assert_eq!(
        deliver(&mut r, size, 2, false, now),
        vec![
            record(Event::TransferFailed {
                id: ID,
                reason: reason.clone()
            }),
            send(Message::Cancel { id: ID, reason }),
            RecvOutput::DeletePart,
        ]
    );
    assert_ignores_everything(&mut r, size, now);
}

#[test]
fn failures_are_counted_per_chunk() {
    let size = 20 * 1024;
    let (mut r, now) = receiver(size, 0, 16);
    for index in [0, 1, 0, 1] {
        assert_eq!(
            deliver(&mut r, size, index, false, now),
            vec![send(Message::Resend { id: ID, index })]
        );
    }
    // Two failures each: still going, and a good copy clears the way.
    assert!(!r.is_finished());
    deliver(&mut r, size, 0, true, now);
    deliver(&mut r, size, 1, true, now);
    assert!(!r.is_finished());
}

#[test]
fn progress_every_quarter_window_only_after_the_sync_with_the_event_first() {
    let size = 100 * 1024;
    let (mut r, now) = receiver(size, 0, 16);
    for index in 0..3 {
        assert_eq!(deliver(&mut r, size, index, true, now), vec![], "{index}");
    }
    // The fourth verified chunk: sync, but no progress yet.
    assert_eq!(deliver(&mut r, size, 3, true, now), vec![RecvOutput::Sync]);
    assert_eq!(r.next(), 0, "not durable before the sync");
    r.handle(RecvInput::Synced, now);
    assert_eq!(drain(&mut r), vec![durable(0, 4), progress(4)]);
    assert_eq!(r.next(), 4);
    // And again four later.
    for index in 4..7 {
        assert_eq!(deliver(&mut r, size, index, true, now), vec![]);
    }
    assert_eq!(deliver(&mut r, size, 7, true, now), vec![RecvOutput::Sync]);
    r.handle(RecvInput::Synced, now);
    assert_eq!(drain(&mut r), vec![durable(4, 8), progress(8)]);
}

#[test]
fn small_windows_report_every_chunk() {
    let size = 10 * 1024;
    for window in [1, 2, 3] {
        let (mut r, now) = receiver(size, 0, window);
        assert_eq!(deliver(&mut r, size, 0, true, now), vec![RecvOutput::Sync]);
        r.handle(RecvInput::Synced, now);
        assert_eq!(drain(&mut r), vec![durable(0, 1), progress(1)]);
    }
    // 7 / 4 = 1 too; 8 / 4 = 2.
    let (mut r, now) = receiver(size, 0, 8);
    assert_eq!(deliver(&mut r, size, 0, true, now), vec![]);
    assert_eq!(deliver(&mut r, size, 1, true, now), vec![RecvOutput::Sync]);
}

#[test]
fn syncs_are_grouped_one_at_a_time() {
    let size = 100 * 1024;
    let (mut r, now) = receiver(size, 0, 8); // progress every 2
    deliver(&mut r, size, 0, true, now);
    assert_eq!(deliver(&mut r, size, 1, true, now), vec![RecvOutput::Sync]);
    // Four more verified while the sync is in flight: no second sync yet.
    for index in 2..6 {
        assert_eq!(deliver(&mut r, size, index, true, now), vec![]);
    }
    // A late Synced repeated, or one that was never asked for, changes nothing.
    r.handle(RecvInput::Synced, now);
    assert_eq!(
        drain(&mut r),
        vec![durable(0, 2), progress(2), RecvOutput::Sync]
    );
    r.handle(RecvInput::Synced, now);
    assert_eq!(drain(&mut r), vec![durable(2, 6), progress(6)]);
    r.handle(RecvInput::Synced, now);
    assert_eq!(drain(&mut r), vec![]);
    assert_eq!(r.next(), 6);
}

#[test]
fn progress_goes_out_even_when_a_gap_holds_next_back() {
    let size = 100 * 1024;
    let (mut r, now) = receiver(size, 0, 16);
    deliver(&mut r, size, 0, false, now); // resend 0
    for index in 1..4 {
        assert_eq!(deliver(&mut r, size, index, true, now), vec![]);
    }
    assert_eq!(deliver(&mut r, size, 4, true, now), vec![RecvOutput::Sync]);
    r.handle(RecvInput::Synced, now);
    assert_eq!(drain(&mut r), vec![durable(1, 5), progress(0)]);
    // The resend arrives and three more: next jumps past everything durable.
    for index in [0, 5, 6] {
        assert_eq!(deliver(&mut r, size, index, true, now), vec![]);
    }
    assert_eq!(deliver(&mut r, size, 7, true, now), vec![RecvOutput::Sync]);
    r.handle(RecvInput::Synced, now);
    assert_eq!(
        drain(&mut r),
        vec![durable(0, 1), durable(5, 8), progress(8)]
    );
    assert_eq!(r.next(), 8);
}

#[test]
fn end_after_everything_durable_finalizes_and_done_follows() {
    let size = 4 * 1024;
    let (mut r, now) = receiver(size, 0, 16);
    for index in 0..4 {
        deliver(&mut r, size, index, true, now);
    }
    r.handle(RecvInput::Synced, now);
    assert_eq!(drain(&mut r), vec![durable(0, 4), progress(4)]);
    r.handle(RecvInput::End { sha256: [9; 32] }, now);
    assert_eq!(
        drain(&mut r),
        vec![progress(4), RecvOutput::Finalize { sha256: [9; 32] }]
    );
    assert_eq!(r.poll_timeout(), None, "nothing to wait for");
    r.handle(
        RecvInput::Finalized {
            path: "/in/f.bin".into(),
        },
        now,
    );
    assert_eq!(
        drain(&mut r),
        vec![
            record(Event::TransferCompleted {
                id: ID,
                path: Some("/in/f.bin".into())
            }),
            send(Message::Done {
                id: ID,
                ok: true,
                reason: None
            }),
        ]
    );
    assert_ignores_everything(&mut r, size, now);
}

#[test]
fn end_syncs_what_is_verified_and_waits_for_writes() {
    let size = 6 * 1024;
    let (mut r, now) = receiver(size, 0, 16);
    deliver(&mut r, size, 0, true, now);
    deliver(&mut r, size, 1, true, now);
    r.handle(chunk(size, 2), now);
    drain(&mut r);
    r.handle(chunk(size, 3), now);
    drain(&mut r);
    r.handle(RecvInput::End { sha256: [1; 32] }, now);
    assert_eq!(drain(&mut r), vec![RecvOutput::Sync]);
    // Chunk 2 is verified during the sync; chunk 3 after it; 4 and 5 are still to come.
    r.handle(RecvInput::Verified { index: 2, ok: true }, now);
    assert_eq!(drain(&mut r), vec![]);
    r.handle(RecvInput::Synced, now);
    assert_eq!(
        drain(&mut r),
        vec![durable(0, 2), progress(2), RecvOutput::Sync]
    );
    r.handle(RecvInput::Verified { index: 3, ok: true }, now);
    assert_eq!(drain(&mut r), vec![]);
    r.handle(RecvInput::Synced, now);
    assert_eq!(
        drain(&mut r),
        vec![durable(2, 3), progress(3), RecvOutput::Sync]
    );
    r.handle(RecvInput::Synced, now);
    assert_eq!(drain(&mut r), vec![durable(3, 4), progress(4)]);
    // After end every verified chunk is synced at once, whatever the cadence.
    assert_eq!(deliver(&mut r, size, 4, true, now), vec![RecvOutput::Sync]);
    assert_eq!(deliver(&mut r, size, 5, true, now), vec![]);
    r.handle(RecvInput::Synced, now);
    assert_eq!(
        drain(&mut r),
        vec![durable(4, 5), progress(5), RecvOutput::Sync]
    );
    r.handle(RecvInput::Synced, now);
    assert_eq!(
        drain(&mut r),
        vec![
            durable(5, 6),
            progress(6),
            RecvOutput::Finalize { sha256: [1; 32] }
        ]
    );
}

/// A file's last chunk is synced with its write, so a small file costs one trip to the disk:
/// `end` while that write is out sends nothing (a progress would say nothing new), and the
/// report that the write is durable journals every verified chunk, sends `progress` and
/// finalizes.
#[test]
fn the_last_chunk_is_written_and_synced_in_one_trip() {
    let size = 3 * 1024 + 10;
    let (mut r, now) = receiver(size, 0, 16);
    for index in 0..3 {
        r.handle(chunk(size, index), now);
        assert!(
            matches!(
                drain(&mut r).as_slice(),
                [RecvOutput::Write { sync: false, .. }]
            ),
            "chunk {index} waits for the cadence's sync"
        );
        r.handle(RecvInput::Verified { index, ok: true }, now);
        assert_eq!(drain(&mut r), vec![], "3 of a progress every 4");
    }
    r.handle(chunk(size, 3), now);
    assert!(matches!(
        drain(&mut r).as_slice(),
        [RecvOutput::Write {
            index: 3,
            sync: true,
            ..
        }]
    ));
    r.handle(RecvInput::End { sha256: [2; 32] }, now);
    assert_eq!(drain(&mut r), vec![], "the write is still out");
    r.handle(RecvInput::VerifiedDurable { index: 3 }, now);
    assert_eq!(
        drain(&mut r),
        vec![
            durable(0, 4),
            progress(4),
            RecvOutput::Finalize { sha256: [2; 32] }
        ]
    );
    r.handle(RecvInput::VerifiedDurable { index: 3 }, now);
    assert_eq!(drain(&mut r), vec![], "a stale report");
}

/// A durable write covers the chunks verified before it, not those of a sync still in
/// flight: they become durable with that sync's own report. A chunk after `end` is synced
/// with its write too.
#[test]
fn a_durable_write_leaves_the_sync_in_flight_its_chunks() {
    let size = 3 * 1024;
    let (mut r, now) = receiver(size, 0, 4);
    assert_eq!(deliver(&mut r, size, 0, true, now), vec![RecvOutput::Sync]);
    r.handle(RecvInput::End { sha256: [3; 32] }, now);
    assert_eq!(drain(&mut r), vec![]);
    r.handle(chunk(size, 2), now);
    assert!(matches!(
        drain(&mut r).as_slice(),
        [RecvOutput::Write {
            index: 2,
            sync: true,
            ..
        }]
    ));
    r.handle(chunk(size, 1), now);
    assert!(
        matches!(
            drain(&mut r).as_slice(),
            [RecvOutput::Write {
                index: 1,
                sync: true,
                ..
            }]
        ),
        "after end"
    );
    r.handle(RecvInput::Verified { index: 1, ok: true }, now);
    assert_eq!(drain(&mut r), vec![], "a sync is in flight");
    r.handle(RecvInput::VerifiedDurable { index: 2 }, now);
    assert_eq!(drain(&mut r), vec![durable(1, 3), progress(0)]);
    r.handle(RecvInput::Synced, now);
    assert_eq!(
        drain(&mut r),
        vec![
            durable(0, 1),
            progress(3),
            RecvOutput::Finalize { sha256: [3; 32] }
        ]
    );
}

#[test]
fn end_waits_up_to_30_s_for_resends() {
    let size = 4 * 1024;
    let (mut r, t0) = receiver(size, 0, 16);
    deliver(&mut r, size, 0, true, t0);
    deliver(&mut r, size, 1, false, t0);
    deliver(&mut r, size, 2, true, t0);
    deliver(&mut r, size, 3, true, t0);
    r.handle(RecvInput::End { sha256: [2; 32] }, t0);
    assert_eq!(drain(&mut r), vec![RecvOutput::Sync]);
    r.handle(RecvInput::Synced, t0);
    assert_eq!(
        drain(&mut r),
        vec![durable(0, 1), durable(2, 4), progress(1)]
    );
    assert_eq!(r.poll_timeout(), Some(t0 + RESEND_WAIT));
    r.handle_timeout(t0 + Duration::from_secs(29));
    assert_eq!(drain(&mut r), vec![]);
    // A second `end` changes nothing (the deadline stays).
    r.handle(
        RecvInput::End { sha256: [3; 32] },
        t0 + Duration::from_secs(1),
    );
    assert_eq!(drain(&mut r), vec![]);
    assert_eq!(r.poll_timeout(), Some(t0 + RESEND_WAIT));
    let t = t0 + Duration::from_millis(29_900);
    assert_eq!(deliver(&mut r, size, 1, true, t), vec![RecvOutput::Sync]);
    r.handle(RecvInput::Synced, t);
    assert_eq!(
        drain(&mut r),
        vec![
            durable(1, 2),
            progress(4),
            RecvOutput::Finalize { sha256: [2; 32] }
        ]
    );
    assert_eq!(r.poll_timeout(), None);
    r.handle_timeout(t0 + RESEND_WAIT);
    assert_eq!(drain(&mut r), vec![]);
    assert!(!r.is_finished());
}

#[test]
fn resends_that_do_not_arrive_within_30_s_fail_the_transfer() {
    let size = 4 * 1024;
    let (mut r, t0) = receiver(size, 0, 16);
    deliver(&mut r, size, 0, false, t0);
    for index in 1..4 {
        deliver(&mut r, size, index, true, t0);
    }
    let t_end = t0 + Duration::from_secs(5);
    r.handle(RecvInput::End { sha256: [2; 32] }, t_end);
    assert_eq!(drain(&mut r), vec![RecvOutput::Sync]);
    r.handle(RecvInput::Synced, t_end);
    assert_eq!(drain(&mut r), vec![durable(1, 4), progress(0)]);
    assert_eq!(r.poll_timeout(), Some(t_end + RESEND_WAIT));
    r.handle_timeout(t_end + RESEND_WAIT - Duration::from_millis(1));
    assert_eq!(drain(&mut r), vec![]);
    r.handle_timeout(t_end + RESEND_WAIT);
    let reason = "resends did not arrive within 30 s".to_string();
    assert_eq!(
        drain(&mut r),
        vec![
            record(Event::TransferFailed {
                id: ID,
                reason: reason.clone()
            }),
            RecvOutput::DeletePart,
            send(Message::Done {
                id: ID,
                ok: false,
                reason: Some(reason)
            }),
        ]
    );
    assert_ignores_everything(&mut r, size, t_end);
}

#[test]
fn a_chunk_still_being_hashed_at_the_deadline_fails_too_but_a_pending_sync_does_not() {
    let size = 2 * 1024;
    let (mut r, t0) = receiver(size, 0, 16);
    r.handle(chunk(size, 0), t0);
    r.handle(chunk(size, 1), t0);
    drain(&mut r);
    r.handle(RecvInput::End { sha256: [2; 32] }, t0);
    drain(&mut r);
    r.handle(RecvInput::Verified { index: 0, ok: true }, t0);
    assert_eq!(drain(&mut r), vec![RecvOutput::Sync]);
    r.handle_timeout(t0 + RESEND_WAIT);
    assert!(r.is_finished(), "chunk 1 never came back verified");

    let (mut r, t0) = receiver(size, 0, 16);
    r.handle(chunk(size, 0), t0);
    r.handle(chunk(size, 1), t0);
    r.handle(RecvInput::End { sha256: [2; 32] }, t0);
    r.handle(RecvInput::Verified { index: 0, ok: true }, t0);
    r.handle(RecvInput::Verified { index: 1, ok: true }, t0);
    drain(&mut r);
    // Both verified; the disk is slow to sync: that is not the peer's fault.
    r.handle_timeout(t0 + RESEND_WAIT);
    assert!(!r.is_finished());
    assert_eq!(r.poll_timeout(), None);
    r.handle(RecvInput::Synced, t0 + RESEND_WAIT);
    assert!(matches!(drain(&mut r).as_slice(), [.., RecvOutput::Sync]));
    r.handle(RecvInput::Synced, t0 + RESEND_WAIT);
    assert!(matches!(
        drain(&mut r).as_slice(),
        [.., RecvOutput::Finalize { .. }]
    ));
}

#[test]
fn a_failed_finalize_reports_done_not_ok() {
    let (mut r, now) = receiver(0, 0, 16);
    r.handle(RecvInput::End { sha256: [5; 32] }, now);
    drain(&mut r);
    let reason = "the whole-file SHA-256 differs".to_string();
    r.handle(
        RecvInput::FinalizeFailed {
            reason: reason.clone(),
        },
        now,
    );
    assert_eq!(
        drain(&mut r),
        vec![
            record(Event::TransferFailed {
                id: ID,
                reason: reason.clone()
            }),
            RecvOutput::DeletePart,
            send(Message::Done {
                id: ID,
                ok: false,
                reason: Some(reason)
            }),
        ]
    );
    assert_ignores_everything(&mut r, 0, now);
}

#[test]
fn finalize_results_before_finalize_are_ignored() {
    let (mut r, now) = receiver(4096, 0, 16);
    r.handle(RecvInput::Finalized { path: "/x".into() }, now);
    r.handle(RecvInput::FinalizeFailed { reason: "x".into() }, now);
    assert_eq!(drain(&mut r), vec![]);
    assert!(!r.is_finished());
}

#[test]
fn a_cancel_from_the_sender_is_answered_with_done() {
    let size = 8 * 1024;
    let (mut r, now) = receiver(size, 0, 16);
    deliver(&mut r, size, 0, true, now);
    r.handle(
        RecvInput::Cancel {
            reason: "operator".into(),
        },
        now,
    );
    assert_eq!(
        drain(&mut r),
        vec![
            record(Event::TransferCancelled {
                id: ID,
                by: Side::Remote,
                reason: "operator".into()
            }),
            RecvOutput::DeletePart,
            send(Message::Done {
                id: ID,
                ok: false,
                reason: Some("cancelled".into())
            }),
        ]
    );
    assert_ignores_everything(&mut r, size, now);
}

#[test]
fn a_cancel_here_tells_the_sender() {
    let size = 8 * 1024;
    let (mut r, now) = receiver(size, 0, 16);
    r.handle(
        RecvInput::CancelLocal {
            reason: "not wanted".into(),
        },
        now,
    );
    assert_eq!(
        drain(&mut r),
        vec![
            record(Event::TransferCancelled {
                id: ID,
                by: Side::Local,
                reason: "not wanted".into()
            }),
            send(Message::Cancel {
                id: ID,
                reason: "not wanted".into()
            }),
            RecvOutput::DeletePart,
        ]
    );
    assert_ignores_everything(&mut r, size, now);
}

#[test]
fn a_write_failure_cancels_with_the_receivers_reason() {
    let size = 8 * 1024;
    let (mut r, now) = receiver(size, 0, 16);
    r.handle(chunk(size, 0), now);
    drain(&mut r);
    r.handle(
        RecvInput::WriteFailed {
            reason: "No space left on device (os error 28)".into(),
        },
        now,
    );
    let reason = "receiver: No space left on device (os error 28)".to_string();
    assert_eq!(
        drain(&mut r),
        vec![
            record(Event::TransferFailed {
                id: ID,
                reason: reason.clone()
            }),
            send(Message::Cancel { id: ID, reason }),
            RecvOutput::DeletePart,
        ]
    );
    assert_ignores_everything(&mut r, size, now);
}

#[test]
fn an_empty_file_goes_from_end_straight_to_finalize() {
    let mut r = Receiver::new(start(0), 0, 16);
    let now = Instant::now();
    assert!(drain(&mut r).contains(&send(Message::Accept {
        id: ID,
        start_chunk: 0,
        window: 16
    })));
    assert_eq!(r.chunks(), 0);
    // Any chunk at all is out of range.
    let mut probe = Receiver::new(start(0), 0, 16);
    drain(&mut probe);
    probe.handle(
        RecvInput::Chunk {
            index: 0,
            sha256: sha(&[]),
            data: vec![],
        },
        now,
    );
    assert!(probe.is_finished());

    let empty_hash = sha(&[]);
    r.handle(RecvInput::End { sha256: empty_hash }, now);
    assert_eq!(
        drain(&mut r),
        vec![progress(0), RecvOutput::Finalize { sha256: empty_hash }]
    );
    r.handle(
        RecvInput::Finalized {
            path: "/in/empty".into(),
        },
        now,
    );
    assert!(matches!(
        drain(&mut r).as_slice(),
        [
            RecvOutput::Record(Event::TransferCompleted { .. }),
            RecvOutput::Send(Message::Done { ok: true, .. })
        ]
    ));
}

#[test]
fn a_resume_with_everything_durable_finalizes_on_end() {
    let size = 4 * 1024;
    let (mut r, now) = receiver(size, 4, 16);
    r.handle(chunk(size, 3), now);
    assert_eq!(drain(&mut r), vec![]);
    r.handle(RecvInput::End { sha256: [4; 32] }, now);
    assert_eq!(
        drain(&mut r),
        vec![progress(4), RecvOutput::Finalize { sha256: [4; 32] }]
    );
}

#[test]
fn exactly_one_chunk_and_one_byte_past_it() {
    // 1024 bytes: one full chunk.
    let (mut r, now) = receiver(1024, 0, 16);
    assert_eq!(r.chunks(), 1);
    // The only chunk fills what is left of the window: synced at once.
    assert_eq!(deliver(&mut r, 1024, 0, true, now), vec![RecvOutput::Sync]);
    r.handle(RecvInput::End { sha256: [6; 32] }, now);
    assert_eq!(drain(&mut r), vec![]);
    r.handle(RecvInput::Synced, now);
    assert_eq!(
        drain(&mut r),
        vec![
            durable(0, 1),
            progress(1),
            RecvOutput::Finalize { sha256: [6; 32] }
        ]
    );
    // 1025 bytes: a full chunk and a one-byte chunk at offset 1024.
    let (mut r, now) = receiver(1025, 0, 16);
    assert_eq!(r.chunks(), 2);
    r.handle(chunk(1025, 1), now);
    assert!(matches!(
        drain(&mut r).as_slice(),
        [RecvOutput::Write { index: 1, offset: 1024, data, .. }] if data.len() == 1
    ));
    r.handle(
        RecvInput::Chunk {
            index: 0,
            sha256: [0; 32],
            data: vec![0; 1],
        },
        now,
    );
    assert!(r.is_finished(), "chunk 0 must be a full chunk");
}

#[test]
fn stale_reports_are_ignored() {
    let size = 8 * 1024;
    let (mut r, now) = receiver(size, 2, 16);
    // Verified for a chunk never handed out, one below next, one twice.
    r.handle(RecvInput::Verified { index: 5, ok: true }, now);
    r.handle(
        RecvInput::Verified {
            index: 0,
            ok: false,
        },
        now,
    );
    r.handle(RecvInput::Synced, now);
    assert_eq!(drain(&mut r), vec![]);
    deliver(&mut r, size, 2, true, now);
    r.handle(
        RecvInput::Verified {
            index: 2,
            ok: false,
        },
        now,
    );
    assert_eq!(drain(&mut r), vec![]);
    assert!(!r.is_finished());
}

#[test]
fn memory_stays_bounded_by_the_window_whatever_the_sender_sends() {
    let size = 1000 * 1024;
    let (mut r, now) = receiver(size, 0, 8);
    // A sender that floods every index in the window again and again, never waiting.
    for round in 0..50 {
        for index in 0..8 {
            r.handle(chunk(size, index), now);
        }
        assert!(r.outstanding_writes() <= 8, "round {round}");
        assert!(r.slots.len() <= 8);
    }
    let writes = drain(&mut r)
        .iter()
        .filter(|o| matches!(o, RecvOutput::Write { .. }))
        .count();
    assert_eq!(writes, 8, "each index handed out once");
}

#[test]
fn a_full_window_is_synced_whatever_the_cadence() {
    // Window 8, progress every 2 verified chunks. Grouped syncs leave `next` at 5 with one
    // verified chunk counted; then chunks 6..=12 arrive before 5. When 5 is verified the count
    // is odd, but the window [5, 13) is all in hand and the sender cannot send anything more:
    // without a sync and a progress now, both sides would wait for ever.
    let size = 100 * 1024;
    let (mut r, now) = receiver(size, 0, 8);
    deliver(&mut r, size, 0, true, now);
    assert_eq!(deliver(&mut r, size, 1, true, now), vec![RecvOutput::Sync]);
    for index in 2..5 {
        assert_eq!(deliver(&mut r, size, index, true, now), vec![]);
    }
    r.handle(RecvInput::Synced, now);
    assert_eq!(
        drain(&mut r),
        vec![durable(0, 2), progress(2), RecvOutput::Sync]
    );
    r.handle(RecvInput::Synced, now);
    assert_eq!(drain(&mut r), vec![durable(2, 5), progress(5)]);
    for index in 6..13 {
        let out = deliver(&mut r, size, index, true, now);
        if out == vec![RecvOutput::Sync] {
            r.handle(RecvInput::Synced, now);
            drain(&mut r);
        }
    }
    assert_eq!(r.next(), 5);
    assert_eq!(r.verified_since_progress, 0);
    r.handle(chunk(size, 5), now);
    drain(&mut r);
    // 12 verified so far: chunk 5 makes the count odd, so the cadence alone would not sync.
    r.handle(RecvInput::Verified { index: 5, ok: true }, now);
    assert_eq!(r.verified_since_progress, 1);
    assert_eq!(drain(&mut r), vec![RecvOutput::Sync]);
    r.handle(RecvInput::Synced, now);
    assert_eq!(drain(&mut r), vec![durable(5, 6), progress(13)]);
}

#[test]
fn a_window_with_a_gap_is_not_full() {
    let size = 100 * 1024;
    let (mut r8, now) = receiver(size, 0, 8);
    // Chunks 1..8 of window [0, 8) verified, chunk 0 missing: nothing forces a sync beyond
    // the cadence.
    for index in 1..8 {
        let out = deliver(&mut r8, size, index, true, now);
        if out == vec![RecvOutput::Sync] {
            r8.handle(RecvInput::Synced, now);
            drain(&mut r8);
        }
    }
    assert!(!r8.window_full());
    r8.handle(chunk(size, 0), now);
    drain(&mut r8);
    assert!(!r8.window_full(), "chunk 0 is still being hashed");
    r8.handle(
        RecvInput::Verified {
            index: 0,
            ok: false,
        },
        now,
    );
    assert!(!r8.window_full(), "chunk 0 awaits a resend");
    assert_eq!(
        drain(&mut r8),
        vec![send(Message::Resend { id: ID, index: 0 })]
    );
    // The resent copy completes the window: synced whatever the count.
    r8.handle(chunk(size, 0), now);
    drain(&mut r8);
    r8.handle(RecvInput::Verified { index: 0, ok: true }, now);
    assert!(r8.window_full());
    assert!(drain(&mut r8).contains(&RecvOutput::Sync));
}

#[test]
fn a_full_disk_pauses_and_keeps_the_part() {
    let size = 8 * 1024;
    let (mut r, now) = receiver(size, 0, 16);
    r.handle(chunk(size, 0), now);
    drain(&mut r);
    r.handle(
        RecvInput::NoSpace {
            reason: "the receive directory's disk is full (0 bytes free)".into(),
        },
        now,
    );
    let reason = "no space: the receive directory's disk is full (0 bytes free)".to_string();
    assert!(crate::core::transfer::is_no_space(&reason));
    assert_eq!(
        drain(&mut r),
        vec![
            record(Event::TransferPaused {
                id: ID,
                reason: reason.clone()
            }),
            send(Message::Reject {
                id: ID,
                reason,
                code: Some(crate::core::transfer::wire::RejectCode::NoSpace)
            }),
        ],
        "no DeletePart: the durable prefix is what the resume starts from"
    );
    assert!(r.is_finished());
    assert_ignores_everything(&mut r, size, now);
}
