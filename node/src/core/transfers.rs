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

/// Policy's answer on whether to take a new incoming file, when the core has it; `None`: the
/// question is out (the core asks it and feeds the `start` again with the answer), so the
/// `start` waits and nothing happens now.
pub type AcceptFn<'a> = dyn FnMut(&DeviceId, &StartInfo) -> Option<AcceptAnswer> + 'a;
/// Policy's order in which queued sends start (all of them, in that order), when the core has
/// it; `None`: the question is out, so the peer's sends wait (the core calls
/// [`Transfers::connected`] again with the answer).
pub type OrderFn<'a> = dyn FnMut(Vec<QueuedFacts>) -> Option<Vec<TransferId>> + 'a;

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
/// The `a=max-message-size` fsnode advertises, and so the largest data-channel message it
/// accepts: spec 4 closes the channel on anything larger (peers choose chunks to fit it).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// File IO the shell does for a transfer, off the node's loop, in order per transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Receiver: resolve the name under the receive directory (no symlink escapes), check free
    /// space for `size`, open the `.part`; report `Prepared { part_len }` or `PrepareFailed`.
    Prepare { name: String, size: u64 },
    /// Receiver: verify `sha256` of `data`, write it at `offset`, and with `sync` fdatasync the
    /// `.part` after it; report `Verified` (`synced` when that sync was done).
    Write {
        index: u64,
        offset: u64,
        data: Vec<u8>,
        sha256: [u8; 32],
        sync: bool,
    },
    /// Receiver: fdatasync the `.part`; report `Synced`.
    Sync,
    /// Receiver: whole-file hash, sync, rename without overwriting, mode and mtime.
    Finalize {
        sha256: [u8; 32],
        mode: Option<u32>,
        mtime: Option<i64>,
        /// The journal said every chunk was durable before this start, but the `.part` was gone:
        /// the node stopped between the final rename and journaling the completion. A file
        /// already under the final name (or a numbered variant) with this size and SHA-256 is
        /// this transfer's own, finished file, taken as the result instead of a `name (1).ext`.
        adopt_identical: bool,
    },
    /// LocalSend receiver: write `data` at `offset` of the `.part` opened by `Prepare`, and with
    /// `sync` fdatasync it after; report `Appended`. The protocol has no chunk hashes: the whole
    /// file's is checked by `FinalizeStream`.
    Append {
        offset: u64,
        data: Vec<u8>,
        sync: bool,
    },
    /// LocalSend receiver: `Finalize`, checking the whole file's SHA-256 against `sha256` when
    /// the sender gave one (always computed, over the bytes as they were written).
    FinalizeStream {
        sha256: Option<[u8; 32]>,
        mode: Option<u32>,
        mtime: Option<i64>,
    },
    /// Receiver: delete the `.part`.
    DeletePart,
    /// Receiver: delete the `.part` of `name` (relative to the receive directory) without
    /// opening it: a sender cancelled a transfer whose machine is not running here.
    Discard { name: String },
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
        /// The `.part` was fdatasynced after this write (a `Write` with `sync`).
        synced: bool,
    },
    WriteFailed {
        reason: String,
    },
    /// A write failed because the receive directory's file system is full.
    NoSpace {
        reason: String,
    },
    Synced,
    /// An `Append` ending at `end` is written (and synced, with everything before it, when
    /// `synced`).
    Appended {
        end: u64,
        synced: bool,
    },
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
    /// What it counts against the bytes-in-flight caps ([`flight_cost`]).
    cost: u64,
    /// It failed or was cancelled here: the receiver's answer to the `cancel` (or the
    /// receiver never having heard of it) is what delivers the outcome.
    owes_outcome: bool,
}

/// An outcome this node announced (its `done`, `reject` or `cancel`) counts as delivered once
/// the channel it went out on stayed open this long after it: a reliable SCTP stream has
/// delivered it by then (or closed), and the peer has journaled it. A peer that reconnects
/// gets the same time again to ask (a repeated `start`) before the outcome leaves state.
pub const OUTCOME_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Settled outcomes are recorded together: when one is due, so is every one due within this
/// much more (one `OutcomesDelivered` per second or so, not one per transfer).
const SETTLE_COALESCE: std::time::Duration = std::time::Duration::from_secs(1);

/// How many sends run at once to one peer; the rest wait in queue order. Small files need
/// many at once: every journal commit, store wake and SCTP packet then carries several of
/// them (10,000 files of 4 KiB: with 32 the two nodes spent about a third more CPU per file
/// than with 128, BENCHMARKS.md). Large files are held back by the bytes in flight instead.
pub const MAX_RUNNING_PER_PEER: usize = 128;

/// How many sends run at once to all peers together: each holds its source file open, so
/// open files stay bounded whatever the number of peers.
pub const MAX_RUNNING_TOTAL: usize = 256;

/// Waiting sends the `schedule` question names at most, oldest first: it orders these, and
/// the sends behind them keep their queue order (the question and its answer stay small
/// whatever the queue).
pub const SCHEDULE_WINDOW: usize = 1_000;
/// Bytes in flight to one peer at most (each running send counts [`flight_cost`]); one send
/// always may run, however large.
pub const MAX_FLIGHT_PER_PEER: u64 = 16 * 1024 * 1024;
/// Bytes in flight to all peers together at most; one send always may run. Each byte in
/// flight costs the sender about 2.5 bytes of memory (the read chunk, its encoded message,
/// SCTP's queues): 64 MiB held one file to 16 receivers at 191 MiB peak RSS, 32 MiB keeps it
/// near 100 (BENCHMARKS.md).
pub const MAX_FLIGHT_TOTAL: u64 = 32 * 1024 * 1024;

/// What a running send may hold in memory and in the IO queues: the rest of its file, at most
/// one receiver window.
pub fn flight_cost(t: &super::TransferState) -> u64 {
    t.size
        .saturating_sub(t.durable_bytes())
        .clamp(1, WINDOW_BYTES)
}

struct Incoming {
    peer: DeviceId,
    receiver: Receiver,
    /// See [`StoreOp::Finalize`]'s `adopt_identical`.
    finished_before: bool,
    /// It finished with an outcome this side announced (`done`, `reject`, its own `cancel`).
    owes_outcome: bool,
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
    /// Sends waiting for a slot, per connected peer, in the order policy gave.
    waiting: BTreeMap<DeviceId, std::collections::VecDeque<TransferId>>,
    /// A send stopped since the last [`Transfers::fill`]: a slot may be free.
    slot_freed: bool,
    /// Outcomes announced to a connected peer, and when they count as delivered
    /// ([`OUTCOME_SETTLE`]).
    settling: BTreeMap<TransferId, (DeviceId, Instant)>,
    /// The same, by when they settle (the loop asks for the next timeout every turn).
    settling_by_time: BTreeSet<(Instant, TransferId)>,
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
fn refused(
    peer: &DeviceId,
    start: &StartInfo,
    reason: &str,
    code: RejectCode,
    work: &mut Vec<Work>,
) {
    work.push(Work::Record(incoming(peer, start, None)));
    work.push(Work::Record(Event::TransferRejected {
        id: start.id,
        reason: reason.to_owned(),
        code: Some(code),
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
            .chain(self.settling_by_time.first().map(|(at, _)| *at))
            .min()
    }

    /// Outcome `id` went out to `peer` now (or was asked for again): it settles after
    /// [`OUTCOME_SETTLE`] if the channel stays open.
    fn settle_later(&mut self, id: TransferId, peer: &DeviceId, now: Instant) {
        let at = now + OUTCOME_SETTLE;
        if let Some((_, before)) = self.settling.insert(id, (peer.clone(), at)) {
            self.settling_by_time.remove(&(before, id));
        }
        self.settling_by_time.insert((at, id));
    }

    /// Forgets `id`'s pending settlement, if any.
    fn unsettle(&mut self, id: &TransferId) {
        if let Some((_, at)) = self.settling.remove(id) {
            self.settling_by_time.remove(&(at, *id));
        }
    }

    /// Records the settled outcomes (and those about to settle) as delivered.
    fn record_settled(&mut self, now: Instant, work: &mut Vec<Work>) {
        let horizon = now + SETTLE_COALESCE;
        if self
            .settling_by_time
            .first()
            .is_none_or(|(at, _)| *at > now)
        {
            return;
        }
        let mut ids = Vec::new();
        while let Some(&(at, id)) = self.settling_by_time.first()
            && at <= horizon
        {
            self.settling_by_time.pop_first();
            self.settling.remove(&id);
            ids.push(id);
        }
        work.push(Work::Record(Event::OutcomesDelivered { ids }));
    }

    pub fn handle_timeout(&mut self, now: Instant, state: &State, work: &mut Vec<Work>) {
        self.record_settled(now, work);
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
            self.pump_receiver(&id, now, work);
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
            .map(|(id, t)| (id, &**t))
            .filter(|(_, t)| &t.peer == peer && t.direction == Direction::Send)
            .collect();
        queued.sort_by_key(|(_, t)| t.queued_at_ms);
        // Policy sees the sends waiting for connected peers, so it can interleave peers: the
        // oldest [`SCHEDULE_WINDOW`] of them (a send of 100,000 files asks about its first
        // ones; the rest follow in queue order, and policy is asked again at each connect).
        let mut waiting: Vec<(&TransferId, &super::TransferState)> = state
            .transfers
            .iter()
            .map(|(id, t)| (id, &**t))
            .filter(|(id, t)| {
                t.direction == Direction::Send
                    && self.connected.contains(&t.peer)
                    && !t.status.is_finished()
                    && !self.sending.contains_key(id)
            })
            .collect();
        waiting.sort_by_key(|(_, t)| t.queued_at_ms);
        waiting.truncate(SCHEDULE_WINDOW);
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
        let Some(order) = order(facts) else {
            return; // policy is thinking: started when its answer comes
        };
        let rank: BTreeMap<TransferId, usize> = order
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, i))
            .rev() // the first place wins if policy names an id twice
            .collect();
        queued.sort_by_key(|(id, t)| (rank.get(id).copied().unwrap_or(usize::MAX), t.queued_at_ms));
        let mut ranked = std::collections::VecDeque::new();
        for (id, t) in queued {
            if t.status.is_finished() || self.sending.contains_key(id) {
                continue;
            }
            ranked.push_back(*id);
        }
        self.waiting.insert(peer.clone(), ranked);
        self.resend_undelivered(peer, state, now, work);
        self.fill(state, now, work);
    }

    /// The peer is back: the outcomes it may have missed get their chance again. A send
    /// cancelled (or failed) here while the peer was away has its `cancel` re-sent, so the
    /// receiver deletes its `.part` (spec 4); a receive's outcome is answered again if the
    /// sender repeats its `start`. Either settles after [`OUTCOME_SETTLE`] on this channel.
    fn resend_undelivered(
        &mut self,
        peer: &DeviceId,
        state: &State,
        now: Instant,
        work: &mut Vec<Work>,
    ) {
        let mine: Vec<(TransferId, Direction)> = state
            .undelivered
            .iter()
            .filter_map(|id| {
                let t = state.transfers.get(id)?;
                (&t.peer == peer).then_some((*id, t.direction))
            })
            .collect();
        for (id, direction) in mine {
            if direction == Direction::Send {
                work.push(Work::Channel {
                    peer: peer.clone(),
                    message: Message::Cancel {
                        id,
                        reason: "cancelled by the sender".into(),
                    },
                });
            }
            self.settle_later(id, peer, now);
        }
    }

    /// Whether a send stopped since the last [`fill`](Self::fill) (the node then calls it).
    pub fn slot_freed(&self) -> bool {
        self.slot_freed
    }

    /// Starts waiting sends, in their queue order, while the caps allow: per peer at most
    /// [`MAX_RUNNING_PER_PEER`] sends and [`MAX_FLIGHT_PER_PEER`] bytes in flight, and
    /// [`MAX_RUNNING_TOTAL`] sends and [`MAX_FLIGHT_TOTAL`] bytes over all peers. Peers take
    /// turns, one start each per round.
    pub fn fill(&mut self, state: &State, now: Instant, work: &mut Vec<Work>) {
        self.slot_freed = false;
        let mut per_peer: BTreeMap<DeviceId, (usize, u64)> = BTreeMap::new();
        let mut total = 0u64;
        let mut running = self.sending.len();
        for outgoing in self.sending.values() {
            let entry = per_peer.entry(outgoing.peer.clone()).or_default();
            entry.0 += 1;
            entry.1 += outgoing.cost;
            total += outgoing.cost;
        }
        let mut starts = Vec::new();
        while running < MAX_RUNNING_TOTAL {
            let mut progressed = false;
            let peers: Vec<DeviceId> = self.waiting.keys().cloned().collect();
            for peer in peers {
                let Some(queue) = self.waiting.get_mut(&peer) else {
                    continue;
                };
                let (count, bytes) = per_peer.get(&peer).copied().unwrap_or_default();
                if count >= MAX_RUNNING_PER_PEER || running >= MAX_RUNNING_TOTAL {
                    continue;
                }
                // The next that can still start (finished or running ones leave the queue).
                let next = loop {
                    let Some(id) = queue.front().copied() else {
                        break None;
                    };
                    match state.transfers.get(&id) {
                        Some(t) if !t.status.is_finished() && !self.sending.contains_key(&id) => {
                            break Some((id, flight_cost(t)));
                        }
                        _ => {
                            queue.pop_front();
                        }
                    }
                };
                let Some((id, cost)) = next else {
                    continue;
                };
                let fits_peer = count == 0 || bytes + cost <= MAX_FLIGHT_PER_PEER;
                let fits_total = total == 0 || total + cost <= MAX_FLIGHT_TOTAL;
                if !(fits_peer && fits_total) {
                    continue;
                }
                queue.pop_front();
                let Some(t) = state.transfers.get(&id) else {
                    continue;
                };
                if self.spawn_sender(&id, t, &peer) {
                    let entry = per_peer.entry(peer.clone()).or_default();
                    entry.0 += 1;
                    entry.1 += cost;
                    total += cost;
                    running += 1;
                    starts.push(id);
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        self.waiting.retain(|_, queue| !queue.is_empty());
        for id in starts {
            self.feed_sender(&id, SendInput::Connected, now, work);
        }
    }

    /// Sends running and waiting, per peer (for tests and status).
    pub fn running_to(&self, peer: &DeviceId) -> usize {
        self.sending.values().filter(|o| &o.peer == peer).count()
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
                cost: flight_cost(t),
                owes_outcome: false,
            },
        );
        true
    }

    /// The peer's channel closed: its machines go; the journal keeps what resumes them.
    pub fn disconnected(&mut self, peer: &DeviceId, work: &mut Vec<Work>) {
        self.connected.remove(peer);
        self.waiting.remove(peer);
        // Not settled: the channel closed under them (they get another chance next time).
        let closed: Vec<TransferId> = self
            .settling
            .iter()
            .filter(|(_, (p, _))| p == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in &closed {
            self.unsettle(id);
        }
        self.slot_freed = true;
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
                    let before = work.len();
                    self.on_start(peer, start, state, work, accept);
                    // A refusal recorded now, or a finished transfer's outcome answered
                    // again, settles like any outcome this side announces.
                    let answered = work[before..].iter().any(|w| match w {
                        Work::Record(Event::TransferRejected { id: r, .. }) => *r == id,
                        Work::Channel {
                            message: Message::Reject { id: r, .. } | Message::Done { id: r, .. },
                            ..
                        } => *r == id && state.is_undelivered(&id),
                        _ => false,
                    });
                    if answered {
                        self.settle_later(id, peer, now);
                    }
                }
            }
            Message::Cancel { .. }
                if !self.receiving.contains_key(&id)
                    && !self.sending.contains_key(&id)
                    && state.transfers.get(&id).is_some_and(|t| {
                        &t.peer == peer
                            && t.direction == Direction::Receive
                            && !t.status.is_finished()
                    }) =>
            {
                self.cancelled_while_idle(peer, id, message, state, work);
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
                    // The receiver's answer to a `cancel` re-sent after a reconnect: it has
                    // the outcome now.
                    let answers = matches!(other, Message::Done { .. } | Message::Reject { .. });
                    if answers
                        && state.transfers.get(&id).is_some_and(|t| &t.peer == peer)
                        && state.is_undelivered(&id)
                    {
                        self.unsettle(&id);
                        work.push(Work::Record(Event::OutcomesDelivered { ids: vec![id] }));
                    }
                    return;
                }
                if let Some(input) = SendInput::from_message(other) {
                    self.feed_sender(&id, input, now, work);
                }
            }
        }
    }

    /// The sender cancelled a transfer that has no machine here (it was cancelled while the
    /// peer was away, and re-sent on reconnecting): record it, delete the `.part`, answer.
    fn cancelled_while_idle(
        &mut self,
        peer: &DeviceId,
        id: TransferId,
        message: Message,
        state: &State,
        work: &mut Vec<Work>,
    ) {
        let Message::Cancel { reason, .. } = message else {
            return;
        };
        let Some(t) = state.transfers.get(&id) else {
            return;
        };
        let name = match &t.dir {
            Some(dir) => format!("{dir}/{}", t.name),
            None => t.name.clone(),
        };
        work.push(Work::Record(Event::TransferCancelled {
            id,
            by: super::Side::Remote,
            reason,
        }));
        work.push(Work::Store {
            id,
            op: StoreOp::Discard { name },
        });
        work.push(Work::Store {
            id,
            op: StoreOp::Close,
        });
        work.push(Work::Channel {
            peer: peer.clone(),
            message: Message::Done {
                id,
                ok: false,
                reason: Some("cancelled".into()),
            },
        });
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
                refused(peer, &offered, &reason, code, work);
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
                    // Spec 4: answered again with the code it ended with (`finished` for a
                    // failure, and for refusals journaled by builds before codes).
                    let reason = known.reason.clone().unwrap_or_else(|| "failed".into());
                    let code = known.reject_code.unwrap_or(RejectCode::Finished);
                    return reject(reason, code, work);
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
                Some(AcceptAnswer::Accept { dir }) => dir,
                Some(AcceptAnswer::Reject { reason }) => {
                    return reject(reason, RejectCode::Policy, work);
                }
                None => return, // policy is thinking: the core feeds this `start` again
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
                    let finished_before = state.transfers.get(&id).is_some_and(|t| {
                        t.chunk_size > 0 && t.next >= t.chunks && part_len < start.size
                    });
                    let window = window_for(start.chunk_size);
                    let receiver = Receiver::new(start, durable_next, window);
                    self.receiving.insert(
                        id,
                        Incoming {
                            peer,
                            receiver,
                            finished_before,
                            owes_outcome: false,
                        },
                    );
                    self.pump_receiver(&id, now, work);
                }
                StoreResult::PrepareFailed { reason } => {
                    // Out of space is not a verdict on the file: the sender asks again
                    // later. It is journaled as a pause (shown here as on the sender), which
                    // answers that retry with a new attempt, never with a refusal. (The
                    // store's own text says which; the wire says it with `code`.)
                    let no_space = transfer::is_no_space(&reason);
                    let code = if no_space {
                        RejectCode::NoSpace
                    } else {
                        // The name could not be stored (a symbolic link on the way, ...).
                        RejectCode::Name
                    };
                    let known = state.transfers.get(&id);
                    if no_space {
                        if known.is_none() {
                            work.push(Work::Record(incoming(&peer, &start, dir)));
                        }
                        // Once per pause: the sender asks again every `PAUSE_RETRY`.
                        if known.is_none_or(|t| t.status != TransferStatus::Paused) {
                            work.push(Work::Record(Event::TransferPaused {
                                id,
                                reason: reason.clone(),
                            }));
                        }
                    } else if known.is_none() {
                        refused(&peer, &start, &reason, code, work);
                        self.settle_later(id, &peer, now);
                    }
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
            StoreResult::Verified {
                index,
                ok: true,
                synced: true,
            } => RecvInput::VerifiedDurable { index },
            StoreResult::Verified { index, ok, .. } => RecvInput::Verified { index, ok },
            StoreResult::WriteFailed { reason } => RecvInput::WriteFailed { reason },
            StoreResult::NoSpace { reason } => RecvInput::NoSpace { reason },
            StoreResult::Synced => RecvInput::Synced,
            // Only LocalSend uploads append; the core routes their results elsewhere.
            StoreResult::Appended { .. } => return,
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
                    outgoing.owes_outcome |= matches!(
                        event,
                        Event::TransferFailed { .. }
                            | Event::TransferCancelled {
                                by: super::Side::Local,
                                ..
                            }
                    );
                    work.push(Work::Record(event));
                }
            }
        }
        if outgoing.sender.is_finished() {
            if outgoing.owes_outcome {
                // The receiver answered the `cancel` (or never heard of the transfer).
                work.push(Work::Record(Event::OutcomesDelivered { ids: vec![*id] }));
            }
            self.sending.remove(id);
            self.slot_freed = true;
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
        self.pump_receiver(id, now, work);
    }

    fn pump_receiver(&mut self, id: &TransferId, now: Instant, work: &mut Vec<Work>) {
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
                    incoming.owes_outcome |= matches!(
                        event,
                        Event::TransferCompleted { .. }
                            | Event::TransferFailed { .. }
                            | Event::TransferRejected { .. }
                            | Event::TransferCancelled {
                                by: super::Side::Local,
                                ..
                            }
                    );
                    work.push(Work::Record(event));
                    continue;
                }
                RecvOutput::Write {
                    index,
                    offset,
                    data,
                    sha256,
                    sync,
                } => StoreOp::Write {
                    index,
                    offset,
                    data,
                    sha256,
                    sync,
                },
                RecvOutput::Sync => StoreOp::Sync,
                RecvOutput::Finalize { sha256 } => StoreOp::Finalize {
                    sha256,
                    mode: incoming.receiver.info().mode,
                    mtime: incoming.receiver.info().mtime,
                    adopt_identical: incoming.finished_before,
                },
                RecvOutput::DeletePart => StoreOp::DeletePart,
            };
            work.push(Work::Store { id: *id, op });
        }
        if incoming.receiver.is_finished() {
            if incoming.owes_outcome {
                let peer = incoming.peer.clone();
                self.settle_later(*id, &peer, now);
            }
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
        transfers.connected(&peer, &state, now, &mut work, &mut |_| Some(Vec::new()));
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
            &mut |_, _| Some(crate::core::policy::AcceptAnswer::Accept { dir: None }),
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

    fn queue_send(state: &mut State, peer: &DeviceId, n: u64, size: u64) -> TransferId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&n.to_be_bytes());
        let id = TransferId(b);
        state.apply(&Stamped {
            time_ms: i64::try_from(n).unwrap(),
            event: Event::TransferQueued {
                id,
                peer: peer.clone(),
                direction: Direction::Send,
                name: format!("f{n}"),
                size,
                path: Some(format!("/tmp/f{n}").into()),
                mime: None,
                mode: None,
                mtime: None,
                sha256: Some([0; 32]),
                dir: None,
            },
        });
        id
    }

    /// The receiver refuses send `id` (policy): what the manager makes of it.
    fn refused(
        transfers: &mut Transfers,
        peer: &DeviceId,
        id: TransferId,
        state: &State,
        now: Instant,
        work: &mut Vec<Work>,
    ) {
        transfers.on_message(
            peer,
            Message::Reject {
                id,
                reason: "not wanted".into(),
                code: Some(crate::core::transfer::wire::RejectCode::Policy),
            },
            state,
            now,
            work,
            &mut |_, _| None,
        );
    }

    fn started(work: &[Work]) -> Vec<TransferId> {
        work.iter()
            .filter_map(|w| match w {
                Work::Channel {
                    message: Message::Start { id, .. },
                    ..
                } => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Many files at once: per peer at most 128 sends run, the rest wait in the order policy
    /// gave, and each one that stops lets the next start.
    #[test]
    fn sends_start_within_the_per_peer_count_cap_in_policy_order() {
        let peer = DeviceId::from_sha256(&[1; 32]);
        let mut state = State::default();
        let ids: Vec<TransferId> = (0..300)
            .map(|n| queue_send(&mut state, &peer, n, 4096))
            .collect();
        let mut transfers = Transfers::default();
        let now = Instant::now();
        let mut work = Vec::new();
        // Policy: newest first.
        transfers.connected(&peer, &state, now, &mut work, &mut |facts| {
            Some(facts.iter().rev().map(|f| f.id).collect())
        });
        let first = started(&work);
        assert_eq!(first.len(), MAX_RUNNING_PER_PEER);
        assert_eq!(first[..3], [ids[299], ids[298], ids[297]]);
        apply(&mut state, &work);
        assert!(!transfers.slot_freed());

        // One is refused by the receiver: its slot goes to the next in policy order.
        let mut work = Vec::new();
        refused(&mut transfers, &peer, ids[299], &state, now, &mut work);
        apply(&mut state, &work);
        assert!(transfers.slot_freed());
        let mut work = Vec::new();
        transfers.fill(&state, now, &mut work);
        assert_eq!(started(&work), vec![ids[299 - MAX_RUNNING_PER_PEER]]);
        assert_eq!(transfers.running_to(&peer), MAX_RUNNING_PER_PEER);
    }

    /// Three peers with as many queued as their own caps allow: all of them together run at
    /// most [`MAX_RUNNING_TOTAL`] sends (one open source file each).
    #[test]
    fn sends_to_all_peers_together_stay_within_the_total_count_cap() {
        let peers: Vec<DeviceId> = (1..=3u8).map(|n| DeviceId::from_sha256(&[n; 32])).collect();
        let mut state = State::default();
        for (p, peer) in peers.iter().enumerate() {
            for n in 0..MAX_RUNNING_PER_PEER as u64 {
                queue_send(&mut state, peer, p as u64 * 1_000 + n, 4096);
            }
        }
        let mut transfers = Transfers::default();
        let now = Instant::now();
        let mut work = Vec::new();
        for peer in &peers {
            transfers.connected(peer, &state, now, &mut work, &mut |facts| {
                Some(facts.iter().map(|f| f.id).collect())
            });
        }
        let first = started(&work);
        assert_eq!(first.len(), MAX_RUNNING_TOTAL);
        let running = |t: &Transfers| peers.iter().map(|p| t.running_to(p)).sum::<usize>();
        assert_eq!(running(&transfers), MAX_RUNNING_TOTAL);
        apply(&mut state, &work);
        // One ends: one more starts, and no more than that.
        let mut work = Vec::new();
        refused(&mut transfers, &peers[0], first[0], &state, now, &mut work);
        apply(&mut state, &work);
        let mut work = Vec::new();
        transfers.fill(&state, now, &mut work);
        assert_eq!(started(&work).len(), 1);
        assert_eq!(running(&transfers), MAX_RUNNING_TOTAL);
    }

    /// A queue far longer than the schedule window: policy is asked about the oldest
    /// [`SCHEDULE_WINDOW`] only, orders those, and the rest keep their queue order behind them.
    #[test]
    fn policy_orders_the_oldest_window_of_a_long_queue_and_the_rest_keep_queue_order() {
        let peer = DeviceId::from_sha256(&[1; 32]);
        let mut state = State::default();
        let total = SCHEDULE_WINDOW as u64 + 500;
        let ids: Vec<TransferId> = (0..total)
            .map(|n| queue_send(&mut state, &peer, n, 4096))
            .collect();
        let mut transfers = Transfers::default();
        let now = Instant::now();
        let mut work = Vec::new();
        let mut asked = 0;
        // Policy: newest first, of what it is shown.
        transfers.connected(&peer, &state, now, &mut work, &mut |facts| {
            asked = facts.len();
            Some(facts.iter().rev().map(|f| f.id).collect())
        });
        assert_eq!(asked, SCHEDULE_WINDOW);
        let first = started(&work);
        assert_eq!(first[0], ids[SCHEDULE_WINDOW - 1], "policy's first choice");
        // Finish everything policy ordered: the sends beyond the window come next, oldest first.
        let mut order = first.clone();
        apply(&mut state, &work);
        while order.len() < SCHEDULE_WINDOW + 3 {
            let running: Vec<TransferId> = order
                [order.len() - MAX_RUNNING_PER_PEER.min(order.len())..]
                .iter()
                .copied()
                .filter(|id| !state.transfers[id].status.is_finished())
                .collect();
            let mut work = Vec::new();
            for id in running {
                refused(&mut transfers, &peer, id, &state, now, &mut work);
            }
            apply(&mut state, &work);
            let mut work = Vec::new();
            transfers.fill(&state, now, &mut work);
            let next = started(&work);
            assert!(!next.is_empty(), "the queue moves on");
            order.extend(next);
            apply(&mut state, &work);
        }
        assert_eq!(
            order[SCHEDULE_WINDOW - 1],
            ids[0],
            "the window, newest first"
        );
        assert_eq!(
            order[SCHEDULE_WINDOW..SCHEDULE_WINDOW + 3],
            [
                ids[SCHEDULE_WINDOW],
                ids[SCHEDULE_WINDOW + 1],
                ids[SCHEDULE_WINDOW + 2]
            ],
            "then the rest in queue order"
        );
    }

    /// Bytes in flight are capped per peer and across peers; one send always runs.
    #[test]
    fn large_sends_are_capped_by_bytes_in_flight_per_peer_and_in_total() {
        let mut state = State::default();
        let peers: Vec<DeviceId> = (0..16u8)
            .map(|n| DeviceId::from_sha256(&[n + 1; 32]))
            .collect();
        let mut n = 0;
        for peer in &peers {
            for _ in 0..4 {
                queue_send(&mut state, peer, n, 1 << 30);
                n += 1;
            }
        }
        let mut transfers = Transfers::default();
        let now = Instant::now();
        let mut total = 0;
        for peer in &peers {
            let mut work = Vec::new();
            transfers.connected(peer, &state, now, &mut work, &mut |_| Some(Vec::new()));
            total += started(&work).len();
            apply(&mut state, &work);
        }
        let per_peer = (MAX_FLIGHT_PER_PEER / WINDOW_BYTES) as usize;
        assert_eq!(transfers.running_to(&peers[0]), per_peer);
        assert_eq!(total, (MAX_FLIGHT_TOTAL / WINDOW_BYTES) as usize);
        assert_eq!(
            transfers.running_to(&peers[15]),
            0,
            "waits for room across peers"
        );

        // A file larger than the per-peer cap still goes alone.
        let mut state = State::default();
        let peer = DeviceId::from_sha256(&[99; 32]);
        let big = queue_send(&mut state, &peer, 1, 1 << 40);
        let mut transfers = Transfers::default();
        let mut work = Vec::new();
        transfers.connected(&peer, &state, now, &mut work, &mut |_| Some(Vec::new()));
        assert_eq!(started(&work), vec![big]);
    }

    fn accept_all(_: &DeviceId, _: &StartInfo) -> Option<crate::core::policy::AcceptAnswer> {
        Some(crate::core::policy::AcceptAnswer::Accept { dir: None })
    }

    fn delivered(work: &[Work]) -> Vec<TransferId> {
        work.iter()
            .filter_map(|w| match w {
                Work::Record(Event::OutcomesDelivered { ids }) => Some(ids.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// A receiver's outcome (here a refusal of a hostile name) is delivered once the channel
    /// it went out on stayed open for OUTCOME_SETTLE; a disconnect before that keeps it live,
    /// and the next connection gets the same time again.
    #[test]
    fn an_announced_outcome_settles_only_on_a_channel_that_stays_open() {
        let peer = DeviceId::from_sha256(&[1; 32]);
        let id = TransferId([9; 16]);
        let mut state = State::default();
        let mut transfers = Transfers::default();
        let now = Instant::now();
        let mut work = Vec::new();
        transfers.connected(&peer, &state, now, &mut work, &mut |_| Some(Vec::new()));
        let start = Message::Start {
            id,
            name: "../escape".into(),
            size: 10,
            chunk_size: 1024,
            chunks: 1,
            mime: "text/plain".into(),
            mode: None,
            mtime: None,
            start_chunk: 0,
        };
        transfers.on_message(
            &peer,
            start.clone(),
            &state,
            now,
            &mut work,
            &mut accept_all,
        );
        apply(&mut state, &work);
        assert_eq!(state.transfers[&id].status, TransferStatus::Rejected);
        assert!(state.is_undelivered(&id));
        assert_eq!(transfers.poll_timeout(), Some(now + OUTCOME_SETTLE));

        // The channel closes before it settles: the outcome stays live.
        let mut work = Vec::new();
        transfers.disconnected(&peer, &mut work);
        transfers.handle_timeout(now + OUTCOME_SETTLE * 2, &state, &mut work);
        assert!(delivered(&work).is_empty());
        assert_eq!(transfers.poll_timeout(), None);

        // Reconnected, the sender repeats its `start` and is answered again; OUTCOME_SETTLE
        // later on that channel the outcome is delivered and leaves live state.
        let later = now + OUTCOME_SETTLE * 3;
        let mut work = Vec::new();
        transfers.connected(&peer, &state, later, &mut work, &mut |_| Some(Vec::new()));
        transfers.on_message(&peer, start, &state, later, &mut work, &mut accept_all);
        assert!(work.iter().any(|w| matches!(
            w,
            Work::Channel {
                message: Message::Reject { .. },
                ..
            }
        )));
        transfers.handle_timeout(later + OUTCOME_SETTLE / 2, &state, &mut work);
        assert!(delivered(&work).is_empty(), "not before the settle time");
        transfers.handle_timeout(later + OUTCOME_SETTLE, &state, &mut work);
        assert_eq!(delivered(&work), [id]);
        apply(&mut state, &work);
        assert!(!state.is_undelivered(&id));
        assert_eq!(transfers.poll_timeout(), None);
    }

    /// A receiver whose disk has no room for a new file at `start` journals it as paused with
    /// the reason (once, though the sender asks again every `PAUSE_RETRY`), so its operator
    /// sees the pause as the sender's does; once there is room the same transfer goes on.
    #[test]
    fn a_receiver_out_of_space_at_start_shows_the_transfer_paused() {
        let peer = DeviceId::from_sha256(&[1; 32]);
        let id = TransferId([5; 16]);
        let mut state = State::default();
        let mut transfers = Transfers::default();
        let now = Instant::now();
        let mut work = Vec::new();
        transfers.connected(&peer, &state, now, &mut work, &mut |_| Some(Vec::new()));
        let start = Message::Start {
            id,
            name: "big.bin".into(),
            size: 100 << 20,
            chunk_size: 1 << 18,
            chunks: 400,
            mime: "application/octet-stream".into(),
            mode: None,
            mtime: None,
            start_chunk: 0,
        };
        let reason = "no space: 104857600 bytes needed, 52428800 free on the receiver";
        let mut attempt = |state: &State| {
            let mut work = Vec::new();
            transfers.on_message(&peer, start.clone(), state, now, &mut work, &mut accept_all);
            assert!(work.iter().any(|w| matches!(
                w,
                Work::Store {
                    op: StoreOp::Prepare { .. },
                    ..
                }
            )));
            let failed = StoreResult::PrepareFailed {
                reason: reason.into(),
            };
            transfers.on_store(id, failed, state, now, &mut work);
            work
        };
        let work = attempt(&state);
        let recorded: Vec<&str> = work
            .iter()
            .filter_map(|w| match w {
                Work::Record(event) => Some(event.kind()),
                _ => None,
            })
            .collect();
        assert_eq!(recorded, ["TransferQueued", "TransferPaused"]);
        assert!(work.iter().any(|w| matches!(
            w,
            Work::Channel {
                message: Message::Reject {
                    code: Some(RejectCode::NoSpace),
                    ..
                },
                ..
            }
        )));
        apply(&mut state, &work);
        let t = &state.transfers[&id];
        assert_eq!(
            (t.direction, t.status),
            (Direction::Receive, TransferStatus::Paused)
        );
        assert_eq!(t.reason.as_deref(), Some(reason));

        // The sender's retry finds no room either: nothing more is journaled.
        let again = attempt(&state);
        assert!(
            !again.iter().any(|w| matches!(w, Work::Record(_))),
            "{again:?}"
        );

        // Room again: the same transfer is accepted.
        let mut work = Vec::new();
        transfers.on_message(&peer, start, &state, now, &mut work, &mut accept_all);
        transfers.on_store(
            id,
            StoreResult::Prepared { part_len: 0 },
            &state,
            now,
            &mut work,
        );
        assert!(
            work.iter().any(|w| matches!(
                w,
                Work::Channel {
                    message: Message::Accept { .. },
                    ..
                }
            )),
            "{work:?}"
        );
    }

    /// A send cancelled here while the receiver was away: on reconnecting the `cancel` is
    /// re-sent; the receiver, which has no machine for it, records the cancel, deletes the
    /// `.part` and answers; that answer delivers the sender's outcome.
    #[test]
    fn a_cancel_made_while_the_peer_was_away_reaches_it_and_is_answered() {
        let sender_peer = DeviceId::from_sha256(&[1; 32]);
        let receiver_peer = DeviceId::from_sha256(&[2; 32]);
        let now = Instant::now();
        // The sender's side: started once, then cancelled while disconnected.
        let mut sender_state = State::default();
        let id = queue_send(&mut sender_state, &receiver_peer, 7, 4096);
        for event in [
            Event::TransferStarted {
                id,
                chunk_size: 1024,
                chunks: 4,
                start_chunk: 0,
            },
            Event::TransferCancelled {
                id,
                by: crate::core::Side::Local,
                reason: "operator".into(),
            },
        ] {
            sender_state.apply(&Stamped { time_ms: 1, event });
        }
        assert!(sender_state.is_undelivered(&id));
        let mut sender = Transfers::default();
        let mut work = Vec::new();
        sender.connected(&receiver_peer, &sender_state, now, &mut work, &mut |_| {
            Some(Vec::new())
        });
        let cancel = work
            .iter()
            .find_map(|w| match w {
                Work::Channel {
                    message: m @ Message::Cancel { .. },
                    ..
                } => Some(m.clone()),
                _ => None,
            })
            .expect("the cancel is re-sent");
        assert_eq!(starts(&work), 0);

        // The receiver's side: it had accepted and holds a `.part`, no machine running.
        let mut receiver_state = State::default();
        receiver_state.apply(&Stamped {
            time_ms: 1,
            event: incoming(
                &sender_peer,
                &StartInfo {
                    id,
                    name: "f7".into(),
                    size: 4096,
                    chunk_size: 1024,
                    chunks: 4,
                    mime: "application/octet-stream".into(),
                    mode: None,
                    mtime: None,
                    start_chunk: 0,
                },
                Some("inbox".into()),
            ),
        });
        let mut receiver = Transfers::default();
        let mut work = Vec::new();
        receiver.connected(&sender_peer, &receiver_state, now, &mut work, &mut |_| {
            Some(Vec::new())
        });
        receiver.on_message(
            &sender_peer,
            cancel,
            &receiver_state,
            now,
            &mut work,
            &mut accept_all,
        );
        assert!(work.contains(&Work::Store {
            id,
            op: StoreOp::Discard {
                name: "inbox/f7".into()
            }
        }));
        apply(&mut receiver_state, &work);
        assert_eq!(
            receiver_state.transfers[&id].status,
            TransferStatus::Cancelled
        );
        assert!(
            !receiver_state.is_undelivered(&id),
            "the sender gave this outcome"
        );
        let answer = work
            .iter()
            .find_map(|w| match w {
                Work::Channel {
                    message: m @ Message::Done { .. },
                    ..
                } => Some(m.clone()),
                _ => None,
            })
            .expect("the cancel is answered");

        // The answer reaches the sender: its outcome is delivered.
        let mut work = Vec::new();
        sender.on_message(
            &receiver_peer,
            answer,
            &sender_state,
            now,
            &mut work,
            &mut accept_all,
        );
        assert_eq!(delivered(&work), [id]);
        apply(&mut sender_state, &work);
        assert!(!sender_state.is_undelivered(&id));
    }
}
