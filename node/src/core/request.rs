//! What the operator asks the core to do, and what came of it, in the core's own terms. The
//! control socket's protocol (`crate::control`) maps its requests onto these commands and
//! renders the outcomes (with rows built from the core's state) beside the socket; questions
//! that only read state never reach the core.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{DeviceId, TransferId, TransferStatus};

/// An operator's command, with the words as typed (ids or prefixes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Trust a device (full id or unique prefix).
    TrustAdd { device: String },
    /// Stop trusting a device.
    TrustRemove { device: String },
    /// Dial a node directly and learn its identity from `hello`.
    Dial { address: SocketAddr },
    /// Queue files for trusted devices.
    Send {
        paths: Vec<PathBuf>,
        to: Vec<String>,
    },
    /// Cancel a transfer (its id or a unique prefix of it).
    Cancel { transfer: String },
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The device is trusted (now or already).
    Trusted(DeviceId),
    /// The device is no longer trusted.
    Revoked(DeviceId),
    /// A dialled node said `hello`: this device.
    Reached(DeviceId),
    /// One transfer per file and device, queued.
    Queued(Vec<TransferId>),
    /// The transfer is cancelled.
    Cancelled(TransferId),
    Refused(Refusal),
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
    /// For [`RefusalKind::Ambiguous`]: the devices that matched.
    pub candidates: Vec<DeviceId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// The command cannot be carried out as given.
    BadRequest,
    NotFound,
    Ambiguous,
    Unreachable,
    /// The transfer has finished already: nothing to cancel.
    Finished,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Refusal {
            kind,
            message: message.into(),
            candidates: Vec::new(),
        }
    }
}

/// Why a finished transfer cannot be cancelled, in the words of its end: `transfer 1a2b3c4d
/// (notes.txt) already completed; nothing to cancel`.
pub fn nothing_to_cancel(
    id: &str,
    name: &str,
    status: TransferStatus,
    reason: Option<&str>,
) -> String {
    let short = id.get(..8).unwrap_or(id);
    let because = reason.map(|r| format!(" ({r})")).unwrap_or_default();
    let end = match status {
        TransferStatus::Completed => "already completed".to_owned(),
        TransferStatus::Cancelled => match reason {
            // The state's reason says who cancelled: "cancelled by the peer's operator".
            Some(r) if r.starts_with("cancelled") => format!("was already {r}"),
            _ => format!("was already cancelled{because}"),
        },
        TransferStatus::Rejected => format!("was rejected{because}"),
        TransferStatus::Failed => format!("already failed{because}"),
        // Not finished: not reached through here.
        TransferStatus::Queued
        | TransferStatus::Starting
        | TransferStatus::Active
        | TransferStatus::Paused => "is still running".to_owned(),
    };
    format!("transfer {short} ({name}) {end}; nothing to cancel")
}

impl Outcome {
    pub fn refused(kind: RefusalKind, message: impl Into<String>) -> Self {
        Outcome::Refused(Refusal::new(kind, message))
    }
}
