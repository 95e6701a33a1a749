//! The questions the core asks policy (design.md, "Policy is a question, not a branch"), the
//! facts it hands over and the answers it takes, plus the built-in default.
//!
//! The core never calls a plugin. It emits a [`PolicyRequest`] (a numbered [`Question`]) as an
//! effect, keeps what waits for the answer, and takes the [`PolicyAnswer`] back as an input;
//! the shell asks the [`Policy`] on a thread of its own (`shell::policy`). Every answer a
//! plugin gave is journaled as a `PolicyDecision` event (and a disabled plugin as
//! `PluginDisabled`) before what it causes, so replay never calls a plugin: the events carry the
//! answers. The implementation that runs wasm components is the host in `crate::policy`;
//! [`NoPlugins`] is the node without plugins (the core then asks nothing and applies
//! [`default`] at once).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{DeviceId, DeviceType, TransferId};

/// The names of the plugins in use (loaded and not disabled), in the order they are asked.
pub fn in_use(plugins: &[PluginStatus]) -> Vec<String> {
    plugins
        .iter()
        .filter(|p| p.version.is_some() && p.disabled.is_none())
        .map(|p| p.name.clone())
        .collect()
}

/// One policy plugin as the host holds it (for `fsnode plugins list`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// Its position in the order in which plugins are asked (1 first).
    pub order: usize,
    pub name: String,
    pub path: String,
    /// The contract version it exports (`0.1.0`), when it loaded that far.
    pub version: Option<String>,
    /// Why the host stopped using it; `None` while it is in use.
    pub disabled: Option<String>,
    /// Questions it was asked, and the fuel they cost in total.
    pub calls: u64,
    pub fuel: u64,
}

/// The family of platform the node runs on, for permission mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// POSIX permission bits exist.
    Posix,
    /// No POSIX permission bits (only read-only and executable matter).
    Other,
}

impl Platform {
    /// The platform this build runs on.
    pub const fn current() -> Self {
        if cfg!(unix) {
            Platform::Posix
        } else {
            Platform::Other
        }
    }
}

/// Facts about the node asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    pub id: DeviceId,
    pub name: String,
    pub platform: Platform,
    /// `std::env::consts::OS`.
    pub os: &'static str,
    /// Wall clock, unix milliseconds (plugins have no clock of their own).
    pub now_ms: i64,
}

/// Facts about a remote device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerFacts {
    pub id: DeviceId,
    pub name: String,
    pub device_type: DeviceType,
    pub addresses: Vec<IpAddr>,
    pub port: u16,
}

/// Facts about an incoming (or received) file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileFacts {
    pub id: TransferId,
    pub name: String,
    pub size: u64,
    pub mime: String,
    pub mode: Option<u32>,
    pub mtime: Option<i64>,
}

/// A transfer waiting to start (sender side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedFacts {
    pub id: TransferId,
    pub peer: DeviceId,
    pub name: String,
    pub size: u64,
    pub mime: String,
    pub done_bytes: u64,
    pub queued_at_ms: i64,
}

/// What to do about a device this node does not trust.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustAnswer {
    Trust,
    Ask,
    Ignore,
}

/// Whether to take an incoming file, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcceptAnswer {
    /// Take it, into `dir` under the receive directory when set (already checked like a
    /// received name).
    Accept {
        dir: Option<String>,
    },
    Reject {
        reason: String,
    },
}

/// A plugin's answer and who gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided<T> {
    pub plugin: String,
    pub answer: T,
}

/// A plugin the host stopped using, and why (journaled as `PluginDisabled`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disabled {
    pub plugin: String,
    pub reason: String,
}

/// The questions. Each returns the first plugin's (checked) answer, or `None` when no plugin
/// has an opinion; the core then applies the built-in default. Every question defaults to no
/// opinion, so a policy answers only what it cares about.
pub trait Policy: Send {
    fn on_discovered(
        &mut self,
        _node: &NodeFacts,
        _peer: &PeerFacts,
    ) -> Option<Decided<TrustAnswer>> {
        None
    }

    fn on_offer(&mut self, _node: &NodeFacts, _peer: &PeerFacts) -> Option<Decided<TrustAnswer>> {
        None
    }

    fn on_transfer(
        &mut self,
        _node: &NodeFacts,
        _peer: &PeerFacts,
        _file: &FileFacts,
    ) -> Option<Decided<AcceptAnswer>> {
        None
    }

    /// An order for (some of) `queue`: only ids from `queue`, each at most once.
    fn schedule(
        &mut self,
        _node: &NodeFacts,
        _queue: &[QueuedFacts],
        _connected: &[DeviceId],
    ) -> Option<Decided<Vec<TransferId>>> {
        None
    }

    /// Permission bits (no setuid, setgid or sticky: at most `0o777`).
    fn map_mode(&mut self, _node: &NodeFacts, _file: &FileFacts) -> Option<Decided<u32>> {
        None
    }

    /// Plugins disabled since the last call (at load, or by misbehaving), to journal.
    fn take_disabled(&mut self) -> Vec<Disabled> {
        Vec::new()
    }

    /// The plugins, in order, for `fsnode plugins list`.
    fn describe(&self) -> Vec<PluginStatus> {
        Vec::new()
    }
}

/// The node without plugins: every question goes to the built-in default.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPlugins;

impl Policy for NoPlugins {}

/// The built-in answers, where no plugin gave one.
pub mod default {
    use super::TrustAnswer;

    /// A discovered untrusted device is listed for the operator; nothing else happens.
    pub const ON_DISCOVERED: TrustAnswer = TrustAnswer::Ignore;
    /// An offer from an untrusted device becomes an authorization request (spec 3.4).
    pub const ON_OFFER: TrustAnswer = TrustAnswer::Ask;
}

/// How answers read in the journal (`PolicyDecision.answer`).
impl TrustAnswer {
    pub fn label(self) -> &'static str {
        match self {
            TrustAnswer::Trust => "trust",
            TrustAnswer::Ask => "ask",
            TrustAnswer::Ignore => "ignore",
        }
    }
}

impl AcceptAnswer {
    pub fn label(&self) -> String {
        match self {
            AcceptAnswer::Accept { dir: None } => "accept".into(),
            AcceptAnswer::Accept { dir: Some(dir) } => format!("accept into {dir}"),
            AcceptAnswer::Reject { reason } => format!("reject: {reason}"),
        }
    }
}

/// A question the core asks policy, with the facts the plugins see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Question {
    /// An untrusted device was discovered, or what is known of it changed.
    OnDiscovered { peer: PeerFacts },
    /// An untrusted device sent an offer.
    OnOffer { peer: PeerFacts },
    /// A trusted device offers a new file.
    OnTransfer { peer: PeerFacts, file: FileFacts },
    /// The order in which the sends waiting for connected peers start.
    Schedule {
        queue: Vec<QueuedFacts>,
        connected: Vec<DeviceId>,
    },
    /// The permission bits of a received file.
    MapMode { file: FileFacts },
}

/// Numbers the questions of one node run, so an answer finds what waits for it.
pub type QuestionId = u64;

/// A question on its way to the plugins (the core's `Effect::AskPolicy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRequest {
    pub id: QuestionId,
    pub node: NodeFacts,
    pub question: Question,
}

/// What the plugins said to a question: the first plugin's answer, `None` for no opinion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Trust(Option<Decided<TrustAnswer>>),
    Accept(Option<Decided<AcceptAnswer>>),
    Order(Option<Decided<Vec<TransferId>>>),
    Mode(Option<Decided<u32>>),
}

/// The plugins' answer to request `id` (the core's `Input::PolicyAnswer`), with the plugins
/// the host disabled since its last answer, for the core to journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyAnswer {
    pub id: QuestionId,
    pub answer: Answer,
    pub disabled: Vec<Disabled>,
}

impl PolicyRequest {
    /// Asks `policy` the question. The shell calls this on its policy thread, never on the
    /// node's loop: a plugin may take up to its deadline.
    pub fn ask(&self, policy: &mut dyn Policy) -> PolicyAnswer {
        let node = &self.node;
        let answer = match &self.question {
            Question::OnDiscovered { peer } => Answer::Trust(policy.on_discovered(node, peer)),
            Question::OnOffer { peer } => Answer::Trust(policy.on_offer(node, peer)),
            Question::OnTransfer { peer, file } => {
                Answer::Accept(policy.on_transfer(node, peer, file))
            }
            Question::Schedule { queue, connected } => {
                Answer::Order(policy.schedule(node, queue, connected))
            }
            Question::MapMode { file } => Answer::Mode(policy.map_mode(node, file)),
        };
        PolicyAnswer {
            id: self.id,
            answer,
            disabled: policy.take_disabled(),
        }
    }
}

/// What the core does, after policy answered (or did not in time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `plugin` is who said it (`None`: the built-in default).
    Trust {
        answer: TrustAnswer,
        plugin: Option<String>,
    },
    Accept(AcceptAnswer),
    /// The whole queue in start order.
    Order(Vec<TransferId>),
    /// `None`: the default mapping (the sender's bits less the umask).
    Mode(Option<u32>),
}

impl Question {
    /// The question as the journal's `PolicyDecision.question` reads.
    pub fn label(&self) -> String {
        match self {
            Question::OnDiscovered { peer } => format!("on-discovered {} {:?}", peer.id, peer.name),
            Question::OnOffer { peer } => format!("on-offer {} {:?}", peer.id, peer.name),
            Question::OnTransfer { peer, file } => format!(
                "on-transfer {} {:?} size={} mime={} from {}",
                file.id, file.name, file.size, file.mime, peer.id
            ),
            Question::Schedule { queue, .. } => format!("schedule {} queued", queue.len()),
            Question::MapMode { file } => format!(
                "map-mode {} {:?} mode={:?}",
                file.id,
                file.name,
                file.mode.map(|m| format!("{m:o}"))
            ),
        }
    }

    /// Whether plugins are asked at all: a queue of fewer than two has no order to choose.
    pub fn needs_asking(&self) -> bool {
        !matches!(self, Question::Schedule { queue, .. } if queue.len() < 2)
    }

    /// The decision from `answer` (`None`: no answer in time, or no plugins), checked for
    /// what the core relies on, and the `PolicyDecision` event that records a plugin's answer
    /// (journaled before anything the decision causes). An answer of the wrong kind counts as
    /// none.
    pub fn decide(&self, answer: Option<Answer>) -> (Decision, Option<super::Event>) {
        let record = |plugin: &str, answer: String| {
            Some(super::Event::PolicyDecision {
                plugin: plugin.to_owned(),
                question: self.label(),
                answer,
            })
        };
        match (self, answer) {
            (
                Question::OnDiscovered { .. } | Question::OnOffer { .. },
                Some(Answer::Trust(Some(Decided { plugin, answer }))),
            ) => {
                let event = record(&plugin, answer.label().into());
                let decision = Decision::Trust {
                    answer,
                    plugin: Some(plugin),
                };
                (decision, event)
            }
            (Question::OnDiscovered { .. }, _) => (
                Decision::Trust {
                    answer: default::ON_DISCOVERED,
                    plugin: None,
                },
                None,
            ),
            (Question::OnOffer { .. }, _) => (
                Decision::Trust {
                    answer: default::ON_OFFER,
                    plugin: None,
                },
                None,
            ),
            (
                Question::OnTransfer { .. },
                Some(Answer::Accept(Some(Decided { plugin, answer }))),
            ) => {
                let event = record(&plugin, answer.label());
                (Decision::Accept(answer), event)
            }
            // Accept (into the receive directory itself) unless a plugin says otherwise.
            (Question::OnTransfer { .. }, _) => {
                (Decision::Accept(AcceptAnswer::Accept { dir: None }), None)
            }
            (Question::Schedule { queue, .. }, answer) => {
                // A plugin's order first (unknown and repeated ids dropped; the host already
                // disables a plugin that sends them), then the rest in the default order
                // (`queue`'s own).
                let default = queue.iter().map(|q| q.id);
                let (first, event) = match answer {
                    Some(Answer::Order(Some(Decided { plugin, answer }))) => {
                        let label = answer
                            .iter()
                            .map(TransferId::short)
                            .collect::<Vec<_>>()
                            .join(",");
                        (answer, record(&plugin, label))
                    }
                    _ => (Vec::new(), None),
                };
                let mut order = Vec::with_capacity(queue.len());
                for id in first.into_iter().chain(default) {
                    if queue.iter().any(|q| q.id == id) && !order.contains(&id) {
                        order.push(id);
                    }
                }
                (Decision::Order(order), event)
            }
            // A plugin's answer loses setuid, setgid and sticky bits.
            (Question::MapMode { .. }, Some(Answer::Mode(Some(Decided { plugin, answer })))) => {
                let mode = answer & 0o777;
                (
                    Decision::Mode(Some(mode)),
                    record(&plugin, format!("{mode:o}")),
                )
            }
            (Question::MapMode { .. }, _) => (Decision::Mode(None), None),
        }
    }
}
