//! The receiver state machine (spec 4, receiver side), driven by arbitrary messages (decoded
//! from CBOR or built directly) and arbitrary store results, with a model shell checking its
//! invariants after every step:
//!
//! - every `Write` is for a chunk in `[next, next + window)` and below `chunks`, at its offset,
//!   with exactly that chunk's length, and at most `window` writes are outstanding (memory stays
//!   bounded by the window whatever the sender does);
//! - an index is never handed to `Write` twice while a write of it is outstanding; a write the
//!   shell syncs is answered `VerifiedDurable`;
//! - at most one `Sync` is in flight; `next` and `progress.next` never go back, never pass
//!   `chunks`; `ChunksDurable` runs are non-empty and within the file;
//! - `Finalize` comes only after `end` and with every chunk durable; a finished receiver says
//!   nothing more.
#![no_main]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fsnode::core::transfer::{
    self, MAX_CHUNK, MIN_CHUNK, Receiver, RecvInput, RecvOutput, StartInfo, chunk_count, chunk_len,
    chunk_offset,
};
use fsnode::core::{Event, TransferId};
use libfuzzer_sys::fuzz_target;

mod common;
use common::Cursor;

const ID: TransferId = TransferId([7; 16]);

/// Input: a 6-byte header (file size u16 LE, chunk_size above the minimum / 8, a size shift,
/// the journal's durable count, the window), then steps, each a tag byte (modulo 12) and its
/// fields; see [`Op::read`].
struct Header {
    /// File size, kept small so chunks are cheap, scaled by 2^(size_scale % 4).
    size: u16,
    /// `chunk_size` = `MIN_CHUNK` + 8 × this.
    chunk_extra: u8,
    size_scale: u8,
    durable_next: u8,
    window: u8,
}

#[derive(Debug)]
enum Op<'a> {
    /// 0: a data-channel message as bytes (u16 LE length), decoded, then handed over if it is
    /// one the receiver acts on.
    Wire(&'a [u8]),
    /// 1: a `chunk` of the right length for `next + index` (`far`: `chunks + index`; `bad_len`:
    /// one byte too long).
    Chunk { index: u8, bad_len: bool, far: bool },
    /// 2: the shell answers the outstanding write `pick` (modulo their count).
    Verify { pick: u8, ok: bool },
    /// 3: a `Verified` for any index (u64 LE), outstanding or not.
    StrayVerified { index: u64, ok: bool },
    /// 4
    WriteFailed,
    /// 5: the shell finishes the `Sync` in flight (or a stray one when none is).
    Synced,
    /// 6
    End,
    /// 7
    Finalized,
    /// 8
    FinalizeFailed,
    /// 9
    Cancel,
    /// 10
    CancelLocal,
    /// 11: time passes (seconds, u8); the timer fires if it is due.
    Wait { secs: u8 },
}

impl<'a> Op<'a> {
    fn read(c: &mut Cursor<'a>) -> Option<Self> {
        if c.is_empty() {
            return None;
        }
        Some(match c.u8() % 12 {
            0 => Op::Wire(c.bytes()),
            1 => {
                let index = c.u8();
                let flags = c.u8();
                Op::Chunk {
                    index,
                    bad_len: flags & 1 != 0,
                    far: flags & 2 != 0,
                }
            }
            2 => Op::Verify {
                pick: c.u8(),
                ok: c.bool(),
            },
            3 => Op::StrayVerified {
                index: c.u64(),
                ok: c.bool(),
            },
            4 => Op::WriteFailed,
            5 => Op::Synced,
            6 => Op::End,
            7 => Op::Finalized,
            8 => Op::FinalizeFailed,
            9 => Op::Cancel,
            10 => Op::CancelLocal,
            _ => Op::Wait { secs: c.u8() },
        })
    }
}

struct Model {
    chunks: u64,
    size: u64,
    chunk_size: u32,
    window: u64,
    /// Writes handed out and not answered: index, and whether the shell syncs after it.
    writes: Vec<(u64, bool)>,
    sync_in_flight: bool,
    progress_next: u64,
    next: u64,
    ended: bool,
    finalize_sent: bool,
    finished: bool,
}

impl Model {
    fn drain(&mut self, receiver: &mut Receiver) {
        let was_finished = self.finished;
        let mut count = 0;
        while let Some(output) = receiver.poll_output() {
            count += 1;
            assert!(count < 10_000, "unbounded output");
            assert!(!was_finished, "output after finishing: {output:?}");
            match output {
                RecvOutput::Write {
                    index,
                    offset,
                    data,
                    sha256: _,
                    sync,
                } => {
                    assert!(
                        index < self.chunks,
                        "write of chunk {index} of {}",
                        self.chunks
                    );
                    assert!(index >= self.next, "write of durable chunk {index}");
                    assert!(index < self.next + self.window, "write beyond the window");
                    assert_eq!(offset, chunk_offset(self.chunk_size, index));
                    assert_eq!(
                        data.len() as u64,
                        chunk_len(self.size, self.chunk_size, index)
                    );
                    assert!(
                        !self.writes.iter().any(|(i, _)| *i == index),
                        "chunk {index} handed to Write twice"
                    );
                    self.writes.push((index, sync));
                    assert!(
                        self.writes.len() as u64 <= self.window,
                        "writes exceed window"
                    );
                }
                RecvOutput::Sync => {
                    assert!(!self.sync_in_flight, "two syncs in flight");
                    self.sync_in_flight = true;
                }
                RecvOutput::Finalize { .. } => {
                    assert!(self.ended, "finalize before end");
                    assert!(!self.finalize_sent, "finalize twice");
                    assert_eq!(receiver.next(), self.chunks, "finalize with chunks missing");
                    self.finalize_sent = true;
                }
                RecvOutput::Send(message) => {
                    assert_eq!(message.id(), ID);
                    if let transfer::Message::Progress { next, .. } = message {
                        assert!(next >= self.progress_next, "progress went back");
                        assert!(next <= self.chunks);
                        self.progress_next = next;
                    }
                    // What the receiver sends must encode and decode.
                    let encoded = transfer::encode(&message);
                    assert_eq!(transfer::decode(&encoded).unwrap(), Some(message));
                }
                RecvOutput::Record(event) => match event {
                    Event::ChunksDurable { id, start, end } => {
                        assert_eq!(id, ID);
                        assert!(start < end && end <= self.chunks, "{start}..{end}");
                    }
                    Event::TransferCompleted { .. } => {
                        assert!(self.finalize_sent, "completed without finalize");
                        self.finished = true;
                    }
                    Event::TransferFailed { .. } | Event::TransferCancelled { .. } => {
                        self.finished = true;
                    }
                    _ => {}
                },
                RecvOutput::DeletePart => {}
            }
        }
        assert_eq!(receiver.is_finished(), self.finished);
        let next = receiver.next();
        assert!(next >= self.next, "next went back");
        assert!(next <= self.chunks);
        self.next = next;
        assert!(receiver.outstanding_writes() as u64 <= self.window);
        if !self.finished {
            assert_eq!(receiver.outstanding_writes(), self.writes.len());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let input = Header {
        size: c.u16(),
        chunk_extra: c.u8(),
        size_scale: c.u8(),
        durable_next: c.u8(),
        window: c.u8(),
    };
    let chunk_size = MIN_CHUNK + u32::from(input.chunk_extra) * 8;
    assert!(chunk_size <= MAX_CHUNK);
    // Up to 64 KiB × 2^(scale % 4): a few to a few hundred chunks.
    let size = u64::from(input.size) << (input.size_scale % 4);
    let chunks = chunk_count(size, chunk_size);
    let start = StartInfo {
        id: ID,
        name: "file.bin".into(),
        size,
        chunk_size,
        chunks,
        mime: "application/octet-stream".into(),
        mode: None,
        mtime: None,
        start_chunk: 0,
    };
    let start = transfer::check_start(start).expect("a consistent start");
    let window = u32::from(input.window);
    let mut receiver = Receiver::new(start, u64::from(input.durable_next), window);
    let window = u64::from(window.max(1));
    assert_eq!(u64::from(receiver.window()), window);
    let mut model = Model {
        chunks,
        size,
        chunk_size,
        window,
        writes: Vec::new(),
        sync_in_flight: false,
        progress_next: 0,
        next: u64::from(input.durable_next).min(chunks),
        ended: false,
        finalize_sent: false,
        finished: false,
    };
    model.drain(&mut receiver);

    let epoch = Instant::now();
    let mut now = epoch;
    while let Some(op) = Op::read(&mut c) {
        let recv_input = match op {
            Op::Wire(bytes) => match transfer::decode(bytes) {
                Ok(Some(message)) => RecvInput::from_message(message),
                _ => None,
            },
            Op::Chunk {
                index,
                bad_len,
                far,
            } => {
                let index = if far {
                    u64::from(index) + chunks
                } else {
                    model.next + u64::from(index)
                };
                let len = chunk_len(size, chunk_size, index) + u64::from(bad_len);
                Some(RecvInput::Chunk {
                    index,
                    sha256: [index as u8; 32],
                    data: vec![index as u8; len as usize],
                })
            }
            Op::Verify { pick, ok } => {
                if model.writes.is_empty() {
                    None
                } else {
                    let (index, sync) = model.writes.remove(usize::from(pick) % model.writes.len());
                    // A synced write's report says so: everything verified before it is durable.
                    Some(if ok && sync {
                        RecvInput::VerifiedDurable { index }
                    } else {
                        RecvInput::Verified { index, ok }
                    })
                }
            }
            Op::StrayVerified { index, ok } => {
                model.writes.retain(|(i, _)| *i != index);
                Some(RecvInput::Verified { index, ok })
            }
            Op::WriteFailed => Some(RecvInput::WriteFailed {
                reason: "ENOSPC".into(),
            }),
            Op::Synced => {
                model.sync_in_flight = false;
                Some(RecvInput::Synced)
            }
            Op::End => Some(RecvInput::End { sha256: [1; 32] }),
            Op::Finalized => Some(RecvInput::Finalized {
                path: PathBuf::from("/srv/receive/file.bin"),
            }),
            Op::FinalizeFailed => Some(RecvInput::FinalizeFailed {
                reason: "hash".into(),
            }),
            Op::Cancel => Some(RecvInput::Cancel {
                reason: "sender".into(),
            }),
            Op::CancelLocal => Some(RecvInput::CancelLocal {
                reason: "operator".into(),
            }),
            Op::Wait { secs } => {
                now += Duration::from_secs(u64::from(secs));
                if receiver.poll_timeout().is_some_and(|at| at <= now) {
                    receiver.handle_timeout(now);
                }
                model.drain(&mut receiver);
                continue;
            }
        };
        let Some(recv_input) = recv_input else {
            continue;
        };
        if matches!(recv_input, RecvInput::End { .. }) && !model.finished {
            model.ended = true;
        }
        receiver.handle(recv_input, now);
        model.drain(&mut receiver);
    }
});
