//! One incoming transfer (spec 4, receiver side), as a sans-IO state machine.
//!
//! The node has already checked the `start` ([`check_start`]), the name, free space and policy,
//! recorded `TransferQueued`, and opened the `.part` file; it then creates a [`Receiver`] with the
//! count of leading chunks the journal says are verified and durable (0 for a new transfer).
//! The machine answers `accept`, hands every acceptable chunk to the shell (`Write`: hash it,
//! compare, write it at its offset), groups syncs (`Sync`, at most one in flight), records
//! `ChunksDurable` and only then announces `progress`, and on `end` waits for every chunk to be
//! durable before asking the shell to `Finalize`.
//!
//! Progress cadence (spec 4): a sync, then `progress`, after every max(1, window / 4) verified
//! chunks, and after `end`. One addition the spec does not spell out: when every chunk of the
//! window `[next, next + window)` is verified, the receiver syncs and reports at once whatever
//! the count, because the sender cannot send anything more until it hears `progress` (with
//! chunks verified out of order the count can stop short of the cadence, and both sides would
//! wait for ever; the simulation tests found exactly that).
//!
//! Memory stays bounded whatever the sender does: only chunks in `[next, next + window)` are taken,
//! each index at most once at a time, so at most `window` chunks are handed to `Write` and not yet
//! reported back, and the machine keeps at most `window` slots.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::wire::{MAX_CHUNK, MIN_CHUNK, Message, RejectCode};
use super::{StartInfo, chunk_count, chunk_len, chunk_offset};
use crate::core::{Event, Side};

/// How long after `end` the receiver waits for outstanding resends (spec 4).
pub const RESEND_WAIT: Duration = Duration::from_secs(30);
/// A chunk failing its hash this many times cancels the transfer (spec 4).
pub const MAX_HASH_FAILURES: u32 = 3;

/// Why a `start` is answered with `reject`. `Display` is the wire `reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("chunk_size {chunk_size} is outside {MIN_CHUNK}..={MAX_CHUNK}")]
    ChunkSize { chunk_size: u32 },
    #[error("size {size}, chunk_size {chunk_size} and chunks {chunks} disagree")]
    ChunkCount {
        size: u64,
        chunk_size: u32,
        chunks: u64,
    },
    /// A resumed `start` whose `name`, `size` or `chunk_size` differ from the first (spec 4).
    #[error("mismatch")]
    Mismatch,
    /// A `start` for a transfer this receiver cancelled (spec 4).
    #[error("cancelled")]
    Cancelled,
}

impl RejectReason {
    /// The wire `code` of this reason (spec 4).
    pub fn code(&self) -> RejectCode {
        match self {
            RejectReason::ChunkSize { .. } | RejectReason::ChunkCount { .. } => RejectCode::Size,
            RejectReason::Mismatch => RejectCode::Mismatch,
            RejectReason::Cancelled => RejectCode::Cancelled,
        }
    }
}

/// Checks that `size`, `chunk_size` and `chunks` agree (spec 4). Names, free space and policy
/// are checked by the node and the store, not here.
pub fn check_start(start: StartInfo) -> Result<StartInfo, RejectReason> {
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&start.chunk_size) {
        return Err(RejectReason::ChunkSize {
            chunk_size: start.chunk_size,
        });
    }
    if start.chunks != chunk_count(start.size, start.chunk_size) {
        return Err(RejectReason::ChunkCount {
            size: start.size,
            chunk_size: start.chunk_size,
            chunks: start.chunks,
        });
    }
    Ok(start)
}

/// A resumed `start` must repeat the first one's `name`, `size` and `chunk_size` (spec 4).
pub fn check_resume(first: &StartInfo, again: &StartInfo) -> Result<(), RejectReason> {
    if first.name != again.name || first.size != again.size || first.chunk_size != again.chunk_size
    {
        return Err(RejectReason::Mismatch);
    }
    Ok(())
}

#[derive(Clone, PartialEq, Eq)]
pub enum RecvInput {
    /// A `chunk` message for this transfer.
    Chunk {
        index: u64,
        sha256: [u8; 32],
        data: Vec<u8>,
    },
    /// The shell handled a `Write`: `ok` when the data's SHA-256 matched and it is written at its
    /// offset; `!ok` when the hash did not match (nothing was written).
    Verified { index: u64, ok: bool },
    /// The shell handled a `Write` with `sync`: the hash matched, the data is written, and the
    /// `.part` was fdatasynced after it, so this chunk and every chunk reported `Verified`
    /// before it are durable.
    VerifiedDurable { index: u64 },
    /// Writing the `.part` failed (an IO error other than a full disk).
    WriteFailed { reason: String },
    /// Writing the `.part` failed because its file system is full: the transfer pauses.
    NoSpace { reason: String },
    /// The shell finished the `Sync` it was asked for: every chunk reported `Verified { ok }`
    /// before the `Sync` was emitted is durable.
    Synced,
    /// An `end` message.
    End { sha256: [u8; 32] },
    /// The shell finished `Finalize`: the file is complete under its final name.
    Finalized { path: PathBuf },
    /// `Finalize` failed (the whole-file hash differs, or the rename failed).
    FinalizeFailed { reason: String },
    /// A `cancel` message from the sender.
    Cancel { reason: String },
    /// The operator cancelled the transfer here.
    CancelLocal { reason: String },
}

impl RecvInput {
    /// The input for a data-channel message a receiver acts on (`chunk`, `end`, `cancel`);
    /// `None` for the others, which a receiver ignores (`start` is the node's).
    pub fn from_message(message: Message) -> Option<Self> {
        match message {
            Message::Chunk {
                index,
                sha256,
                data,
                ..
            } => Some(Self::Chunk {
                index,
                sha256,
                data,
            }),
            Message::End { sha256, .. } => Some(Self::End { sha256 }),
            Message::Cancel { reason, .. } => Some(Self::Cancel { reason }),
            _ => None,
        }
    }
}

#[derive(Clone, PartialEq)]
pub enum RecvOutput {
    Send(Message),
    /// Hash `data`; if it matches `sha256`, write it at `offset` in the `.part` file, and with
    /// `sync` fdatasync the file after it. Report `Verified` either way, `VerifiedDurable` for
    /// a synced write (or `WriteFailed`). A file's last chunk, and any chunk after `end`, is
    /// synced with its write: a small file costs one trip to the disk, not a write and then a
    /// sync.
    Write {
        index: u64,
        offset: u64,
        data: Vec<u8>,
        sha256: [u8; 32],
        sync: bool,
    },
    /// fdatasync the `.part` file, then report `Synced`.
    Sync,
    /// Hash the whole `.part`, compare with `sha256`, fsync, rename to a final name that
    /// overwrites nothing, apply mode and mtime; report `Finalized` or `FinalizeFailed`.
    Finalize {
        sha256: [u8; 32],
    },
    /// Delete the `.part` file.
    DeletePart,
    /// Append to the journal (before acting on anything that follows it).
    Record(Event),
}

/// Where one chunk in `[next, next + window)` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Its hash failed; `resend` was sent; waiting for the chunk again.
    Awaiting,
    /// Handed to the shell (`Write`), not reported yet.
    Writing,
    /// Verified and written, not yet covered by a sync.
    Verified,
    /// Covered by the sync in flight.
    Syncing,
    /// Durable, but after a gap (so `next` has not passed it yet).
    Durable,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: SlotState,
    failures: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Receiving,
    /// `Finalize` emitted, waiting for the shell.
    Finalizing,
    Finished,
}

#[derive(Clone, Copy, Debug)]
struct Ended {
    sha256: [u8; 32],
    /// Until when resends may arrive; `None` once everything has arrived.
    deadline: Option<Instant>,
}

#[derive(Debug)]
pub struct Receiver {
    info: StartInfo,
    window: u32,
    /// Leading chunks verified and durable (what `progress.next` says).
    next: u64,
    slots: BTreeMap<u64, Slot>,
    /// Chunks verified since the last time a progress was due.
    verified_since_progress: u32,
    /// A sync (and the progress after it) is due.
    sync_due: bool,
    /// A `Sync` is in flight.
    syncing: bool,
    ended: Option<Ended>,
    phase: Phase,
    out: VecDeque<RecvOutput>,
}

impl Receiver {
    /// Accepts the transfer `start` (already [`check_start`]ed) from `durable_next`, the count of
    /// leading chunks the journal knows are verified and durable in the `.part` file (0 when new;
    /// capped at `chunks`), with flow-control `window` (at least 1). Emits `TransferStarted` and
    /// `TransferAccepted`, then sends `accept`.
    pub fn new(start: StartInfo, durable_next: u64, window: u32) -> Self {
        let window = window.max(1);
        // A start that skipped `check_start` still gets a consistent count.
        let chunks = chunk_count(start.size, start.chunk_size);
        let next = durable_next.min(chunks);
        let mut receiver = Self {
            info: StartInfo { chunks, ..start },
            window,
            next,
            slots: BTreeMap::new(),
            verified_since_progress: 0,
            sync_due: false,
            syncing: false,
            ended: None,
            phase: Phase::Receiving,
            out: VecDeque::new(),
        };
        let id = receiver.info.id;
        receiver.record(Event::TransferStarted {
            id,
            chunk_size: receiver.info.chunk_size,
            chunks,
            start_chunk: receiver.info.start_chunk,
        });
        receiver.record(Event::TransferAccepted {
            id,
            start_chunk: next,
            window,
        });
        receiver.send(Message::Accept {
            id,
            start_chunk: next,
            window,
        });
        receiver
    }

    pub fn info(&self) -> &StartInfo {
        &self.info
    }

    /// Leading chunks verified and durable.
    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn chunks(&self) -> u64 {
        self.info.chunks
    }

    pub fn window(&self) -> u32 {
        self.window
    }

    /// Chunks handed to `Write` and not reported yet (never more than `window`).
    pub fn outstanding_writes(&self) -> usize {
        self.slots
            .values()
            .filter(|s| s.state == SlotState::Writing)
            .count()
    }

    /// Completed, failed or cancelled: every input is ignored from now on.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// `progress` goes out after every this many verified chunks: max(1, window / 4).
    pub fn progress_every(&self) -> u32 {
        (self.window / 4).max(1)
    }

    pub fn poll_output(&mut self) -> Option<RecvOutput> {
        self.out.pop_front()
    }

    /// The deadline for resends after `end`, while there is one.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase != Phase::Receiving {
            return None;
        }
        self.ended.and_then(|e| e.deadline)
    }

    pub fn handle(&mut self, input: RecvInput, now: Instant) {
        if self.phase == Phase::Finished {
            return;
        }
        match input {
            RecvInput::Chunk {
                index,
                sha256,
                data,
            } => self.on_chunk(index, sha256, data),
            RecvInput::Verified { index, ok } => self.on_verified(index, ok),
            RecvInput::VerifiedDurable { index } => self.on_verified_durable(index),
            RecvInput::WriteFailed { reason } => {
                if self.phase == Phase::Receiving {
                    self.abort(format!("receiver: {reason}"));
                }
            }
            RecvInput::NoSpace { reason } => {
                if self.phase == Phase::Receiving {
                    self.pause(format!("{}: {reason}", super::NO_SPACE));
                }
            }
            RecvInput::Synced => self.on_synced(),
            RecvInput::End { sha256 } => self.on_end(sha256, now),
            RecvInput::Finalized { path } => {
                if self.phase != Phase::Finalizing {
                    return;
                }
                self.phase = Phase::Finished;
                self.record(Event::TransferCompleted {
                    id: self.info.id,
                    path: Some(path),
                });
                self.send(Message::Done {
                    id: self.info.id,
                    ok: true,
                    reason: None,
                });
            }
            RecvInput::FinalizeFailed { reason } => {
                if self.phase == Phase::Finalizing {
                    self.fail(reason);
                }
            }
            RecvInput::Cancel { reason } => {
                self.phase = Phase::Finished;
                self.record(Event::TransferCancelled {
                    id: self.info.id,
                    by: Side::Remote,
                    reason,
                });
                self.out.push_back(RecvOutput::DeletePart);
                self.send(Message::Done {
                    id: self.info.id,
                    ok: false,
                    reason: Some("cancelled".into()),
                });
            }
            RecvInput::CancelLocal { reason } => {
                self.phase = Phase::Finished;
                self.record(Event::TransferCancelled {
                    id: self.info.id,
                    by: Side::Local,
                    reason: reason.clone(),
                });
                self.send(Message::Cancel {
                    id: self.info.id,
                    reason,
                });
                self.out.push_back(RecvOutput::DeletePart);
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase != Phase::Receiving {
            return;
        }
        let Some(ended) = &mut self.ended else { return };
        if ended.deadline.is_none_or(|at| at > now) {
            return;
        }
        ended.deadline = None;
        if self.awaiting_peer() {
            self.fail(format!(
                "resends did not arrive within {} s",
                RESEND_WAIT.as_secs()
            ));
        }
    }

    fn on_chunk(&mut self, index: u64, sha256: [u8; 32], data: Vec<u8>) {
        if self.phase != Phase::Receiving || index < self.next {
            // Already durable: a duplicate after a resume.
            return;
        }
        if index >= self.info.chunks {
            return self.abort("chunk index out of range".into());
        }
        if index >= self.next.saturating_add(u64::from(self.window)) {
            return self.abort("chunk beyond the window".into());
        }
        if data.len() as u64 != chunk_len(self.info.size, self.info.chunk_size, index) {
            return self.abort(format!("chunk {index} has the wrong length"));
        }
        let slot = self.slots.entry(index).or_insert(Slot {
            state: SlotState::Awaiting,
            failures: 0,
        });
        if slot.state != SlotState::Awaiting {
            // Already being written or written: a duplicate.
            return;
        }
        slot.state = SlotState::Writing;
        let sync = self.ended.is_some() || index + 1 == self.info.chunks;
        self.out.push_back(RecvOutput::Write {
            index,
            offset: chunk_offset(self.info.chunk_size, index),
            data,
            sha256,
            sync,
        });
    }

    /// The slot of chunk `index` while its write is out (a report for any other is stale).
    fn writing_slot(&mut self, index: u64) -> Option<&mut Slot> {
        if self.phase != Phase::Receiving {
            return None;
        }
        self.slots
            .get_mut(&index)
            .filter(|slot| slot.state == SlotState::Writing)
    }

    fn on_verified(&mut self, index: u64, ok: bool) {
        let Some(slot) = self.writing_slot(index) else {
            return;
        };
        if ok {
            slot.state = SlotState::Verified;
            self.verified_since_progress += 1;
            if self.verified_since_progress >= self.progress_every() {
                self.verified_since_progress = 0;
                self.sync_due = true;
            }
            if self.ended.is_some() {
                // After `end` every verified chunk is synced as soon as possible.
                self.sync_due = true;
            }
            self.maybe_sync();
            return;
        }
        slot.failures += 1;
        if slot.failures >= MAX_HASH_FAILURES {
            return self.abort(format!(
                "chunk {index} failed its hash {MAX_HASH_FAILURES} times"
            ));
        }
        slot.state = SlotState::Awaiting;
        self.send(Message::Resend {
            id: self.info.id,
            index,
        });
    }

    fn on_verified_durable(&mut self, index: u64) {
        let Some(slot) = self.writing_slot(index) else {
            return;
        };
        slot.state = SlotState::Verified;
        // The sync after this write covered every write reported before it; the chunks of a
        // sync still in flight stay with that one.
        self.made_durable(SlotState::Verified);
    }

    fn on_synced(&mut self) {
        if self.phase != Phase::Receiving || !self.syncing {
            return;
        }
        self.syncing = false;
        self.made_durable(SlotState::Syncing);
    }

    /// The chunks in state `synced` are durable: journals them, moves `next` past the leading
    /// ones, sends `progress`, and finishes or syncs what is due.
    fn made_durable(&mut self, synced: SlotState) {
        // Newly durable chunks, as contiguous runs: one `ChunksDurable` per run.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (&index, slot) in self.slots.iter_mut() {
            if slot.state != synced {
                continue;
            }
            slot.state = SlotState::Durable;
            match runs.last_mut() {
                Some(run) if run.1 == index => run.1 = index + 1,
                _ => runs.push((index, index + 1)),
            }
        }
        for (start, end) in runs {
            self.record(Event::ChunksDurable {
                id: self.info.id,
                start,
                end,
            });
        }
        while let Some(entry) = self.slots.first_entry() {
            if *entry.key() != self.next || entry.get().state != SlotState::Durable {
                break;
            }
            entry.remove();
            self.next += 1;
        }
        self.send(Message::Progress {
            id: self.info.id,
            next: self.next,
        });
        if self.ended.is_some() && self.next == self.info.chunks {
            self.finalize();
        } else {
            self.maybe_sync();
        }
    }

    fn on_end(&mut self, sha256: [u8; 32], now: Instant) {
        if self.phase != Phase::Receiving || self.ended.is_some() {
            return;
        }
        self.ended = Some(Ended {
            sha256,
            deadline: Some(now + RESEND_WAIT),
        });
        if self.syncing {
            // The sync in flight is followed by a progress; anything verified meanwhile is
            // synced right after it.
            self.sync_due = true;
            return;
        }
        let last_chunk_writing = self
            .info
            .chunks
            .checked_sub(1)
            .and_then(|last| self.slots.get(&last))
            .is_some_and(|s| s.state == SlotState::Writing);
        if !last_chunk_writing && self.slots.values().any(|s| s.state == SlotState::Verified) {
            self.sync_due = true;
            self.maybe_sync();
            return;
        }
        if self.slots.values().any(|s| s.state == SlotState::Writing) {
            // A chunk is still being written: its report brings the sync (the last chunk's is
            // one, and covers every chunk verified before it) and the progress after it; a
            // progress now would say nothing new.
            self.sync_due = true;
            return;
        }
        // Nothing to sync: progress now, and finish if everything is durable.
        self.send(Message::Progress {
            id: self.info.id,
            next: self.next,
        });
        if self.next == self.info.chunks {
            self.finalize();
        }
    }

    /// Syncs what is verified when a progress is due, or when the sender cannot go on without
    /// one: every chunk of the window is in hand (verified, syncing or durable past a gap), so
    /// nothing more can arrive before the next `progress`. Without the second rule, chunks
    /// verified out of order can leave the leading chunk unsynced below the cadence count with
    /// the sender's window full: both sides would wait for ever.
    fn maybe_sync(&mut self) {
        if self.syncing || !(self.sync_due || self.window_full()) {
            return;
        }
        self.sync_due = false;
        let mut any = false;
        for slot in self.slots.values_mut() {
            if slot.state == SlotState::Verified {
                slot.state = SlotState::Syncing;
                any = true;
            }
        }
        if any {
            self.syncing = true;
            self.out.push_back(RecvOutput::Sync);
        }
    }

    /// Whether every chunk in `[next, next + window)` (within the file) is verified.
    fn window_full(&self) -> bool {
        let end = self
            .next
            .saturating_add(u64::from(self.window))
            .min(self.info.chunks);
        let in_hand = self
            .slots
            .range(self.next..end)
            .filter(|(_, s)| {
                matches!(
                    s.state,
                    SlotState::Verified | SlotState::Syncing | SlotState::Durable
                )
            })
            .count() as u64;
        in_hand == end - self.next
    }

    /// Whether some chunk before `chunks` has not arrived verified yet (never came, failed its
    /// hash and awaits a resend, or is still being hashed).
    fn awaiting_peer(&self) -> bool {
        let pending = self.info.chunks - self.next;
        let verified = self
            .slots
            .values()
            .filter(|s| {
                matches!(
                    s.state,
                    SlotState::Verified | SlotState::Syncing | SlotState::Durable
                )
            })
            .count() as u64;
        verified < pending
    }

    fn finalize(&mut self) {
        let Some(ended) = self.ended else { return };
        self.phase = Phase::Finalizing;
        self.out.push_back(RecvOutput::Finalize {
            sha256: ended.sha256,
        });
    }

    /// Stops the transfer on the receiver's initiative (a sender breaking the rules, a disk
    /// error): the sender hears `cancel`.
    fn abort(&mut self, reason: String) {
        self.phase = Phase::Finished;
        self.record(Event::TransferFailed {
            id: self.info.id,
            reason: reason.clone(),
        });
        self.send(Message::Cancel {
            id: self.info.id,
            reason,
        });
        self.out.push_back(RecvOutput::DeletePart);
    }

    /// Out of space: keep the `.part` (its durable progress is journaled) and tell the sender
    /// with a `reject` it reads as "try again later" (see `NO_SPACE`).
    fn pause(&mut self, reason: String) {
        self.phase = Phase::Finished;
        self.record(Event::TransferPaused {
            id: self.info.id,
            reason: reason.clone(),
        });
        self.send(Message::Reject {
            id: self.info.id,
            reason,
            code: Some(RejectCode::NoSpace),
        });
    }

    /// The transfer failed after `end` (resends late, whole file wrong): the sender hears `done`.
    fn fail(&mut self, reason: String) {
        self.phase = Phase::Finished;
        self.record(Event::TransferFailed {
            id: self.info.id,
            reason: reason.clone(),
        });
        self.out.push_back(RecvOutput::DeletePart);
        self.send(Message::Done {
            id: self.info.id,
            ok: false,
            reason: Some(reason),
        });
    }

    fn send(&mut self, message: Message) {
        self.out.push_back(RecvOutput::Send(message));
    }

    fn record(&mut self, event: Event) {
        self.out.push_back(RecvOutput::Record(event));
    }
}

// Chunk data is never printed.
impl fmt::Debug for RecvInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Chunk {
                index,
                sha256,
                data,
            } => f
                .debug_struct("Chunk")
                .field("index", index)
                .field("sha256", &hex::encode(sha256))
                .field("len", &data.len())
                .finish(),
            Self::Verified { index, ok } => f
                .debug_struct("Verified")
                .field("index", index)
                .field("ok", ok)
                .finish(),
            Self::VerifiedDurable { index } => f
                .debug_struct("VerifiedDurable")
                .field("index", index)
                .finish(),
            Self::WriteFailed { reason } => f
                .debug_struct("WriteFailed")
                .field("reason", reason)
                .finish(),
            Self::NoSpace { reason } => f.debug_struct("NoSpace").field("reason", reason).finish(),
            Self::Synced => f.write_str("Synced"),
            Self::End { sha256 } => f
                .debug_struct("End")
                .field("sha256", &hex::encode(sha256))
                .finish(),
            Self::Finalized { path } => f.debug_struct("Finalized").field("path", path).finish(),
            Self::FinalizeFailed { reason } => f
                .debug_struct("FinalizeFailed")
                .field("reason", reason)
                .finish(),
            Self::Cancel { reason } => f.debug_struct("Cancel").field("reason", reason).finish(),
            Self::CancelLocal { reason } => f
                .debug_struct("CancelLocal")
                .field("reason", reason)
                .finish(),
        }
    }
}

impl fmt::Debug for RecvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Send(message) => f.debug_tuple("Send").field(message).finish(),
            Self::Write {
                index,
                offset,
                data,
                sha256,
                sync,
            } => f
                .debug_struct("Write")
                .field("index", index)
                .field("offset", offset)
                .field("len", &data.len())
                .field("sha256", &hex::encode(sha256))
                .field("sync", sync)
                .finish(),
            Self::Sync => f.write_str("Sync"),
            Self::Finalize { sha256 } => f
                .debug_struct("Finalize")
                .field("sha256", &hex::encode(sha256))
                .finish(),
            Self::DeletePart => f.write_str("DeletePart"),
            Self::Record(event) => f.debug_tuple("Record").field(event).finish(),
        }
    }
}

#[cfg(test)]
mod tests;
