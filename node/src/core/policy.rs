//! The questions the core asks policy (design.md, "Policy is a question, not a branch"), the
//! facts it hands over and the answers it takes, plus the built-in default.
//!
//! The core calls a [`Policy`] synchronously and journals every answer a plugin gave as a
//! `PolicyDecision` event (and a disabled plugin as `PluginDisabled`), so replay never calls a
//! plugin: the events carry the answers. The implementation that runs wasm components is the
//! host in `crate::policy`; [`NoPlugins`] is the node without plugins.

use std::net::IpAddr;

use super::{DeviceId, DeviceType, TransferId};
use crate::control::PluginRow;

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
/// has an opinion; the core then applies the built-in default.
pub trait Policy: Send {
    fn on_discovered(&mut self, node: &NodeFacts, peer: &PeerFacts)
    -> Option<Decided<TrustAnswer>>;

    fn on_offer(&mut self, node: &NodeFacts, peer: &PeerFacts) -> Option<Decided<TrustAnswer>>;

    fn on_transfer(
        &mut self,
        node: &NodeFacts,
        peer: &PeerFacts,
        file: &FileFacts,
    ) -> Option<Decided<AcceptAnswer>>;

    /// An order for (some of) `queue`: only ids from `queue`, each at most once.
    fn schedule(
        &mut self,
        node: &NodeFacts,
        queue: &[QueuedFacts],
        connected: &[DeviceId],
    ) -> Option<Decided<Vec<TransferId>>>;

    /// Permission bits (no setuid, setgid or sticky: at most `0o777`).
    fn map_mode(&mut self, node: &NodeFacts, file: &FileFacts) -> Option<Decided<u32>>;

    /// Plugins disabled since the last call (at load, or by misbehaving), to journal.
    fn take_disabled(&mut self) -> Vec<Disabled>;

    /// The plugins, in order, for `fsnode plugins list`.
    fn describe(&self) -> Vec<PluginRow>;
}

/// The node without plugins: every question goes to the built-in default.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPlugins;

impl Policy for NoPlugins {
    fn on_discovered(&mut self, _: &NodeFacts, _: &PeerFacts) -> Option<Decided<TrustAnswer>> {
        None
    }

    fn on_offer(&mut self, _: &NodeFacts, _: &PeerFacts) -> Option<Decided<TrustAnswer>> {
        None
    }

    fn on_transfer(
        &mut self,
        _: &NodeFacts,
        _: &PeerFacts,
        _: &FileFacts,
    ) -> Option<Decided<AcceptAnswer>> {
        None
    }

    fn schedule(
        &mut self,
        _: &NodeFacts,
        _: &[QueuedFacts],
        _: &[DeviceId],
    ) -> Option<Decided<Vec<TransferId>>> {
        None
    }

    fn map_mode(&mut self, _: &NodeFacts, _: &FileFacts) -> Option<Decided<u32>> {
        None
    }

    fn take_disabled(&mut self) -> Vec<Disabled> {
        Vec::new()
    }

    fn describe(&self) -> Vec<PluginRow> {
        Vec::new()
    }
}

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

/// One round of questions: asks `policy`, falls back to the built-in default, checks what the
/// core relies on, and collects the events that record it (`PolicyDecision` for each plugin
/// answer, `PluginDisabled` for each plugin the host gave up on) for the caller to journal
/// before anything the answer causes.
pub struct Asker<'a> {
    pub policy: &'a mut dyn Policy,
    pub node: NodeFacts,
    pub events: Vec<super::Event>,
    /// The plugin whose answer the last question took (`None`: the built-in default).
    pub last_plugin: Option<String>,
}

impl<'a> Asker<'a> {
    pub fn new(policy: &'a mut dyn Policy, node: NodeFacts) -> Self {
        Self {
            policy,
            node,
            events: Vec::new(),
            last_plugin: None,
        }
    }

    pub fn on_discovered(&mut self, peer: &PeerFacts) -> TrustAnswer {
        let decided = self.policy.on_discovered(&self.node, peer);
        let question = format!("on-discovered {} {:?}", peer.id, peer.name);
        self.record(question, decided, |a| a.label().into())
            .unwrap_or(default::ON_DISCOVERED)
    }

    pub fn on_offer(&mut self, peer: &PeerFacts) -> TrustAnswer {
        let decided = self.policy.on_offer(&self.node, peer);
        let question = format!("on-offer {} {:?}", peer.id, peer.name);
        self.record(question, decided, |a| a.label().into())
            .unwrap_or(default::ON_OFFER)
    }

    /// Accept (into the receive directory itself) unless a plugin says otherwise.
    pub fn on_transfer(&mut self, peer: &PeerFacts, file: &FileFacts) -> AcceptAnswer {
        let decided = self.policy.on_transfer(&self.node, peer, file);
        let question = format!(
            "on-transfer {} {:?} size={} mime={} from {}",
            file.id, file.name, file.size, file.mime, peer.id
        );
        self.record(question, decided, AcceptAnswer::label)
            .unwrap_or(AcceptAnswer::Accept { dir: None })
    }

    /// The whole queue in start order: a plugin's order first (unknown and repeated ids
    /// dropped; the host already disables a plugin that sends them), then the rest in the
    /// default order (`queue`'s own).
    pub fn schedule(&mut self, queue: &[QueuedFacts], connected: &[DeviceId]) -> Vec<TransferId> {
        let default: Vec<TransferId> = queue.iter().map(|q| q.id).collect();
        if queue.len() < 2 {
            return default; // nothing to order: no question
        }
        let decided = self.policy.schedule(&self.node, queue, connected);
        let question = format!("schedule {} queued", queue.len());
        let Some(first) = self.record(question, decided, |order| {
            order
                .iter()
                .map(TransferId::short)
                .collect::<Vec<_>>()
                .join(",")
        }) else {
            return default;
        };
        let mut order = Vec::with_capacity(default.len());
        for id in first.into_iter().chain(default) {
            if queue.iter().any(|q| q.id == id) && !order.contains(&id) {
                order.push(id);
            }
        }
        order
    }

    /// The mode to give the sender's `file` (`None`: the default, the sender's bits less the
    /// umask). A plugin's answer loses setuid, setgid and sticky bits.
    pub fn map_mode(&mut self, file: &FileFacts) -> Option<u32> {
        let decided = self.policy.map_mode(&self.node, file);
        let question = format!(
            "map-mode {} {:?} mode={:?}",
            file.id,
            file.name,
            file.mode.map(|m| format!("{m:o}"))
        );
        self.record(question, decided, |mode| format!("{:o}", mode & 0o777))
            .map(|mode| mode & 0o777)
    }

    fn record<T>(
        &mut self,
        question: String,
        decided: Option<Decided<T>>,
        label: impl Fn(&T) -> String,
    ) -> Option<T> {
        for Disabled { plugin, reason } in self.policy.take_disabled() {
            self.events
                .push(super::Event::PluginDisabled { plugin, reason });
        }
        self.last_plugin = None;
        let decided = decided?;
        self.last_plugin = Some(decided.plugin.clone());
        self.events.push(super::Event::PolicyDecision {
            plugin: decided.plugin,
            question,
            answer: label(&decided.answer),
        });
        Some(decided.answer)
    }
}
