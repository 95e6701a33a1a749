//! The node's core: discovery and trust (and, as the protocol grows, negotiation and
//! transfers). A sans-IO state machine in str0m's shape: `handle(input, now)` mutates,
//! `poll_output()` drains what happened (journal events, replies, effects) until it returns
//! `None`, `poll_timeout()` says when to call `handle_timeout`.
//!
//! Every state change is an `Output::Event`, already folded into `state()`. The shell journals
//! events before it carries out any reply or effect that follows them in the output order, so
//! nothing is announced that is not durable.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::admission::{self, Admission, Verdict};
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
    /// The shell collected and hashed the files of a `send` request (`Err`: why not).
    SendPrepared {
        token: Token,
        result: Result<Vec<QueuedFile>, String>,
    },
    /// The answer to `HashSource`: the whole-file SHA-256 of the file the transfers `ids` send.
    SourceHashed {
        ids: Vec<TransferId>,
        result: Result<[u8; 32], String>,
    },
    /// The plugins' answer to an `AskPolicy`.
    PolicyAnswer(PolicyAnswer),
    /// What the WebRTC adapter reports for `peer` (local descriptions and candidates,
    /// remote description applied, channel open, connection lost).
    Rtc {
        peer: DeviceId,
        event: negotiation::Input,
    },
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
}

/// A question out to policy and what waits for its answer.
#[derive(Debug)]
struct Asked {
    question: Question,
    deadline: Instant,
    waiting: Waiting,
}

/// What the core was doing when it asked policy: resumed with the decision.
#[derive(Debug)]
enum Waiting {
    /// An untrusted device was discovered (or changed).
    Discovered { peer: DeviceId },
    /// An untrusted device's offer, handled again if policy trusts it.
    Offer {
        conn: ConnId,
        peer: DeviceId,
        message: Message,
    },
    /// A trusted device's `start` of a new file, fed to the transfers again with the answer.
    Start {
        peer: DeviceId,
        message: transfer::Message,
    },
    /// A peer connected: its queued sends start in the order policy gives.
    Schedule { peer: DeviceId },
    /// A received file's `Finalize`, sent to the store with the mode policy gives.
    Finalize { id: TransferId, op: StoreOp },
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
    /// Trusted devices whose mDNS goodbye arrived while their session was up: lost once the
    /// session ends (bounded by the trusted devices).
    goodbyes_while_connected: std::collections::BTreeSet<DeviceId>,
    /// Fingerprint mismatches journaled lately (claimed device, source address, when).
    recent_mismatches: VecDeque<((DeviceId, Option<IpAddr>), i64)>,
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
            goodbyes_while_connected: Default::default(),
        };
        // Untrusted devices from the journal are held, oldest first, and count as recorded.
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

    /// From now on the questions go to the plugins (as `AskPolicy` effects) instead of the
    /// built-in default; journals the plugins the host could not load.
    pub fn use_plugins(&mut self, disabled: Vec<Disabled>, now: Now) {
        self.asks_plugins = true;
        self.journal_disabled(disabled, now);
    }

    fn journal_disabled(&mut self, disabled: Vec<Disabled>, now: Now) {
        for Disabled { plugin, reason } in disabled {
            self.emit(Event::PluginDisabled { plugin, reason }, now);
        }
    }

    /// The one way the core asks policy: `question` goes out as an `AskPolicy` effect and
    /// `waiting` resumes with the decision when the answer comes (or, after
    /// [`POLICY_ANSWER_TIMEOUT`], with the default). Without plugins, with nothing to choose,
    /// or with [`MAX_QUESTIONS`] out, the default decides at once.
    fn ask(&mut self, question: Question, waiting: Waiting, now: Now) {
        let asks = self.asks_plugins && question.needs_asking();
        if !asks || self.questions.len() >= MAX_QUESTIONS {
            let (decision, _) = question.decide(None);
            self.resume(waiting, decision, now);
            return;
        }
        let id = self.next_question;
        self.next_question += 1;
        self.out
            .push_back(Output::Effect(Effect::AskPolicy(PolicyRequest {
                id,
                node: self.node_facts(now),
                question: question.clone(),
            })));
        self.questions.insert(
            id,
            Asked {
                question,
                deadline: now.instant + POLICY_ANSWER_TIMEOUT,
                waiting,
            },
        );
    }

    /// The plugins answered: the decision is journaled, then what waited resumes. An answer
    /// after its timeout finds nothing waiting (the default was applied).
    fn on_policy_answer(&mut self, answer: PolicyAnswer, now: Now) {
        self.journal_disabled(answer.disabled, now);
        let Some(asked) = self.questions.remove(&answer.id) else {
            return;
        };
        let (decision, event) = asked.question.decide(Some(answer.answer));
        self.emit_all(event.into_iter().collect(), now);
        self.resume(asked.waiting, decision, now);
    }

    /// Questions unanswered past their deadline get the built-in default.
    fn expire_questions(&mut self, now: Now) {
        let expired: Vec<QuestionId> = self
            .questions
            .iter()
            .filter(|(_, asked)| asked.deadline <= now.instant)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(asked) = self.questions.remove(&id) {
                tracing::debug!(question = %asked.question.label(), "no policy answer in time; the default decides");
                let (decision, _) = asked.question.decide(None);
                self.resume(asked.waiting, decision, now);
            }
        }
    }

    /// Carries on with what waited for `decision`.
    fn resume(&mut self, waiting: Waiting, decision: Decision, now: Now) {
        match (waiting, decision) {
            (Waiting::Discovered { peer }, Decision::Trust { answer, plugin }) => {
                match (answer, plugin) {
                    (TrustAnswer::Trust, Some(plugin)) => {
                        self.trust_by_policy(&peer, plugin, now);
                        self.maybe_start(&peer, now);
                    }
                    (TrustAnswer::Ask, _) => self.request_authorization(&peer, now),
                    _ => {}
                }
            }
            (
                Waiting::Offer {
                    conn,
                    peer,
                    message,
                },
                Decision::Trust { answer, plugin },
            ) => match (answer, plugin) {
                (TrustAnswer::Trust, Some(plugin)) => {
                    self.trust_by_policy(&peer, plugin, now);
                    // Trusted now: the offer proceeds.
                    self.on_signal(conn, peer, message, now);
                }
                (answer, _) => {
                    if answer != TrustAnswer::Ignore {
                        self.request_authorization(&peer, now);
                    }
                    self.out.push_back(Output::Effect(Effect::Signal {
                        peer,
                        message: Message::Bye {
                            reason: "unauthorized".into(),
                        },
                    }));
                }
            },
            (Waiting::Start { peer, message }, Decision::Accept(answer)) => {
                // (A sender that left meanwhile sends its `start` again on reconnecting, and
                // that one rebuilds the receiver, as for any reconnect the node noticed late.)
                if self.state.is_trusted(&peer) {
                    self.feed_transfers(&peer, message, Some(answer), now);
                }
            }
            (Waiting::Schedule { peer }, Decision::Order(order)) => {
                let connected = self
                    .state
                    .peers
                    .get(&peer)
                    .is_some_and(|p| p.connection == super::ConnectionState::Connected);
                if connected {
                    let mut work = Vec::new();
                    self.transfers.connected(
                        &peer,
                        &self.state,
                        now.instant,
                        &mut work,
                        &mut |_| Some(order.clone()),
                    );
                    self.run(work, now);
                }
            }
            (Waiting::Finalize { id, mut op }, Decision::Mode(decided)) => {
                if let StoreOp::Finalize { mode, .. } = &mut op {
                    *mode = decided.or(*mode);
                }
                self.out.push_back(Output::Effect(Effect::Store { id, op }));
            }
            // `Question::decide` answers each question with a decision of its own kind.
            (waiting, decision) => {
                tracing::warn!(?waiting, ?decision, "a policy decision of the wrong kind")
            }
        }
    }

    fn node_facts(&self, now: Now) -> NodeFacts {
        NodeFacts {
            id: self.me.id.clone(),
            name: self.me.name.clone(),
            platform: Platform::current(),
            os: std::env::consts::OS,
            now_ms: now.wall_ms,
        }
    }

    fn peer_facts(&self, id: &DeviceId) -> PeerFacts {
        let known = self.state.peers.get(id);
        PeerFacts {
            id: id.clone(),
            name: known.map(|p| p.name.clone()).unwrap_or_default(),
            device_type: known.map_or(DeviceType::Unknown, |p| p.device_type),
            addresses: known.map(|p| p.addresses.clone()).unwrap_or_default(),
            port: known.map_or(0, |p| p.port),
        }
    }

    /// Journals what a round of questions recorded; the same plugin answer to the same
    /// question is journaled once per [`REQUEST_JOURNAL_INTERVAL_MS`] within a bounded memory.
    fn emit_all(&mut self, events: Vec<Event>, now: Now) {
        for event in events {
            if let Event::PolicyDecision {
                plugin,
                question,
                answer,
            } = &event
            {
                let key = format!("{plugin}\n{question}\n{answer}");
                let recent = self
                    .recent_decisions
                    .iter()
                    .any(|(k, at)| *k == key && now.wall_ms - at < REQUEST_JOURNAL_INTERVAL_MS);
                if recent {
                    continue;
                }
                if self.recent_decisions.len() == IGNORED_MEMORY {
                    self.recent_decisions.pop_front();
                }
                self.recent_decisions.push_back((key, now.wall_ms));
            }
            self.emit(event, now);
        }
    }

    /// Trusts `peer` on a plugin's word: the same event as `fsnode trust add`, by the plugin.
    fn trust_by_policy(&mut self, peer: &DeviceId, plugin: String, now: Now) {
        if self.state.is_trusted(peer) {
            return;
        }
        let name = self
            .state
            .peers
            .get(peer)
            .map(|p| p.name.clone())
            .filter(|n| !n.is_empty());
        self.emit(
            Event::PeerAuthorized {
                peer: peer.clone(),
                name,
                by: Authority::Policy { plugin },
            },
            now,
        );
        self.out.push_back(Output::Effect(Effect::TrustChanged));
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
            .min()
    }

    pub fn handle(&mut self, input: Input, now: Now) {
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
            Input::Signal {
                conn,
                peer,
                message,
            } => self.on_signal(conn, peer, message, now),
            Input::Channel { peer, data } => self.on_channel(peer, &data, now),
            Input::Store { id, result } => {
                let mut work = Vec::new();
                self.transfers
                    .on_store(id, result, &self.state, now.instant, &mut work);
                self.run(work, now);
            }
            Input::SendPrepared { token, result } => self.on_send_prepared(token, result, now),
            Input::SourceHashed { ids, result } => self.on_source_hashed(ids, result, now),
            Input::PolicyAnswer(answer) => self.on_policy_answer(answer, now),
            Input::Rtc { peer, event } => {
                if let Some(negotiation) = self.negotiations.get_mut(&peer) {
                    negotiation.handle(event, now.instant);
                    self.pump(&peer, now);
                }
            }
        }
        self.start_waiting_sends(now);
    }

    /// A send stopped: the next waiting ones start, within the caps (`core::transfers`).
    fn start_waiting_sends(&mut self, now: Now) {
        if self.transfers.slot_freed() {
            let mut work = Vec::new();
            self.transfers.fill(&self.state, now.instant, &mut work);
            self.run(work, now);
        }
    }

    /// Timers: negotiation deadlines, transfer deadlines, and probing trusted devices that
    /// mDNS does not show.
    pub fn handle_timeout(&mut self, now: Now) {
        self.expire_questions(now);
        let mut work = Vec::new();
        self.transfers
            .handle_timeout(now.instant, &self.state, &mut work);
        self.run(work, now);
        self.start_waiting_sends(now);
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
            self.pump(&peer, now);
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
            .filter(|(_, peer)| {
                !peer.discovered
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
        if let Event::PeerAuthorized { peer, .. } = &event {
            self.admission.forget(peer);
        }
        let stamped = Stamped {
            time_ms: now.wall_ms,
            event,
        };
        self.state.apply(&stamped);
        self.out.push_back(Output::Event(stamped));
    }

    fn on_announced(&mut self, announcement: &Announcement, now: Now) {
        let peer = match discovery::check(announcement) {
            Ok(peer) => peer,
            Err(reason) => {
                self.ignore(&announcement.instance, reason, now);
                return;
            }
        };
        if peer.id == self.me.id {
            return;
        }
        if self.state.is_trusted(&peer.id) {
            let learned = peer
                .addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, peer.port))
                .collect();
            self.seen_trusted(peer.id, peer.name, peer.device_type, learned, now);
            return;
        }
        let from = peer.addresses.first().copied();
        if !self.admit_sighting(&peer.id, from, false, now) {
            return;
        }
        self.discovered(
            peer.id,
            peer.name,
            peer.device_type,
            peer.addresses,
            peer.port,
            now,
        );
    }

    /// Passes one sighting of an untrusted device through admission: true when it may be
    /// journaled now (then it counts as journaled).
    fn admit_sighting(
        &mut self,
        id: &DeviceId,
        from: Option<IpAddr>,
        operator: bool,
        now: Now,
    ) -> bool {
        match self.admission.sighting(id, from, operator, now.instant) {
            Verdict::Record => {
                self.admission.journaled(id, now.instant);
                true
            }
            Verdict::Quiet | Verdict::Dropped => false,
        }
    }

    /// A trusted device seen through unauthenticated input (`hello` or mDNS) at `learned`
    /// (spec 3.4). Nothing stored changes unless it is seen where it was already known to be:
    /// another address is only a candidate to try, recorded once a session authenticated with
    /// its key is negotiated through it.
    fn seen_trusted(
        &mut self,
        id: DeviceId,
        name: String,
        device_type: DeviceType,
        learned: Vec<SocketAddr>,
        now: Now,
    ) {
        let Some(known) = self.state.peers.get(&id) else {
            return;
        };
        let never_reached = known.port == 0 || known.addresses.is_empty();
        let dialable: Vec<SocketAddr> = learned.into_iter().filter(|a| a.port() != 0).collect();
        if never_reached {
            // Nothing authenticated to protect yet (trusted by id before it was ever seen):
            // the first address heard of is where to try.
            if let Some(first) = dialable.first() {
                let addresses = dialable.iter().map(SocketAddr::ip).collect();
                self.discovered(id, name, device_type, addresses, first.port(), now);
            }
            return;
        }
        let (addresses, port) = (known.addresses.clone(), known.port);
        let at_known = dialable
            .iter()
            .any(|a| a.port() == port && addresses.contains(&a.ip()));
        if at_known {
            self.discovered(id, name, device_type, addresses, port, now);
            return;
        }
        let candidates = self.candidates.entry(id.clone()).or_default();
        let before = candidates.clone();
        for addr in dialable.into_iter().rev() {
            candidates.retain(|a| *a != addr);
            candidates.push_front(addr);
        }
        candidates.truncate(MAX_CANDIDATES);
        if *candidates != before {
            self.out
                .push_back(Output::Effect(Effect::PeerSeen { peer: id.clone() }));
        }
        self.maybe_start(&id, now);
    }

    /// Where `peer` can be reached: its stored addresses (where an authenticated session last
    /// was), then the candidates unauthenticated input named. Empty for an untrusted device:
    /// the node never dials what it does not trust, so no host can make it connect elsewhere.
    pub fn route(&self, peer: &DeviceId) -> Route {
        let Some(known) = self.state.peers.get(peer).filter(|p| p.trusted) else {
            return Route::default();
        };
        let stored = if known.port == 0 {
            Vec::new()
        } else {
            known
                .addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, known.port))
                .collect()
        };
        let candidates = self
            .candidates
            .get(peer)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default();
        Route { stored, candidates }
    }

    /// The addresses `peer` is dialled at, in order (see [`Core::route`]).
    pub fn dial_addresses(&self, peer: &DeviceId) -> Vec<SocketAddr> {
        self.route(peer).dial_order().into()
    }

    /// Whether `peer`'s session is up while `conn` comes from an address that is not one of
    /// its stored (authenticated) addresses.
    fn live_elsewhere(&self, peer: &DeviceId, conn: ConnId) -> bool {
        let Some(known) = self.state.peers.get(peer) else {
            return false;
        };
        let connected = known.connection == super::ConnectionState::Connected;
        connected
            && !self
                .conns
                .get(&conn)
                .is_some_and(|from| known.addresses.contains(&from.ip()))
    }

    /// What admission dropped so far (for tests and measurements).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// A session with `peer` came up (its data channel opened, so DTLS proved its key): the
    /// address it was negotiated through becomes its stored address.
    fn authenticated(&mut self, peer: &DeviceId, now: Now) {
        let Some(via) = self.negotiated_via.get(peer).copied() else {
            return;
        };
        let Some(known) = self.state.peers.get(peer) else {
            return;
        };
        if via.port() == 0
            || (known.port == via.port() && known.addresses.first() == Some(&via.ip()))
        {
            return;
        }
        let mut addresses = vec![via.ip()];
        addresses.extend(known.addresses.iter().filter(|ip| **ip != via.ip()));
        addresses.truncate(discovery::MAX_ADDRESSES);
        let (name, device_type) = (known.name.clone(), known.device_type);
        if let Some(candidates) = self.candidates.get_mut(peer) {
            candidates.retain(|a| *a != via);
        }
        self.emit(
            Event::PeerDiscovered {
                peer: peer.clone(),
                name,
                device_type,
                addresses,
                port: via.port(),
            },
            now,
        );
    }

    /// Journals an ignored announcement once per (instance, reason) within a bounded memory,
    /// and within admission's budget of ignored announcements.
    fn ignore(&mut self, instance: &str, reason: String, now: Now) {
        let key = format!("{instance}\n{reason}");
        if self.ignored.contains(&key) {
            return;
        }
        if self.ignored.len() == IGNORED_MEMORY {
            self.ignored.pop_front();
        }
        self.ignored.push_back(key);
        if !self.admission.may_record_ignored(now.instant) {
            return; // a flood of distinct bad announcements: counted, not journaled
        }
        let instance: String = instance.chars().take(128).collect();
        self.emit(Event::AnnouncementIgnored { instance, reason }, now);
    }

    /// Records a peer as seen, unless nothing changed (re-announcements are frequent).
    fn discovered(
        &mut self,
        id: DeviceId,
        name: String,
        device_type: DeviceType,
        addresses: Vec<std::net::IpAddr>,
        port: u16,
        now: Now,
    ) {
        let unchanged = self.state.peers.get(&id).is_some_and(|known| {
            known.discovered
                && known.name == name
                && known.device_type == device_type
                && known.addresses == addresses
                && known.port == port
        });
        if !unchanged {
            self.emit(
                Event::PeerDiscovered {
                    peer: id.clone(),
                    name,
                    device_type,
                    addresses,
                    port,
                },
                now,
            );
            // Asked when what is known of an untrusted device changes, not per announcement.
            if !self.state.is_trusted(&id) {
                let question = Question::OnDiscovered {
                    peer: self.peer_facts(&id),
                };
                self.ask(question, Waiting::Discovered { peer: id.clone() }, now);
            }
        }
        self.maybe_start(&id, now);
    }

    /// Connects to a trusted, reachable peer unless already connected or negotiating.
    fn maybe_start(&mut self, peer: &DeviceId, now: Now) {
        let reachable = self.state.peers.get(peer).is_some_and(|p| p.trusted)
            && !self.dial_addresses(peer).is_empty();
        if !reachable {
            return;
        }
        self.negotiations
            .entry(peer.clone())
            .or_insert_with(|| Negotiation::new(&self.me.id, peer.clone()))
            .handle(negotiation::Input::Start, now.instant);
        self.pump(peer, now);
    }

    /// Moves a negotiation's outputs into the core's: events journaled, messages and actions
    /// as effects.
    fn pump(&mut self, peer: &DeviceId, now: Now) {
        while let Some(output) = self
            .negotiations
            .get_mut(peer)
            .and_then(Negotiation::poll_output)
        {
            match output {
                negotiation::Output::Record(event) => {
                    let connected = matches!(event, Event::Connected { .. });
                    let disconnected = matches!(
                        event,
                        Event::Disconnected { .. } | Event::NegotiationFailed { .. }
                    );
                    self.emit(event, now);
                    if connected {
                        self.authenticated(peer, now);
                    }
                    if disconnected
                        && self.goodbyes_while_connected.remove(peer)
                        && self.state.peers.get(peer).is_some_and(|p| p.discovered)
                    {
                        self.emit(Event::PeerLost { peer: peer.clone() }, now);
                    }
                    if connected {
                        self.connect_transfers(peer, now);
                    } else if disconnected {
                        let mut work = Vec::new();
                        self.transfers.disconnected(peer, &mut work);
                        self.run(work, now);
                    }
                }
                negotiation::Output::Send(mut message) => {
                    if let Message::Candidate(candidate) = &mut message {
                        // Spec 3.2: every candidate, end-of-candidates included, names the
                        // data m-line (browsers reject one that does not), whatever the
                        // WebRTC adapter filled in.
                        if candidate.sdp_mid.as_deref().is_none_or(str::is_empty) {
                            candidate.sdp_mid = Some(DATA_MID.into());
                        }
                        candidate.sdp_mline_index.get_or_insert(0);
                    }
                    self.out.push_back(Output::Effect(Effect::Signal {
                        peer: peer.clone(),
                        message,
                    }))
                }
                negotiation::Output::Act(action) => {
                    self.out.push_back(Output::Effect(Effect::Rtc {
                        peer: peer.clone(),
                        action,
                    }))
                }
            }
        }
    }

    fn on_signal(&mut self, conn: ConnId, peer: DeviceId, message: Message, now: Now) {
        if peer == self.me.id {
            return;
        }
        let (sdp, is_offer) = match &message {
            Message::Offer { sdp, .. } => (Some(sdp), true),
            Message::Answer { sdp, .. } => (Some(sdp), false),
            _ => (None, false),
        };
        // Spec 3.4: every offer and answer must carry the fingerprint of the id its sender
        // announced; DTLS then proves the key. Checked before anything else looks at it.
        if let Some(sdp) = sdp
            && !sdp::fingerprints_match(sdp, &peer).unwrap_or(false)
        {
            let fingerprint = sdp::sha256_fingerprints(sdp)
                .ok()
                .and_then(|ids| ids.into_iter().find(|id| *id != peer))
                .map_or_else(|| "missing or malformed".to_owned(), |id| id.to_string());
            // Where the connection came from (not where the claimed device is known to be:
            // that is the point of an impostor).
            let address = self.conns.get(&conn).copied();
            // Journaled once per claimed device and source address per hour, and for an
            // untrusted claim only if admission holds it: a host reconnecting to repeat a
            // bad offer cannot grow the journal (spec 3.4). The connection closes each time.
            let trusted = self.state.is_trusted(&peer);
            let key = (peer.clone(), address.map(|a| a.ip()));
            let recent = self
                .recent_mismatches
                .iter()
                .any(|(k, at)| *k == key && now.wall_ms - at < REQUEST_JOURNAL_INTERVAL_MS);
            if !recent && (trusted || self.admission.holds(&peer)) {
                if self.recent_mismatches.len() >= MISMATCH_MEMORY {
                    self.recent_mismatches.pop_front();
                }
                self.recent_mismatches.push_back((key, now.wall_ms));
                self.emit(
                    Event::FingerprintMismatch {
                        claimed: peer,
                        fingerprint,
                        address,
                    },
                    now,
                );
            }
            self.out
                .push_back(Output::Effect(Effect::CloseSignaling { conn }));
            return;
        }
        if !self.state.is_trusted(&peer) {
            // Answers and candidates from an untrusted device concern nothing we started; an
            // offer waits for policy.
            if is_offer {
                self.on_untrusted_offer(conn, peer, message, now);
            }
            return;
        }
        if matches!(message, Message::Offer { .. } | Message::Candidate(_))
            && self.live_elsewhere(&peer, conn)
        {
            // Spec 3.4: while a trusted device's session is up, an offer (or its candidates)
            // on a connection from an address the device was never authenticated at cannot
            // touch that session: renegotiating it on an unauthenticated word would let any
            // host cut two devices apart. A device that really moved is answered once its old
            // session fails (or when the link runs sessions side by side, spec 3.3).
            return;
        }
        if let Message::Offer { sdp, .. } | Message::Answer { sdp, .. } = &message {
            self.transfers
                .set_max_message_size(&peer, sdp::max_message_size(sdp));
            if let Some(via) = self.conns.get(&conn) {
                self.negotiated_via.insert(peer.clone(), *via);
            }
        }
        let input = match message {
            Message::Offer { sdp, seq } => negotiation::Input::RemoteOffer { sdp, seq },
            Message::Answer { sdp, seq } => negotiation::Input::RemoteAnswer { sdp, seq },
            Message::Candidate(candidate) => negotiation::Input::RemoteCandidate(candidate),
            Message::Bye { reason } => negotiation::Input::Bye { reason },
            Message::Hello(_) | Message::HelloWrongVersion | Message::Unknown => return,
        };
        self.negotiations
            .entry(peer.clone())
            .or_insert_with(|| Negotiation::new(&self.me.id, peer.clone()))
            .handle(input, now.instant);
        self.pump(&peer, now);
    }

    /// An offer from a device the operator has not trusted: policy decides (spec 3.4). The
    /// built-in default records an authorization request, answers `bye unauthorized` and
    /// connects nothing; a plugin may trust the device, and then the offer proceeds (see
    /// [`Core::resume`]).
    fn on_untrusted_offer(&mut self, conn: ConnId, peer: DeviceId, message: Message, now: Now) {
        if !self.admission.may_ask(&peer, now.instant) {
            // Not admitted (its address brought too many new ids, or it was evicted), or
            // asked about within the minute: refused without asking policy or recording
            // anything, whatever the rate of its offers.
            self.out.push_back(Output::Effect(Effect::Signal {
                peer,
                message: Message::Bye {
                    reason: "unauthorized".into(),
                },
            }));
            return;
        }
        let question = Question::OnOffer {
            peer: self.peer_facts(&peer),
        };
        let waiting = Waiting::Offer {
            conn,
            peer,
            message,
        };
        self.ask(question, waiting, now);
    }

    /// Records that an untrusted device asked to connect, at most once per interval.
    fn request_authorization(&mut self, peer: &DeviceId, now: Now) {
        let known = self.state.peers.get(peer);
        let recently = known
            .and_then(|p| p.requested_at_ms)
            .is_some_and(|at| now.wall_ms - at < REQUEST_JOURNAL_INTERVAL_MS);
        if recently {
            return;
        }
        let (name, device_type, address) = known.map_or_else(
            || (String::new(), DeviceType::Unknown, None),
            |p| {
                (
                    p.name.clone(),
                    p.device_type,
                    p.addresses.first().map(|ip| SocketAddr::new(*ip, p.port)),
                )
            },
        );
        self.emit(
            Event::AuthorizationRequested {
                peer: peer.clone(),
                name,
                device_type,
                address,
            },
            now,
        );
    }

    fn on_withdrawn(&mut self, instance: &str, now: Now) {
        let Some(id) = discovery::instance_device_id(instance) else {
            return;
        };
        let Some(known) = self.state.peers.get(&id) else {
            return;
        };
        // An mDNS goodbye is unauthenticated: while a trusted device's session is up, that
        // session is the better evidence, so a forged goodbye changes nothing (spec 3.4).
        if known.trusted && known.connection == super::ConnectionState::Connected {
            // Held until the session ends: if it does, the goodbye was likely true.
            self.goodbyes_while_connected.insert(id);
            return;
        }
        if known.discovered {
            self.emit(Event::PeerLost { peer: id }, now);
        }
    }

    fn on_hello(
        &mut self,
        conn: ConnId,
        from: SocketAddr,
        hello: Hello,
        token: Option<Token>,
        now: Now,
    ) {
        if self.conns.len() < MAX_CONNS || self.conns.contains_key(&conn) {
            self.conns
                .insert(conn, SocketAddr::new(from.ip(), hello.port));
        }
        if hello.id == self.me.id {
            if let Some(token) = token {
                self.out.push_back(Output::Outcome {
                    token,
                    outcome: Outcome::refused(RefusalKind::BadRequest, "that address is this node"),
                });
            }
            return;
        }
        let id = hello.id.clone();
        if self.state.is_trusted(&id) {
            let learned = vec![SocketAddr::new(from.ip(), hello.port)];
            self.seen_trusted(id.clone(), hello.name, hello.device_type, learned, now);
        } else if self.admit_sighting(&id, Some(from.ip()), token.is_some(), now) {
            self.hello_from_untrusted(from, hello, now);
        }
        if let Some(token) = token {
            self.out.push_back(Output::Outcome {
                token,
                outcome: Outcome::Reached(id),
            });
        }
    }

    /// A `hello` from an untrusted device that admission let through: recorded.
    fn hello_from_untrusted(&mut self, from: SocketAddr, hello: Hello, now: Now) {
        // A direct hello: the address it came from and the port it announces.
        let mut addresses = self
            .state
            .peers
            .get(&hello.id)
            .map(|p| p.addresses.clone())
            .unwrap_or_default();
        if !addresses.contains(&from.ip()) {
            addresses.insert(0, from.ip());
            addresses.truncate(discovery::MAX_ADDRESSES);
        }
        self.discovered(
            hello.id,
            hello.name,
            hello.device_type,
            addresses,
            hello.port,
            now,
        );
    }

    fn on_command(&mut self, command: Command, token: Token, now: Now) -> Option<Outcome> {
        Some(match command {
            Command::TrustAdd { device } => {
                let id = match self.resolve(&device, false) {
                    Ok(id) => id,
                    Err(refusal) => return Some(Outcome::Refused(refusal)),
                };
                if id == self.me.id {
                    return Some(Outcome::refused(
                        RefusalKind::BadRequest,
                        "that is this node's own id",
                    ));
                }
                if !self.state.is_trusted(&id) {
                    self.emit(
                        Event::PeerAuthorized {
                            peer: id.clone(),
                            name: None,
                            by: Authority::Operator,
                        },
                        now,
                    );
                    self.out.push_back(Output::Effect(Effect::TrustChanged));
                }
                // Authorizing a device makes this node the initiator towards it (spec 3.4).
                self.maybe_start(&id, now);
                Outcome::Trusted(id)
            }
            Command::TrustRemove { device } => {
                let id = match self.resolve(&device, true) {
                    Ok(id) => id,
                    Err(refusal) => return Some(Outcome::Refused(refusal)),
                };
                if self.state.is_trusted(&id) {
                    self.emit(
                        Event::PeerRevoked {
                            peer: id.clone(),
                            by: Authority::Operator,
                        },
                        now,
                    );
                    self.out.push_back(Output::Effect(Effect::TrustChanged));
                }
                if self.negotiations.remove(&id).is_some() {
                    self.out.push_back(Output::Effect(Effect::Rtc {
                        peer: id.clone(),
                        action: Action::Close,
                    }));
                    let connected = self
                        .state
                        .peers
                        .get(&id)
                        .is_some_and(|p| p.connection != super::ConnectionState::NotConnected);
                    if connected {
                        self.emit(
                            Event::Disconnected {
                                peer: id.clone(),
                                reason: "no longer trusted".into(),
                            },
                            now,
                        );
                    }
                }
                Outcome::Revoked(id)
            }
            Command::Send { paths, to } => {
                let mut peers = Vec::new();
                for typed in &to {
                    match self.resolve(typed, true) {
                        Ok(peer) => peers.push(peer),
                        Err(mut refusal) => {
                            if refusal.kind == RefusalKind::NotFound {
                                refusal.message = format!(
                                    "{} (send goes to trusted devices only: `fsnode trust add` first)",
                                    refusal.message
                                );
                            }
                            return Some(Outcome::Refused(refusal));
                        }
                    }
                }
                if paths.is_empty() || peers.is_empty() {
                    return Some(Outcome::refused(RefusalKind::BadRequest, "nothing to send"));
                }
                // `--to A --to B --to A` sends once to A: keep each device's first mention.
                let mut seen = std::collections::HashSet::new();
                peers.retain(|peer| seen.insert(peer.clone()));
                self.out.push_back(Output::Effect(Effect::PrepareSend {
                    token,
                    paths,
                    peers,
                }));
                // Answered once the files are hashed and queued.
                return None;
            }
            Command::Cancel { transfer } => self.on_cancel(&transfer, now),
            Command::Dial { address } => {
                self.out.push_back(Output::Effect(Effect::Dial {
                    addr: address,
                    token: Some(token),
                }));
                // Answered when the hello arrives or the dial fails.
                return None;
            }
        })
    }

    /// Resolves an operator-typed device among known devices (only trusted ones if
    /// `trusted_only`); the error is the reply.
    fn resolve(&self, typed: &str, trusted_only: bool) -> Result<DeviceId, Refusal> {
        let known = self
            .state
            .peers
            .iter()
            .filter(|(_, p)| !trusted_only || p.trusted)
            .map(|(id, _)| id);
        trust::resolve(typed, known).map_err(|err| match &err {
            ResolveError::Ambiguous { candidates, .. } => Refusal {
                kind: RefusalKind::Ambiguous,
                message: err.to_string(),
                candidates: candidates.clone(),
            },
            ResolveError::NoMatch(_) => Refusal::new(RefusalKind::NotFound, err.to_string()),
            ResolveError::Invalid(_) => Refusal::new(RefusalKind::BadRequest, err.to_string()),
        })
    }

    /// Starts `peer`'s queued sends in the order policy gives (once it gave it).
    fn connect_transfers(&mut self, peer: &DeviceId, now: Now) {
        let mut queue = Vec::new();
        let mut work = Vec::new();
        self.transfers
            .connected(peer, &self.state, now.instant, &mut work, &mut |facts| {
                queue = facts;
                None
            });
        self.run(work, now);
        let connected: Vec<DeviceId> = self
            .state
            .peers
            .keys()
            .filter(|id| self.transfers.is_connected(id))
            .cloned()
            .collect();
        let question = Question::Schedule { queue, connected };
        self.ask(question, Waiting::Schedule { peer: peer.clone() }, now);
    }

    /// Does the work the transfer manager asked for, in order.
    fn run(&mut self, work: Vec<Work>, now: Now) {
        for item in work {
            match item {
                Work::Record(event) => self.emit(event, now),
                Work::Store {
                    id,
                    op: op @ StoreOp::Finalize { mode, mtime, .. },
                } => match self.state.transfers.get(&id) {
                    Some(t) => {
                        let file = FileFacts {
                            id,
                            name: t.name.clone(),
                            size: t.size,
                            mime: t.mime.clone().unwrap_or_default(),
                            mode,
                            mtime,
                        };
                        self.ask(
                            Question::MapMode { file },
                            Waiting::Finalize { id, op },
                            now,
                        );
                    }
                    None => self.out.push_back(Output::Effect(Effect::Store { id, op })),
                },
                Work::Store {
                    id,
                    op: StoreOp::Close,
                } => {
                    // Over here: a finalize still waiting for its mode is moot.
                    self.questions.retain(
                        |_, asked| !matches!(&asked.waiting, Waiting::Finalize { id: f, .. } if *f == id),
                    );
                    self.out.push_back(Output::Effect(Effect::Store {
                        id,
                        op: StoreOp::Close,
                    }))
                }
                Work::Channel { peer, message } => {
                    self.out.push_back(Output::Effect(Effect::ChannelSend {
                        peer,
                        data: transfer::encode(&message),
                    }))
                }
                Work::Store { id, op } => {
                    self.out.push_back(Output::Effect(Effect::Store { id, op }))
                }
            }
        }
    }

    fn on_channel(&mut self, peer: DeviceId, data: &[u8], now: Now) {
        if !self.state.is_trusted(&peer) {
            return; // never accept data from a device that is not trusted (spec 3.4)
        }
        match transfer::wire::decode_within(data, super::transfers::MAX_MESSAGE_BYTES) {
            Ok(Some(message)) => self.feed_transfers(&peer, message, None, now),
            Ok(None) => {} // an unknown kind: ignored (spec 4)
            Err(error) => match error.readable_id() {
                // Spec 4: a known kind with a key missing or mistyped, whose `id` is readable,
                // gets `reject` `invalid`; the channel stays.
                Some(id) => self.out.push_back(Output::Effect(Effect::ChannelSend {
                    peer,
                    data: transfer::encode(&transfer::Message::Reject {
                        id,
                        reason: error.into_cause().to_string(),
                        code: Some(transfer::wire::RejectCode::Invalid),
                    }),
                })),
                // Spec 4: a message that is not valid CBOR closes the data channel.
                None => {
                    if let Some(negotiation) = self.negotiations.get_mut(&peer) {
                        negotiation.handle(
                            negotiation::Input::Lost {
                                reason: format!("invalid transfer message: {error}"),
                            },
                            now.instant,
                        );
                        self.pump(&peer, now);
                    }
                }
            },
        }
    }

    /// A message from `peer`'s channel for the transfers. A `start` of a new file waits for
    /// policy unless `accept` already is its answer.
    fn feed_transfers(
        &mut self,
        peer: &DeviceId,
        message: transfer::Message,
        accept: Option<AcceptAnswer>,
        now: Now,
    ) {
        let start = matches!(message, transfer::Message::Start { .. }).then(|| message.clone());
        let mut offered = None;
        let mut work = Vec::new();
        self.transfers.on_message(
            peer,
            message,
            &self.state,
            now.instant,
            &mut work,
            &mut |_, start| {
                if accept.is_none() {
                    offered = Some(FileFacts {
                        id: start.id,
                        name: start.name.clone(),
                        size: start.size,
                        mime: start.mime.clone(),
                        mode: start.mode,
                        mtime: start.mtime,
                    });
                }
                accept.clone()
            },
        );
        self.run(work, now);
        let (Some(file), Some(message)) = (offered, start) else {
            return;
        };
        let asked_already = self.questions.values().any(|asked| {
            matches!(&asked.waiting, Waiting::Start { message: transfer::Message::Start { id, .. }, .. } if *id == file.id)
        });
        if asked_already {
            return; // a repeated `start`: the first one's answer serves it
        }
        let question = Question::OnTransfer {
            peer: self.peer_facts(peer),
            file,
        };
        let waiting = Waiting::Start {
            peer: peer.clone(),
            message,
        };
        self.ask(question, waiting, now);
    }

    fn on_send_prepared(
        &mut self,
        token: Token,
        result: Result<Vec<QueuedFile>, String>,
        now: Now,
    ) {
        let files = match result {
            Ok(files) => files,
            Err(message) => {
                self.out.push_back(Output::Outcome {
                    token,
                    outcome: Outcome::refused(RefusalKind::BadRequest, message),
                });
                return;
            }
        };
        let mut peers = Vec::new();
        for file in &files {
            self.emit(
                Event::TransferQueued {
                    id: file.id,
                    peer: file.peer.clone(),
                    direction: Direction::Send,
                    name: file.name.clone(),
                    size: file.size,
                    path: Some(file.path.clone()),
                    mime: Some(file.mime.clone()),
                    mode: Some(file.mode),
                    mtime: file.mtime,
                    sha256: file.sha256,
                    dir: None,
                },
                now,
            );
            if !peers.contains(&file.peer) {
                peers.push(file.peer.clone());
            }
        }
        self.hash_sources(
            files
                .iter()
                .filter(|f| f.sha256.is_none())
                .map(|f| (f.path.clone(), f.id)),
        );
        self.out.push_back(Output::Outcome {
            token,
            outcome: Outcome::Queued(files.iter().map(|f| f.id).collect()),
        });
        // Peers already connected start at once; the others when they connect.
        for peer in peers {
            if self.transfers.is_connected(&peer) {
                self.connect_transfers(&peer, now);
            }
        }
    }

    /// Asks the shell to hash each file once for all the transfers sending it.
    fn hash_sources(&mut self, files: impl Iterator<Item = (std::path::PathBuf, TransferId)>) {
        let mut by_path: BTreeMap<std::path::PathBuf, Vec<TransferId>> = BTreeMap::new();
        for (path, id) in files {
            by_path.entry(path).or_default().push(id);
        }
        for (path, ids) in by_path {
            self.out
                .push_back(Output::Effect(Effect::HashSource { path, ids }));
        }
    }

    fn on_source_hashed(
        &mut self,
        ids: Vec<TransferId>,
        result: Result<[u8; 32], String>,
        now: Now,
    ) {
        for id in ids {
            let pending = self
                .state
                .transfers
                .get(&id)
                .is_some_and(|t| !t.status.is_finished() && t.sha256.is_none());
            if !pending {
                continue;
            }
            let mut work = Vec::new();
            match &result {
                Ok(sha256) => {
                    self.emit(
                        Event::TransferHashed {
                            id,
                            sha256: *sha256,
                        },
                        now,
                    );
                    self.transfers.hashed(&id, *sha256, now.instant, &mut work);
                }
                Err(reason) => {
                    if !self
                        .transfers
                        .hash_failed(&id, reason.clone(), now.instant, &mut work)
                    {
                        self.emit(
                            Event::TransferFailed {
                                id,
                                reason: format!("sender: {reason}"),
                            },
                            now,
                        );
                    }
                }
            }
            self.run(work, now);
        }
    }

    fn on_cancel(&mut self, typed: &str, now: Now) -> Outcome {
        let typed = typed.trim().to_ascii_lowercase();
        let matches: Vec<TransferId> = self
            .state
            .transfers
            .keys()
            .filter(|id| id.to_string().starts_with(&typed))
            .copied()
            .collect();
        let id = match (typed.len() >= 4, matches.as_slice()) {
            (false, _) => {
                return Outcome::refused(
                    RefusalKind::BadRequest,
                    "type at least 4 hex digits of the transfer id (`fsnode transfers`)",
                );
            }
            (true, [id]) => *id,
            (true, []) => {
                return Outcome::refused(RefusalKind::NotFound, format!("no transfer {typed}"));
            }
            (true, _) => {
                return Outcome::refused(
                    RefusalKind::Ambiguous,
                    format!("{typed} matches {} transfers; type more", matches.len()),
                );
            }
        };
        let finished = self.state.transfers[&id].status.is_finished();
        if !finished {
            let mut work = Vec::new();
            let live = self.transfers.cancel_local(&id, now.instant, &mut work);
            self.run(work, now);
            if !live {
                // Not running now: record it; a sender re-sends the cancel on reconnecting.
                self.emit(
                    Event::TransferCancelled {
                        id,
                        by: super::Side::Local,
                        reason: "cancelled by the operator".into(),
                    },
                    now,
                );
            }
        }
        Outcome::Cancelled(id)
    }
}

#[cfg(test)]
mod tests;
