// Tests pick an arbitrary epoch for virtual time; the machine itself never reads the clock.
#![allow(clippy::disallowed_methods)]

use sha2::{Digest, Sha256};

use super::*;
use crate::core::transfer::wire::RejectCode;

const ID: TransferId = TransferId([3; 16]);
const CHUNK: u32 = 1024;
const FILE_SHA: [u8; 32] = [0xf1; 32];

fn info(size: u64) -> SendInfo {
    SendInfo {
        id: ID,
        name: "dir/f.bin".into(),
        size,
        mime: "application/octet-stream".into(),
        mode: Some(0o600),
        mtime: Some(-1),
        sha256: Some(FILE_SHA),
    }
}

fn drain(s: &mut Sender) -> Vec<SendOutput> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn now() -> Instant {
    Instant::now()
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn bytes(size: u64, index: u64) -> Vec<u8> {
    vec![index as u8; chunk_len(size, CHUNK, index) as usize]
}

fn send(message: Message) -> SendOutput {
    SendOutput::Send(message)
}

fn record(event: Event) -> SendOutput {
    SendOutput::Record(event)
}

fn read(size: u64, index: u64) -> SendOutput {
    SendOutput::Read {
        index,
        offset: index * u64::from(CHUNK),
        len: chunk_len(size, CHUNK, index),
    }
}

fn reads(outputs: &[SendOutput]) -> Vec<u64> {
    outputs
        .iter()
        .filter_map(|o| match o {
            SendOutput::Read { index, .. } => Some(*index),
            _ => None,
        })
        .collect()
}

fn chunks_sent(outputs: &[SendOutput]) -> Vec<u64> {
    outputs
        .iter()
        .filter_map(|o| match o {
            SendOutput::Send(Message::Chunk { index, .. }) => Some(*index),
            _ => None,
        })
        .collect()
}

fn ends_sent(outputs: &[SendOutput]) -> usize {
    outputs
        .iter()
        .filter(|o| matches!(o, SendOutput::Send(Message::End { .. })))
        .count()
}

/// The shell's answer to `Read { index }`.
fn chunk_read(size: u64, index: u64) -> SendInput {
    let data = bytes(size, index);
    SendInput::ChunkRead {
        index,
        sha256: sha(&data),
        data,
    }
}

/// Connected and accepted from `start` with `window`; returns the outputs of the accept.
fn accepted(size: u64, cached: u64, start: u64, window: u32) -> (Sender, Vec<SendOutput>) {
    accepted_with(info(size), cached, start, window)
}

fn accepted_with(
    info: SendInfo,
    cached: u64,
    start: u64,
    window: u32,
) -> (Sender, Vec<SendOutput>) {
    let mut s = Sender::new(info, CHUNK, cached);
    s.handle(SendInput::Connected, now());
    drain(&mut s);
    s.handle(
        SendInput::Accept {
            start_chunk: start,
            window,
        },
        now(),
    );
    let out = drain(&mut s);
    (s, out)
}

/// Answers every outstanding read in `outputs` and returns everything that follows.
fn answer_reads(s: &mut Sender, size: u64, outputs: &[SendOutput]) -> Vec<SendOutput> {
    let mut all = Vec::new();
    for index in reads(outputs) {
        s.handle(chunk_read(size, index), now());
        all.extend(drain(s));
    }
    all
}

#[test]
fn nothing_happens_before_the_channel_opens() {
    let mut s = Sender::new(info(10 * 1024), CHUNK, 0);
    assert_eq!(drain(&mut s), vec![]);
    for input in [
        SendInput::Accept {
            start_chunk: 0,
            window: 4,
        },
        SendInput::Progress { next: 3 },
        SendInput::Resend { index: 1 },
        chunk_read(10 * 1024, 0),
    ] {
        s.handle(input, now());
    }
    assert_eq!(drain(&mut s), vec![]);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn connecting_sends_start_with_the_cached_start_chunk() {
    let mut s = Sender::new(info(10 * 1024 + 1), CHUNK, 4);
    assert_eq!(
        (s.chunks(), s.chunk_size(), s.cached_start()),
        (11, CHUNK, 4)
    );
    s.handle(SendInput::Connected, now());
    assert_eq!(
        drain(&mut s),
        vec![
            record(Event::TransferStarted {
                id: ID,
                chunk_size: CHUNK,
                chunks: 11,
                start_chunk: 4
            }),
            send(Message::Start {
                id: ID,
                name: "dir/f.bin".into(),
                size: 10 * 1024 + 1,
                chunk_size: CHUNK,
                chunks: 11,
                mime: "application/octet-stream".into(),
                mode: Some(0o600),
                mtime: Some(-1),
                start_chunk: 4,
            }),
        ]
    );
    // The chunk size is kept within the spec's bounds; the cached start within the file.
    assert_eq!(Sender::new(info(1), 10, 0).chunk_size(), MIN_CHUNK);
    assert_eq!(Sender::new(info(1), u32::MAX, 0).chunk_size(), MAX_CHUNK);
    assert_eq!(Sender::new(info(3 * 1024), CHUNK, 99).cached_start(), 3);
}

#[test]
fn no_chunk_goes_out_before_accept() {
    let size = 10 * 1024;
    let mut s = Sender::new(info(size), CHUNK, 0);
    s.handle(SendInput::Connected, now());
    drain(&mut s);
    s.handle(SendInput::Progress { next: 2 }, now());
    s.handle(SendInput::Resend { index: 0 }, now());
    s.handle(chunk_read(size, 0), now());
    assert_eq!(drain(&mut s), vec![]);
    s.handle(
        SendInput::Accept {
            start_chunk: 0,
            window: 2,
        },
        now(),
    );
    let out = drain(&mut s);
    assert_eq!(
        out,
        vec![
            record(Event::TransferAccepted {
                id: ID,
                start_chunk: 0,
                window: 2
            }),
            read(size, 0),
            read(size, 1),
        ]
    );
}

#[test]
fn the_receiver_decides_where_to_resume() {
    // Cached 9, but the receiver only holds 5 durably: send from 5.
    let size = 20 * 1024;
    let (mut s, out) = accepted(size, 9, 5, 4);
    assert_eq!(reads(&out), vec![5, 6, 7, 8]);
    assert_eq!(s.cached_start(), 5);
    assert_eq!(s.next(), 5);
    let sent = answer_reads(&mut s, size, &out);
    assert_eq!(chunks_sent(&sent), vec![5, 6, 7, 8]);
    // And the other way round: cached 2, the receiver holds 7.
    let (_, out) = accepted(size, 2, 7, 4);
    assert_eq!(reads(&out), vec![7, 8, 9, 10]);
}

#[test]
fn a_chunk_read_is_sent_as_it_was_read() {
    let size = 3 * 1024;
    let (mut s, _) = accepted(size, 0, 0, 16);
    s.handle(chunk_read(size, 1), now());
    let data = bytes(size, 1);
    assert_eq!(
        drain(&mut s),
        vec![send(Message::Chunk {
            id: ID,
            index: 1,
            sha256: sha(&data),
            data,
        })]
    );
    // A read nobody asked for (or answered twice) is dropped.
    s.handle(chunk_read(size, 1), now());
    assert_eq!(drain(&mut s), vec![]);
}

#[test]
fn the_window_bounds_what_is_sent_and_progress_opens_it() {
    let size = 10 * 1024;
    let (mut s, out) = accepted(size, 0, 0, 4);
    assert_eq!(reads(&out), vec![0, 1, 2, 3]);
    let sent = answer_reads(&mut s, size, &out);
    assert_eq!(chunks_sent(&sent), vec![0, 1, 2, 3]);
    assert!(reads(&sent).is_empty(), "chunk 4 ≥ 0 + 4");
    // A stale or repeated progress changes nothing.
    s.handle(SendInput::Progress { next: 0 }, now());
    assert_eq!(drain(&mut s), vec![]);
    s.handle(SendInput::Progress { next: 2 }, now());
    assert_eq!(
        drain(&mut s),
        vec![
            record(Event::ChunksDurable {
                id: ID,
                start: 0,
                end: 2
            }),
            read(size, 4),
            read(size, 5),
        ]
    );
    assert_eq!((s.next(), s.cached_start()), (2, 2));
    s.handle(SendInput::Progress { next: 1 }, now());
    assert_eq!(drain(&mut s), vec![]);
    // Progress beyond the file is nonsense: ignored.
    s.handle(SendInput::Progress { next: 11 }, now());
    assert_eq!(drain(&mut s), vec![]);
    assert_eq!(s.next(), 2);
}

#[test]
fn chunks_in_flight_never_exceed_the_window() {
    // A receiver that acknowledges in odd steps; the shell answers reads in a scrambled order.
    let size = 200 * 1024 + 7;
    for window in [1, 3, 4, 16] {
        let (mut s, mut pending) = accepted(size, 0, 0, window);
        let mut max_sent = 0u64;
        let mut acked = 0u64;
        let mut step = 0u64;
        while !s.end_sent() {
            step += 1;
            assert!(step < 10_000, "stalled");
            let mut outstanding = reads(&pending);
            assert!(s.reads_in_flight() <= window as usize);
            outstanding.reverse();
            pending.clear();
            for index in outstanding {
                s.handle(chunk_read(size, index), now());
                let out = drain(&mut s);
                for sent in chunks_sent(&out) {
                    assert!(
                        sent < acked + u64::from(window),
                        "chunk {sent} with next {acked}"
                    );
                    max_sent = max_sent.max(sent + 1);
                }
                pending.extend(out);
            }
            acked = (acked + step % 3 + 1).min(max_sent);
            s.handle(SendInput::Progress { next: acked }, now());
            pending.extend(drain(&mut s));
        }
        assert_eq!(max_sent, s.chunks());
    }
}

#[test]
fn reads_are_capped_even_under_a_huge_window() {
    let size = 1000 * 1024;
    let (s, out) = accepted(size, 0, 0, u32::MAX);
    assert_eq!(reads(&out).len(), MAX_READS_IN_FLIGHT as usize);
    assert_eq!(s.reads_in_flight(), MAX_READS_IN_FLIGHT as usize);
}

#[test]
fn end_waits_for_the_whole_file_hash_when_it_comes_after_the_chunks() {
    let size = 2 * 1024;
    let unhashed = || SendInfo {
        sha256: None,
        ..info(size)
    };
    let (mut s, out) = accepted_with(unhashed(), 0, 0, 16);
    assert_eq!(
        reads(&out),
        vec![0, 1],
        "chunks go out before the hash is known"
    );
    s.handle(chunk_read(size, 0), now());
    s.handle(chunk_read(size, 1), now());
    let out = drain(&mut s);
    assert_eq!(chunks_sent(&out), vec![0, 1]);
    assert_eq!(ends_sent(&out), 0, "no end without the whole-file hash");
    s.handle(SendInput::Hashed { sha256: FILE_SHA }, now());
    assert_eq!(
        drain(&mut s),
        vec![send(Message::End {
            id: ID,
            sha256: FILE_SHA
        })]
    );
    // Known before the last chunk: end right after it, once.
    let (mut s, _) = accepted_with(unhashed(), 0, 0, 16);
    s.handle(chunk_read(size, 0), now());
    s.handle(SendInput::Hashed { sha256: FILE_SHA }, now());
    assert_eq!(ends_sent(&drain(&mut s)), 0);
    s.handle(chunk_read(size, 1), now());
    assert_eq!(ends_sent(&drain(&mut s)), 1);
}

#[test]
fn end_goes_out_once_after_every_chunk() {
    let size = 3 * 1024;
    let (mut s, out) = accepted(size, 0, 0, 16);
    assert_eq!(reads(&out), vec![0, 1, 2]);
    s.handle(chunk_read(size, 0), now());
    s.handle(chunk_read(size, 2), now());
    assert_eq!(ends_sent(&drain(&mut s)), 0, "chunk 1 not sent yet");
    s.handle(chunk_read(size, 1), now());
    let out = drain(&mut s);
    assert_eq!(chunks_sent(&out), vec![1]);
    assert_eq!(
        out.last(),
        Some(&send(Message::End {
            id: ID,
            sha256: FILE_SHA
        }))
    );
    // A resend after end: the chunk again, not end.
    s.handle(SendInput::Resend { index: 1 }, now());
    assert_eq!(drain(&mut s), vec![read(size, 1)]);
    s.handle(chunk_read(size, 1), now());
    let out = drain(&mut s);
    assert_eq!(chunks_sent(&out), vec![1]);
    assert_eq!(ends_sent(&out), 0);
    // Progress after end opens nothing new.
    s.handle(SendInput::Progress { next: 3 }, now());
    assert_eq!(
        drain(&mut s),
        vec![record(Event::ChunksDurable {
            id: ID,
            start: 0,
            end: 3
        })]
    );
}

#[test]
fn a_resend_is_read_again_and_sent_again() {
    let size = 8 * 1024;
    let (mut s, out) = accepted(size, 0, 0, 4);
    answer_reads(&mut s, size, &out);
    s.handle(SendInput::Resend { index: 2 }, now());
    assert_eq!(drain(&mut s), vec![read(size, 2)]);
    // Asked again while the read is under way: one read is enough.
    s.handle(SendInput::Resend { index: 2 }, now());
    assert_eq!(drain(&mut s), vec![]);
    s.handle(chunk_read(size, 2), now());
    assert_eq!(chunks_sent(&drain(&mut s)), vec![2]);
}

#[test]
fn resends_for_chunks_never_sent_or_already_durable_are_ignored() {
    let size = 8 * 1024;
    let (mut s, out) = accepted(size, 0, 2, 4);
    assert_eq!(reads(&out), vec![2, 3, 4, 5]);
    // Read but not sent yet, not read at all, before the accept point, past the file.
    for index in [3, 6, 1, 8, u64::MAX] {
        s.handle(SendInput::Resend { index }, now());
    }
    assert_eq!(drain(&mut s), vec![]);
    answer_reads(&mut s, size, &out);
    s.handle(SendInput::Progress { next: 4 }, now());
    drain(&mut s);
    s.handle(SendInput::Resend { index: 3 }, now());
    assert_eq!(drain(&mut s), vec![], "3 is durable");
}

#[test]
fn resends_wait_for_a_read_slot() {
    // Within the window, indices in flight and resends are distinct, so only the read cap can
    // make a resend wait: a window of 100 with 64 reads at most.
    let size = 200 * 1024;
    let (mut s, out) = accepted(size, 0, 0, 100);
    assert_eq!(reads(&out), (0..64).collect::<Vec<_>>());
    s.handle(chunk_read(size, 0), now());
    assert_eq!(reads(&drain(&mut s)), vec![64]);
    s.handle(SendInput::Resend { index: 0 }, now());
    assert_eq!(drain(&mut s), vec![], "every read slot is busy");
    s.handle(chunk_read(size, 1), now());
    let out = drain(&mut s);
    assert_eq!(chunks_sent(&out), vec![1]);
    assert_eq!(reads(&out), vec![0], "the resend goes before chunk 65");
    s.handle(chunk_read(size, 0), now());
    let out = drain(&mut s);
    assert_eq!(chunks_sent(&out), vec![0]);
    assert_eq!(reads(&out), vec![65]);
}

#[test]
fn done_ok_completes_done_not_ok_fails() {
    let size = 1024;
    let (mut s, _) = accepted(size, 0, 0, 4);
    s.handle(
        SendInput::Done {
            ok: true,
            reason: None,
        },
        now(),
    );
    assert_eq!(
        drain(&mut s),
        vec![record(Event::TransferCompleted { id: ID, path: None })]
    );
    assert!(s.is_finished());
    s.handle(SendInput::Connected, now());
    assert_eq!(drain(&mut s), vec![]);

    let (mut s, _) = accepted(size, 0, 0, 4);
    s.handle(
        SendInput::Done {
            ok: false,
            reason: Some("resends did not arrive within 30 s".into()),
        },
        now(),
    );
    assert_eq!(
        drain(&mut s),
        vec![record(Event::TransferFailed {
            id: ID,
            reason: "resends did not arrive within 30 s".into()
        })]
    );
    assert!(s.is_finished());

    let (mut s, _) = accepted(size, 0, 0, 4);
    s.handle(
        SendInput::Done {
            ok: false,
            reason: None,
        },
        now(),
    );
    assert!(matches!(
        drain(&mut s).as_slice(),
        [SendOutput::Record(Event::TransferFailed { .. })]
    ));
}

#[test]
fn a_reject_ends_the_transfer() {
    let mut s = Sender::new(info(5000), CHUNK, 0);
    s.handle(SendInput::Connected, now());
    drain(&mut s);
    s.handle(
        SendInput::Reject {
            reason: "policy: no executables".into(),
            code: Some(RejectCode::Policy),
        },
        now(),
    );
    assert_eq!(
        drain(&mut s),
        vec![record(Event::TransferRejected {
            id: ID,
            reason: "policy: no executables".into(),
            code: Some(RejectCode::Policy),
        })]
    );
    assert!(s.is_finished());
    // A reject after accept is out of place: ignored.
    let (mut s, _) = accepted(5000, 0, 0, 4);
    s.handle(
        SendInput::Reject {
            reason: "late".into(),
            code: None,
        },
        now(),
    );
    assert_eq!(drain(&mut s), vec![]);
    assert!(!s.is_finished());
}

#[test]
fn a_cancel_from_the_receiver_ends_the_transfer() {
    let (mut s, _) = accepted(5000, 0, 0, 4);
    s.handle(
        SendInput::Cancel {
            reason: "chunk 2 failed its hash 3 times".into(),
        },
        now(),
    );
    assert_eq!(
        drain(&mut s),
        vec![record(Event::TransferCancelled {
            id: ID,
            by: Side::Remote,
            reason: "chunk 2 failed its hash 3 times".into()
        })]
    );
    assert!(s.is_finished());
}

#[test]
fn a_cancel_here_is_sent_and_its_answer_finishes_the_transfer() {
    let size = 8 * 1024;
    let (mut s, out) = accepted(size, 0, 0, 4);
    s.handle(
        SendInput::CancelLocal {
            reason: "operator".into(),
        },
        now(),
    );
    assert_eq!(
        drain(&mut s),
        vec![
            record(Event::TransferCancelled {
                id: ID,
                by: Side::Local,
                reason: "operator".into()
            }),
            send(Message::Cancel {
                id: ID,
                reason: "operator".into()
            }),
        ]
    );
    assert!(s.is_cancelling() && !s.is_finished());
    // Reads still arriving are not sent; a second cancel is not recorded again.
    answer_reads(&mut s, size, &out);
    s.handle(
        SendInput::CancelLocal {
            reason: "again".into(),
        },
        now(),
    );
    assert_eq!(drain(&mut s), vec![]);
    s.handle(
        SendInput::Done {
            ok: false,
            reason: Some("cancelled".into()),
        },
        now(),
    );
    assert_eq!(drain(&mut s), vec![], "already recorded as cancelled");
    assert!(s.is_finished());
}

#[test]
fn an_unanswered_cancel_is_sent_again_after_reconnecting() {
    let (mut s, _) = accepted(8 * 1024, 0, 0, 4);
    s.handle(SendInput::Disconnected, now());
    s.handle(
        SendInput::CancelLocal {
            reason: "operator".into(),
        },
        now(),
    );
    assert_eq!(
        drain(&mut s),
        vec![record(Event::TransferCancelled {
            id: ID,
            by: Side::Local,
            reason: "operator".into()
        })],
        "nothing to send it on"
    );
    for _ in 0..2 {
        s.handle(SendInput::Connected, now());
        assert_eq!(
            drain(&mut s),
            vec![send(Message::Cancel {
                id: ID,
                reason: "operator".into()
            })],
            "cancel, not start"
        );
        s.handle(SendInput::Disconnected, now());
    }
    s.handle(SendInput::Connected, now());
    drain(&mut s);
    // The receiver had already dropped it and rejects it as cancelled: answered too.
    s.handle(
        SendInput::Reject {
            reason: "cancelled".into(),
            code: Some(RejectCode::Cancelled),
        },
        now(),
    );
    assert_eq!(drain(&mut s), vec![]);
    assert!(s.is_finished());
}

#[test]
fn a_cancel_before_the_receiver_heard_of_it_needs_no_message() {
    let mut s = Sender::new(info(8 * 1024), CHUNK, 0);
    s.handle(
        SendInput::CancelLocal {
            reason: "operator".into(),
        },
        now(),
    );
    assert_eq!(
        drain(&mut s),
        vec![record(Event::TransferCancelled {
            id: ID,
            by: Side::Local,
            reason: "operator".into()
        })]
    );
    assert!(s.is_finished());
    s.handle(SendInput::Connected, now());
    assert_eq!(drain(&mut s), vec![]);
}

#[test]
fn a_read_failure_fails_the_transfer_and_cancels_it() {
    let (mut s, _) = accepted(8 * 1024, 0, 0, 4);
    s.handle(
        SendInput::ReadFailed {
            reason: "Input/output error (os error 5)".into(),
        },
        now(),
    );
    let reason = "sender: Input/output error (os error 5)".to_string();
    assert_eq!(
        drain(&mut s),
        vec![
            record(Event::TransferFailed {
                id: ID,
                reason: reason.clone()
            }),
            send(Message::Cancel { id: ID, reason }),
        ]
    );
    assert!(s.is_cancelling());
}

#[test]
fn a_file_that_changed_size_while_sending_fails() {
    let size = 8 * 1024;
    let (mut s, _) = accepted(size, 0, 0, 4);
    s.handle(
        SendInput::ChunkRead {
            index: 0,
            data: vec![0; 1000],
            sha256: [0; 32],
        },
        now(),
    );
    let out = drain(&mut s);
    assert!(
        matches!(&out[0], SendOutput::Record(Event::TransferFailed { reason, .. }) if reason.contains("the file changed")),
        "{out:?}"
    );
    assert!(matches!(&out[1], SendOutput::Send(Message::Cancel { .. })));
    assert!(chunks_sent(&out).is_empty());
}

#[test]
fn an_accept_beyond_the_file_fails() {
    let (mut s, out) = accepted(3 * 1024, 0, 4, 4);
    assert!(
        matches!(&out[0], SendOutput::Record(Event::TransferFailed { reason, .. }) if reason.contains("chunk 4 of 3"))
    );
    assert!(matches!(&out[1], SendOutput::Send(Message::Cancel { .. })));
    assert!(s.is_cancelling());
    assert!(reads(&out).is_empty());
    s.handle(
        SendInput::Done {
            ok: false,
            reason: Some("cancelled".into()),
        },
        now(),
    );
    assert!(s.is_finished());
}

#[test]
fn a_disconnect_stops_sending_and_a_reconnect_resumes_from_the_last_progress() {
    let size = 20 * 1024;
    let (mut s, out) = accepted(size, 0, 0, 4);
    let sent = answer_reads(&mut s, size, &out);
    s.handle(SendInput::Progress { next: 3 }, now());
    let more = drain(&mut s);
    assert_eq!(reads(&more), vec![4, 5, 6]);
    assert!(chunks_sent(&sent).len() == 4);
    s.handle(SendInput::Disconnected, now());
    // Reads finishing after the disconnect, progress or resends from the old channel: dropped.
    s.handle(chunk_read(size, 4), now());
    s.handle(SendInput::Resend { index: 1 }, now());
    s.handle(SendInput::Progress { next: 4 }, now());
    assert_eq!(drain(&mut s), vec![]);
    assert_eq!(s.cached_start(), 3);
    s.handle(SendInput::Connected, now());
    let out = drain(&mut s);
    assert!(out.contains(&record(Event::TransferStarted {
        id: ID,
        chunk_size: CHUNK,
        chunks: 20,
        start_chunk: 3
    })));
    assert!(matches!(
        out.last(),
        Some(SendOutput::Send(Message::Start { start_chunk: 3, .. }))
    ));
    assert!(reads(&out).is_empty(), "not before accept");
    s.handle(
        SendInput::Accept {
            start_chunk: 3,
            window: 4,
        },
        now(),
    );
    let out = drain(&mut s);
    assert_eq!(reads(&out), vec![3, 4, 5, 6]);
    // The read of 4 from before the disconnect comes in late: it was asked again, so it
    // is sent once; the fresh answer is then dropped.
    s.handle(chunk_read(size, 4), now());
    assert_eq!(chunks_sent(&drain(&mut s)), vec![4]);
    s.handle(chunk_read(size, 4), now());
    assert!(chunks_sent(&drain(&mut s)).is_empty());
}

#[test]
fn a_disconnect_after_end_sends_start_again() {
    let size = 2 * 1024;
    let (mut s, out) = accepted(size, 0, 0, 4);
    let sent = answer_reads(&mut s, size, &out);
    assert_eq!(ends_sent(&sent), 1);
    s.handle(SendInput::Progress { next: 2 }, now());
    drain(&mut s);
    s.handle(SendInput::Disconnected, now());
    s.handle(SendInput::Connected, now());
    assert!(matches!(
        drain(&mut s).last(),
        Some(SendOutput::Send(Message::Start { start_chunk: 2, .. }))
    ));
    s.handle(
        SendInput::Accept {
            start_chunk: 2,
            window: 4,
        },
        now(),
    );
    let out = drain(&mut s);
    assert!(reads(&out).is_empty());
    assert_eq!(ends_sent(&out), 1, "end again on the new channel");
}

#[test]
fn an_empty_file_sends_end_right_after_accept() {
    let (s, out) = accepted(0, 0, 0, 16);
    assert_eq!(s.chunks(), 0);
    assert_eq!(
        out,
        vec![
            record(Event::TransferAccepted {
                id: ID,
                start_chunk: 0,
                window: 16
            }),
            send(Message::End {
                id: ID,
                sha256: FILE_SHA
            }),
        ]
    );
}

#[test]
fn exactly_one_chunk_and_one_byte_past_it() {
    let (mut s, out) = accepted(1024, 0, 0, 16);
    assert_eq!(out[1..], [read(1024, 0)]);
    s.handle(chunk_read(1024, 0), now());
    let out = drain(&mut s);
    assert_eq!(chunks_sent(&out), vec![0]);
    assert_eq!(ends_sent(&out), 1);

    let (_, out) = accepted(1025, 0, 0, 16);
    assert_eq!(
        out[1..],
        [
            read(1025, 0),
            SendOutput::Read {
                index: 1,
                offset: 1024,
                len: 1
            }
        ]
    );
}

#[test]
fn a_zero_window_is_treated_as_one() {
    let (_, out) = accepted(8 * 1024, 0, 0, 0);
    assert_eq!(reads(&out), vec![0]);
    assert!(out.contains(&record(Event::TransferAccepted {
        id: ID,
        start_chunk: 0,
        window: 1
    })));
}

#[test]
fn messages_map_to_inputs() {
    assert_eq!(
        SendInput::from_message(Message::Progress { id: ID, next: 4 }),
        Some(SendInput::Progress { next: 4 })
    );
    assert_eq!(
        SendInput::from_message(Message::End {
            id: ID,
            sha256: [0; 32]
        }),
        None
    );
    assert_eq!(
        SendInput::from_message(Message::Done {
            id: ID,
            ok: false,
            reason: Some("x".into())
        }),
        Some(SendInput::Done {
            ok: false,
            reason: Some("x".into())
        })
    );
}

#[test]
fn a_no_space_reject_pauses_at_start_and_mid_transfer() {
    let full = "no space: 5000 bytes needed, 10 free on the receiver".to_string();
    let mut s = Sender::new(info(5000), CHUNK, 0);
    s.handle(SendInput::Connected, now());
    drain(&mut s);
    s.handle(
        SendInput::Reject {
            reason: full.clone(),
            code: Some(RejectCode::NoSpace),
        },
        now(),
    );
    assert_eq!(
        drain(&mut s),
        vec![record(Event::TransferPaused {
            id: ID,
            reason: full.clone()
        })]
    );
    assert!(
        s.is_finished(),
        "the machine goes; the journal keeps the pause"
    );

    let (mut s, _) = accepted(5000, 0, 0, 4);
    s.handle(
        SendInput::Reject {
            reason: full.clone(),
            code: Some(RejectCode::NoSpace),
        },
        now(),
    );
    assert_eq!(
        drain(&mut s),
        vec![record(Event::TransferPaused {
            id: ID,
            reason: full
        })]
    );
    assert!(s.is_finished());
}

/// The pause on a full disk keys on `code: "no_space"`, never on the reason text (spec 4):
/// a reject whose text says "no space" without the code is a refusal.
#[test]
fn only_the_no_space_code_pauses_never_the_reason_text() {
    let mut s = Sender::new(info(5000), CHUNK, 0);
    s.handle(SendInput::Connected, now());
    drain(&mut s);
    s.handle(
        SendInput::Reject {
            reason: "no space: but no code".into(),
            code: None,
        },
        now(),
    );
    let out = drain(&mut s);
    assert!(
        out.iter()
            .any(|o| matches!(o, SendOutput::Record(Event::TransferRejected { .. }))),
        "{out:?}"
    );
    let mut s = Sender::new(info(5000), CHUNK, 0);
    s.handle(SendInput::Connected, now());
    drain(&mut s);
    s.handle(
        SendInput::Reject {
            reason: "disk full".into(),
            code: Some(RejectCode::NoSpace),
        },
        now(),
    );
    let out = drain(&mut s);
    assert!(
        out.iter()
            .any(|o| matches!(o, SendOutput::Record(Event::TransferPaused { .. }))),
        "{out:?}"
    );
}
