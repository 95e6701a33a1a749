//! End-to-end tests: real `fsnode` processes in throwaway homes (see tests/README.md).

mod discovery;
mod foundation;

use std::path::PathBuf;

/// The binary Cargo built for this test target.
pub fn fsnode_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fsnode"))
}
