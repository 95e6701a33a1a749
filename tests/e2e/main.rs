//! End-to-end tests: real `fsnode` processes in throwaway homes (see tests/README.md).
// These tests bound real processes in real time; the clock rule is for the node's core.
#![allow(clippy::disallowed_methods)]

mod browser;
mod cli_words;
mod connection;
mod discovery;
mod faults;
mod foundation;
mod hostile;
mod interop;
mod localsend;
mod longevity;
mod operator;
mod plugins;
mod receive_dir;
mod rediscovery;
mod support;
mod transfer;
mod walkthrough;
mod watch;

use std::path::PathBuf;

/// The binary Cargo built for this test target.
pub fn fsnode_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fsnode"))
}
