//! The node's state as a pure fold over journal events.
//!
//! `State::apply` is the only way state changes. It runs at startup (replaying the journal),
//! in `fsnode journal replay`, and in tests; it never fails and never does IO, so replaying the
//! same events always gives the same state. Snapshots in the journal are a serialized `State`
//! (split into parts when large, see `record::snapshot_parts`).
//!
//! State is what is live, not history: a finished transfer (completed, rejected, cancelled,
//! failed) stays live only until the peer has its outcome. An outcome the peer gave (its
//! `done`, `reject` or `cancel`) it has already; one this node announces is delivered once
//! `OutcomesDelivered` says so (the transfer manager's rule: the announcement went out on a
//! channel that stayed open for `transfers::OUTCOME_SETTLE`, or the peer answered it). Until
//! then the transfer is in [`State::undelivered`] and answers a repeated `start` or re-sends a
//! `cancel`. Delivered ones stay among the [`RECENT_FINISHED`] newest for `fsnode transfers`
//! only; the journal keeps the rest (`fsnode transfers --all`). So a snapshot is bounded by
//! live state, never by history.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::admission::MAX_UNTRUSTED;
use super::{DeviceId, DeviceType, Direction, Event, Side, Stamped, TransferId};

/// What a node knows about one other device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerState {
    pub name: String,
    pub device_type: DeviceType,
    /// Addresses last announced or dialled (kept after the peer is lost, for unicast probing).
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    /// Currently announced on the LAN.
    pub discovered: bool,
    pub trusted: bool,
    /// Time (unix ms) of the latest authorization request from this device, while untrusted.
    pub requested_at_ms: Option<i64>,
    pub requested_from: Option<SocketAddr>,
    pub connection: ConnectionState,
    /// What carries the connection while it is up (spec 6: QUIC or the data channel).
    #[serde(default)]
    pub transport: Option<crate::core::link::TransportKind>,
    pub last_seen_ms: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    #[default]
    NotConnected,
    Negotiating,
    Connected,
    /// Negotiation gave up; the reason is what the operator sees in `fsnode peers`.
    Failed(String),
}

impl ConnectionState {
    pub fn label(&self) -> String {
        match self {
            Self::NotConnected => "not connected".into(),
            Self::Negotiating => "negotiating".into(),
            Self::Connected => "connected".into(),
            Self::Failed(reason) => format!("failed: {reason}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    /// Waiting for the peer to connect or for a slot.
    Queued,
    /// `start` sent or received, waiting for `accept`.
    Starting,
    Active,
    Completed,
    Rejected,
    Cancelled,
    Failed,
    /// Stopped until the receiver has space again (`TransferPaused`); resumes by itself.
    Paused,
}

impl TransferStatus {
    /// Whether the transfer has reached an end and will never move again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Rejected | Self::Cancelled | Self::Failed
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferState {
    pub peer: DeviceId,
    pub direction: Direction,
    pub name: String,
    pub size: u64,
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub mime: Option<String>,
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default)]
    pub mtime: Option<i64>,
    #[serde(default)]
    pub sha256: Option<[u8; 32]>,
    /// Receiver: the subdirectory of the receive directory policy chose (kept for resumes).
    #[serde(default)]
    pub dir: Option<String>,
    pub chunk_size: u32,
    pub chunks: u64,
    /// Leading chunks verified and durable at the receiver (`progress.next`).
    pub next: u64,
    /// Durable chunk ranges beyond `next` (receiver side, gaps from resends), merged.
    pub durable_beyond: Vec<(u64, u64)>,
    pub status: TransferStatus,
    pub reason: Option<String>,
    pub queued_at_ms: i64,
    /// When the receiver first accepted (the start of the rate measurement).
    #[serde(default)]
    pub accepted_at_ms: Option<i64>,
    /// Leading chunks at that first accept (a resumed transfer's rate counts only new bytes).
    #[serde(default)]
    pub accepted_next: u64,
    pub updated_at_ms: i64,
    /// Receiver: the `reject.code` it refused the transfer with (answered again to a repeated
    /// `start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_code: Option<super::transfer::wire::RejectCode>,
}

impl TransferState {
    /// Average bytes per second since the first accept, once there is something to average.
    pub fn rate(&self) -> Option<u64> {
        let since = self.accepted_at_ms?;
        let elapsed_ms = u64::try_from(self.updated_at_ms - since)
            .ok()
            .filter(|ms| *ms > 0)?;
        let at_accept = (self.accepted_next * u64::from(self.chunk_size)).min(self.size);
        let moved = self.durable_bytes().saturating_sub(at_accept);
        Some(moved.saturating_mul(1000) / elapsed_ms)
    }

    /// Bytes verified and durable at the receiver, counted from the leading chunks.
    pub fn durable_bytes(&self) -> u64 {
        if self.chunks == 0 {
            return 0;
        }
        (self.next * u64::from(self.chunk_size)).min(self.size)
    }

    fn mark_durable(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        self.durable_beyond.push((start, end));
        self.durable_beyond.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.durable_beyond.len());
        for &(s, e) in &self.durable_beyond {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        // Fold the leading run into `next`.
        while let Some(&(s, e)) = merged.first() {
            if s <= self.next {
                self.next = self.next.max(e);
                merged.remove(0);
            } else {
                break;
            }
        }
        self.durable_beyond = merged;
    }
}

/// Who cancelled a transfer and why, said once: a reason that starts with "cancelled" (as
/// fsnode's own do: "cancelled by the operator") is not prefixed with it again.
/// `Local`: "cancelled by the operator"; `Remote`: "cancelled by the peer's operator",
/// "cancelled by the peer (the sender)", "cancelled by the peer: chunk 3 failed its hash".
pub fn cancel_reason(by: Side, reason: &str) -> String {
    let reason = reason.trim();
    let detail = match reason.get(..9) {
        Some(head) if head.eq_ignore_ascii_case("cancelled") => {
            reason[9..].trim_start_matches([':', ' '])
        }
        _ => reason,
    };
    match by {
        Side::Local if detail.is_empty() => "cancelled here".to_owned(),
        Side::Local if detail.starts_with("by ") => format!("cancelled {detail}"),
        Side::Local => format!("cancelled here: {detail}"),
        Side::Remote if detail.is_empty() => "cancelled by the peer".to_owned(),
        Side::Remote => match detail.strip_prefix("by the ") {
            Some("operator") | Some("user") => format!("cancelled by the peer's {}", &detail[7..]),
            Some(who) => format!("cancelled by the peer (the {who})"),
            None => format!("cancelled by the peer: {detail}"),
        },
    }
}

/// This node's own facts, from its latest `NodeStarted`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub device_id: DeviceId,
    pub name: String,
    pub device_type: DeviceType,
    pub version: String,
    pub started_at_ms: i64,
    /// False after a clean `NodeStopped`; true while running or after a crash.
    pub running: bool,
}

/// How many finished transfers state keeps (the most recently finished); older ones leave
/// state and live on in the journal. A peer that missed an outcome asks again within seconds
/// of reconnecting, long before a thousand other transfers finish.
pub const RECENT_FINISHED: usize = 1000;

/// Finished transfers whose outcome the peer may not have, at most: a bound on top of the
/// delivery rule, so that whatever a journal holds (one of a build before the rule, or a peer
/// that never stays connected long enough) its replay stays bounded. Beyond it the oldest
/// counts as delivered. At 4,000 files/s this holds 5 s of outcomes.
pub const MAX_UNDELIVERED: usize = 20_000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub node: Option<NodeInfo>,
    pub peers: BTreeMap<DeviceId, PeerState>,
    pub transfers: BTreeMap<TransferId, Box<TransferState>>,
    /// The finished transfers still in `transfers`, oldest finish first (at most
    /// [`RECENT_FINISHED`]). Absent from snapshots of earlier builds; [`State::normalize`]
    /// rebuilds it.
    #[serde(default)]
    pub finished: VecDeque<TransferId>,
    /// Finished transfers in `transfers` whose outcome the peer may not have yet, oldest
    /// finish first (at most [`MAX_UNDELIVERED`]); they leave for `finished` once
    /// `OutcomesDelivered` names them.
    #[serde(default)]
    pub undelivered: VecDeque<TransferId>,
    /// Starts of this node, counting restarts after crashes too.
    pub starts: u64,
    /// How many policy decisions were recorded.
    pub policy_decisions: u64,
}

impl State {
    /// Folds one event into the state. Pure: no IO, no clock, never fails. Events that name
    /// things the state does not know (a transfer id never queued, say) change nothing.
    /// Keeps at most [`MAX_UNTRUSTED`] untrusted devices: a new one evicts the untrusted
    /// device seen longest ago, so whatever the journal holds, its replay stays bounded
    /// (spec 3.4).
    fn make_room_for(&mut self, peer: &DeviceId) {
        if self.peers.contains_key(peer) {
            return;
        }
        let untrusted = self.peers.values().filter(|p| !p.trusted).count();
        if untrusted < MAX_UNTRUSTED {
            return;
        }
        let oldest = self
            .peers
            .iter()
            .filter(|(_, p)| !p.trusted)
            .min_by_key(|(id, p)| (p.last_seen_ms, *id))
            .map(|(id, _)| id.clone());
        if let Some(oldest) = oldest {
            self.peers.remove(&oldest);
        }
    }

    pub fn apply(&mut self, stamped: &Stamped) {
        let now = stamped.time_ms;
        match &stamped.event {
            Event::NodeStarted {
                device_id,
                name,
                device_type,
                version,
            } => {
                self.starts += 1;
                self.node = Some(NodeInfo {
                    device_id: device_id.clone(),
                    name: name.clone(),
                    device_type: *device_type,
                    version: version.clone(),
                    started_at_ms: now,
                    running: true,
                });
                // Nothing of a previous run's network state survives a restart: discovery
                // starts over and every connection is gone. Trust and transfers persist.
                for peer in self.peers.values_mut() {
                    peer.discovered = false;
                    peer.connection = ConnectionState::NotConnected;
                    peer.transport = None;
                }
                for transfer in self.transfers.values_mut() {
                    if matches!(
                        transfer.status,
                        TransferStatus::Starting | TransferStatus::Active
                    ) {
                        transfer.status = TransferStatus::Queued;
                    }
                }
            }
            Event::NodeStopped { .. } => {
                if let Some(node) = &mut self.node {
                    node.running = false;
                }
                for peer in self.peers.values_mut() {
                    peer.discovered = false;
                    peer.connection = ConnectionState::NotConnected;
                    peer.transport = None;
                }
            }
            Event::PeerDiscovered {
                peer,
                name,
                device_type,
                addresses,
                port,
            } => {
                self.make_room_for(peer);
                let entry = self.peers.entry(peer.clone()).or_default();
                entry.name = name.clone();
                entry.device_type = *device_type;
                entry.addresses = addresses.clone();
                entry.port = *port;
                entry.discovered = true;
                entry.last_seen_ms = Some(now);
            }
            Event::PeerLost { peer } => {
                if let Some(entry) = self.peers.get_mut(peer) {
                    entry.discovered = false;
                }
            }
            Event::AnnouncementIgnored { .. } => {}
            Event::AuthorizationRequested {
                peer,
                name,
                device_type,
                address,
            } => {
                self.make_room_for(peer);
                let entry = self.peers.entry(peer.clone()).or_default();
                if entry.name.is_empty() {
                    entry.name = name.clone();
                    entry.device_type = *device_type;
                }
                if !entry.trusted {
                    entry.requested_at_ms = Some(now);
                    entry.requested_from = *address;
                }
                entry.last_seen_ms = Some(now);
            }
            Event::PeerAuthorized { peer, name, .. } => {
                let entry = self.peers.entry(peer.clone()).or_default();
                entry.trusted = true;
                entry.requested_at_ms = None;
                if let Some(name) = name
                    && entry.name.is_empty()
                {
                    entry.name = name.clone();
                }
            }
            Event::PeerRevoked { peer, .. } => {
                if let Some(entry) = self.peers.get_mut(peer) {
                    entry.trusted = false;
                }
            }
            Event::OfferSent { peer, .. }
            | Event::OfferRetried { peer, .. }
            | Event::AnswerReceived { peer, .. } => {
                let entry = self.peers.entry(peer.clone()).or_default();
                if entry.connection != ConnectionState::Connected {
                    entry.connection = ConnectionState::Negotiating;
                }
            }
            Event::NegotiationFailed { peer, reason } => {
                let entry = self.peers.entry(peer.clone()).or_default();
                entry.connection = ConnectionState::Failed(reason.clone());
                entry.transport = None;
            }
            Event::Connected { peer, transport } => {
                let entry = self.peers.entry(peer.clone()).or_default();
                entry.connection = ConnectionState::Connected;
                entry.transport = Some(*transport);
                entry.last_seen_ms = Some(now);
            }
            Event::Disconnected { peer, .. } => {
                if let Some(entry) = self.peers.get_mut(peer) {
                    entry.connection = ConnectionState::NotConnected;
                    entry.transport = None;
                }
            }
            Event::FingerprintMismatch { .. } => {}
            Event::TransferQueued {
                id,
                peer,
                direction,
                name,
                size,
                path,
                mime,
                mode,
                mtime,
                sha256,
                dir,
            } => {
                self.transfers.entry(*id).or_insert_with(|| {
                    Box::new(TransferState {
                        peer: peer.clone(),
                        direction: *direction,
                        name: name.clone(),
                        size: *size,
                        path: path.clone(),
                        mime: mime.clone(),
                        mode: *mode,
                        mtime: *mtime,
                        sha256: *sha256,
                        dir: dir.clone(),
                        chunk_size: 0,
                        chunks: 0,
                        next: 0,
                        durable_beyond: Vec::new(),
                        status: TransferStatus::Queued,
                        reason: None,
                        queued_at_ms: now,
                        accepted_at_ms: None,
                        accepted_next: 0,
                        updated_at_ms: now,
                        reject_code: None,
                    })
                });
            }
            Event::TransferHashed { id, sha256 } => {
                if let Some(t) = self.transfers.get_mut(id) {
                    t.sha256 = Some(*sha256);
                }
            }
            Event::TransferStarted {
                id,
                chunk_size,
                chunks,
                start_chunk,
            } => {
                if let Some(t) = self.live_transfer(id, now) {
                    t.chunk_size = *chunk_size;
                    t.chunks = *chunks;
                    t.next = t.next.max(*start_chunk).min(*chunks);
                    t.status = TransferStatus::Starting;
                }
            }
            Event::TransferAccepted {
                id, start_chunk, ..
            } => {
                if let Some(t) = self.live_transfer(id, now) {
                    // The receiver is authoritative about what it holds (spec 4).
                    t.next = (*start_chunk).min(t.chunks);
                    t.durable_beyond.retain(|&(_, e)| e > t.next);
                    t.status = TransferStatus::Active;
                    t.reason = None; // a pause is over
                    if t.accepted_at_ms.is_none() {
                        t.accepted_at_ms = Some(now);
                        t.accepted_next = t.next;
                    }
                }
            }
            Event::ChunksDurable { id, start, end } => {
                if let Some(t) = self.live_transfer(id, now) {
                    let end = (*end).min(t.chunks);
                    t.mark_durable(*start, end);
                }
            }
            Event::TransferRejected { id, reason, code } => {
                if let Some(t) = self.transfers.get_mut(id) {
                    t.reject_code = *code;
                }
                // A sender records the receiver's `reject`; a receiver its own.
                let by_peer = self.direction(id) == Some(Direction::Send);
                self.finish(
                    id,
                    TransferStatus::Rejected,
                    Some(reason.clone()),
                    now,
                    by_peer,
                );
            }
            Event::TransferCompleted { id, path } => {
                if let Some(t) = self.live_transfer(id, now) {
                    t.next = t.chunks;
                    t.durable_beyond.clear();
                    if path.is_some() {
                        t.path = path.clone();
                    }
                }
                // A sender records the receiver's `done`; a receiver announces its own.
                let by_peer = self.direction(id) == Some(Direction::Send);
                self.finish(id, TransferStatus::Completed, None, now, by_peer);
            }
            Event::TransferCancelled { id, by, reason } => {
                self.finish(
                    id,
                    TransferStatus::Cancelled,
                    Some(cancel_reason(*by, reason)),
                    now,
                    *by == Side::Remote,
                );
            }
            Event::TransferFailed { id, reason } => {
                // Either side may fail on its own; the transfer manager records the delivery
                // (a `done` `ok: false` received, or the failure announced and settled).
                self.finish(id, TransferStatus::Failed, Some(reason.clone()), now, false);
            }
            Event::OutcomesDelivered { ids } => {
                let delivered: std::collections::BTreeSet<&TransferId> = ids.iter().collect();
                let before = self.undelivered.len();
                self.undelivered.retain(|id| !delivered.contains(id));
                if self.undelivered.len() != before {
                    for id in ids {
                        if self
                            .transfers
                            .get(id)
                            .is_some_and(|t| t.status.is_finished())
                            && !self.finished.contains(id)
                        {
                            self.finished.push_back(*id);
                        }
                    }
                    self.forget_old_finished();
                }
            }
            Event::TransferPaused { id, reason } => {
                if let Some(t) = self.live_transfer(id, now) {
                    t.status = TransferStatus::Paused;
                    t.reason = Some(reason.clone());
                }
            }
            Event::PolicyDecision { .. } => self.policy_decisions += 1,
            // The host's business: the plugin is out of the order until the node restarts.
            Event::PluginDisabled { .. } | Event::PluginsLoaded { .. } => {}
        }
    }

    fn live_transfer(&mut self, id: &TransferId, now: i64) -> Option<&mut TransferState> {
        let t = self.transfers.get_mut(id)?;
        if t.status.is_finished() {
            return None;
        }
        t.updated_at_ms = now;
        Some(t)
    }

    fn direction(&self, id: &TransferId) -> Option<Direction> {
        self.transfers.get(id).map(|t| t.direction)
    }

    /// Ends a live transfer. `by_peer`: the outcome came from the peer, which so has it; else
    /// it waits in [`State::undelivered`] for `OutcomesDelivered`, except a send whose `start`
    /// never went out (`chunk_size` 0: the receiver never heard of it).
    fn finish(
        &mut self,
        id: &TransferId,
        status: TransferStatus,
        reason: Option<String>,
        now: i64,
        by_peer: bool,
    ) {
        if let Some(t) = self.live_transfer(id, now) {
            t.status = status;
            t.reason = reason;
            let unknown_to_peer = t.direction == Direction::Send && t.chunk_size == 0;
            if by_peer || unknown_to_peer {
                self.finished.push_back(*id);
                self.forget_old_finished();
            } else {
                self.undelivered.push_back(*id);
                while self.undelivered.len() > MAX_UNDELIVERED {
                    if let Some(oldest) = self.undelivered.pop_front() {
                        self.finished.push_back(oldest);
                    }
                }
                self.forget_old_finished();
            }
        }
    }

    /// Whether `id` finished and its peer may not have the outcome yet.
    pub fn is_undelivered(&self, id: &TransferId) -> bool {
        self.undelivered.contains(id)
    }

    /// Drops the delivered finished transfers beyond the [`RECENT_FINISHED`] newest.
    fn forget_old_finished(&mut self) {
        while self.finished.len() > RECENT_FINISHED {
            if let Some(old) = self.finished.pop_front() {
                self.transfers.remove(&old);
            }
        }
    }

    /// Brings a state read from a snapshot into shape: a snapshot of an earlier build kept
    /// every finished transfer and no finish order, so the order is rebuilt (by last update,
    /// then id) and the oldest are dropped. Deterministic, so replays agree.
    pub fn normalize(&mut self) {
        let listed: std::collections::BTreeSet<TransferId> = self
            .finished
            .iter()
            .chain(&self.undelivered)
            .copied()
            .collect();
        let finished = |transfers: &BTreeMap<TransferId, Box<TransferState>>, id: &TransferId| {
            transfers.get(id).is_some_and(|t| t.status.is_finished())
        };
        self.finished.retain(|id| finished(&self.transfers, id));
        self.undelivered.retain(|id| finished(&self.transfers, id));
        let mut unlisted: Vec<(i64, TransferId)> = self
            .transfers
            .iter()
            .filter(|(id, t)| t.status.is_finished() && !listed.contains(id))
            .map(|(id, t)| (t.updated_at_ms, *id))
            .collect();
        if !unlisted.is_empty() {
            unlisted.sort_unstable();
            // Unlisted ones finished before anything listed (they come from an older build).
            for (_, id) in unlisted.into_iter().rev() {
                self.finished.push_front(id);
            }
        }
        self.forget_old_finished();
    }

    /// Devices the operator trusts, in id order.
    pub fn trusted(&self) -> impl Iterator<Item = (&DeviceId, &PeerState)> {
        self.peers.iter().filter(|(_, p)| p.trusted)
    }

    /// Devices that asked to connect and are not trusted.
    pub fn requests(&self) -> impl Iterator<Item = (&DeviceId, &PeerState)> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.trusted && p.requested_at_ms.is_some())
    }

    /// Whether the operator (or a policy) currently trusts `peer`.
    pub fn is_trusted(&self, peer: &DeviceId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.trusted)
    }

    /// Everything but the devices and transfers (the small head of a snapshot).
    pub fn clone_without_maps(&self) -> State {
        State {
            node: self.node.clone(),
            peers: BTreeMap::new(),
            transfers: BTreeMap::new(),
            finished: self.finished.clone(),
            undelivered: self.undelivered.clone(),
            starts: self.starts,
            policy_decisions: self.policy_decisions,
        }
    }

    /// Folds a sequence of events into a fresh state.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a Stamped>) -> Self {
        let mut state = State::default();
        for stamped in events {
            state.apply(stamped);
        }
        state
    }
}

#[cfg(test)]
mod tests;
