//! fsnode: a node for peer-to-peer file transfer on a local network.
//!
//! Layout (design.md): [`core`] is the pure, sans-IO part (events, state, protocol machines);
//! [`shell`] holds the IO adapters that feed it; [`commands`] are the CLI's subcommands.

pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod core;
pub mod dirs;
pub mod exit;
pub mod history;
pub mod identity;
pub mod policy;
pub mod record;
pub mod shell;
#[cfg(test)]
mod sim;
pub mod wasm_target;
