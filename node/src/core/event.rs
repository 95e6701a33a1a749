//! The journal's vocabulary (design.md, "Events"). Every state change of the node is one of
//! these, appended to the journal before its effects run; `State::apply` folds them.
//!
//! Compatibility: events are CBOR maps keyed by field name. New fields are added with
//! `#[serde(default)]` so journals written by older builds still replay.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::link::TransportKind;
use super::{DeviceId, DeviceType, TransferId};

/// One journal record's payload: when it happened (wall clock, unix milliseconds) and what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stamped {
    pub time_ms: i64,
    pub event: Event,
}

/// Who made a trust decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authority {
    /// The operator, through the CLI or the control socket.
    Operator,
    /// A policy plugin (or the built-in default), named.
    Policy { plugin: String },
}

/// Which way a transfer goes, seen from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Send,
    Receive,
}

/// Which end did something (e.g. cancelled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Local,
    Remote,
}

/// Stored externally tagged (`{"Kind": {fields}}`): internally tagged enums go through serde's
/// buffered `Content`, which loses CBOR's binary forms of addresses and ids. `to_json` gives
/// the flat `{"type": "Kind", fields}` form that operators and scripts read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    // --- the node itself ---
    /// The node started. Connections and discoveries of an earlier run are void after this.
    NodeStarted {
        device_id: DeviceId,
        name: String,
        device_type: DeviceType,
        version: String,
    },
    /// The node shut down cleanly (signal or operator request).
    NodeStopped {
        reason: String,
    },

    // --- discovery ---
    PeerDiscovered {
        peer: DeviceId,
        name: String,
        device_type: DeviceType,
        addresses: Vec<IpAddr>,
        port: u16,
    },
    PeerLost {
        peer: DeviceId,
    },
    /// An mDNS announcement that breaks spec section 2 (ignored, recorded for the operator).
    AnnouncementIgnored {
        instance: String,
        reason: String,
    },

    // --- trust ---
    /// An untrusted device asked to connect; the operator may approve it later.
    AuthorizationRequested {
        peer: DeviceId,
        name: String,
        device_type: DeviceType,
        address: Option<SocketAddr>,
    },
    PeerAuthorized {
        peer: DeviceId,
        #[serde(default)]
        name: Option<String>,
        by: Authority,
    },
    PeerRevoked {
        peer: DeviceId,
        by: Authority,
    },

    // --- negotiation ---
    OfferSent {
        peer: DeviceId,
        seq: u64,
    },
    OfferRetried {
        peer: DeviceId,
        seq: u64,
        attempt: u32,
    },
    AnswerReceived {
        peer: DeviceId,
        seq: u64,
    },
    NegotiationFailed {
        peer: DeviceId,
        reason: String,
    },
    Connected {
        peer: DeviceId,
        /// What carries the session (spec 6: QUIC between fsnode nodes, else the data
        /// channel). Journals written before QUIC read as `data-channel`, which they were.
        #[serde(default)]
        transport: TransportKind,
    },
    Disconnected {
        peer: DeviceId,
        reason: String,
    },
    /// An offer or answer whose SDP fingerprint is not the device id its sender claimed.
    FingerprintMismatch {
        claimed: DeviceId,
        fingerprint: String,
        address: Option<SocketAddr>,
    },

    // --- transfers ---
    TransferQueued {
        id: TransferId,
        peer: DeviceId,
        direction: Direction,
        name: String,
        size: u64,
        /// The local file (sender: what is read; receiver: filled in on completion).
        #[serde(default)]
        path: Option<PathBuf>,
        /// What the `start` message carries besides name and size (sender side).
        #[serde(default)]
        mime: Option<String>,
        #[serde(default)]
        mode: Option<u32>,
        #[serde(default)]
        mtime: Option<i64>,
        /// The whole file's SHA-256 (sender side), when it was taken before queueing (small
        /// files); a large file's comes later in `TransferHashed`.
        #[serde(default)]
        sha256: Option<[u8; 32]>,
        /// Receiver: the subdirectory of the receive directory policy routed the file into.
        #[serde(default)]
        dir: Option<String>,
    },
    /// Sender: the whole file's SHA-256, taken while its first chunks were already being sent
    /// (it is needed only for `end`).
    TransferHashed {
        id: TransferId,
        sha256: [u8; 32],
    },
    TransferStarted {
        id: TransferId,
        chunk_size: u32,
        chunks: u64,
        start_chunk: u64,
    },
    TransferAccepted {
        id: TransferId,
        start_chunk: u64,
        window: u32,
    },
    TransferRejected {
        id: TransferId,
        reason: String,
        /// The `reject.code` (spec 4), so a repeated `start` is answered with the same one.
        /// Absent in journals of builds before codes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<super::transfer::wire::RejectCode>,
    },
    /// Chunks `start..end` are verified and durably written (receiver) or acknowledged as such
    /// by the receiver (sender). Written once per group commit, not per chunk.
    ChunksDurable {
        id: TransferId,
        start: u64,
        end: u64,
    },
    TransferCompleted {
        id: TransferId,
        #[serde(default)]
        path: Option<PathBuf>,
    },
    TransferCancelled {
        id: TransferId,
        by: Side,
        reason: String,
    },
    TransferFailed {
        id: TransferId,
        reason: String,
    },
    /// The peers of these finished transfers have their outcomes (the ones this node
    /// announced: its `done`, `reject` or `cancel` went out on a channel that stayed open, or
    /// the peer answered it): they leave the live state (`State::undelivered`).
    OutcomesDelivered {
        ids: Vec<TransferId>,
    },
    /// The transfer stopped for a reason that can pass (the receiver's disk is full); the
    /// `.part` and its durable progress stay, and the sender tries `start` again later.
    TransferPaused {
        id: TransferId,
        reason: String,
    },

    // --- policy ---
    /// A policy question and the answer that decided it.
    PolicyDecision {
        plugin: String,
        question: String,
        answer: String,
    },
    /// The host stopped using a plugin (it failed to load, trapped, ran out of fuel, memory or
    /// time, or answered nonsense); the next plugin or the built-in default answers instead.
    PluginDisabled {
        plugin: String,
        reason: String,
    },
    /// The plugins the host loaded, in the order they are asked: at start and whenever the
    /// plugin directory changed or the operator asked (`fsnode plugins reload`). Those that
    /// failed to load follow as `PluginDisabled`.
    PluginsLoaded {
        plugins: Vec<String>,
    },
}

/// Rewrites every `sha256` field of `value` (at any depth) that holds 32 bytes as an array of
/// numbers, serde's form of `[u8; 32]` and the journal's, into lowercase hex: what operators
/// compare with `sha256sum`. Only what is shown changes; the journal keeps its form.
pub fn hashes_in_hex(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                if key == "sha256"
                    && let Some(bytes) = as_hash(field)
                {
                    *field = hex::encode(bytes).into();
                } else {
                    hashes_in_hex(field);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(hashes_in_hex),
        _ => {}
    }
}

fn as_hash(value: &serde_json::Value) -> Option<Vec<u8>> {
    let items = value.as_array().filter(|items| items.len() == 32)?;
    items
        .iter()
        .map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
        .collect()
}

impl Event {
    /// The flat JSON form for `journal show --json` and `watch --json`:
    /// `{"type": "Kind", "field": value, …}`, hashes in lowercase hex.
    pub fn to_json(&self) -> serde_json::Value {
        let mut flat = serde_json::Map::new();
        flat.insert("type".into(), self.kind().into());
        if let Ok(serde_json::Value::Object(outer)) = serde_json::to_value(self) {
            for (_, inner) in outer {
                if let serde_json::Value::Object(fields) = inner {
                    flat.extend(fields);
                }
            }
        }
        let mut flat = serde_json::Value::Object(flat);
        hashes_in_hex(&mut flat);
        flat
    }

    /// For tests: a transfer queued with only the facts every one has (no path, mime, mode,
    /// mtime, hash or directory), as an older journal may hold it.
    #[cfg(test)]
    pub fn queued_bare(
        id: TransferId,
        peer: DeviceId,
        direction: Direction,
        name: String,
        size: u64,
    ) -> Event {
        Event::TransferQueued {
            id,
            peer,
            direction,
            name,
            size,
            path: None,
            mime: None,
            mode: None,
            mtime: None,
            sha256: None,
            dir: None,
        }
    }

    /// The one transfer this event changes, if it changes one (`OutcomesDelivered` only takes
    /// finished ones out of the live state).
    pub fn transfer(&self) -> Option<TransferId> {
        match self {
            Event::TransferQueued { id, .. }
            | Event::TransferHashed { id, .. }
            | Event::TransferStarted { id, .. }
            | Event::TransferAccepted { id, .. }
            | Event::TransferRejected { id, .. }
            | Event::ChunksDurable { id, .. }
            | Event::TransferCompleted { id, .. }
            | Event::TransferCancelled { id, .. }
            | Event::TransferFailed { id, .. }
            | Event::TransferPaused { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// The variant's name, as `journal show` prints it.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::NodeStarted { .. } => "NodeStarted",
            Event::NodeStopped { .. } => "NodeStopped",
            Event::PeerDiscovered { .. } => "PeerDiscovered",
            Event::PeerLost { .. } => "PeerLost",
            Event::AnnouncementIgnored { .. } => "AnnouncementIgnored",
            Event::AuthorizationRequested { .. } => "AuthorizationRequested",
            Event::PeerAuthorized { .. } => "PeerAuthorized",
            Event::PeerRevoked { .. } => "PeerRevoked",
            Event::OfferSent { .. } => "OfferSent",
            Event::OfferRetried { .. } => "OfferRetried",
            Event::AnswerReceived { .. } => "AnswerReceived",
            Event::NegotiationFailed { .. } => "NegotiationFailed",
            Event::Connected { .. } => "Connected",
            Event::Disconnected { .. } => "Disconnected",
            Event::FingerprintMismatch { .. } => "FingerprintMismatch",
            Event::TransferQueued { .. } => "TransferQueued",
            Event::TransferHashed { .. } => "TransferHashed",
            Event::TransferStarted { .. } => "TransferStarted",
            Event::TransferAccepted { .. } => "TransferAccepted",
            Event::TransferRejected { .. } => "TransferRejected",
            Event::ChunksDurable { .. } => "ChunksDurable",
            Event::TransferCompleted { .. } => "TransferCompleted",
            Event::TransferCancelled { .. } => "TransferCancelled",
            Event::TransferFailed { .. } => "TransferFailed",
            Event::TransferPaused { .. } => "TransferPaused",
            Event::OutcomesDelivered { .. } => "OutcomesDelivered",
            Event::PolicyDecision { .. } => "PolicyDecision",
            Event::PluginDisabled { .. } => "PluginDisabled",
            Event::PluginsLoaded { .. } => "PluginsLoaded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes show as lowercase hex, as `sha256sum` prints them, in events and in a state's
    /// JSON (the journal keeps its own form); other byte-like arrays are left alone.
    #[test]
    fn hashes_show_in_lowercase_hex() {
        let hash: [u8; 32] = std::array::from_fn(|i| (i * 8) as u8);
        let expected = hex::encode(hash);
        let hashed = Event::TransferHashed {
            id: TransferId([1; 16]),
            sha256: hash,
        };
        assert_eq!(hashed.to_json()["sha256"], expected.as_str());
        let mut queued = Event::queued_bare(
            TransferId([2; 16]),
            DeviceId::from_sha256(&[3; 32]),
            Direction::Send,
            "a.txt".into(),
            5,
        );
        if let Event::TransferQueued { sha256, .. } = &mut queued {
            *sha256 = Some(hash);
        }
        let json = queued.to_json();
        assert_eq!(json["sha256"], expected.as_str());
        assert_eq!(json["id"], "02020202020202020202020202020202");

        let mut state = serde_json::json!({
            "transfers": [["id", {"sha256": hash, "durable_beyond": [[1, 2]]}]],
            "short": {"sha256": [1, 2, 3]},
        });
        hashes_in_hex(&mut state);
        assert_eq!(state["transfers"][0][1]["sha256"], expected.as_str());
        assert_eq!(
            state["transfers"][0][1]["durable_beyond"],
            serde_json::json!([[1, 2]])
        );
        assert_eq!(state["short"]["sha256"], serde_json::json!([1, 2, 3]));
    }
}
