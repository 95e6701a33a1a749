//! The transfer protocol of spec section 4, sans-IO: the data-channel messages ([`wire`]) and
//! one state machine per transfer and side ([`Receiver`], [`Sender`]).
//!
//! The machines never touch a file, a socket or a clock. They ask the shell to read, hash, write,
//! sync and rename (`Read`, `Write`, `Sync`, `Finalize`, `DeletePart`) and hear back through
//! inputs; bulk data is hashed by the shell's IO workers, the core only compares what they report.
//! Both machines have the house shape: `handle(input, now)`, then drain `poll_output()`;
//! `poll_timeout()` / `handle_timeout(now)` for the one timer (the receiver's 30 s wait for resends
//! after `end`). Outputs are in the order they must take effect: a `Record(event)` comes before
//! the message or effect it justifies (a `ChunksDurable` before the `progress` that announces it).
//!
//! Routing by `id` (and ignoring messages for unknown ids), name checks, free space, permission
//! policy and the `.part` file's name are the node's and the store's business, not these machines'.

use super::TransferId;

pub mod receiver;
pub mod sender;
pub mod wire;

pub use receiver::{
    MAX_HASH_FAILURES, RESEND_WAIT, Receiver, RecvInput, RecvOutput, RejectReason, check_resume,
    check_start,
};
pub use sender::{MAX_READS_IN_FLIGHT, SendInfo, SendInput, SendOutput, Sender};
pub use wire::{
    MAX_CHUNK, MAX_MESSAGE_LEN, MIN_CHUNK, Message, WireError, chunk_size_for, decode,
    decode_within, encode,
};

/// How a receiver's `reject` reason starts when its disk is full. The transfer then pauses
/// rather than ends: the `.part` and its durable progress stay, and the sender sends `start`
/// again later (the resume of spec 4), which the receiver accepts once it has the space.
pub const NO_SPACE: &str = "no space";

/// Whether a `reject` reason says the receiver ran out of space (see [`NO_SPACE`]).
pub fn is_no_space(reason: &str) -> bool {
    reason.starts_with(NO_SPACE)
}

/// What a `start` message says about a file (spec 4), as the receiver keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartInfo {
    pub id: TransferId,
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub chunks: u64,
    pub mime: String,
    pub mode: Option<u32>,
    pub mtime: Option<i64>,
    /// The sender's belief of where to resume (0 when new). The receiver answers with its own
    /// count; this is informational.
    pub start_chunk: u64,
}

impl StartInfo {
    /// The `start` message's fields, or the message back if it is not a `start`.
    pub fn from_message(message: Message) -> Result<Self, Message> {
        match message {
            Message::Start {
                id,
                name,
                size,
                chunk_size,
                chunks,
                mime,
                mode,
                mtime,
                start_chunk,
            } => Ok(Self {
                id,
                name,
                size,
                chunk_size,
                chunks,
                mime,
                mode,
                mtime,
                start_chunk,
            }),
            other => Err(other),
        }
    }

    pub fn to_message(&self) -> Message {
        Message::Start {
            id: self.id,
            name: self.name.clone(),
            size: self.size,
            chunk_size: self.chunk_size,
            chunks: self.chunks,
            mime: self.mime.clone(),
            mode: self.mode,
            mtime: self.mtime,
            start_chunk: self.start_chunk,
        }
    }
}

/// `ceil(size / chunk_size)`; 0 for an empty file (and for a zero `chunk_size`, which
/// `check_start` refuses).
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    if chunk_size == 0 {
        return 0;
    }
    size.div_ceil(u64::from(chunk_size))
}

/// The byte length of chunk `index`: `chunk_size` for all but the last, the remainder for the
/// last, 0 past the end.
pub fn chunk_len(size: u64, chunk_size: u32, index: u64) -> u64 {
    let start = index.saturating_mul(u64::from(chunk_size));
    size.saturating_sub(start).min(u64::from(chunk_size))
}

/// Byte offset of chunk `index` in the file.
pub fn chunk_offset(chunk_size: u32, index: u64) -> u64 {
    index.saturating_mul(u64::from(chunk_size))
}

#[cfg(test)]
mod simulation;
