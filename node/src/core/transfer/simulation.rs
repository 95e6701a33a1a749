//! A Sender and a Receiver back to back: every message goes through `encode`/`decode`, a fake
//! shell reads, hashes and writes an in-memory file, both sides' events are folded into a
//! `State` as the journal would, and a seeded scheduler interleaves deliveries and IO
//! completions. Time is virtual.

// Tests pick an arbitrary epoch for virtual time; the machines never read the clock.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::*;
use crate::core::{DeviceId, Event, Stamped, State, TransferStatus};

const ID: TransferId = TransferId([0x42; 16]);
const MIB: usize = 1024 * 1024;
const STEP_LIMIT: usize = 200_000;

/// xorshift64*: deterministic and good enough to scramble schedules and file contents.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[derive(Clone, Copy)]
struct Scenario {
    seed: u64,
    size: usize,
    window: u32,
    /// Corrupt this chunk in transit, this many times (its `sha256` stays the original's).
    corrupt: Option<(u64, u32)>,
    /// Cut the connection once this many chunk messages have reached the receiver.
    disconnect_after: Option<usize>,
}

/// A `Write` the receiver's shell has not answered yet.
struct PendingWrite {
    index: u64,
    offset: u64,
    data: Vec<u8>,
    sha256: [u8; 32],
    sync: bool,
}

struct Sim {
    rng: Rng,
    now: Instant,
    clock_ms: i64,
    file: Vec<u8>,
    window: u32,
    sender: Sender,
    receiver: Option<Receiver>,
    send_state: State,
    recv_state: State,
    /// The first `start` the receiving node saw (a resumed one must match it).
    first_start: Option<StartInfo>,
    part: Vec<u8>,
    part_deleted: bool,
    connected: bool,
    to_receiver: VecDeque<Vec<u8>>,
    to_sender: VecDeque<Vec<u8>>,
    /// The sender's shell: reads asked for, answered in any order (even after a disconnect).
    reads: Vec<u64>,
    /// The receiver's shell: writes asked for, answered in any order.
    writes: Vec<PendingWrite>,
    sync_requested: bool,
    finalize: Option<[u8; 32]>,
    final_file: Option<Vec<u8>>,
    /// How often each chunk index went out on a live channel.
    sends: BTreeMap<u64, u32>,
    corrupt: Option<(u64, u32)>,
    corrupted: u32,
    delivered_chunks: usize,
    disconnect_after: Option<usize>,
    reconnect_in: Option<usize>,
    /// (sender's cached start, receiver's durable count) at each resume.
    resumes: Vec<(u64, u64)>,
    max_writes: usize,
}

impl Sim {
    fn new(scenario: Scenario) -> Self {
        let mut rng = Rng::new(scenario.seed);
        let file = rng.bytes(scenario.size);
        let chunk_size = chunk_size_for(Some(17 * 1024));
        assert_eq!(chunk_size, 16 * 1024);
        let info = SendInfo {
            id: ID,
            name: "sim/random.bin".into(),
            size: file.len() as u64,
            mime: "application/octet-stream".into(),
            mode: Some(0o644),
            mtime: Some(1_700_000_000),
            sha256: Some(sha(&file)),
        };
        let mut sim = Self {
            rng,
            now: Instant::now(),
            clock_ms: 1_000,
            part: vec![0; file.len()],
            file,
            window: scenario.window,
            sender: Sender::new(info, chunk_size, 0),
            receiver: None,
            send_state: State::default(),
            recv_state: State::default(),
            first_start: None,
            part_deleted: false,
            connected: false,
            to_receiver: VecDeque::new(),
            to_sender: VecDeque::new(),
            reads: Vec::new(),
            writes: Vec::new(),
            sync_requested: false,
            finalize: None,
            final_file: None,
            sends: BTreeMap::new(),
            corrupt: scenario.corrupt,
            corrupted: 0,
            delivered_chunks: 0,
            disconnect_after: scenario.disconnect_after,
            reconnect_in: None,
            resumes: Vec::new(),
            max_writes: 0,
        };
        let peer = DeviceId::from_sha256(&[1; 32]);
        for (state, direction) in [
            (&mut sim.send_state, "send"),
            (&mut sim.recv_state, "receive"),
        ] {
            // Built from its JSON form so that fields added to the event later (with serde
            // defaults) do not break this harness.
            let queued: Event = serde_json::from_value(serde_json::json!({
                "TransferQueued": {
                    "id": ID.to_string(),
                    "peer": peer.as_str(),
                    "direction": direction,
                    "name": "sim/random.bin",
                    "size": sim.file.len(),
                }
            }))
            .expect("a TransferQueued event");
            state.apply(&Stamped {
                time_ms: 0,
                event: queued,
            });
            assert!(state.transfers.contains_key(&ID));
        }
        sim.connected = true;
        sim.sender.handle(SendInput::Connected, sim.now);
        sim.drive_sender();
        sim
    }

    fn stamp(&mut self, event: Event) -> Stamped {
        self.clock_ms += 1;
        Stamped {
            time_ms: self.clock_ms,
            event,
        }
    }

    fn drive_sender(&mut self) {
        while let Some(output) = self.sender.poll_output() {
            match output {
                SendOutput::Send(message) => {
                    assert!(
                        self.connected,
                        "the sender sent {message:?} with no channel"
                    );
                    if let Message::Chunk { index, .. } = &message {
                        *self.sends.entry(*index).or_default() += 1;
                    }
                    self.to_receiver.push_back(encode(&message));
                }
                SendOutput::Read { index, offset, len } => {
                    assert_eq!(offset, index * u64::from(self.sender.chunk_size()));
                    assert!(offset + len <= self.file.len() as u64);
                    self.reads.push(index);
                }
                SendOutput::Record(event) => {
                    let stamped = self.stamp(event);
                    self.send_state.apply(&stamped);
                }
            }
        }
        assert!(self.sender.reads_in_flight() <= self.window as usize);
    }

    fn drive_receiver(&mut self) {
        let Some(receiver) = &mut self.receiver else {
            return;
        };
        let mut outputs = Vec::new();
        while let Some(output) = receiver.poll_output() {
            outputs.push(output);
        }
        for output in outputs {
            match output {
                RecvOutput::Send(message) => self.to_sender.push_back(encode(&message)),
                RecvOutput::Write {
                    index,
                    offset,
                    data,
                    sha256,
                    sync,
                } => self.writes.push(PendingWrite {
                    index,
                    offset,
                    data,
                    sha256,
                    sync,
                }),
                RecvOutput::Sync => {
                    assert!(!self.sync_requested, "two syncs in flight");
                    self.sync_requested = true;
                }
                RecvOutput::Finalize { sha256 } => self.finalize = Some(sha256),
                RecvOutput::DeletePart => self.part_deleted = true,
                RecvOutput::Record(event) => {
                    let stamped = self.stamp(event);
                    self.recv_state.apply(&stamped);
                }
            }
        }
        self.max_writes = self.max_writes.max(self.writes.len());
        assert!(self.writes.len() <= self.window as usize, "receiver memory");
    }

    /// The receiving node: routes a message to the transfer's machine, creating it on `start`.
    fn deliver_to_receiver(&mut self) {
        let bytes = self.to_receiver.pop_front().expect("a message");
        let mut message = decode(&bytes).expect("valid").expect("known");
        if let Message::Chunk { index, data, .. } = &mut message {
            self.delivered_chunks += 1;
            if let Some((bad, times)) = self.corrupt
                && *index == bad
                && self.corrupted < times
            {
                self.corrupted += 1;
                data[7] ^= 0x40;
            }
        }
        match StartInfo::from_message(message) {
            Ok(start) => {
                let start = check_start(start).expect("a consistent start");
                // What the journal says is durable (the fold of the `ChunksDurable` recorded).
                let durable_next = self.recv_state.transfers[&ID].next;
                match &self.first_start {
                    Some(first) => {
                        check_resume(first, &start).expect("the same file");
                        self.resumes.push((start.start_chunk, durable_next));
                    }
                    None => self.first_start = Some(start.clone()),
                }
                self.receiver = Some(Receiver::new(start, durable_next, self.window));
            }
            Err(message) => {
                if let (Some(receiver), Some(input)) =
                    (&mut self.receiver, RecvInput::from_message(message))
                {
                    receiver.handle(input, self.now);
                }
            }
        }
        self.drive_receiver();
        if self
            .disconnect_after
            .is_some_and(|after| self.delivered_chunks >= after)
        {
            self.disconnect_after = None;
            self.disconnect();
        }
    }

    fn deliver_to_sender(&mut self) {
        let bytes = self.to_sender.pop_front().expect("a message");
        let message = decode(&bytes).expect("valid").expect("known");
        if let Some(input) = SendInput::from_message(message) {
            self.sender.handle(input, self.now);
        }
        self.drive_sender();
    }

    /// The channel drops: messages in flight are lost, the receiving node drops its machine
    /// (and the IO it had asked for), the sender keeps its state.
    fn disconnect(&mut self) {
        self.connected = false;
        self.to_receiver.clear();
        self.to_sender.clear();
        self.receiver = None;
        self.writes.clear();
        self.sync_requested = false;
        self.finalize = None;
        self.sender.handle(SendInput::Disconnected, self.now);
        self.drive_sender();
        self.reconnect_in = Some(5);
    }

    fn reconnect(&mut self) {
        self.connected = true;
        self.sender.handle(SendInput::Connected, self.now);
        self.drive_sender();
    }

    fn complete_read(&mut self) {
        let index = self.reads.swap_remove(self.rng.below(self.reads.len()));
        let chunk_size = self.sender.chunk_size() as usize;
        let start = index as usize * chunk_size;
        let data = self.file[start..(start + chunk_size).min(self.file.len())].to_vec();
        let sha256 = sha(&data);
        self.sender.handle(
            SendInput::ChunkRead {
                index,
                data,
                sha256,
            },
            self.now,
        );
        self.drive_sender();
    }

    fn complete_write(&mut self) {
        let PendingWrite {
            index,
            offset,
            data,
            sha256,
            sync,
        } = self.writes.swap_remove(self.rng.below(self.writes.len()));
        let ok = sha(&data) == sha256;
        if ok {
            let offset = offset as usize;
            self.part[offset..offset + data.len()].copy_from_slice(&data);
        }
        let input = if ok && sync {
            RecvInput::VerifiedDurable { index }
        } else {
            RecvInput::Verified { index, ok }
        };
        if let Some(receiver) = &mut self.receiver {
            receiver.handle(input, self.now);
        }
        self.drive_receiver();
    }

    fn complete_sync(&mut self) {
        self.sync_requested = false;
        if let Some(receiver) = &mut self.receiver {
            receiver.handle(RecvInput::Synced, self.now);
        }
        self.drive_receiver();
    }

    fn complete_finalize(&mut self) {
        let expected = self.finalize.take().expect("finalize");
        let input = if sha(&self.part) == expected {
            self.final_file = Some(self.part.clone());
            RecvInput::Finalized {
                path: "/recv/sim/random.bin".into(),
            }
        } else {
            RecvInput::FinalizeFailed {
                reason: "the whole-file SHA-256 differs".into(),
            }
        };
        if let Some(receiver) = &mut self.receiver {
            receiver.handle(input, self.now);
        }
        self.drive_receiver();
    }

    fn finished(&self) -> bool {
        self.sender.is_finished() && self.receiver.as_ref().is_some_and(|r| r.is_finished())
    }

    fn run(&mut self) {
        for _ in 0..STEP_LIMIT {
            if self.finished() {
                return;
            }
            self.now += Duration::from_millis(1);
            if let Some(wait) = &mut self.reconnect_in {
                *wait -= 1;
                if *wait == 0 {
                    self.reconnect_in = None;
                    self.reconnect();
                }
                continue;
            }
            let mut actions: Vec<fn(&mut Sim)> = Vec::new();
            if !self.to_receiver.is_empty() {
                actions.push(Sim::deliver_to_receiver);
            }
            if !self.to_sender.is_empty() {
                actions.push(Sim::deliver_to_sender);
            }
            if !self.reads.is_empty() {
                actions.push(Sim::complete_read);
            }
            if !self.writes.is_empty() {
                actions.push(Sim::complete_write);
            }
            if self.sync_requested {
                actions.push(Sim::complete_sync);
            }
            if self.finalize.is_some() {
                actions.push(Sim::complete_finalize);
            }
            if actions.is_empty() {
                // Idle: jump to the next timer, if any.
                let timeout = self.receiver.as_ref().and_then(|r| r.poll_timeout());
                let Some(at) = timeout else {
                    panic!(
                        "stalled: nothing to do and no timer\n{:?}\n{:?}",
                        self.sender, self.receiver
                    );
                };
                self.now = self.now.max(at);
                if let Some(receiver) = &mut self.receiver {
                    receiver.handle_timeout(self.now);
                }
                self.drive_receiver();
                continue;
            }
            let action = actions[self.rng.below(actions.len())];
            action(self);
        }
        panic!("no end after {STEP_LIMIT} steps");
    }

    /// Chunks that went out more than once.
    fn sent_twice(&self) -> u32 {
        self.sends.values().map(|n| n - 1).sum()
    }
}

fn assert_completed(sim: &Sim) {
    assert_eq!(
        sim.final_file.as_deref(),
        Some(sim.file.as_slice()),
        "byte identity"
    );
    assert!(!sim.part_deleted);
    let sent = &sim.send_state.transfers[&ID];
    let received = &sim.recv_state.transfers[&ID];
    assert_eq!(sent.status, TransferStatus::Completed, "{:?}", sent.reason);
    assert_eq!(
        received.status,
        TransferStatus::Completed,
        "{:?}",
        received.reason
    );
    assert_eq!(
        received.path.as_deref(),
        Some("/recv/sim/random.bin".as_ref())
    );
    let chunks = sim.sender.chunks();
    assert_eq!((sent.next, received.next), (chunks, chunks));
    assert!(sent.durable_beyond.is_empty() && received.durable_beyond.is_empty());
    assert_eq!(sim.sends.len() as u64, chunks, "every chunk went out");
}

#[test]
fn a_random_mebibyte_arrives_intact() {
    for seed in 1..=8 {
        let mut sim = Sim::new(Scenario {
            seed,
            size: MIB,
            window: 8,
            corrupt: None,
            disconnect_after: None,
        });
        sim.run();
        assert_completed(&sim);
        assert_eq!(sim.sender.chunks(), 64);
        assert_eq!(sim.sent_twice(), 0, "seed {seed}");
        assert!(sim.max_writes <= 8);
    }
}

#[test]
fn a_corrupted_chunk_is_resent() {
    for seed in 1..=8 {
        let mut sim = Sim::new(Scenario {
            seed,
            size: MIB,
            window: 8,
            corrupt: Some((10, 1)),
            disconnect_after: None,
        });
        sim.run();
        assert_completed(&sim);
        assert_eq!(sim.corrupted, 1);
        assert_eq!(sim.sends[&10], 2, "seed {seed}: chunk 10 sent again");
        assert_eq!(sim.sent_twice(), 1);
    }
}

#[test]
fn a_chunk_corrupted_three_times_cancels_on_both_sides() {
    let mut sim = Sim::new(Scenario {
        seed: 3,
        size: MIB,
        window: 8,
        corrupt: Some((20, 3)),
        disconnect_after: None,
    });
    sim.run();
    assert_eq!(sim.sends[&20], 3);
    assert!(sim.part_deleted);
    assert!(sim.final_file.is_none());
    let received = &sim.recv_state.transfers[&ID];
    assert_eq!(received.status, TransferStatus::Failed);
    assert_eq!(
        received.reason.as_deref(),
        Some("chunk 20 failed its hash 3 times")
    );
    let sent = &sim.send_state.transfers[&ID];
    assert_eq!(sent.status, TransferStatus::Cancelled);
    assert!(sim.sender.is_finished());
    assert!(
        sent.reason
            .as_deref()
            .is_some_and(|r| r.contains("cancelled by the peer") && r.contains("chunk 20")),
        "{:?}",
        sent.reason
    );
}

#[test]
fn a_disconnect_in_the_middle_resumes_and_sends_at_most_a_window_twice() {
    for seed in 1..=12 {
        let mut sim = Sim::new(Scenario {
            seed,
            // Not a multiple of the chunk size: the last chunk is short.
            size: MIB + 123,
            window: 8,
            corrupt: Some((5, 1)),
            disconnect_after: Some(30 + seed as usize),
        });
        sim.run();
        assert_completed(&sim);
        assert_eq!(sim.sender.chunks(), 65);
        assert_eq!(sim.resumes.len(), 1, "seed {seed}: one resume");
        let (cached, durable) = sim.resumes[0];
        assert!(
            cached <= durable,
            "seed {seed}: the receiver holds at least what it acknowledged ({cached} > {durable})"
        );
        assert!(
            durable > 0,
            "seed {seed}: something was durable before the cut"
        );
        let twice = sim.sent_twice() - sim.corrupted;
        assert!(
            twice <= 8,
            "seed {seed}: {twice} chunks sent twice across the reconnect"
        );
    }
}

#[test]
fn disconnects_at_every_stage_still_complete() {
    // Before the first chunk arrives, right after the last one, and in between.
    for (seed, after) in [(21, 1), (22, 7), (23, 63), (24, 64)] {
        let mut sim = Sim::new(Scenario {
            seed,
            size: MIB,
            window: 8,
            corrupt: None,
            disconnect_after: Some(after),
        });
        sim.run();
        assert_completed(&sim);
        assert!(sim.sent_twice() <= 8, "after {after}: {}", sim.sent_twice());
    }
}

#[test]
fn an_empty_file_completes() {
    let mut sim = Sim::new(Scenario {
        seed: 9,
        size: 0,
        window: 8,
        corrupt: None,
        disconnect_after: None,
    });
    sim.run();
    assert_completed(&sim);
    assert_eq!(sim.final_file.as_deref(), Some(&[][..]));
}

#[test]
fn larger_windows_and_odd_sizes_complete() {
    for (seed, size, window) in [
        (31, 16 * 1024, 1),
        (32, 16 * 1024 + 1, 2),
        (33, 300_001, 16),
    ] {
        let mut sim = Sim::new(Scenario {
            seed,
            size,
            window,
            corrupt: Some((0, 2)),
            disconnect_after: None,
        });
        sim.run();
        assert_completed(&sim);
        assert_eq!(sim.sends[&0], 3, "two corrupted copies, then a good one");
    }
}

#[test]
fn random_scenarios_complete() {
    // FSNODE_SIM_SEEDS=5000 for a longer hunt.
    let seeds: u64 = std::env::var("FSNODE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    for seed in 1000..1000 + seeds {
        let mut rng = Rng::new(seed);
        let size = rng.below(300_000);
        let chunks = size.div_ceil(16 * 1024);
        let window = 1 + rng.below(12) as u32;
        let corrupt = (chunks > 0 && rng.below(2) == 0)
            .then(|| (rng.below(chunks) as u64, 1 + rng.below(2) as u32));
        let disconnect_after = (rng.below(2) == 0).then(|| 1 + rng.below(chunks + 1));
        let scenario = Scenario {
            seed,
            size,
            window,
            corrupt,
            disconnect_after,
        };
        let mut sim = Sim::new(scenario);
        sim.run();
        assert_completed(&sim);
        let resent_for_corruption = sim.corrupted;
        assert!(
            sim.sent_twice() <= window + resent_for_corruption,
            "seed {seed}: {} sent twice, window {window}",
            sim.sent_twice()
        );
    }
}
