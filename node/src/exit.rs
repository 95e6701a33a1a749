//! Exit codes, one per kind of failure, so scripts can tell them apart (documented in the
//! README and in `fsnode --help`).

use crate::commands::client::NoNode;
use crate::config::ConfigError;
use crate::identity::IdentityError;
use fsnode_journal::JournalError;

pub const OK: u8 = 0;
/// Anything not listed below.
pub const FAILURE: u8 = 1;
/// Bad command-line usage (clap's own code).
pub const USAGE: u8 = 2;
/// The command needs a running node and none answered on the control socket.
pub const NO_NODE: u8 = 3;
/// The journal is damaged, locked by another node, or from a newer fsnode.
pub const JOURNAL: u8 = 4;
/// The identity file cannot be read or is damaged.
pub const IDENTITY: u8 = 5;
/// The configuration (file or flags) is invalid.
pub const CONFIG: u8 = 6;
/// `send --wait`: at least one transfer failed, was rejected or was cancelled.
pub const TRANSFER_FAILED: u8 = 7;
/// `run`: the port the operator named (`--port`, or `port` in the config file) is in use.
pub const PORT_IN_USE: u8 = 8;

/// Another node already runs on this home (exit code [`JOURNAL`]: it holds the journal).
#[derive(Debug, thiserror::Error)]
#[error(
    "another fsnode is already running with this home (its control socket {} answers); stop it or use another --home",
    socket.display()
)]
pub struct AlreadyRunning {
    pub socket: std::path::PathBuf,
}

/// The port the operator named for signaling is taken (exit code [`PORT_IN_USE`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "port {port} on {address} is in use by another program: pick another with --port (or `port` in fsnode.toml), or leave it out to use the default ({default}) or a free port",
    default = crate::config::DEFAULT_PORT
)]
pub struct PortInUse {
    pub port: u16,
    pub address: std::net::IpAddr,
}

/// A damaged journal, said with what `fsnode journal repair` would keep and cut (exit code
/// [`JOURNAL`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JournalDamaged(pub String);

/// The exit code for an error that reached `main`.
pub fn code_for(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<JournalError>() {
            return JOURNAL;
        }
        if cause.is::<IdentityError>() {
            return IDENTITY;
        }
        if cause.is::<ConfigError>() {
            return CONFIG;
        }
        if cause.is::<NoNode>() {
            return NO_NODE;
        }
        if cause.is::<crate::commands::TransfersFailed>() {
            return TRANSFER_FAILED;
        }
        if cause.is::<AlreadyRunning>() || cause.is::<JournalDamaged>() {
            return JOURNAL;
        }
        if cause.is::<PortInUse>() {
            return PORT_IN_USE;
        }
    }
    FAILURE
}
