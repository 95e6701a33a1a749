//! fsnode's end-to-end test harness: real `fsnode` processes with throwaway homes, and small
//! LANs of network namespaces for tests that need several hosts and multicast.
//!
//! The test binary that uses it lives in `tests/e2e/` and is compiled as a test target of the
//! `fsnode` package, so Cargo builds the binary and tells the tests where it is
//! (`CARGO_BIN_EXE_fsnode`), which the harness takes as a parameter.
// The workspace clippy.toml forbids the wall clock so that the sans-IO core takes time as an
// input; a test harness bounding real processes in real time needs it.
#![allow(
    clippy::disallowed_methods,
    reason = "test harness: waits on real processes with the wall clock"
)]

pub mod netns;
pub mod process;

pub use netns::{Background, BrowsedService, Host, Lan, MdnsRegistration, run_bounded};
pub use process::{NodeHome, Output};
