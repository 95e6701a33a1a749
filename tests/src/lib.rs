//! fsnode's end-to-end test harness: real `fsnode` processes with throwaway homes.
//!
//! The test binary that uses it lives in `tests/e2e/` and is compiled as a test target of the
//! `fsnode` package, so Cargo builds the binary and tells the tests where it is
//! (`CARGO_BIN_EXE_fsnode`), which the harness takes as a parameter.

pub mod process;

pub use process::{NodeHome, Output};
