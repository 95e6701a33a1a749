//! The CLI's subcommands. Each parses nothing itself: it receives parsed args, does its work
//! through the library, and returns an `anyhow` error with context for `main` to print.

pub mod client;
mod id;
pub(crate) mod journal;
mod peers;
mod plugins;
mod provision;
mod table;
mod transfers;

use crate::cli::{Cli, Command};

/// `send --wait` saw transfers end without completing (exit code 7).
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} transfer(s) did not complete; `fsnode transfers` shows why")]
pub struct TransfersFailed {
    pub failed: usize,
    pub total: usize,
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let home = cli.home.as_deref();
    match cli.command {
        Command::Run(args) => crate::shell::run::run(home, &args),
        Command::Id(args) => id::id(home, &args),
        Command::Journal(args) => journal::journal(home, &args),
        Command::Peers(args) => peers::peers(home, &args),
        Command::Trust(args) => peers::trust(home, &args),
        Command::Send(args) => transfers::send(home, &args),
        Command::Cancel(args) => transfers::cancel(home, &args),
        Command::Transfers(args) => transfers::transfers(home, &args),
        Command::Watch(args) => transfers::watch(home, &args),
        Command::Plugins(args) => plugins::plugins(home, &args),
    }
}
