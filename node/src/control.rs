//! The control protocol between `fsnode run` and the other subcommands: one JSON request per
//! line on a Unix socket (mode 0600) in the runtime directory, one JSON reply line back.
//! Versioned: every message carries `"v": 1`; a node answers requests of another version with
//! an error naming both.
//!
//! The rows and replies are built here, beside the socket, from the core's typed state and
//! outcomes ([`view`], [`reply`]); the core knows nothing of this protocol.

use serde::{Deserialize, Serialize};

use crate::core::node::Me;
use crate::core::request::{Command, Outcome, Refusal, RefusalKind};
use crate::core::{
    ConnectionState, DeviceId, DeviceType, Direction, PeerState, State, TransferId, TransferState,
    TransferStatus, trust,
};

pub const CONTROL_VERSION: u32 = 1;
/// Longest request line the node reads; longer ones get an error reply.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Rows a `queued` reply lists (a `send` of a directory may queue 100,000 transfers: the
/// reply stays small, and `fsnode transfers` lists them all).
pub const QUEUED_ROWS: usize = 1_000;

/// Rows `fsnode transfers` lists at most (running, then queued, then recently finished); the
/// reply says how many it left out.
pub const TRANSFER_ROWS: usize = 1_000;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

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
    /// Queue files (absolute paths; directories send their files) for trusted devices. With
    /// `wait`, a stream: the `queued` reply, then a `transfers` reply with the rows that changed
    /// each time some did, until every one has finished (then the node closes the stream).
    Send {
        paths: Vec<std::path::PathBuf>,
        to: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        wait: bool,
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
    /// Load the policy plugins again from the plugin directory; answered with the new list.
    PluginsReload,
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
    /// Transfers' rows; `not_shown`: how many more the node holds than it listed (see
    /// [`TRANSFER_ROWS`]).
    Transfers {
        transfers: Vec<TransferRow>,
        #[serde(default, skip_serializing_if = "is_zero")]
        not_shown: usize,
    },
    /// What `send` queued: one transfer per file and device, `count` in all (`bytes` their
    /// sizes' sum); `transfers` holds the rows of the first [`QUEUED_ROWS`] of them.
    Queued {
        count: usize,
        bytes: u64,
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
    /// `watch`: the client read more slowly than the node journaled; the `events` from
    /// `from_seq` to `to_seq` follow, read back from the journal (none is left out).
    Lagged {
        events: u64,
        from_seq: u64,
        to_seq: u64,
    },
    /// A stream (`watch`) ends because the node is stopping.
    NodeStopping {
        reason: String,
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
    /// The node's page on each address it serves (`http://ADDRESS:PORT/`); absent from older
    /// nodes' replies.
    #[serde(default)]
    pub urls: Vec<String>,
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
    /// The connection as people read it (`connected`, `failed: why`).
    pub connection: String,
    /// The same, typed (`not_connected`, `negotiating`, `connected`, `{"failed": why}`), for
    /// programs; absent from older nodes' replies.
    #[serde(default)]
    pub connection_state: ConnectionState,
    /// What carries the connection while it is up: `quic` between fsnode nodes (spec 6),
    /// `data-channel` otherwise; absent while not connected and from older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<crate::core::link::TransportKind>,
    /// The code both operators see for this pair of devices.
    pub verification_code: String,
}

/// One policy plugin, as `fsnode plugins list` shows it.
pub type PluginRow = crate::core::policy::PluginStatus;

/// One transfer, as `fsnode transfers` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRow {
    pub id: String,
    pub peer: DeviceId,
    pub peer_name: String,
    pub direction: Direction,
    pub name: String,
    pub size: u64,
    /// Bytes verified and durable at the receiver.
    pub done_bytes: u64,
    pub status: TransferStatus,
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
            direction: t.direction,
            name: t.name.clone(),
            size: t.size,
            done_bytes: if t.status == TransferStatus::Completed {
                t.size
            } else {
                t.durable_bytes()
            },
            status: t.status,
            reason: t.reason.clone(),
            rate: t.rate(),
            path: t.path.as_ref().map(|p| p.display().to_string()),
        }
    }
}

impl PeerRow {
    /// A device as `fsnode peers` shows it (`me`: this node, for the verification code).
    pub fn of(state: &State, me: &DeviceId, id: &DeviceId) -> Self {
        let default = PeerState::default();
        let peer = state.peers.get(id).unwrap_or(&default);
        PeerRow {
            id: id.clone(),
            name: peer.name.clone(),
            device_type: peer.device_type,
            addresses: peer.addresses.iter().map(|a| a.to_string()).collect(),
            port: peer.port,
            discovered: peer.discovered,
            trusted: peer.trusted,
            requested: !peer.trusted && peer.requested_at_ms.is_some(),
            connection: peer.connection.label(),
            connection_state: peer.connection.clone(),
            transport: peer
                .transport
                .filter(|_| peer.connection == ConnectionState::Connected),
            verification_code: trust::verification_code(me, id),
        }
    }
}

impl NodeStatus {
    pub fn of(me: &Me) -> Self {
        NodeStatus {
            device_id: me.id.clone(),
            name: me.name.clone(),
            device_type: me.device_type,
            signaling_port: me.signaling_port,
            version: env!("CARGO_PKG_VERSION").into(),
            urls: Vec::new(),
        }
    }
}

/// The trusted devices with their verification codes (for the projection file).
pub fn trusted_rows(state: &State, me: &DeviceId) -> Vec<PeerRow> {
    state
        .trusted()
        .map(|(id, _)| PeerRow::of(state, me, id))
        .collect()
}

/// What a request that only reads state is answered with (`None`: it is not one of those).
pub fn view(request: &Request, state: &State, me: &Me) -> Option<Reply> {
    let row = |id: &DeviceId| PeerRow::of(state, &me.id, id);
    Some(match request {
        Request::Status => Reply::Status(NodeStatus::of(me)),
        Request::Peers => Reply::Peers {
            peers: state
                .peers
                .keys()
                .filter(|id| **id != me.id)
                .map(row)
                .collect(),
        },
        Request::TrustList => Reply::TrustList {
            trusted: state.trusted().map(|(id, _)| row(id)).collect(),
            requests: state.requests().map(|(id, _)| row(id)).collect(),
        },
        Request::Transfers => {
            let mut live: Vec<(&TransferId, &TransferState)> =
                state.transfers.iter().map(|(id, t)| (id, &**t)).collect();
            // Running first, then queued oldest first, then finished newest first.
            live.sort_by_key(|(_, t)| match t.status {
                s if s.is_finished() => (2, -t.updated_at_ms),
                TransferStatus::Queued => (1, t.queued_at_ms),
                _ => (0, t.queued_at_ms),
            });
            let shown = live.len().min(TRANSFER_ROWS);
            Reply::Transfers {
                transfers: live[..shown]
                    .iter()
                    .map(|(id, t)| TransferRow::of(state, id, t))
                    .collect(),
                not_shown: live.len() - shown,
            }
        }
        _ => return None,
    })
}

impl Request {
    /// The core's command for a request that changes something (`None`: a view or a stream,
    /// served beside the socket).
    pub fn command(&self) -> Option<Command> {
        Some(match self {
            Request::TrustAdd { device } => Command::TrustAdd {
                device: device.clone(),
            },
            Request::TrustRemove { device } => Command::TrustRemove {
                device: device.clone(),
            },
            Request::PeersAdd { address } => Command::Dial { address: *address },
            Request::Send { paths, to, .. } => Command::Send {
                paths: paths.clone(),
                to: to.clone(),
            },
            Request::Cancel { transfer } => Command::Cancel {
                transfer: transfer.clone(),
            },
            Request::Status
            | Request::Peers
            | Request::TrustList
            | Request::Transfers
            | Request::Watch
            | Request::Plugins
            | Request::PluginsReload => return None,
        })
    }
}

/// The reply for what came of a command, with rows from `state`.
pub fn reply(outcome: Outcome, state: &State, me: &DeviceId) -> Reply {
    let transfer_row = |id: &TransferId| {
        state
            .transfers
            .get(id)
            .map(|t| TransferRow::of(state, id, t))
    };
    match outcome {
        Outcome::Trusted(id) => Reply::Trusted {
            peer: PeerRow::of(state, me, &id),
        },
        Outcome::Revoked(id) => Reply::Revoked {
            peer: PeerRow::of(state, me, &id),
        },
        Outcome::Reached(id) => Reply::Peers {
            peers: vec![PeerRow::of(state, me, &id)],
        },
        Outcome::Queued(ids) => Reply::Queued {
            count: ids.len(),
            bytes: ids
                .iter()
                .filter_map(|id| state.transfers.get(id))
                .map(|t| t.size)
                .sum(),
            transfers: ids
                .iter()
                .take(QUEUED_ROWS)
                .filter_map(transfer_row)
                .collect(),
        },
        Outcome::Cancelled(id) => match transfer_row(&id) {
            Some(transfer) => Reply::Cancelled { transfer },
            None => Reply::error(ErrorKind::NotFound, format!("no transfer {id}")),
        },
        Outcome::Refused(Refusal {
            kind,
            message,
            candidates,
        }) => Reply::Error(ControlError {
            kind: match kind {
                RefusalKind::BadRequest => ErrorKind::BadRequest,
                RefusalKind::NotFound => ErrorKind::NotFound,
                RefusalKind::Ambiguous => ErrorKind::Ambiguous,
                RefusalKind::Unreachable => ErrorKind::Unreachable,
                RefusalKind::Finished => ErrorKind::Finished,
            },
            message,
            candidates: candidates
                .iter()
                .map(|id| PeerRow::of(state, me, id))
                .collect(),
        }),
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
    /// The transfer has finished already (`cancel`).
    Finished,
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

    /// A queue of 3,000 (a directory sent): the `queued` reply and the `transfers` view each
    /// list at most their bound of rows and say how many there are; the view lists running
    /// transfers first, then queued ones oldest first, then finished ones newest first.
    #[test]
    fn a_long_queue_gets_bounded_replies_with_the_running_transfers_first() {
        use crate::core::{Direction, Event, Stamped};
        let peer = DeviceId::from_sha256(&[1; 32]);
        let mut state = State::default();
        let ids: Vec<TransferId> = (0..3_000u32)
            .map(|n| {
                let mut b = [0; 16];
                b[12..].copy_from_slice(&(3_000 - n).to_be_bytes());
                let id = TransferId(b);
                let event =
                    Event::queued_bare(id, peer.clone(), Direction::Send, format!("f{n}"), 7);
                state.apply(&Stamped {
                    time_ms: i64::from(n),
                    event,
                });
                id
            })
            .collect();
        for (n, event) in [
            Event::TransferFailed {
                id: ids[5],
                reason: "x".into(),
            },
            Event::TransferStarted {
                id: ids[2_999],
                chunk_size: 1,
                chunks: 7,
                start_chunk: 0,
            },
        ]
        .into_iter()
        .enumerate()
        {
            state.apply(&Stamped {
                time_ms: 5_000 + n as i64,
                event,
            });
        }
        let Reply::Queued {
            count,
            bytes,
            transfers,
        } = reply(Outcome::Queued(ids.clone()), &state, &peer)
        else {
            panic!("a queued reply")
        };
        assert_eq!(
            (count, bytes, transfers.len()),
            (3_000, 21_000, QUEUED_ROWS)
        );
        let me = Me {
            id: peer.clone(),
            name: "me".into(),
            device_type: DeviceType::Server,
            signaling_port: 0,
        };
        let Some(Reply::Transfers {
            transfers,
            not_shown,
        }) = view(&Request::Transfers, &state, &me)
        else {
            panic!("a transfers view")
        };
        assert_eq!(
            (transfers.len(), not_shown),
            (TRANSFER_ROWS, 3_000 - TRANSFER_ROWS)
        );
        assert_eq!(
            transfers[0].id,
            ids[2_999].to_string(),
            "the running one first"
        );
        assert_eq!(
            transfers[1].id,
            ids[0].to_string(),
            "then the oldest queued"
        );
        assert!(
            transfers.iter().all(|t| t.id != ids[5].to_string()),
            "finished last"
        );
    }

    /// Rows are built from typed state; the states serialize as the words the README and
    /// scripts read (`send`, `queued`), from serde, not from `Debug`.
    #[test]
    fn transfer_rows_serialize_their_typed_states_as_words() {
        use crate::core::{Event, Stamped};
        let peer = DeviceId::from_sha256(&[1; 32]);
        let id = TransferId([3; 16]);
        let mut state = State::default();
        // As an older journal may hold it: the optional facts absent.
        let queued: Event = serde_json::from_value(serde_json::json!({"TransferQueued": {
            "id": id, "peer": peer, "direction": "send", "name": "a.bin", "size": 10,
            "path": null, "mime": null, "mode": null, "mtime": null, "sha256": null,
        }}))
        .unwrap();
        state.apply(&Stamped {
            time_ms: 1,
            event: queued,
        });
        let Some(Reply::Transfers { transfers, .. }) = view(
            &Request::Transfers,
            &state,
            &Me {
                id: peer.clone(),
                name: "me".into(),
                device_type: DeviceType::Server,
                signaling_port: 0,
            },
        ) else {
            panic!("a transfers view")
        };
        assert_eq!(transfers[0].status, TransferStatus::Queued);
        let json = serde_json::to_value(&transfers[0]).unwrap();
        assert_eq!(json["status"], "queued");
        assert_eq!(json["direction"], "send");
        assert_eq!(
            reply(Outcome::Queued(vec![id]), &state, &peer),
            Reply::Queued {
                count: 1,
                bytes: 10,
                transfers
            }
        );
        assert!(Request::Transfers.command().is_none());
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
