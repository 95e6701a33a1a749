//! One outgoing transfer (spec 4, sender side), as a sans-IO state machine.
//!
//! The machine lives as long as the transfer, across disconnects: each `Connected` sends `start`
//! again with the cached start chunk (the latest `progress` the receiver gave), and the receiver's
//! `accept` says where to go on from. Chunks are read and hashed by the shell (`Read` →
//! `ChunkRead`), at most `min(window, MAX_READS_IN_FLIGHT)` at a time, and never one at or beyond
//! `next + window`. Since a resume starts at the receiver's durable count, which is at least the
//! last `progress` we saw, at most `window` chunks are sent twice across a reconnect.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::time::Instant;

use super::wire::{MAX_CHUNK, MIN_CHUNK, Message, RejectCode};
use super::{chunk_count, chunk_len, chunk_offset};
use crate::core::{Event, Side, TransferId};

/// Reads outstanding at most, whatever window the receiver grants (bounds the sender's memory).
pub const MAX_READS_IN_FLIGHT: u32 = 64;

/// What the shell knows about the file when the transfer is queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendInfo {
    pub id: TransferId,
    /// The relative name the receiver sees (spec 4 "Names").
    pub name: String,
    pub size: u64,
    pub mime: String,
    pub mode: Option<u32>,
    pub mtime: Option<i64>,
    /// SHA-256 of the whole file: known at queueing for small files; for large ones the shell
    /// hashes the file while the first chunks go out and reports `Hashed`. `end` waits for it.
    pub sha256: Option<[u8; 32]>,
}

#[derive(Clone, PartialEq, Eq)]
pub enum SendInput {
    /// The data channel to the peer is open.
    Connected,
    /// The data channel closed: stop, keep the state for a resume.
    Disconnected,
    Accept {
        start_chunk: u64,
        window: u32,
    },
    Reject {
        reason: String,
        code: Option<RejectCode>,
    },
    /// The shell read chunk `index` (after a `Read`) and hashed it.
    ChunkRead {
        index: u64,
        data: Vec<u8>,
        sha256: [u8; 32],
    },
    /// Reading the file failed.
    ReadFailed {
        reason: String,
    },
    /// The shell finished hashing the whole file (when `SendInfo::sha256` was `None`).
    Hashed {
        sha256: [u8; 32],
    },
    Progress {
        next: u64,
    },
    Resend {
        index: u64,
    },
    Done {
        ok: bool,
        reason: Option<String>,
    },
    /// A `cancel` from the receiver.
    Cancel {
        reason: String,
    },
    /// The operator cancelled the transfer here.
    CancelLocal {
        reason: String,
    },
}

impl SendInput {
    /// The input for a data-channel message a sender acts on; `None` for the others
    /// (`start`, `chunk`, `end`), which a sender ignores.
    pub fn from_message(message: Message) -> Option<Self> {
        match message {
            Message::Accept {
                start_chunk,
                window,
                ..
            } => Some(Self::Accept {
                start_chunk,
                window,
            }),
            Message::Reject { reason, code, .. } => Some(Self::Reject { reason, code }),
            Message::Progress { next, .. } => Some(Self::Progress { next }),
            Message::Resend { index, .. } => Some(Self::Resend { index }),
            Message::Done { ok, reason, .. } => Some(Self::Done { ok, reason }),
            Message::Cancel { reason, .. } => Some(Self::Cancel { reason }),
            _ => None,
        }
    }
}

#[derive(Clone, PartialEq)]
pub enum SendOutput {
    Send(Message),
    /// Read `len` bytes at `offset` (chunk `index`) off the network task, hash them, report
    /// `ChunkRead` (or `ReadFailed`).
    Read {
        index: u64,
        offset: u64,
        len: u64,
    },
    /// Append to the journal (before acting on anything that follows it).
    Record(Event),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a connection to send `start` on.
    Waiting,
    /// `start` sent, waiting for `accept`.
    Starting,
    /// Accepted: sending chunks, then `end`, then waiting for `done`.
    Sending,
    /// Cancelled here (or failed here) after the receiver heard of the transfer: `cancel` must
    /// reach it, and is sent again after every reconnect until it is answered.
    Cancelling {
        reason: String,
    },
    Finished,
}

#[derive(Debug)]
pub struct Sender {
    info: SendInfo,
    chunk_size: u32,
    chunks: u64,
    /// Where the next `start` says to resume.
    cached_start: u64,
    connected: bool,
    phase: Phase,
    /// `start` went out at least once, so the receiver may know the transfer.
    announced: bool,
    /// Leading chunks the receiver holds durably (latest `progress`, or `accept.start_chunk`).
    next: u64,
    window: u32,
    /// The next chunk to read for the first time (on this connection).
    cursor: u64,
    /// `Read`s not answered yet.
    reading: BTreeSet<u64>,
    /// Chunks the receiver asked again for, waiting for a read slot.
    resends: VecDeque<u64>,
    end_sent: bool,
    out: VecDeque<SendOutput>,
}

impl Sender {
    /// `chunk_size` comes from [`chunk_size_for`](super::chunk_size_for) (clamped to 1 KiB..=4 MiB);
    /// `cached_start` from the journal (0 for a new transfer).
    pub fn new(info: SendInfo, chunk_size: u32, cached_start: u64) -> Self {
        let chunk_size = chunk_size.clamp(MIN_CHUNK, MAX_CHUNK);
        let chunks = chunk_count(info.size, chunk_size);
        Self {
            info,
            chunk_size,
            chunks,
            cached_start: cached_start.min(chunks),
            connected: false,
            phase: Phase::Waiting,
            announced: false,
            next: 0,
            window: 1,
            cursor: 0,
            reading: BTreeSet::new(),
            resends: VecDeque::new(),
            end_sent: false,
            out: VecDeque::new(),
        }
    }

    pub fn id(&self) -> TransferId {
        self.info.id
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Where a resume starts from: the latest `progress.next` (or `accept.start_chunk`).
    pub fn cached_start(&self) -> u64 {
        self.cached_start
    }

    /// Leading chunks the receiver acknowledged as durable.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// `Read`s outstanding (never more than the window).
    pub fn reads_in_flight(&self) -> usize {
        self.reading.len()
    }

    /// Whether `end` went out on this connection.
    pub fn end_sent(&self) -> bool {
        self.end_sent
    }

    /// Whether a `cancel` is waiting for the receiver's answer.
    pub fn is_cancelling(&self) -> bool {
        matches!(self.phase, Phase::Cancelling { .. })
    }

    /// Completed, rejected, failed or cancelled (and the cancel answered, or never needed).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    pub fn poll_output(&mut self) -> Option<SendOutput> {
        self.out.pop_front()
    }

    /// The sender has no timers (the channel's own liveness decides `Disconnected`).
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    pub fn handle_timeout(&mut self, _now: Instant) {}

    pub fn handle(&mut self, input: SendInput, _now: Instant) {
        if self.phase == Phase::Finished {
            return;
        }
        match input {
            SendInput::Connected => {
                self.connected = true;
                self.forget_connection();
                if let Phase::Cancelling { reason } = &self.phase {
                    let reason = reason.clone();
                    self.send(Message::Cancel {
                        id: self.info.id,
                        reason,
                    });
                } else {
                    self.send_start();
                }
            }
            SendInput::Disconnected => {
                self.connected = false;
                self.forget_connection();
                if matches!(self.phase, Phase::Starting | Phase::Sending) {
                    self.phase = Phase::Waiting;
                }
            }
            SendInput::Accept {
                start_chunk,
                window,
            } => self.on_accept(start_chunk, window),
            SendInput::Reject { reason, code } => match self.phase {
                // The receiver's disk is full, at `start` or mid-transfer: pause; the node
                // sends `start` again later and the receiver resumes from what it holds. The
                // code says so, never the reason text (spec 4).
                Phase::Starting | Phase::Sending if code == Some(RejectCode::NoSpace) => {
                    self.phase = Phase::Finished;
                    self.record(Event::TransferPaused {
                        id: self.info.id,
                        reason,
                    });
                }
                Phase::Starting => {
                    self.phase = Phase::Finished;
                    self.record(Event::TransferRejected {
                        id: self.info.id,
                        reason,
                        code,
                    });
                }
                // The receiver refusing a transfer we are cancelling answers the cancel.
                Phase::Cancelling { .. } => self.phase = Phase::Finished,
                _ => {}
            },
            SendInput::ChunkRead {
                index,
                data,
                sha256,
            } => self.on_chunk_read(index, data, sha256),
            SendInput::ReadFailed { reason } => {
                if matches!(self.phase, Phase::Cancelling { .. }) {
                    return;
                }
                self.abort(format!("sender: {reason}"));
            }
            SendInput::Hashed { sha256 } => {
                self.info.sha256 = Some(sha256);
                self.pump();
            }
            SendInput::Progress { next } => self.on_progress(next),
            SendInput::Resend { index } => self.on_resend(index),
            SendInput::Done { ok, reason } => {
                if matches!(self.phase, Phase::Cancelling { .. }) {
                    // The answer to our cancel; the cancel is already recorded.
                    self.phase = Phase::Finished;
                    return;
                }
                self.phase = Phase::Finished;
                let id = self.info.id;
                if ok {
                    self.record(Event::TransferCompleted { id, path: None });
                } else {
                    let reason = reason.unwrap_or_else(|| "the receiver reported a failure".into());
                    self.record(Event::TransferFailed { id, reason });
                }
            }
            SendInput::Cancel { reason } => {
                if matches!(self.phase, Phase::Cancelling { .. }) {
                    self.phase = Phase::Finished;
                    return;
                }
                self.phase = Phase::Finished;
                self.record(Event::TransferCancelled {
                    id: self.info.id,
                    by: Side::Remote,
                    reason,
                });
            }
            SendInput::CancelLocal { reason } => {
                if matches!(self.phase, Phase::Cancelling { .. }) {
                    return;
                }
                self.record(Event::TransferCancelled {
                    id: self.info.id,
                    by: Side::Local,
                    reason: reason.clone(),
                });
                self.begin_cancel(reason);
            }
        }
    }

    fn send_start(&mut self) {
        self.phase = Phase::Starting;
        self.announced = true;
        let id = self.info.id;
        self.record(Event::TransferStarted {
            id,
            chunk_size: self.chunk_size,
            chunks: self.chunks,
            start_chunk: self.cached_start,
        });
        self.send(Message::Start {
            id,
            name: self.info.name.clone(),
            size: self.info.size,
            chunk_size: self.chunk_size,
            chunks: self.chunks,
            mime: self.info.mime.clone(),
            mode: self.info.mode,
            mtime: self.info.mtime,
            start_chunk: self.cached_start,
        });
    }

    fn on_accept(&mut self, start_chunk: u64, window: u32) {
        if self.phase != Phase::Starting {
            return;
        }
        if start_chunk > self.chunks {
            return self.abort(format!(
                "the receiver accepted from chunk {start_chunk} of {}",
                self.chunks
            ));
        }
        let window = window.max(1);
        self.record(Event::TransferAccepted {
            id: self.info.id,
            start_chunk,
            window,
        });
        self.phase = Phase::Sending;
        self.window = window;
        self.next = start_chunk;
        self.cursor = start_chunk;
        self.cached_start = start_chunk;
        self.pump();
    }

    fn on_chunk_read(&mut self, index: u64, data: Vec<u8>, sha256: [u8; 32]) {
        if !self.reading.remove(&index) || self.phase != Phase::Sending {
            // A read from before a disconnect, or one we did not ask for.
            return;
        }
        let expected = chunk_len(self.info.size, self.chunk_size, index);
        if data.len() as u64 != expected {
            return self.abort(format!(
                "sender: chunk {index} read {} bytes, expected {expected}: the file changed",
                data.len()
            ));
        }
        if index >= self.next {
            // (Below `next` the receiver already holds it durably: nothing to send.)
            self.send(Message::Chunk {
                id: self.info.id,
                index,
                sha256,
                data,
            });
        }
        self.pump();
    }

    fn on_progress(&mut self, next: u64) {
        if self.phase != Phase::Sending || next > self.chunks || next <= self.next {
            return;
        }
        self.record(Event::ChunksDurable {
            id: self.info.id,
            start: self.next,
            end: next,
        });
        self.next = next;
        self.cached_start = next;
        self.cursor = self.cursor.max(next);
        self.resends.retain(|&i| i >= next);
        self.pump();
    }

    fn on_resend(&mut self, index: u64) {
        // Only a chunk sent on this connection, not yet acknowledged, and not already on its
        // way again (which also bounds the queue by the window).
        if self.phase != Phase::Sending
            || index < self.next
            || index >= self.cursor
            || index >= self.limit()
            || self.reading.contains(&index)
            || self.resends.contains(&index)
        {
            return;
        }
        self.resends.push_back(index);
        self.pump();
    }

    /// Chunks at or beyond this index may not be sent yet.
    fn limit(&self) -> u64 {
        self.next.saturating_add(u64::from(self.window))
    }

    /// Issues reads while the window and the read budget allow, then `end` when all is sent.
    fn pump(&mut self) {
        if self.phase != Phase::Sending || !self.connected {
            return;
        }
        let budget = self.window.min(MAX_READS_IN_FLIGHT) as usize;
        while self.reading.len() < budget {
            let index = if let Some(index) = self.resends.pop_front() {
                index
            } else if self.cursor < self.chunks && self.cursor < self.limit() {
                self.cursor += 1;
                self.cursor - 1
            } else {
                break;
            };
            self.reading.insert(index);
            self.out.push_back(SendOutput::Read {
                index,
                offset: chunk_offset(self.chunk_size, index),
                len: chunk_len(self.info.size, self.chunk_size, index),
            });
        }
        if let Some(sha256) = self.info.sha256
            && !self.end_sent
            && self.cursor == self.chunks
            && self.reading.is_empty()
            && self.resends.is_empty()
        {
            self.end_sent = true;
            self.send(Message::End {
                id: self.info.id,
                sha256,
            });
        }
    }

    /// Fails the transfer here and tells the receiver with `cancel`.
    fn abort(&mut self, reason: String) {
        self.record(Event::TransferFailed {
            id: self.info.id,
            reason: reason.clone(),
        });
        self.begin_cancel(reason);
    }

    fn begin_cancel(&mut self, reason: String) {
        self.forget_connection();
        if !self.announced {
            // The receiver never heard of it.
            self.phase = Phase::Finished;
            return;
        }
        if self.connected {
            self.send(Message::Cancel {
                id: self.info.id,
                reason: reason.clone(),
            });
        }
        self.phase = Phase::Cancelling { reason };
    }

    /// Drops what belongs to one connection (reads in flight, resends, `end`).
    fn forget_connection(&mut self) {
        self.reading.clear();
        self.resends.clear();
        self.end_sent = false;
    }

    fn send(&mut self, message: Message) {
        self.out.push_back(SendOutput::Send(message));
    }

    fn record(&mut self, event: Event) {
        self.out.push_back(SendOutput::Record(event));
    }
}

// Chunk data is never printed.
impl fmt::Debug for SendInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connected => f.write_str("Connected"),
            Self::Disconnected => f.write_str("Disconnected"),
            Self::Accept {
                start_chunk,
                window,
            } => f
                .debug_struct("Accept")
                .field("start_chunk", start_chunk)
                .field("window", window)
                .finish(),
            Self::Reject { reason, code } => f
                .debug_struct("Reject")
                .field("reason", reason)
                .field("code", code)
                .finish(),
            Self::ChunkRead {
                index,
                data,
                sha256,
            } => f
                .debug_struct("ChunkRead")
                .field("index", index)
                .field("len", &data.len())
                .field("sha256", &hex::encode(sha256))
                .finish(),
            Self::ReadFailed { reason } => f
                .debug_struct("ReadFailed")
                .field("reason", reason)
                .finish(),
            Self::Hashed { sha256 } => f
                .debug_struct("Hashed")
                .field("sha256", &hex::encode(sha256))
                .finish(),
            Self::Progress { next } => f.debug_struct("Progress").field("next", next).finish(),
            Self::Resend { index } => f.debug_struct("Resend").field("index", index).finish(),
            Self::Done { ok, reason } => f
                .debug_struct("Done")
                .field("ok", ok)
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

impl fmt::Debug for SendOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Send(message) => f.debug_tuple("Send").field(message).finish(),
            Self::Read { index, offset, len } => f
                .debug_struct("Read")
                .field("index", index)
                .field("offset", offset)
                .field("len", len)
                .finish(),
            Self::Record(event) => f.debug_tuple("Record").field(event).finish(),
        }
    }
}

#[cfg(test)]
mod tests;
