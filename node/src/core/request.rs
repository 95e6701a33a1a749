//! What the operator asks the core to do, and what came of it, in the core's own terms. The
//! control socket's protocol (`crate::control`) maps its requests onto these commands and
//! renders the outcomes (with rows built from the core's state) beside the socket; questions
//! that only read state never reach the core.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{DeviceId, TransferId};

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
    /// The transfer is cancelled (or was finished already).
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

impl Outcome {
    pub fn refused(kind: RefusalKind, message: impl Into<String>) -> Self {
        Outcome::Refused(Refusal::new(kind, message))
    }
}
