//! The control protocol between `fsnode run` and the other subcommands: one JSON request per
//! line on a Unix socket (mode 0600) in the runtime directory, one JSON reply line back.
//! Versioned: every message carries `"v": 1`; a node answers requests of another version with
//! an error naming both.

use serde::{Deserialize, Serialize};

use crate::core::{
    DeviceId, DeviceType, Direction, State, TransferId, TransferState, TransferStatus,
};

pub const CONTROL_VERSION: u32 = 1;
/// Longest request line the node reads; longer ones get an error reply.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The node's own facts.
    Status,
    /// Every device the node knows (discovered, trusted or asking).
    Peers,
    /// Trust a device (full id or unique prefix of ≥ 8 characters).
    TrustAdd { device: String },
    /// Stop trusting a device.
    TrustRemove { device: String },
    /// Trusted devices and the devices that asked to connect.
    TrustList,
    /// Dial a node directly (when multicast is blocked) and learn its identity from `hello`.
    PeersAdd { address: std::net::SocketAddr },
    /// Queue files (absolute paths; directories send their files) for trusted devices.
    Send {
        paths: Vec<std::path::PathBuf>,
        to: Vec<String>,
    },
    /// Cancel a transfer (its id or a unique prefix of it), either direction.
    Cancel { transfer: String },
    /// Every transfer the journal knows, past ones too.
    Transfers,
    /// Follow the node's events live: the node answers with one `event` reply per journaled
    /// event until the client disconnects.
    Watch,
    /// The policy plugins, in the order they are asked, and the disabled ones with why.
    Plugins,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyEnvelope {
    pub v: u32,
    #[serde(flatten)]
    pub reply: Reply,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    Status(NodeStatus),
    Peers {
        peers: Vec<PeerRow>,
    },
    Trusted {
        peer: PeerRow,
    },
    Revoked {
        peer: PeerRow,
    },
    TrustList {
        trusted: Vec<PeerRow>,
        requests: Vec<PeerRow>,
    },
    Transfers {
        transfers: Vec<TransferRow>,
    },
    /// What `send` queued: one transfer per file and device.
    Queued {
        transfers: Vec<TransferRow>,
    },
    Cancelled {
        transfer: TransferRow,
    },
    /// One journaled event (for `watch`), in its flat JSON form.
    Event {
        seq: u64,
        time_ms: i64,
        event: serde_json::Value,
    },
    Plugins {
        plugins: Vec<PluginRow>,
    },
    Error(ControlError),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub device_id: DeviceId,
    pub name: String,
    pub device_type: DeviceType,
    pub signaling_port: u16,
    pub version: String,
}

/// One device, as `fsnode peers` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRow {
    pub id: DeviceId,
    pub name: String,
    pub device_type: DeviceType,
    pub addresses: Vec<String>,
    pub port: u16,
    pub discovered: bool,
    pub trusted: bool,
    /// Asked to connect and not trusted.
    pub requested: bool,
    pub connection: String,
    /// The code both operators see for this pair of devices.
    pub verification_code: String,
}

/// One policy plugin, as `fsnode plugins list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRow {
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

/// One transfer, as `fsnode transfers` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRow {
    pub id: String,
    pub peer: DeviceId,
    pub peer_name: String,
    pub direction: String,
    pub name: String,
    pub size: u64,
    /// Bytes verified and durable at the receiver.
    pub done_bytes: u64,
    pub status: String,
    pub reason: Option<String>,
    /// Average rate since the transfer was accepted, bytes per second.
    pub rate: Option<u64>,
    pub path: Option<String>,
}

impl TransferRow {
    /// A transfer as `fsnode transfers` shows it, from the state that holds it (the running
    /// node's, or one folded from the journal's history).
    pub fn of(state: &State, id: &TransferId, t: &TransferState) -> Self {
        TransferRow {
            id: id.to_string(),
            peer: t.peer.clone(),
            peer_name: state
                .peers
                .get(&t.peer)
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            direction: match t.direction {
                Direction::Send => "send".into(),
                Direction::Receive => "receive".into(),
            },
            name: t.name.clone(),
            size: t.size,
            done_bytes: if t.status == TransferStatus::Completed {
                t.size
            } else {
                t.durable_bytes()
            },
            status: format!("{:?}", t.status).to_lowercase(),
            reason: t.reason.clone(),
            rate: t.rate(),
            path: t.path.as_ref().map(|p| p.display().to_string()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
    /// For `ambiguous`: the devices that matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<PeerRow>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    Version,
    NotFound,
    Ambiguous,
    Unreachable,
    Internal,
}

impl ControlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ControlError {
            kind,
            message: message.into(),
            candidates: Vec::new(),
        }
    }
}

impl Reply {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Reply::Error(ControlError::new(kind, message))
    }
}

/// Parses a request line; the error goes back as the reply.
pub fn parse_request(line: &[u8]) -> Result<Request, ControlError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(ControlError::new(
            ErrorKind::BadRequest,
            format!("request longer than {MAX_REQUEST_BYTES} bytes"),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        ControlError::new(ErrorKind::BadRequest, format!("request is not JSON: {e}"))
    })?;
    let version = value.get("v").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(CONTROL_VERSION)) {
        return Err(ControlError::new(
            ErrorKind::Version,
            format!(
                "request has control protocol version {}, this node speaks {CONTROL_VERSION}; use the fsnode binary that matches the running node",
                version.map_or("none".into(), |v| v.to_string())
            ),
        ));
    }
    let envelope: RequestEnvelope = serde_json::from_value(value)
        .map_err(|e| ControlError::new(ErrorKind::BadRequest, format!("bad request: {e}")))?;
    Ok(envelope.request)
}

pub fn encode_reply(reply: Reply) -> Vec<u8> {
    let mut line = serde_json::to_vec(&ReplyEnvelope {
        v: CONTROL_VERSION,
        reply,
    })
    .unwrap_or_else(|_| {
        br#"{"v":1,"result":"error","kind":"internal","message":"encoding failed"}"#.to_vec()
    });
    line.push(b'\n');
    line
}

pub fn encode_request(request: Request) -> Vec<u8> {
    let mut line = serde_json::to_vec(&RequestEnvelope {
        v: CONTROL_VERSION,
        request,
    })
    .unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for request in [
            Request::Status,
            Request::Peers,
            Request::TrustAdd {
                device: "abcdefgh".into(),
            },
            Request::PeersAdd {
                address: "10.77.0.2:4000".parse().unwrap(),
            },
        ] {
            let line = encode_request(request.clone());
            assert_eq!(parse_request(&line[..line.len() - 1]).unwrap(), request);
        }
    }

    #[test]
    fn malformed_oversized_and_foreign_version_requests_get_error_replies() {
        let kind = |line: &[u8]| match parse_request(line) {
            Err(e) => e.kind,
            other => panic!("{other:?}"),
        };
        assert_eq!(kind(b"not json"), ErrorKind::BadRequest);
        assert_eq!(kind(br#"{"v":1,"op":"launch"}"#), ErrorKind::BadRequest);
        assert_eq!(kind(br#"{"v":2,"op":"peers"}"#), ErrorKind::Version);
        assert_eq!(kind(br#"{"op":"peers"}"#), ErrorKind::Version);
        let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(kind(&huge), ErrorKind::BadRequest);
    }
}
