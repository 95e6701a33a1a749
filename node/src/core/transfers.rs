//! The node's transfers: routes data-channel messages to the sender and receiver machines of
//! `core::transfer`, asks the shell for the file IO they need (`StoreOp`), and turns their
//! outputs into journal events, channel messages and store operations.
//!
//! Machines live only while their peer is connected; everything a resume needs (durable
//! progress, chunk size, the sender's file facts) is in the journal's state, so a machine is
//! rebuilt from it on the next connection or the next `start`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use super::policy::{AcceptAnswer, QueuedFacts};
use super::transfer::wire::RejectCode;
use super::transfer::{
    self, Message, Receiver, RecvInput, RecvOutput, SendInfo, SendInput, SendOutput, Sender,
    StartInfo,
};
use super::{DeviceId, Direction, Event, State, TransferId, TransferStatus};

/// Asks policy whether to take a new incoming file (the core's `Asker` behind it).
pub type AcceptFn<'a> = dyn FnMut(&DeviceId, &StartInfo) -> AcceptAnswer + 'a;
/// Asks policy for the order in which queued sends start (all of them, in that order).
pub type OrderFn<'a> = dyn FnMut(Vec<QueuedFacts>) -> Vec<TransferId> + 'a;

/// Bytes a receiver lets the sender have in flight (spec 4 `window`, in chunks of the transfer's
/// size): enough to cover the time from a chunk's arrival to its `progress` (hash, write, sync,
/// a journal commit, a round trip) at LAN rates. 2 MiB held loopback at ~150 MB/s, 8 MiB gave
/// ~175 (BENCHMARKS.md); the receiver's memory is bounded by SCTP's window, not by this.
pub const WINDOW_BYTES: u64 = 8 * 1024 * 1024;

/// The `window` a receiver grants for chunks of `chunk_size` bytes: [`WINDOW_BYTES`] worth, at
/// least 4 chunks (so `progress` still comes every chunk or more often) and at most 1,024.
pub fn window_for(chunk_size: u32) -> u32 {
    let chunks = WINDOW_BYTES / u64::from(chunk_size.max(1));
    u32::try_from(chunks.clamp(4, 1024)).unwrap_or(1024)
}
/// Largest data-channel message decoded (a chunk of 4 MiB plus its envelope).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024 + 64 * 1024;

/// File IO the shell does for a transfer, off the node's loop, in order per transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Receiver: resolve the name under the receive directory (no symlink escapes), check free
    /// space for `size`, open the `.part`; report `Prepared { part_len }` or `PrepareFailed`.
    Prepare { name: String, size: u64 },
    /// Receiver: verify `sha256` of `data`, write it at `offset`; report `Verified`.
    Write {
        index: u64,
        offset: u64,
        data: Vec<u8>,
        sha256: [u8; 32],
    },
    /// Receiver: fdatasync the `.part`; report `Synced`.
    Sync,
    /// Receiver: whole-file hash, sync, rename without overwriting, mode and mtime.
    Finalize {
        sha256: [u8; 32],
        mode: Option<u32>,
        mtime: Option<i64>,
    },
    /// Receiver: delete the `.part`.
    DeletePart,
    /// Sender: read and hash `len` bytes at `offset` of `path`; report `ChunkRead`.
    Read {
        path: PathBuf,
        index: u64,
        offset: u64,
        len: u64,
    },
    /// The transfer is over here: drop its open files.
    Close,
}

/// What the shell reports back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreResult {
    Prepared {
        part_len: u64,
    },
    PrepareFailed {
        reason: String,
    },
    Verified {
        index: u64,
        ok: bool,
    },
    WriteFailed {
        reason: String,
    },
    /// A write failed because the receive directory's file system is full.
    NoSpace {
        reason: String,
    },
    Synced,
    Finalized {
        path: PathBuf,
    },
    FinalizeFailed {
        reason: String,
    },
    ChunkRead {
        index: u64,
        data: Vec<u8>,
        sha256: [u8; 32],
    },
    ReadFailed {
        reason: String,
    },
}

/// What the manager asks of the node.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    Record(Event),
    /// Send on `peer`'s data channel.
    Channel {
        peer: DeviceId,
        message: Message,
    },
    Store {
        id: TransferId,
        op: StoreOp,
    },
}

struct Outgoing {
    peer: DeviceId,
    path: PathBuf,
    sender: Sender,
}

struct Incoming {
    peer: DeviceId,
    receiver: Receiver,
}

#[derive(Default)]
pub struct Transfers {
    sending: BTreeMap<TransferId, Outgoing>,
    receiving: BTreeMap<TransferId, Incoming>,
    /// `start`s waiting for the store to prepare their `.part`.
    preparing: BTreeMap<TransferId, (DeviceId, StartInfo, Option<String>)>,
    /// Peers whose data channel is open.
    connected: BTreeSet<DeviceId>,
    /// The peers' advertised `a=max-message-size` (spec 4 chunk-size rule).
    max_message_size: BTreeMap<DeviceId, Option<u64>>,
    /// Sends paused because the receiver's disk was full, and when to `start` them again.
    paused: BTreeMap<TransferId, Instant>,
}

/// The journal's record of an incoming file, as its `start` describes it (`dir`: where policy
/// routed it under the receive directory).
fn incoming(peer: &DeviceId, start: &StartInfo, dir: Option<String>) -> Event {
    Event::TransferQueued {
        id: start.id,
        peer: peer.clone(),
        direction: Direction::Receive,
        name: start.name.clone(),
        size: start.size,
        path: None,
        mime: Some(start.mime.clone()),
        mode: start.mode,
        mtime: start.mtime,
        sha256: None,
        dir,
    }
}

/// Journals an incoming file refused at `start` (a hostile name, sizes that disagree, a
/// symbolic link on the way), so the operator sees what was offered and why it was refused.
fn refused(peer: &DeviceId, start: &StartInfo, reason: &str, work: &mut Vec<Work>) {
    work.push(Work::Record(incoming(peer, start, None)));
    work.push(Work::Record(Event::TransferRejected {
        id: start.id,
        reason: reason.to_owned(),
    }));
}

/// How long a sender waits before asking a receiver whose disk was full again.
pub const PAUSE_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

impl Transfers {
    pub fn set_max_message_size(&mut self, peer: &DeviceId, size: Option<u64>) {
        self.max_message_size.insert(peer.clone(), size);
    }

    pub fn is_connected(&self, peer: &DeviceId) -> bool {
        self.connected.contains(peer)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.receiving
            .values()
            .filter_map(|i| i.receiver.poll_timeout())
            .chain(self.paused.values().copied())
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant, state: &State, work: &mut Vec<Work>) {
        let retry: Vec<TransferId> = self
            .paused
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in retry {
            self.paused.remove(&id);
            let Some(t) = state.transfers.get(&id) else {
                continue;
            };
            let resumable = t.status == TransferStatus::Paused
                && t.direction == Direction::Send
                && self.connected.contains(&t.peer)
                && !self.sending.contains_key(&id);
            if resumable && self.spawn_sender(&id, t, &t.peer.clone()) {
                self.feed_sender(&id, SendInput::Connected, now, work);
            }
        }
        let due: Vec<TransferId> = self
            .receiving
            .iter()
            .filter(|(_, i)| i.receiver.poll_timeout().is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(incoming) = self.receiving.get_mut(&id) {
                incoming.receiver.handle_timeout(now);
            }
            self.pump_receiver(&id, work);
        }
    }

    /// The peer's channel opened: start (or resume) every queued send to it, in the order
    /// policy gives (by default oldest first).
    pub fn connected(
        &mut self,
        peer: &DeviceId,
        state: &State,
        now: Instant,
        work: &mut Vec<Work>,
        order: &mut OrderFn<'_>,
    ) {
        self.connected.insert(peer.clone());
        let mut queued: Vec<(&TransferId, &super::TransferState)> = state
            .transfers
            .iter()
            .filter(|(_, t)| &t.peer == peer && t.direction == Direction::Send)
            .collect();
        queued.sort_by_key(|(_, t)| t.queued_at_ms);
        // Policy sees every send waiting for a connected peer, so it can interleave peers.
        let mut waiting: Vec<(&TransferId, &super::TransferState)> = state
            .transfers
            .iter()
            .filter(|(id, t)| {
                t.direction == Direction::Send
                    && self.connected.contains(&t.peer)
                    && !t.status.is_finished()
                    && !self.sending.contains_key(id)
            })
            .collect();
        waiting.sort_by_key(|(_, t)| t.queued_at_ms);
        let facts = waiting
            .iter()
            .map(|(id, t)| QueuedFacts {
                id: **id,
                peer: t.peer.clone(),
                name: t.name.clone(),
                size: t.size,
                mime: t.mime.clone().unwrap_or_default(),
                done_bytes: t.durable_bytes(),
                queued_at_ms: t.queued_at_ms,
            })
            .collect();
        let rank = order(facts);
        queued.sort_by_key(|(id, t)| {
            (
                rank.iter().position(|r| r == *id).unwrap_or(usize::MAX),
                t.queued_at_ms,
            )
        });
        let mut starts = Vec::new();
        for (id, t) in queued {
            if t.status == TransferStatus::Cancelled && t.chunk_size > 0 {
                // Cancelled while the peer was away after it had started: tell it now, so
                // it deletes its `.part` (spec 4: a cancel is re-sent after reconnecting).
                work.push(Work::Channel {
                    peer: peer.clone(),
                    message: Message::Cancel {
                        id: *id,
                        reason: "cancelled by the sender".into(),
                    },
                });
                continue;
            }
            if t.status.is_finished() || self.sending.contains_key(id) {
                continue;
            }
            if self.spawn_sender(id, t, peer) {
                starts.push(*id);
            }
        }
        for id in starts {
            self.feed_sender(&id, SendInput::Connected, now, work);
        }
    }

    /// Builds the sender machine of queued transfer `id` from what the journal holds; false
    /// when the journal lacks the file's facts.
    fn spawn_sender(&mut self, id: &TransferId, t: &super::TransferState, peer: &DeviceId) -> bool {
        self.paused.remove(id);
        let Some(path) = t.path.clone() else {
            return false;
        };
        let chunk_size = if t.chunk_size > 0 {
            // A resume keeps the chunk size of the first start (spec 4).
            t.chunk_size
        } else {
            transfer::chunk_size_for(self.max_message_size.get(peer).copied().flatten())
        };
        let info = SendInfo {
            id: *id,
            name: t.name.clone(),
            size: t.size,
            mime: t
                .mime
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
            mode: t.mode,
            mtime: t.mtime,
            sha256: t.sha256,
        };
        let sender = Sender::new(info, chunk_size, t.next);
        self.sending.insert(
            *id,
            Outgoing {
                peer: peer.clone(),
                path,
                sender,
            },
        );
        true
    }

    /// The peer's channel closed: its machines go; the journal keeps what resumes them.
    pub fn disconnected(&mut self, peer: &DeviceId, work: &mut Vec<Work>) {
        self.connected.remove(peer);
        let gone: Vec<TransferId> = self
            .sending
            .iter()
            .filter(|(_, o)| &o.peer == peer)
            .map(|(id, _)| *id)
            .chain(
                self.receiving
                    .iter()
                    .filter(|(_, i)| &i.peer == peer)
                    .map(|(id, _)| *id),
            )
            .collect();
        for id in gone {
            self.sending.remove(&id);
            self.receiving.remove(&id);
            work.push(Work::Store {
                id,
                op: StoreOp::Close,
            });
        }
        self.preparing.retain(|_, (p, _, _)| p != peer);
    }

    /// A decoded message from `peer`'s channel (the caller checked the peer is trusted).
    pub fn on_message(
        &mut self,
        peer: &DeviceId,
        message: Message,
        state: &State,
        now: Instant,
        work: &mut Vec<Work>,
        accept: &mut AcceptFn<'_>,
    ) {
        let id = message.id();
        match message {
            Message::Start { .. } => {
                if let Ok(start) = StartInfo::from_message(message) {
                    self.on_start(peer, start, state, work, accept);
                }
            }
            Message::Cancel { .. } if self.sending.get(&id).is_some_and(|o| &o.peer == peer) => {
                if let Some(input) = SendInput::from_message(message) {
                    self.feed_sender(&id, input, now, work);
                }
            }
            Message::Chunk { .. } | Message::End { .. } | Message::Cancel { .. } => {
                if self.receiving.get(&id).is_none_or(|i| &i.peer != peer) {
                    return; // an unknown id is ignored (spec 4)
                }
                if let Some(input) = RecvInput::from_message(message) {
                    self.feed_receiver(&id, input, now, work);
                }
            }
            other => {
                if self.sending.get(&id).is_none_or(|o| &o.peer != peer) {
                    return;
                }
                if let Some(input) = SendInput::from_message(other) {
                    self.feed_sender(&id, input, now, work);
                }
            }
        }
    }

    fn on_start(
        &mut self,
        peer: &DeviceId,
        start: StartInfo,
        state: &State,
        work: &mut Vec<Work>,
        accept: &mut AcceptFn<'_>,
    ) {
        let id = start.id;
        let offered = start.clone();
        let reject = |reason: String, code: RejectCode, work: &mut Vec<Work>| {
            if !state.transfers.contains_key(&id) {
                refused(peer, &offered, &reason, work);
            }
            work.push(Work::Channel {
                peer: peer.clone(),
                message: Message::Reject {
                    id,
                    reason,
                    code: Some(code),
                },
            })
        };
        if let Some(known) = state.transfers.get(&id) {
            if &known.peer != peer || known.direction != Direction::Receive {
                return reject("mismatch".into(), RejectCode::Mismatch, work);
            }
            match known.status {
                TransferStatus::Cancelled => {
                    return reject("cancelled".into(), RejectCode::Cancelled, work);
                }
                TransferStatus::Completed => {
                    // Our `done` was lost: say it again.
                    work.push(Work::Channel {
                        peer: peer.clone(),
                        message: Message::Done {
                            id,
                            ok: true,
                            reason: None,
                        },
                    });
                    return;
                }
                TransferStatus::Failed | TransferStatus::Rejected => {
                    let reason = known.reason.clone().unwrap_or_else(|| "failed".into());
                    return reject(reason, RejectCode::Finished, work);
                }
                _ => {}
            }
            if known.name != start.name
                || known.size != start.size
                || (known.chunk_size != 0 && known.chunk_size != start.chunk_size)
            {
                return reject("mismatch".into(), RejectCode::Mismatch, work);
            }
        }
        // A start for a live receiver: the sender reconnected before we noticed; rebuild.
        if self.receiving.remove(&id).is_some() {
            work.push(Work::Store {
                id,
                op: StoreOp::Close,
            });
        }
        let start = match transfer::check_start(start) {
            Ok(start) => start,
            Err(reason) => return reject(reason.to_string(), reason.code(), work),
        };
        if let Err(reason) = super::names::check_name(&start.name) {
            return reject(reason.to_string(), RejectCode::Name, work);
        }
        // Policy decides a new file once; a resume keeps the first answer's directory.
        let dir = match state.transfers.get(&id) {
            Some(known) => known.dir.clone(),
            None => match accept(peer, &start) {
                AcceptAnswer::Accept { dir } => dir,
                AcceptAnswer::Reject { reason } => {
                    return reject(reason, RejectCode::Policy, work);
                }
            },
        };
        let name = match &dir {
            Some(dir) => format!("{dir}/{}", start.name),
            None => start.name.clone(),
        };
        // The routed name obeys the same rules (e.g. its total length).
        if let Err(reason) = super::names::check_name(&name) {
            return reject(reason.to_string(), RejectCode::Name, work);
        }
        let size = start.size;
        self.preparing.insert(id, (peer.clone(), start, dir));
        work.push(Work::Store {
            id,
            op: StoreOp::Prepare { name, size },
        });
    }

    /// A store result for transfer `id`.
    pub fn on_store(
        &mut self,
        id: TransferId,
        result: StoreResult,
        state: &State,
        now: Instant,
        work: &mut Vec<Work>,
    ) {
        if let Some((peer, start, dir)) = self.preparing.remove(&id) {
            match result {
                StoreResult::Prepared { part_len } => {
                    if !state.transfers.contains_key(&id) {
                        work.push(Work::Record(incoming(&peer, &start, dir)));
                    }
                    // Never more than the journal says is durable, nor than the `.part` holds.
                    let journaled = state.transfers.get(&id).map_or(0, |t| t.next);
                    let held = part_len / u64::from(start.chunk_size.max(1));
                    let durable_next = journaled.min(held);
                    let window = window_for(start.chunk_size);
                    let receiver = Receiver::new(start, durable_next, window);
                    self.receiving.insert(id, Incoming { peer, receiver });
                    self.pump_receiver(&id, work);
                }
                StoreResult::PrepareFailed { reason } => {
                    // Out of space is not a verdict on the file: the sender asks again
                    // later, so nothing is recorded that would answer that retry. (The
                    // store's own text says which; the wire says it with `code`.)
                    let no_space = transfer::is_no_space(&reason);
                    if !state.transfers.contains_key(&id) && !no_space {
                        refused(&peer, &start, &reason, work);
                    }
                    let code = if no_space {
                        RejectCode::NoSpace
                    } else {
                        // The name could not be stored (a symbolic link on the way, ...).
                        RejectCode::Name
                    };
                    work.push(Work::Channel {
                        peer,
                        message: Message::Reject {
                            id,
                            reason,
                            code: Some(code),
                        },
                    });
                    work.push(Work::Store {
                        id,
                        op: StoreOp::Close,
                    });
                }
                _ => {}
            }
            return;
        }
        let input = match result {
            StoreResult::Verified { index, ok } => RecvInput::Verified { index, ok },
            StoreResult::WriteFailed { reason } => RecvInput::WriteFailed { reason },
            StoreResult::NoSpace { reason } => RecvInput::NoSpace { reason },
            StoreResult::Synced => RecvInput::Synced,
            StoreResult::Finalized { path } => RecvInput::Finalized { path },
            StoreResult::FinalizeFailed { reason } => RecvInput::FinalizeFailed { reason },
            StoreResult::ChunkRead {
                index,
                data,
                sha256,
            } => {
                return self.feed_sender(
                    &id,
                    SendInput::ChunkRead {
                        index,
                        data,
                        sha256,
                    },
                    now,
                    work,
                );
            }
            StoreResult::ReadFailed { reason } => {
                return self.feed_sender(&id, SendInput::ReadFailed { reason }, now, work);
            }
            StoreResult::Prepared { .. } | StoreResult::PrepareFailed { .. } => return,
        };
        self.feed_receiver(&id, input, now, work);
    }

    /// The operator cancels `id`; false if no live machine has it (the caller then records
    /// the cancellation itself).
    /// The whole-file hash of outgoing `id` is known (its machine, if running, may send `end`).
    pub fn hashed(
        &mut self,
        id: &TransferId,
        sha256: [u8; 32],
        now: Instant,
        work: &mut Vec<Work>,
    ) {
        self.feed_sender(id, SendInput::Hashed { sha256 }, now, work);
    }

    /// Hashing outgoing `id`'s file failed: the running machine fails the transfer (and tells
    /// the receiver); false when none runs, for the caller to record the failure.
    pub fn hash_failed(
        &mut self,
        id: &TransferId,
        reason: String,
        now: Instant,
        work: &mut Vec<Work>,
    ) -> bool {
        if !self.sending.contains_key(id) {
            return false;
        }
        self.feed_sender(id, SendInput::ReadFailed { reason }, now, work);
        true
    }

    pub fn cancel_local(&mut self, id: &TransferId, now: Instant, work: &mut Vec<Work>) -> bool {
        let reason = "cancelled by the operator".to_owned();
        if self.sending.contains_key(id) {
            self.feed_sender(id, SendInput::CancelLocal { reason }, now, work);
            return true;
        }
        if self.receiving.contains_key(id) {
            self.feed_receiver(id, RecvInput::CancelLocal { reason }, now, work);
            return true;
        }
        false
    }

    fn feed_sender(
        &mut self,
        id: &TransferId,
        input: SendInput,
        now: Instant,
        work: &mut Vec<Work>,
    ) {
        let Some(outgoing) = self.sending.get_mut(id) else {
            return;
        };
        outgoing.sender.handle(input, now);
        while let Some(output) = outgoing.sender.poll_output() {
            match output {
                SendOutput::Send(message) => work.push(Work::Channel {
                    peer: outgoing.peer.clone(),
                    message,
                }),
                SendOutput::Read { index, offset, len } => work.push(Work::Store {
                    id: *id,
                    op: StoreOp::Read {
                        path: outgoing.path.clone(),
                        index,
                        offset,
                        len,
                    },
                }),
                SendOutput::Record(event) => {
                    if matches!(event, Event::TransferPaused { .. }) {
                        self.paused.insert(*id, now + PAUSE_RETRY);
                    }
                    work.push(Work::Record(event));
                }
            }
        }
        if outgoing.sender.is_finished() {
            self.sending.remove(id);
            work.push(Work::Store {
                id: *id,
                op: StoreOp::Close,
            });
        }
    }

    fn feed_receiver(
        &mut self,
        id: &TransferId,
        input: RecvInput,
        now: Instant,
        work: &mut Vec<Work>,
    ) {
        let Some(incoming) = self.receiving.get_mut(id) else {
            return;
        };
        incoming.receiver.handle(input, now);
        self.pump_receiver(id, work);
    }

    fn pump_receiver(&mut self, id: &TransferId, work: &mut Vec<Work>) {
        let Some(incoming) = self.receiving.get_mut(id) else {
            return;
        };
        while let Some(output) = incoming.receiver.poll_output() {
            let op = match output {
                RecvOutput::Send(message) => {
                    work.push(Work::Channel {
                        peer: incoming.peer.clone(),
                        message,
                    });
                    continue;
                }
                RecvOutput::Record(event) => {
                    work.push(Work::Record(event));
                    continue;
                }
                RecvOutput::Write {
                    index,
                    offset,
                    data,
                    sha256,
                } => StoreOp::Write {
                    index,
                    offset,
                    data,
                    sha256,
                },
                RecvOutput::Sync => StoreOp::Sync,
                RecvOutput::Finalize { sha256 } => StoreOp::Finalize {
                    sha256,
                    mode: incoming.receiver.info().mode,
                    mtime: incoming.receiver.info().mtime,
                },
                RecvOutput::DeletePart => StoreOp::DeletePart,
            };
            work.push(Work::Store { id: *id, op });
        }
        if incoming.receiver.is_finished() {
            self.receiving.remove(id);
            work.push(Work::Store {
                id: *id,
                op: StoreOp::Close,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)]
    use super::*;
    use crate::core::Stamped;

    fn apply(state: &mut State, work: &[Work]) {
        for w in work {
            if let Work::Record(event) = w {
                state.apply(&Stamped {
                    time_ms: 0,
                    event: event.clone(),
                });
            }
        }
    }

    fn starts(work: &[Work]) -> usize {
        work.iter()
            .filter(|w| {
                matches!(
                    w,
                    Work::Channel {
                        message: Message::Start { .. },
                        ..
                    }
                )
            })
            .count()
    }

    /// A receiver out of space pauses the send; the sender asks again after `PAUSE_RETRY`
    /// (and at once on a reconnect), resuming the same transfer id.
    #[test]
    fn the_window_is_a_fixed_number_of_bytes_in_chunks() {
        assert_eq!(window_for(32 * 1024), 256);
        assert_eq!(window_for(128 * 1024), 64);
        assert_eq!(window_for(4 * 1024 * 1024), 4);
        assert_eq!(window_for(1024), 1024);
        assert_eq!(window_for(0), 1024);
    }

    #[test]
    fn a_paused_send_is_started_again_after_the_retry_delay() {
        let peer = DeviceId::from_sha256(&[1; 32]);
        let id = TransferId([3; 16]);
        let mut state = State::default();
        apply(
            &mut state,
            &[Work::Record(Event::TransferQueued {
                id,
                peer: peer.clone(),
                direction: Direction::Send,
                name: "big.bin".into(),
                size: 10_000,
                path: Some("/tmp/big.bin".into()),
                mime: None,
                mode: None,
                mtime: None,
                sha256: Some([0; 32]),
                dir: None,
            })],
        );
        let mut transfers = Transfers::default();
        let now = Instant::now();
        let mut work = Vec::new();
        transfers.connected(&peer, &state, now, &mut work, &mut |_| Vec::new());
        assert_eq!(starts(&work), 1);
        apply(&mut state, &work);

        let mut work = Vec::new();
        let reason = "no space: 10000 bytes needed, 0 free on the receiver".to_string();
        transfers.on_message(
            &peer,
            Message::Reject {
                id,
                reason: reason.clone(),
                code: Some(RejectCode::NoSpace),
            },
            &state,
            now,
            &mut work,
            &mut |_, _| crate::core::policy::AcceptAnswer::Accept { dir: None },
        );
        assert!(work.contains(&Work::Record(Event::TransferPaused { id, reason })));
        apply(&mut state, &work);
        assert_eq!(state.transfers[&id].status, TransferStatus::Paused);
        assert_eq!(transfers.poll_timeout(), Some(now + PAUSE_RETRY));

        let mut work = Vec::new();
        transfers.handle_timeout(now + PAUSE_RETRY / 2, &state, &mut work);
        assert_eq!(starts(&work), 0, "not before the delay");
        transfers.handle_timeout(now + PAUSE_RETRY, &state, &mut work);
        assert_eq!(starts(&work), 1, "the same id, started again");
        assert_eq!(transfers.poll_timeout(), None);
    }
}
