//! The whole-node deterministic simulation: several nodes — each the real `Core`,
//! the real signaling `Router` and the real link sessions (`core::link::sessions`, ICE + DTLS +
//! SCTP) — over a simulated network in virtual time. Nothing reads a clock or the OS's
//! randomness after the start: every delay, loss, reordering and key comes from the world's
//! seed, so the same seed gives the same journals.
//!
//! What each node's "shell" is here:
//! - the journal: records with a durable prefix; the drive loop syncs it after every batch
//!   of events and before their effects (as `shell/run.rs` does); a crash keeps only the
//!   durable prefix and the node is rebuilt by replaying it (`record::fold`);
//! - the store: files with written and synced contents, `.part` files and renames; a crash
//!   keeps only synced bytes;
//! - signaling: in-memory line pipes with the `hello` exchange of `shell/signaling.rs`, lines
//!   delayed while the network is cut (TCP retransmits), closed when either end crashes;
//! - UDP: `core::link::sim::SimNet` with seeded loss, delay, reordering, duplication, MTU and
//!   cuts, between per-session ports of each node's address.
//!
//! Policy questions get the core's built-in default answers (no plugins).

// One real `Instant::now()` is the virtual epoch; the machines never read the clock.
#![allow(clippy::disallowed_methods)]

#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use sha2::{Digest, Sha256};

use crate::core::link::quic::{Congestion, QuicSettings};
use crate::core::link::sessions::{SessionId, SessionOutput, Sessions};
use crate::core::link::sim::{Conditions, SimNet};
use crate::core::link::{self, LinkConfig, SctpTuning};
use crate::core::names;
use crate::core::node::{ConnId, Core, Effect, Input, Me, Now, Output, QueuedFile, Token};
use crate::core::policy::{Answer, PolicyAnswer, Question};
use crate::core::request::{Command, Outcome};
use crate::core::router::{Input as RouterInput, Output as RouterOutput, Router};
use crate::core::signal::{Hello, Message};
use crate::core::transfers::{StoreOp, StoreResult};
use crate::core::{Authority, DeviceId, DeviceType, Event, Stamped, State, TransferId};
use crate::record::{self, JournalEntry};

/// The QUIC congestion controller of simulated nodes. Cubic, not the node's default BBR:
/// quinn's BBR draws its gain cycle from the thread's RNG, which no seed reaches, and the
/// simulation must give the same journals for the same seed.
pub const SIM_CONGESTION: Congestion = Congestion::Cubic;
/// The signaling port every simulated node listens on.
pub const SIGNALING_PORT: u16 = 7000;
/// One way over a signaling connection.
pub const SIGNALING_DELAY: Duration = Duration::from_micros(300);
/// A store operation's latency (it completes in order per transfer).
pub const IO_LATENCY: Duration = Duration::from_micros(50);
/// An fsync's latency: its data is durable when it is issued, the result comes this much
/// later (a crash in between loses the journal's note of it, not the data).
pub const SYNC_LATENCY: Duration = Duration::from_millis(3);
/// The wall clock at the virtual epoch.
const WALL_EPOCH_MS: i64 = 1_790_000_000_000;
/// Files at most this large are hashed while a send is prepared (as the shell does for
/// small files); larger ones through `HashSource`.
const PREHASH_LIMIT: usize = 64 * 1024;
/// Numbered variants of a name tried before a finalize gives up.
const MAX_VARIANTS: u32 = 1000;

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The nodes' identities: fixed test keys (made once with `generate_self_signed`, for the
/// simulation only), so device ids, and with them politeness and every ordering by id, are
/// the same in every run.
const IDENTITIES: [&str; 4] = [
    include_str!("identities/a.pem"),
    include_str!("identities/b.pem"),
    include_str!("identities/c.pem"),
    include_str!("identities/d.pem"),
];

fn certificates() -> &'static [rtc_dtls::crypto::Certificate] {
    static CERTIFICATES: OnceLock<Vec<rtc_dtls::crypto::Certificate>> = OnceLock::new();
    CERTIFICATES.get_or_init(|| {
        let provider = rtc_crypto::default_provider().expect("a crypto provider");
        IDENTITIES
            .iter()
            .map(|pem| {
                rtc_dtls::crypto::Certificate::from_pem(pem, provider.crypto())
                    .expect("a test identity")
            })
            .collect()
    })
}

fn device_id(certificate: &rtc_dtls::crypto::Certificate) -> DeviceId {
    DeviceId::from_certificate_der(certificate.certificate[0].as_ref())
}

/// The node's journal: appended records, of which the first `durable` survive a crash.
#[derive(Default)]
pub struct SimJournal {
    pub records: Vec<Stamped>,
    pub durable: usize,
}

impl SimJournal {
    fn append(&mut self, stamped: Stamped) {
        self.records.push(stamped);
    }

    fn sync(&mut self) {
        self.durable = self.records.len();
    }

    fn crash(&mut self) -> usize {
        let lost = self.records.len() - self.durable;
        self.records.truncate(self.durable);
        lost
    }

    /// The replay `shell/run.rs` does at start: `record::fold` over the durable records.
    pub fn replay(&self) -> State {
        let records = self.records[..self.durable]
            .iter()
            .enumerate()
            .map(|(seq, stamped)| {
                Ok::<_, std::convert::Infallible>(fsnode_journal::Record {
                    seq: seq as u64,
                    kind: fsnode_journal::RecordKind::Event,
                    payload: JournalEntry::Event(stamped.clone()),
                })
            });
        match record::fold(records, None) {
            Ok((state, _)) => state,
            Err(never) => match never {},
        }
    }
}

/// A file with what was written and what an fsync made durable.
#[derive(Default, Clone)]
struct MemFile {
    written: Vec<u8>,
    synced: Vec<u8>,
}

/// The node's files: sources to send, `.part` files, and finished files (durable once
/// renamed, as `Finalize` syncs before the rename).
#[derive(Default)]
pub struct SimStore {
    pub sources: BTreeMap<PathBuf, Vec<u8>>,
    parts: BTreeMap<String, MemFile>,
    pub files: BTreeMap<String, Vec<u8>>,
    /// Each transfer's open `.part` and the name it is to get (handles are gone after a
    /// crash).
    open: BTreeMap<TransferId, (String, String)>,
    /// Every chunk write: (node generation, transfer, offset).
    pub writes: Vec<(u32, TransferId, u64)>,
    pub unsynced_bytes_lost: usize,
}

impl SimStore {
    /// Bytes written to `.part` files and not synced yet (what a crash drops).
    pub fn unsynced_bytes(&self) -> usize {
        self.parts
            .values()
            .map(|p| p.written.len().saturating_sub(p.synced.len()))
            .sum()
    }

    pub fn part_names(&self) -> Vec<String> {
        self.parts.keys().cloned().collect()
    }

    fn crash(&mut self) {
        for part in self.parts.values_mut() {
            self.unsynced_bytes_lost += part.written.len().saturating_sub(part.synced.len());
            part.written = part.synced.clone();
        }
        self.open.clear();
    }

    fn perform(&mut self, generation: u32, id: TransferId, op: StoreOp) -> Option<StoreResult> {
        Some(match op {
            StoreOp::Prepare { name, .. } => {
                // The receive directory is flat here: a sender's directories join the name.
                let components = match names::check_name(&name) {
                    Ok(components) => components,
                    Err(err) => {
                        return Some(StoreResult::PrepareFailed {
                            reason: err.to_string(),
                        });
                    }
                };
                let final_name = components.join("/");
                let part = names::part_name(&final_name, &id);
                let held = self.parts.entry(part.clone()).or_default().written.len() as u64;
                self.open.insert(id, (part, final_name));
                StoreResult::Prepared { part_len: held }
            }
            StoreOp::Write {
                index,
                offset,
                data,
                sha256: expected,
                sync,
            } => {
                let Some(part) = self.open.get(&id).and_then(|(p, _)| self.parts.get_mut(p)) else {
                    return Some(StoreResult::WriteFailed {
                        reason: "the .part file is not open".into(),
                    });
                };
                if sha256(&data) != expected {
                    return Some(StoreResult::Verified {
                        index,
                        ok: false,
                        synced: false,
                    });
                }
                let Ok(start) = usize::try_from(offset) else {
                    return Some(StoreResult::WriteFailed {
                        reason: "offset out of range".into(),
                    });
                };
                let end = start + data.len();
                if part.written.len() < end {
                    part.written.resize(end, 0);
                }
                part.written[start..end].copy_from_slice(&data);
                self.writes.push((generation, id, offset));
                if sync {
                    part.synced = part.written.clone();
                }
                StoreResult::Verified {
                    index,
                    ok: true,
                    synced: sync,
                }
            }
            StoreOp::Sync => match self.open.get(&id).and_then(|(p, _)| self.parts.get_mut(p)) {
                Some(part) => {
                    part.synced = part.written.clone();
                    StoreResult::Synced
                }
                None => StoreResult::WriteFailed {
                    reason: "the .part file is not open".into(),
                },
            },
            StoreOp::Finalize {
                sha256: expected,
                adopt_identical,
                ..
            } => {
                let Some((part_name, base)) = self.open.get(&id).cloned() else {
                    return Some(StoreResult::FinalizeFailed {
                        reason: "the .part file is not open".into(),
                    });
                };
                let data = self
                    .parts
                    .get(&part_name)
                    .map(|p| p.written.clone())
                    .unwrap_or_default();
                if sha256(&data) != expected {
                    return Some(StoreResult::FinalizeFailed {
                        reason: "the whole file's SHA-256 differs from the sender's".into(),
                    });
                }
                // The first free name of `base`, `base (1)`, … (or, when adopting, one that
                // already holds this very file).
                let Some(name) = (0..=MAX_VARIANTS)
                    .map(|n| match n {
                        0 => base.clone(),
                        n => names::numbered(&base, n),
                    })
                    .find(|name| match self.files.get(name) {
                        None => true,
                        Some(existing) => adopt_identical && sha256(existing) == expected,
                    })
                else {
                    return Some(StoreResult::FinalizeFailed {
                        reason: format!("no free name for {base}"),
                    });
                };
                self.parts.remove(&part_name);
                self.open.remove(&id);
                self.files.insert(name.clone(), data);
                StoreResult::Finalized {
                    path: PathBuf::from("/receive").join(name),
                }
            }
            StoreOp::DeletePart => {
                if let Some((part, _)) = self.open.remove(&id) {
                    self.parts.remove(&part);
                }
                return None;
            }
            // A cancel for a transfer whose machine is not running: its `.part` by name (a
            // missing one is no error, as in the shell's store).
            StoreOp::Discard { name } => {
                self.open.remove(&id);
                if let Ok(components) = names::check_name(&name) {
                    self.parts
                        .remove(&names::part_name(&components.join("/"), &id));
                }
                return None;
            }
            StoreOp::Read {
                path,
                index,
                offset,
                len,
            } => {
                let chunk = self.sources.get(&path).and_then(|file| {
                    let start = usize::try_from(offset).ok()?;
                    let end = start.checked_add(usize::try_from(len).ok()?)?;
                    file.get(start..end)
                });
                match chunk {
                    Some(data) => StoreResult::ChunkRead {
                        index,
                        data: data.to_vec(),
                        sha256: sha256(data),
                    },
                    None => StoreResult::ReadFailed {
                        reason: format!("cannot read {}", path.display()),
                    },
                }
            }
            StoreOp::Close => {
                self.open.remove(&id);
                return None;
            }
            // The simulated nodes speak no LocalSend.
            StoreOp::Append { .. } | StoreOp::FinalizeStream { .. } => {
                return Some(StoreResult::WriteFailed {
                    reason: "LocalSend is not simulated".into(),
                });
            }
        })
    }
}

/// One end of a signaling connection.
struct ConnEnd {
    remote_node: usize,
    remote_conn: ConnId,
    /// Where the peer is, as this end sees it (for a dialled one: the address dialled).
    from: SocketAddr,
    /// The operator's dial, answered once `hello` arrives.
    token: Option<Token>,
    /// The peer's `hello` arrived.
    peer: Option<DeviceId>,
}

/// Something the world does at a virtual time.
enum Job {
    Line {
        node: usize,
        conn: ConnId,
        line: Vec<u8>,
    },
    Dial {
        node: usize,
        addr: SocketAddr,
        peer: Option<DeviceId>,
        token: Option<Token>,
    },
    ConnDown {
        node: usize,
        conn: ConnId,
    },
    Input {
        node: usize,
        input: Input,
    },
}

struct Scheduled {
    at: Instant,
    seq: u64,
    /// Jobs for a node's earlier life (before a crash) are dropped.
    generation: u32,
    job: Job,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: the heap pops the earliest first, ties in scheduling order.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What a node's effects need of the world.
struct Env<'a> {
    now: Instant,
    net: &'a mut SimNet,
    jobs: &'a mut BinaryHeap<Scheduled>,
    seq: &'a mut u64,
    rng: &'a mut StdRng,
    /// When signaling lines sent now arrive (later while the network is cut).
    signaling_at: Instant,
    /// Extra one-way signaling delay from one node to another.
    slow_signaling: &'a [(usize, usize, Duration)],
}

impl Env<'_> {
    /// When a line from `from` to `to` written now arrives.
    fn line_at(&self, from: usize, to: usize) -> Instant {
        let extra = self
            .slow_signaling
            .iter()
            .filter(|(f, t, _)| (*f, *t) == (from, to))
            .map(|(_, _, d)| *d)
            .sum::<Duration>();
        self.signaling_at + extra
    }

    fn schedule(&mut self, at: Instant, generation: u32, job: Job) {
        *self.seq += 1;
        self.jobs.push(Scheduled {
            at,
            seq: *self.seq,
            generation,
            job,
        });
    }
}

pub struct SimNode {
    pub label: &'static str,
    index: usize,
    pub me: Me,
    certificate: rtc_dtls::crypto::Certificate,
    pub ip: IpAddr,
    /// `None` while crashed.
    core: Option<Core>,
    pub journal: SimJournal,
    pub store: SimStore,
    router: Router,
    pub sessions: BTreeMap<DeviceId, Sessions>,
    /// Each session socket's port: whose and which session.
    ports: BTreeMap<u16, (DeviceId, SessionId)>,
    next_port: u16,
    conns: BTreeMap<ConnId, ConnEnd>,
    next_conn: ConnId,
    next_token: Token,
    /// Bumped by every crash: what was scheduled for the old life is dropped.
    pub generation: u32,
    inbox: VecDeque<Input>,
    pub replies: Vec<(Token, Outcome)>,
    /// A kill -9 at this time: the batch of events being journaled is not synced, nothing
    /// after it runs.
    crash_at: Option<Instant>,
    /// A kill -9 in the middle of the next journal append: its records are not synced.
    crash_on_append: bool,
    /// How long a crashed node stays down.
    down_for: Duration,
    restart_at: Option<Instant>,
    pub crashes: Vec<Instant>,
    pub journal_records_lost: usize,
    epoch: Instant,
    /// How this node runs QUIC (spec 6); `enabled: false` is a node with QUIC switched off.
    pub quic: QuicSettings,
}

impl SimNode {
    fn now(&self, instant: Instant) -> Now {
        Now {
            instant,
            wall_ms: WALL_EPOCH_MS + instant.duration_since(self.epoch).as_millis() as i64,
        }
    }

    pub fn core(&self) -> Option<&Core> {
        self.core.as_ref()
    }

    pub fn state(&self) -> State {
        match &self.core {
            Some(core) => core.state().clone(),
            None => self.journal.replay(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.core.is_some()
    }

    fn signaling_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, SIGNALING_PORT)
    }

    /// What `shell/run.rs` does at start: replay, journal `NodeStarted` durably, make the core.
    fn start(&mut self, env: &mut Env<'_>) {
        let mut state = self.journal.replay();
        let started = Stamped {
            time_ms: self.now(env.now).wall_ms,
            event: Event::NodeStarted {
                device_id: self.me.id.clone(),
                name: self.me.name.clone(),
                device_type: self.me.device_type,
                version: "sim".into(),
            },
        };
        state.apply(&started);
        self.journal.append(started);
        self.journal.sync();
        self.core = Some(Core::new(self.me.clone(), state, env.now));
        self.run(env);
    }

    /// kill -9: unsynced journal records and file data are gone, so are sessions and
    /// signaling connections (the peers see their connections close).
    fn crash(&mut self, env: &mut Env<'_>) {
        self.journal_records_lost += self.journal.crash();
        self.store.crash();
        self.core = None;
        self.router = Router::new();
        self.sessions.clear();
        self.ports.clear();
        self.inbox.clear();
        let at = env.signaling_at;
        for (_, end) in std::mem::take(&mut self.conns) {
            env.schedule(
                at,
                u32::MAX,
                Job::ConnDown {
                    node: end.remote_node,
                    conn: end.remote_conn,
                },
            );
        }
        self.generation += 1;
        self.crashes.push(env.now);
        self.crash_at = None;
        self.crash_on_append = false;
        self.restart_at = Some(env.now + self.down_for);
    }

    fn handle(&mut self, input: Input, env: &mut Env<'_>) {
        self.inbox.push_back(input);
        self.run(env);
    }

    /// Feeds queued inputs to the core and carries out its outputs, until nothing is left.
    fn run(&mut self, env: &mut Env<'_>) {
        while self.core.is_some() {
            let now = self.now(env.now);
            let Some(core) = self.core.as_mut() else {
                return;
            };
            if let Some(input) = self.inbox.pop_front() {
                core.handle(input, now);
            }
            let mut effects = Vec::new();
            let mut journaled = Vec::new();
            while let Some(output) = core.poll_output() {
                match output {
                    Output::Event(stamped) => {
                        journaled.push(stamped.event.clone());
                        self.journal.append(stamped);
                    }
                    other => effects.push(other),
                }
            }
            if self.crash_at.is_some_and(|at| at <= env.now)
                || (self.crash_on_append && !journaled.is_empty())
            {
                self.crash(env);
                return;
            }
            // Event first: durable before any of its effects.
            self.journal.sync();
            let seen: Vec<_> = journaled
                .into_iter()
                .filter_map(|event| match event {
                    Event::PeerDiscovered { peer, .. } => {
                        let route = core.route(&peer);
                        Some(RouterInput::Seen { peer, route })
                    }
                    _ => None,
                })
                .collect();
            for input in seen {
                self.route(input, env);
            }
            for effect in effects {
                self.effect(effect, env);
            }
            if self.inbox.is_empty() {
                return;
            }
        }
    }

    fn effect(&mut self, output: Output, env: &mut Env<'_>) {
        let Some(core) = self.core.as_ref() else {
            return;
        };
        let generation = self.generation;
        match output {
            Output::Event(_) => {}
            Output::Outcome { token, outcome } => self.replies.push((token, outcome)),
            Output::Effect(effect) => match effect {
                Effect::TrustChanged | Effect::LocalSend(_) => {}
                // The simulated nodes run without plugins (the core then decides at once and
                // never asks); should it ask, the answer is what an empty plugin host says.
                Effect::AskPolicy(request) => {
                    let answer = match request.question {
                        Question::OnDiscovered { .. } | Question::OnOffer { .. } => {
                            Answer::Trust(None)
                        }
                        Question::OnTransfer { .. } => Answer::Accept(None),
                        Question::Schedule { .. } => Answer::Order(None),
                        Question::MapMode { .. } => Answer::Mode(None),
                    };
                    self.inbox.push_back(Input::PolicyAnswer(PolicyAnswer {
                        id: request.id,
                        answer,
                        disabled: Vec::new(),
                    }));
                }
                Effect::Dial { addr, token } => env.schedule(
                    env.now + SIGNALING_DELAY,
                    generation,
                    Job::Dial {
                        node: self.index(),
                        addr,
                        peer: None,
                        token,
                    },
                ),
                Effect::Signal { peer, message } => {
                    let route = core.route(&peer);
                    let line = message.encode();
                    self.route(RouterInput::Send { peer, line, route }, env);
                }
                Effect::PeerSeen { peer } => {
                    let route = core.route(&peer);
                    self.route(RouterInput::Seen { peer, route }, env);
                }
                Effect::CloseSignaling { conn } => self.route(RouterInput::Close { conn }, env),
                Effect::Rtc { peer, action } => self.rtc(peer, action, env),
                Effect::ChannelSend { peer, data } => {
                    if let Some(sessions) = self.sessions.get_mut(&peer)
                        && sessions.send(data)
                    {
                        sessions.advance(env.now);
                        self.flush_sessions(&peer, env);
                    }
                }
                Effect::Store { id, op } => {
                    let latency = if matches!(op, StoreOp::Sync | StoreOp::Write { sync: true, .. })
                    {
                        SYNC_LATENCY
                    } else {
                        IO_LATENCY
                    };
                    if let Some(result) = self.store.perform(generation, id, op) {
                        let input = Input::Store { id, result };
                        self.later(env, latency, input);
                    }
                }
                Effect::HashSource { path, ids } => {
                    let result = self
                        .store
                        .sources
                        .get(&path)
                        .map(|data| sha256(data))
                        .ok_or_else(|| format!("cannot read {}", path.display()));
                    self.later(env, IO_LATENCY, Input::SourceHashed { ids, result });
                }
                Effect::PrepareSend {
                    token,
                    paths,
                    peers,
                } => {
                    // In slices of two, as the shell's large sends come in slices.
                    match self.prepare_send(&paths, &peers, env.rng) {
                        Ok(files) if files.len() > 2 => {
                            let slices: Vec<Vec<QueuedFile>> =
                                files.chunks(2).map(<[QueuedFile]>::to_vec).collect();
                            let last = slices.len() - 1;
                            for (k, slice) in slices.into_iter().enumerate() {
                                let input = Input::SendPrepared {
                                    token,
                                    result: Ok(slice),
                                    more: k < last,
                                };
                                let after = IO_LATENCY + Duration::from_micros(k as u64);
                                self.later(env, after, input);
                            }
                        }
                        result => {
                            let input = Input::SendPrepared {
                                token,
                                result,
                                more: false,
                            };
                            self.later(env, IO_LATENCY, input);
                        }
                    }
                }
            },
        }
    }

    fn later(&self, env: &mut Env<'_>, after: Duration, input: Input) {
        let node = self.index();
        env.schedule(env.now + after, self.generation, Job::Input { node, input });
    }

    /// The node's index in the world.
    fn index(&self) -> usize {
        self.index
    }

    fn prepare_send(
        &self,
        paths: &[PathBuf],
        peers: &[DeviceId],
        rng: &mut StdRng,
    ) -> Result<Vec<QueuedFile>, String> {
        let mut queued = Vec::new();
        for path in paths {
            let data = self
                .store
                .sources
                .get(path)
                .ok_or_else(|| format!("{}: no such file", path.display()))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for peer in peers {
                queued.push(QueuedFile {
                    id: TransferId(rng.random()),
                    peer: peer.clone(),
                    path: path.clone(),
                    name: name.clone(),
                    size: data.len() as u64,
                    mime: "application/octet-stream".into(),
                    mode: 0o644,
                    mtime: None,
                    sha256: (data.len() <= PREHASH_LIMIT).then(|| sha256(data)),
                });
            }
        }
        Ok(queued)
    }

    /// Performs a negotiation action on `peer`'s sessions, each new session on a fresh port.
    fn rtc(&mut self, peer: DeviceId, action: crate::core::negotiation::Action, env: &mut Env<'_>) {
        let closing = action == crate::core::negotiation::Action::Close;
        if closing && !self.sessions.contains_key(&peer) {
            return;
        }
        let port = self.next_port;
        let local = SocketAddr::new(self.ip, port);
        let seed: [u8; 32] = env.rng.random();
        let config = LinkConfig {
            certificate: self.certificate.clone(),
            peer: peer.clone(),
            local_addrs: vec![local],
            path_max_datagram: env.net.conditions.max_datagram,
            advertise_max_datagram: None,
            max_message_size: link::MAX_MESSAGE_SIZE,
            sctp: SctpTuning::default(),
            quic: self.quic.clone(),
            seed,
        };
        let sessions = self.sessions.entry(peer.clone()).or_default();
        let id = sessions.next_id();
        let mut config = Some(config);
        let _ = sessions.act(action, env.now, &mut || {
            config
                .take()
                .ok_or_else(|| "one session per action".to_owned())
        });
        if sessions.ids().any(|s| s == id) {
            self.ports.insert(port, (peer.clone(), id));
            self.next_port += 1;
        }
        sessions.advance(env.now);
        self.flush_sessions(&peer, env);
        // A `Close` ends every session; the peer's `Sessions` stays (it remembers spec 6's
        // fallback), as the shell's peer task does.
        if closing {
            self.ports.retain(|_, (p, _)| *p != peer);
        }
    }

    /// Carries out what `peer`'s sessions produced: datagrams onto the network, reports into
    /// the core's inbox (run by the caller's loop).
    fn flush_sessions(&mut self, peer: &DeviceId, env: &mut Env<'_>) {
        let Some(sessions) = self.sessions.get_mut(peer) else {
            return;
        };
        while let Some(output) = sessions.poll_output() {
            match output {
                SessionOutput::Transmit { transmit, .. } => env.net.send(transmit, env.now),
                SessionOutput::Negotiation(event) => self.inbox.push_back(Input::Rtc {
                    peer: peer.clone(),
                    event,
                }),
                SessionOutput::Message(data) => self.inbox.push_back(Input::Channel {
                    peer: peer.clone(),
                    data,
                }),
            }
        }
        let alive: Vec<SessionId> = sessions.ids().collect();
        self.ports
            .retain(|_, (p, s)| p != peer || alive.contains(s));
    }

    fn route(&mut self, input: RouterInput, env: &mut Env<'_>) {
        self.router.handle_input(input, env.now);
        self.router_outputs(env);
    }

    fn router_outputs(&mut self, env: &mut Env<'_>) {
        let generation = self.generation;
        while let Some(output) = self.router.poll_output() {
            match output {
                RouterOutput::Write { conn, line } => {
                    if let Some(end) = self.conns.get(&conn) {
                        let at = env.line_at(self.index(), end.remote_node);
                        let job = Job::Line {
                            node: end.remote_node,
                            conn: end.remote_conn,
                            line,
                        };
                        env.schedule(at, u32::MAX, job);
                    }
                }
                RouterOutput::Dial { peer, addr } => env.schedule(
                    env.now + SIGNALING_DELAY,
                    generation,
                    Job::Dial {
                        node: self.index(),
                        addr,
                        peer: Some(peer),
                        token: None,
                    },
                ),
                RouterOutput::Close { conn } => {
                    if let Some(end) = self.conns.get(&conn) {
                        let at = env.signaling_at;
                        let remote = Job::ConnDown {
                            node: end.remote_node,
                            conn: end.remote_conn,
                        };
                        env.schedule(at, u32::MAX, remote);
                        let own = Job::ConnDown {
                            node: self.index(),
                            conn,
                        };
                        env.schedule(at + SIGNALING_DELAY, u32::MAX, own);
                    }
                }
                RouterOutput::Unreachable { peer, errors } => {
                    self.inbox.push_back(Input::Unreachable { peer, errors });
                }
            }
        }
    }

    /// A line arrived on `conn`: the first is the peer's `hello` (as `shell/signaling.rs`
    /// reads it), the rest are negotiation messages.
    fn on_line(&mut self, conn: ConnId, line: &[u8], env: &mut Env<'_>) {
        let Some(end) = self.conns.get_mut(&conn) else {
            return;
        };
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let Ok(message) = Message::decode(body) else {
            return;
        };
        match (&end.peer, message) {
            (None, Message::Hello(hello)) => {
                let peer = hello.id.clone();
                end.peer = Some(peer.clone());
                let (from, token) = (end.from, end.token.take());
                self.handle(
                    Input::Hello {
                        conn,
                        from,
                        hello,
                        token,
                    },
                    env,
                );
                self.route(RouterInput::Up { conn, peer, from }, env);
                self.run(env);
            }
            (None, _) => {}
            (Some(peer), message) => {
                let peer = peer.clone();
                self.handle(
                    Input::Signal {
                        conn,
                        peer,
                        message,
                    },
                    env,
                );
            }
        }
    }

    fn on_conn_down(&mut self, conn: ConnId, env: &mut Env<'_>) {
        if self.conns.remove(&conn).is_none() {
            return;
        }
        self.handle(Input::ConnClosed { conn }, env);
        self.route(RouterInput::Down { conn }, env);
        self.run(env);
    }

    fn on_datagram(&mut self, datagram: link::sim::Datagram, env: &mut Env<'_>) {
        let Some((peer, session)) = self.ports.get(&datagram.to.port()).cloned() else {
            return;
        };
        if let Some(sessions) = self.sessions.get_mut(&peer) {
            sessions.deliver(
                session,
                datagram.from,
                datagram.to,
                None,
                &datagram.bytes,
                env.now,
            );
            sessions.advance(env.now);
            self.flush_sessions(&peer, env);
            self.run(env);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let core = self.core.as_ref()?.poll_timeout();
        let router = self.router.poll_timeout();
        let sessions = self
            .sessions
            .values()
            .filter_map(Sessions::poll_timeout)
            .min();
        [core, router, sessions, self.crash_at]
            .into_iter()
            .flatten()
            .min()
    }

    fn handle_timeout(&mut self, env: &mut Env<'_>) {
        if self.crash_at.is_some_and(|at| at <= env.now) {
            self.crash(env);
            return;
        }
        let now = self.now(env.now);
        let Some(core) = self.core.as_mut() else {
            return;
        };
        if core.poll_timeout().is_some_and(|t| t <= env.now) {
            core.handle_timeout(now);
            self.run(env);
        }
        if self.router.poll_timeout().is_some_and(|t| t <= env.now) {
            self.router.handle_timeout(env.now);
            self.router_outputs(env);
        }
        let due: Vec<DeviceId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.poll_timeout().is_some_and(|t| t <= env.now))
            .map(|(p, _)| p.clone())
            .collect();
        for peer in due {
            if let Some(sessions) = self.sessions.get_mut(&peer) {
                sessions.advance(env.now);
            }
            self.flush_sessions(&peer, env);
        }
        self.run(env);
    }
}

/// Every node, the network and the schedule, stepped in virtual time.
pub struct World {
    pub epoch: Instant,
    pub now: Instant,
    pub net: SimNet,
    pub nodes: Vec<SimNode>,
    rng: StdRng,
    jobs: BinaryHeap<Scheduled>,
    seq: u64,
    /// The network is cut in these spans (signaling lines wait for the end, as TCP would).
    cuts: Vec<(Instant, Instant)>,
    /// Extra one-way signaling delays (from, to, delay).
    pub slow_signaling: Vec<(usize, usize, Duration)>,
    pub steps: u64,
}

/// The step bound of any drive loop: a live-lock fails the test instead of hanging it.
pub const MAX_STEPS: u64 = 3_000_000;

impl World {
    /// `count` nodes (at most 4) on 10.77.0.1.., each trusting every other one, with the
    /// journals a node has after `fsnode trust add`: the peer discovered and trusted.
    pub fn new(count: usize, conditions: Conditions, seed: u64) -> Self {
        assert!(count <= certificates().len());
        let epoch = Instant::now();
        let labels = ["a", "b", "c", "d"];
        let mut nodes: Vec<SimNode> = (0..count)
            .map(|i| {
                let certificate = certificates()[i].clone();
                let me = Me {
                    id: device_id(&certificate),
                    name: labels[i].to_owned(),
                    device_type: DeviceType::Desktop,
                    signaling_port: SIGNALING_PORT,
                };
                SimNode {
                    label: labels[i],
                    index: i,
                    me,
                    certificate,
                    ip: IpAddr::V4(Ipv4Addr::new(10, 77, 0, i as u8 + 1)),
                    core: None,
                    journal: SimJournal::default(),
                    store: SimStore::default(),
                    router: Router::new(),
                    sessions: BTreeMap::new(),
                    ports: BTreeMap::new(),
                    next_port: 40_000,
                    conns: BTreeMap::new(),
                    next_conn: 1,
                    next_token: 1,
                    generation: 0,
                    inbox: VecDeque::new(),
                    replies: Vec::new(),
                    crash_at: None,
                    crash_on_append: false,
                    down_for: Duration::ZERO,
                    restart_at: None,
                    crashes: Vec::new(),
                    journal_records_lost: 0,
                    epoch,
                    quic: QuicSettings {
                        congestion: SIM_CONGESTION,
                        ..QuicSettings::default()
                    },
                }
            })
            .collect();
        let facts: Vec<(DeviceId, String, IpAddr)> = nodes
            .iter()
            .map(|n| (n.me.id.clone(), n.me.name.clone(), n.ip))
            .collect();
        for node in &mut nodes {
            for (id, name, ip) in &facts {
                if *id == node.me.id {
                    continue;
                }
                for event in [
                    Event::PeerDiscovered {
                        peer: id.clone(),
                        name: name.clone(),
                        device_type: DeviceType::Desktop,
                        addresses: vec![*ip],
                        port: SIGNALING_PORT,
                    },
                    Event::PeerAuthorized {
                        peer: id.clone(),
                        name: Some(name.clone()),
                        by: Authority::Operator,
                    },
                ] {
                    node.journal.append(Stamped {
                        time_ms: WALL_EPOCH_MS - 60_000,
                        event,
                    });
                }
            }
            node.journal.sync();
        }
        Self {
            epoch,
            now: epoch,
            net: SimNet::new(conditions, seed),
            nodes,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            jobs: BinaryHeap::new(),
            seq: 0,
            cuts: Vec::new(),
            slow_signaling: Vec::new(),
            steps: 0,
        }
    }

    /// Virtual time since the epoch.
    pub fn elapsed(&self) -> Duration {
        self.now.duration_since(self.epoch)
    }

    pub fn id(&self, node: usize) -> DeviceId {
        self.nodes[node].me.id.clone()
    }

    fn with_node<T>(&mut self, node: usize, f: impl FnOnce(&mut SimNode, &mut Env<'_>) -> T) -> T {
        let signaling_at = self.signaling_at();
        let mut env = Env {
            now: self.now,
            net: &mut self.net,
            jobs: &mut self.jobs,
            seq: &mut self.seq,
            rng: &mut self.rng,
            signaling_at,
            slow_signaling: &self.slow_signaling,
        };
        f(&mut self.nodes[node], &mut env)
    }

    /// When a line written now arrives: after the delay, or once a cut is over.
    fn signaling_at(&self) -> Instant {
        let at = self.now + SIGNALING_DELAY;
        self.cuts
            .iter()
            .filter(|(s, e)| at >= *s && at < *e)
            .map(|(_, e)| *e + SIGNALING_DELAY)
            .max()
            .unwrap_or(at)
    }

    pub fn start(&mut self, node: usize) {
        self.with_node(node, |n, env| n.start(env));
    }

    pub fn start_all(&mut self) {
        for node in 0..self.nodes.len() {
            self.start(node);
        }
    }

    /// `kill -9` of `node` at `at`, started again `down` later.
    pub fn kill_at(&mut self, node: usize, at: Instant, down: Duration) {
        self.nodes[node].crash_at = Some(at);
        self.nodes[node].down_for = down;
    }

    /// `kill -9` of `node` while it appends its next journal records (after the core made
    /// them, before the fsync), started again `down` later.
    pub fn kill_at_next_append(&mut self, node: usize, down: Duration) {
        self.nodes[node].crash_on_append = true;
        self.nodes[node].down_for = down;
    }

    /// Nothing sent on UDP from `start` for `length` arrives; signaling lines wait.
    pub fn cut(&mut self, start: Instant, length: Duration) {
        self.net.cut(start, length);
        self.cuts.push((start, start + length));
    }

    /// A control command, as `fsnode` would send it; its outcome lands in `replies`.
    pub fn request(&mut self, node: usize, command: Command) -> Token {
        let token = self.nodes[node].next_token;
        self.nodes[node].next_token += 1;
        self.with_node(node, |n, env| {
            n.handle(Input::Command { token, command }, env)
        });
        token
    }

    /// Adds `data` as a file of `node` and sends it to `to`.
    pub fn send_file(&mut self, node: usize, name: &str, data: Vec<u8>, to: &[usize]) -> Token {
        let path = PathBuf::from("/files").join(name);
        self.nodes[node].store.sources.insert(path.clone(), data);
        let to = to.iter().map(|&n| self.id(n).to_string()).collect();
        self.request(
            node,
            Command::Send {
                paths: vec![path],
                to,
            },
        )
    }

    fn next_event(&self) -> Option<Instant> {
        let jobs = self.jobs.peek().map(|j| j.at);
        let net = self.net.next_arrival();
        let nodes = self
            .nodes
            .iter()
            .filter_map(|n| [n.poll_timeout(), n.restart_at].into_iter().flatten().min())
            .min();
        [jobs, net, nodes].into_iter().flatten().min()
    }

    /// One step: time advances to the earliest pending thing, and everything due runs.
    /// False when nothing is pending at all.
    pub fn step(&mut self) -> bool {
        let Some(at) = self.next_event() else {
            return false;
        };
        self.steps += 1;
        self.now = self.now.max(at);
        let now = self.now;
        while self.jobs.peek().is_some_and(|j| j.at <= now) {
            let Some(scheduled) = self.jobs.pop() else {
                break;
            };
            self.run_job(scheduled);
        }
        while let Some(datagram) = self.net.pop_due(now) {
            let target = self.nodes.iter().position(|n| n.ip == datagram.to.ip());
            if let Some(node) = target
                && self.nodes[node].is_up()
            {
                self.with_node(node, |n, env| n.on_datagram(datagram, env));
            }
        }
        for node in 0..self.nodes.len() {
            if self.nodes[node].restart_at.is_some_and(|t| t <= now) && !self.nodes[node].is_up() {
                self.nodes[node].restart_at = None;
                self.start(node);
            }
            if self.nodes[node].poll_timeout().is_some_and(|t| t <= now) {
                self.with_node(node, |n, env| n.handle_timeout(env));
            }
        }
        true
    }

    fn run_job(&mut self, scheduled: Scheduled) {
        let Scheduled {
            generation, job, ..
        } = scheduled;
        let current = |world: &World, node: usize| {
            world.nodes[node].is_up()
                && (generation == u32::MAX || generation == world.nodes[node].generation)
        };
        match job {
            Job::Line { node, conn, line } => {
                if current(self, node) {
                    self.with_node(node, |n, env| n.on_line(conn, &line, env));
                }
            }
            Job::ConnDown { node, conn } => {
                if current(self, node) {
                    self.with_node(node, |n, env| n.on_conn_down(conn, env));
                }
            }
            Job::Input { node, input } => {
                if current(self, node) {
                    self.with_node(node, |n, env| n.handle(input, env));
                }
            }
            Job::Dial {
                node,
                addr,
                peer,
                token,
            } => {
                if !current(self, node) {
                    return;
                }
                self.dial(node, addr, peer, token);
            }
        }
    }

    /// A TCP connect: to a live node listening at `addr` both ends exchange `hello`s; else
    /// the dial fails.
    fn dial(
        &mut self,
        node: usize,
        addr: SocketAddr,
        peer: Option<DeviceId>,
        token: Option<Token>,
    ) {
        let target = self.nodes.iter().position(|n| {
            n.is_up() && n.signaling_addr() == addr && addr.ip() != self.nodes[node].ip
        });
        let cut = self.signaling_at() > self.now + SIGNALING_DELAY;
        let Some(target) = target.filter(|_| !cut) else {
            self.with_node(node, |n, env| {
                if let Some(peer) = peer {
                    let error = format!("nothing listens at {addr} (connection refused)");
                    n.route(RouterInput::DialFailed { peer, addr, error }, env);
                }
                if let Some(token) = token {
                    n.handle(
                        Input::DialFailed {
                            token,
                            error: format!("connecting to {addr}: refused"),
                        },
                        env,
                    );
                }
                n.run(env);
            });
            return;
        };
        let dialer_conn = self.nodes[node].next_conn;
        self.nodes[node].next_conn += 1;
        let target_conn = self.nodes[target].next_conn;
        self.nodes[target].next_conn += 1;
        let ephemeral = SocketAddr::new(self.nodes[node].ip, 50_000 + dialer_conn as u16);
        self.nodes[node].conns.insert(
            dialer_conn,
            ConnEnd {
                remote_node: target,
                remote_conn: target_conn,
                from: addr,
                token,
                peer: None,
            },
        );
        self.nodes[target].conns.insert(
            target_conn,
            ConnEnd {
                remote_node: node,
                remote_conn: dialer_conn,
                from: ephemeral,
                token: None,
                peer: None,
            },
        );
        let at = self.signaling_at();
        for (to, conn, from) in [(target, target_conn, node), (node, dialer_conn, target)] {
            let hello: Hello = self.nodes[from].me.hello();
            let line = Message::Hello(hello).encode();
            self.seq += 1;
            self.jobs.push(Scheduled {
                at,
                seq: self.seq,
                generation: u32::MAX,
                job: Job::Line {
                    node: to,
                    conn,
                    line,
                },
            });
        }
    }

    /// Steps until `done` holds, within `MAX_STEPS` steps and `limit` of virtual time;
    /// false if it did not.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&World) -> bool) -> bool {
        let deadline = self.now + limit;
        while self.steps < MAX_STEPS && self.now < deadline {
            if done(self) {
                return true;
            }
            if !self.step() {
                return done(self);
            }
        }
        done(self)
    }
}
