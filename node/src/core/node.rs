//! The node's core: one sans-IO state machine in str0m's shape: `handle(input, now)` mutates,
//! `poll_output()` drains what happened (journal events, outcomes, effects) until it returns
//! `None`, `poll_timeout()` says when to call `handle_timeout`.
//!
//! This file holds the machine's inputs, outputs and state and routes each input to the box
//! that handles it, one `impl Core` per box:
//! - `sightings`: discovery and admission (announcements, goodbyes, `hello`s, addresses);
//! - `trust_decisions`: trust by the operator or policy, authorization requests;
//! - `signaling`: peers' signaling messages (fingerprints, untrusted offers);
//! - `negotiations`: one perfect negotiation per peer, started and drained;
//! - `transfer_work`: feeding `core::transfers` and carrying out its work;
//! - `questions`: asking policy and resuming with its decision;
//! - `commands`: the operator's commands (views are built in `crate::control`).
//!
//! Every state change is an `Output::Event`, already folded into `state()`. The shell journals
//! events before it carries out any reply or effect that follows them in the output order, so
//! nothing is announced that is not durable.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::admission::{self, Admission, Sighting};
use super::discovery::{self, Announcement};
use super::negotiation::{self, Action, Negotiation};
use super::policy::{
    AcceptAnswer, Decision, Disabled, FileFacts, NodeFacts, PeerFacts, Platform, PolicyAnswer,
    PolicyRequest, Question, QuestionId, TrustAnswer,
};
use super::request::{Command, Outcome, Refusal, RefusalKind};
use super::router::Route;
use super::sdp;
use super::signal::{Hello, Message};
use super::transfer;
use super::transfers::{StoreOp, StoreResult, Transfers, Work};
use super::trust::{self, ResolveError};
use super::{Authority, DeviceId, DeviceType, Direction, Event, Stamped, State, TransferId};

/// How often trusted devices that mDNS does not show are probed by unicast at their last
/// known addresses.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// When, after the node starts, trusted devices it has not found yet are dialled at their last
/// known addresses: at once (a restarted pair reconnects without waiting for mDNS, which takes
/// ~0.8 s to see the peer again), and a few more times soon after, for a peer that is starting
/// at the same moment and not listening yet. Then every [`PROBE_INTERVAL`].
pub const STARTUP_PROBES: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_millis(600),
    Duration::from_millis(1500),
    Duration::from_secs(5),
];
/// Untrusted devices the node keeps track of; a further one evicts the oldest, so a flood of
/// bogus announcements or `hello`s cannot grow state without bound.
pub const MAX_UNTRUSTED_PEERS: usize = admission::MAX_UNTRUSTED;
/// The mid of the one (data) m-line fsnode negotiates.
pub const DATA_MID: &str = "0";
/// Addresses learned from unauthenticated input kept per trusted device, to try.
pub const MAX_CANDIDATES: usize = 8;
/// Fingerprint mismatches remembered so that each (claimed device, source) is journaled once
/// an hour: more than the untrusted devices held plus a generous number of trusted ones.
const MISMATCH_MEMORY: usize = 2048;
/// Signaling connections whose peer address the core remembers (the shell caps inbound ones
/// at 64; dialled ones are few).
const MAX_CONNS: usize = 1024;
/// Distinct ignored announcements remembered, so a flood is journaled once, not per packet.
const IGNORED_MEMORY: usize = 256;
/// How long the core waits for policy's answer before it applies the built-in default: well
/// past the plugins' deadlines (100 ms per plugin and call) for the questions queued before it.
pub const POLICY_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Questions out to policy at once; a further one gets the built-in default at once, so a flood
/// of offers or files cannot queue unbounded work for the plugins or state in the core.
pub const MAX_QUESTIONS: usize = 256;

/// The current time, as the shell read it: monotonic for timers, wall clock for the journal.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub instant: Instant,
    pub wall_ms: i64,
}

/// This node's own facts.
#[derive(Clone, Debug)]
pub struct Me {
    pub id: DeviceId,
    pub name: String,
    pub device_type: DeviceType,
    pub signaling_port: u16,
}

impl Me {
    /// The `hello` this node sends on every signaling connection.
    pub fn hello(&self) -> Hello {
        Hello {
            id: self.id.clone(),
            name: self.name.clone(),
            device_type: self.device_type,
            port: self.signaling_port,
        }
    }
}

/// An operator's command, with the token its outcome carries.
pub type Token = u64;

#[derive(Clone, Debug)]
pub enum Input {
    /// mDNS resolved (or re-resolved) a service.
    Announced(Announcement),
    /// mDNS saw a goodbye, or the record expired.
    Withdrawn { instance: String },
    /// An operator's command (from the control socket).
    Command { token: Token, command: Command },
    /// A signaling connection exchanged `hello`s with a node at `from`; `token` is set when
    /// the operator asked for the dial.
    Hello {
        conn: ConnId,
        from: SocketAddr,
        hello: Hello,
        token: Option<Token>,
    },
    /// Signaling connection `conn` closed.
    ConnClosed { conn: ConnId },
    /// A dial the operator asked for failed.
    DialFailed { token: Token, error: String },
    /// Every address of `peer` was dialled to deliver its messages and none answered; `errors`
    /// says why, per address ("nothing listens at ADDR (connection refused)").
    Unreachable { peer: DeviceId, errors: Vec<String> },
    /// A negotiation message on signaling connection `conn`, whose `hello` named `peer`.
    Signal {
        conn: ConnId,
        peer: DeviceId,
        message: Message,
    },
    /// A binary message on `peer`'s `fileshare` data channel.
    Channel { peer: DeviceId, data: Vec<u8> },
    /// The shell finished a file operation for a transfer.
    Store { id: TransferId, result: StoreResult },
    /// The shell collected and hashed the files of a `send` request (`Err`: why not, and
    /// nothing was queued). A large send comes in slices, each with `more` but the last: each is
    /// journaled as it comes, and the request is answered (and its transfers start) with the
    /// last.
    SendPrepared {
        token: Token,
        result: Result<Vec<QueuedFile>, String>,
        more: bool,
    },
    /// The answer to `HashSource`: the whole-file SHA-256 of the file the transfers `ids` send.
    SourceHashed {
        ids: Vec<TransferId>,
        result: Result<[u8; 32], String>,
    },
    /// The plugins' answer to an `AskPolicy`.
    PolicyAnswer(PolicyAnswer),
    /// The policy host was loaded again (the plugin directory changed, or the operator asked):
    /// the plugins now asked, in order, and those that failed to load.
    PluginsReloaded {
        loaded: Vec<String>,
        disabled: Vec<Disabled>,
    },
    /// What the WebRTC adapter reports for `peer` (local descriptions and candidates,
    /// remote description applied, channel open, connection lost).
    Rtc {
        peer: DeviceId,
        event: negotiation::Input,
    },
    /// What the LocalSend adapter reports (requests, bodies, probes, answers, datagrams).
    LocalSend(super::localsend::Input),
}

/// One file of a `send` request, for one peer, as the shell found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedFile {
    pub id: TransferId,
    pub peer: DeviceId,
    pub path: std::path::PathBuf,
    pub name: String,
    pub size: u64,
    pub mime: String,
    pub mode: u32,
    pub mtime: Option<i64>,
    /// Taken while preparing for a small file; `None` for a large one, hashed while it is sent.
    pub sha256: Option<[u8; 32]>,
}

/// A signaling connection, as the shell numbers them.
pub type ConnId = u64;

/// How often an untrusted device's repeated offers are journaled as requests (and the same
/// plugin answer to the same question): once an hour, like any sighting of an untrusted
/// device (spec 3.4: what unauthenticated input makes the node record is bounded).
pub const REQUEST_JOURNAL_INTERVAL_MS: i64 = 3_600_000;

#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Journal it (it is already in `state()`).
    Event(Stamped),
    /// What came of command `token`.
    Outcome { token: Token, outcome: Outcome },
    /// Do something in the world.
    Effect(Effect),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The trusted list changed: rewrite the human-readable projection file.
    TrustChanged,
    /// Open a signaling connection to `addr` and exchange `hello`.
    Dial {
        addr: SocketAddr,
        token: Option<Token>,
    },
    /// Send a signaling message to `peer` (on an open connection, or dial its last address).
    Signal { peer: DeviceId, message: Message },
    /// Close a signaling connection (e.g. after a fingerprint mismatch).
    CloseSignaling { conn: ConnId },
    /// A trusted device was heard of at an address not stored for it (a candidate, see
    /// [`Core::route`]): what waits for it may be dialled there now.
    PeerSeen { peer: DeviceId },
    /// Ask the WebRTC adapter to act for `peer`.
    Rtc { peer: DeviceId, action: Action },
    /// Send a binary message on `peer`'s data channel.
    ChannelSend { peer: DeviceId, data: Vec<u8> },
    /// File IO for a transfer (in order per transfer, off the node's loop).
    Store { id: TransferId, op: StoreOp },
    /// Hash `path`, the file of the outgoing transfers `ids`, off the node's loop; answer
    /// `SourceHashed`.
    HashSource {
        path: std::path::PathBuf,
        ids: Vec<TransferId>,
    },
    /// Collect the files of a `send` request for `peers` (hashing the small ones); answer
    /// `SendPrepared`.
    PrepareSend {
        token: Token,
        paths: Vec<std::path::PathBuf>,
        peers: Vec<DeviceId>,
    },
    /// Ask the plugins, off the node's loop; answer `PolicyAnswer` (an answer that does not
    /// come within [`POLICY_ANSWER_TIMEOUT`] is replaced by the built-in default).
    AskPolicy(PolicyRequest),
    /// Something for the LocalSend adapter to do (answers, probes, calls, uploads, multicast).
    LocalSend(super::localsend::Effect),
}

pub struct Core {
    me: Me,
    state: State,
    out: VecDeque<Output>,
    ignored: VecDeque<String>,
    next_probe: Option<Instant>,
    started: Instant,
    /// Probes of [`STARTUP_PROBES`] done.
    startup_probes: usize,
    negotiations: BTreeMap<DeviceId, Negotiation>,
    transfers: Transfers,
    /// Whether plugins are configured; without, the core asks nothing and applies the
    /// built-in defaults at once.
    asks_plugins: bool,
    /// Questions out to policy (at most [`MAX_QUESTIONS`]).
    questions: BTreeMap<QuestionId, Asked>,
    next_question: QuestionId,
    /// Plugin answers journaled lately (question and answer, when), so a device repeating
    /// an offer cannot grow the journal with the same decision.
    recent_decisions: VecDeque<(String, i64)>,
    /// What unauthenticated hosts may make the node hold and record.
    admission: Admission,
    /// Per trusted device, addresses (and ports) learned from `hello` or mDNS that differ from
    /// the stored ones: tried when dialling, recorded only once a session authenticated with
    /// the device's key is up through one of them (spec 3.4). Newest first.
    candidates: BTreeMap<DeviceId, VecDeque<SocketAddr>>,
    /// Each open signaling connection's peer: where it came from, with the port its `hello`
    /// announced.
    conns: HashMap<ConnId, SocketAddr>,
    /// The address of the connection that carried each peer's latest offer or answer: the one
    /// a session that comes up was negotiated through.
    negotiated_via: BTreeMap<DeviceId, SocketAddr>,
    /// Trusted devices whose messages no dial could deliver, and why: a negotiation with one
    /// of them that then fails says so rather than blaming the peer for not answering. Cleared
    /// when a connection with the device comes up (bounded by the trusted devices).
    unreachable: BTreeMap<DeviceId, String>,
    /// Trusted devices whose mDNS goodbye arrived while their session was up: lost once the
    /// session ends (bounded by the trusted devices).
    goodbyes_while_connected: std::collections::BTreeSet<DeviceId>,
    /// Fingerprint mismatches journaled lately (claimed device, source address, when).
    recent_mismatches: VecDeque<((DeviceId, Option<IpAddr>), i64)>,
    /// Sends whose slices are still coming (`Input::SendPrepared` with `more`): the transfers
    /// queued so far and their peers.
    sends_queueing: BTreeMap<Token, (Vec<TransferId>, Vec<DeviceId>)>,
    /// LocalSend, when the operator turned it on.
    localsend: Option<Box<super::localsend::LocalSend>>,
}

impl Core {
    /// A core over `state` (the journal's replay). Unseen trusted devices are probed at once,
    /// then on the [`STARTUP_PROBES`] schedule. Outgoing transfers whose file was still being
    /// hashed when the node stopped are hashed again.
    pub fn new(me: Me, state: State, now: Instant) -> Self {
        let unhashed: Vec<_> = state
            .transfers
            .iter()
            .filter(|(_, t)| {
                t.direction == Direction::Send && !t.status.is_finished() && t.sha256.is_none()
            })
            .filter_map(|(id, t)| Some((t.path.clone()?, *id)))
            .collect();
        let mut core = Self {
            me,
            state,
            out: VecDeque::new(),
            ignored: VecDeque::new(),
            next_probe: Some(now),
            started: now,
            startup_probes: 0,
            negotiations: BTreeMap::new(),
            transfers: Transfers::default(),
            asks_plugins: false,
            questions: BTreeMap::new(),
            next_question: 0,
            recent_decisions: VecDeque::new(),
            admission: Admission::default(),
            candidates: BTreeMap::new(),
            conns: HashMap::new(),
            negotiated_via: BTreeMap::new(),
            recent_mismatches: VecDeque::new(),
            sends_queueing: BTreeMap::new(),
            goodbyes_while_connected: Default::default(),
            unreachable: BTreeMap::new(),
            localsend: None,
        };
        // Untrusted devices from the journal are held, oldest first, each with its whole
        // budget of changes: none is on the LAN for this run yet (`NodeStarted`), so the first
        // sighting of each is a change, recorded at once.
        let mut known: Vec<_> = core
            .state
            .peers
            .iter()
            .filter(|(_, p)| !p.trusted)
            .map(|(id, p)| (p.last_seen_ms, id.clone()))
            .collect();
        known.sort();
        for (_, id) in known {
            core.admission.hold_known(id, now);
        }
        core.hash_sources(unhashed.into_iter());
        core
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn me(&self) -> &Me {
        &self.me
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.negotiations
            .values()
            .filter_map(Negotiation::poll_timeout)
            .chain(self.next_probe)
            .chain(self.transfers.poll_timeout())
            .chain(self.questions.values().map(|asked| asked.deadline))
            .chain(self.admission.poll_timeout())
            .chain(self.ls_poll_timeout())
            .min()
    }

    pub fn handle(&mut self, input: Input, now: Now) {
        // A LocalSend id is never an fsnode device: whatever claims one over mDNS or
        // signaling is ignored (its own kind only comes from the LocalSend adapter).
        let claims_localsend = match &input {
            Input::Hello { hello, .. } => hello.id.is_localsend(),
            Input::Signal { peer, .. } | Input::Channel { peer, .. } | Input::Rtc { peer, .. } => {
                peer.is_localsend()
            }
            Input::Announced(announcement) => {
                announcement
                    .instance
                    .contains(super::device::LOCALSEND_PREFIX)
                    || announcement
                        .txt
                        .get("id")
                        .is_some_and(|id| id.starts_with(super::device::LOCALSEND_PREFIX))
            }
            _ => false,
        };
        if claims_localsend {
            if let Input::Hello { conn, .. } | Input::Signal { conn, .. } = &input {
                self.out
                    .push_back(Output::Effect(Effect::CloseSignaling { conn: *conn }));
            }
            return;
        }
        let wakes_localsend = matches!(
            input,
            Input::SendPrepared { more: false, .. } | Input::SourceHashed { .. }
        );
        match input {
            Input::Announced(announcement) => self.on_announced(&announcement, now),
            Input::Withdrawn { instance } => self.on_withdrawn(&instance, now),
            Input::Command { token, command } => {
                if let Some(outcome) = self.on_command(command, token, now) {
                    self.out.push_back(Output::Outcome { token, outcome });
                }
            }
            Input::Hello {
                conn,
                from,
                hello,
                token,
            } => self.on_hello(conn, from, hello, token, now),
            Input::ConnClosed { conn } => {
                self.conns.remove(&conn);
            }
            Input::DialFailed { token, error } => self.out.push_back(Output::Outcome {
                token,
                outcome: Outcome::refused(RefusalKind::Unreachable, error),
            }),
            Input::Unreachable { peer, errors } => {
                if self.state.is_trusted(&peer) && !errors.is_empty() {
                    self.unreachable.insert(peer, errors.join("; "));
                }
            }
            Input::Signal {
                conn,
                peer,
                message,
            } => self.on_signal(conn, peer, message, now),
            Input::Channel { peer, data } => self.on_channel(peer, &data, now),
            Input::Store { id, result } => {
                if self.ls_store(id, result.clone(), now) {
                    return;
                }
                let mut work = Vec::new();
                self.transfers
                    .on_store(id, result, &self.state, now.instant, &mut work);
                self.run(work, now);
            }
            Input::SendPrepared {
                token,
                result,
                more,
            } => self.on_send_prepared(token, result, more, now),
            Input::SourceHashed { ids, result } => self.on_source_hashed(ids, result, now),
            Input::PolicyAnswer(answer) => self.on_policy_answer(answer, now),
            Input::PluginsReloaded { loaded, disabled } => {
                self.use_plugins(loaded, disabled, now);
            }
            Input::Rtc { peer, event } => {
                if let negotiation::Input::CertificateRefused { presented, .. } = &event
                    && self.negotiations.contains_key(&peer)
                {
                    let presented = format!("certificate of {presented}");
                    self.record_mismatch(&peer, None, presented, now);
                }
                if let Some(negotiation) = self.negotiations.get_mut(&peer) {
                    negotiation.handle(event, now.instant);
                    self.drain_negotiation(&peer, now);
                }
            }
            Input::LocalSend(input) => self.on_localsend(input, now),
        }
        if wakes_localsend {
            self.ls_try_all(now);
        }
        self.start_waiting_sends(now);
    }

    /// Timers: negotiation deadlines, transfer deadlines, sightings of untrusted devices held
    /// back for their budget, and probing trusted devices that mDNS does not show.
    pub fn handle_timeout(&mut self, now: Now) {
        self.expire_questions(now);
        self.journal_due_sightings(now);
        let mut work = Vec::new();
        self.transfers
            .handle_timeout(now.instant, &self.state, &mut work);
        self.run(work, now);
        self.start_waiting_sends(now);
        self.ls_timeout(now);
        let due: Vec<DeviceId> = self
            .negotiations
            .iter()
            .filter(|(_, n)| n.poll_timeout().is_some_and(|at| at <= now.instant))
            .map(|(id, _)| id.clone())
            .collect();
        for peer in due {
            if let Some(negotiation) = self.negotiations.get_mut(&peer) {
                negotiation.handle_timeout(now.instant);
            }
            self.drain_negotiation(&peer, now);
        }
        let Some(due) = self.next_probe else { return };
        if now.instant < due {
            return;
        }
        self.startup_probes += 1;
        self.next_probe = Some(match STARTUP_PROBES.get(self.startup_probes) {
            Some(offset) => (self.started + *offset).max(now.instant),
            None => now.instant + PROBE_INTERVAL,
        });
        let probes: Vec<SocketAddr> = self
            .state
            .trusted()
            .filter(|(id, peer)| {
                !id.is_localsend()
                    && !peer.discovered
                    && matches!(
                        peer.connection,
                        super::ConnectionState::NotConnected | super::ConnectionState::Failed(_)
                    )
            })
            .flat_map(|(id, _)| self.dial_addresses(id))
            .collect();
        for addr in probes {
            self.out
                .push_back(Output::Effect(Effect::Dial { addr, token: None }));
        }
    }

    fn emit(&mut self, event: Event, now: Now) {
        match &event {
            Event::PeerAuthorized { peer, .. } => self.admission.forget(peer),
            // Known, so its sightings spend no address's budget of new ids.
            Event::PeerRevoked { peer, .. } => {
                self.admission.hold_known(peer.clone(), now.instant);
                self.unreachable.remove(peer);
            }
            _ => {}
        }
        let stamped = Stamped {
            time_ms: now.wall_ms,
            event,
        };
        self.state.apply(&stamped);
        self.out.push_back(Output::Event(stamped));
    }

    /// What admission dropped so far (for tests and measurements).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }
}

mod commands;
mod localsend;
mod negotiations;
mod questions;
mod sightings;
mod signaling;
mod transfer_work;
mod trust_decisions;

use questions::{Asked, Waiting};

#[cfg(test)]
mod localsend_tests;
#[cfg(test)]
mod tests;
