//! `fsnode peers` and `fsnode trust`: clients of the running node's control socket (`trust`
//! works on the journal directly when no node runs, see `provision`).

use std::io::Write;
use std::net::ToSocketAddrs;
use std::path::Path;

use anyhow::{Context, anyhow, bail};

use crate::cli::{PeersArgs, PeersCommand, TrustArgs, TrustCommand};
use crate::commands::client;
use crate::control::{PeerRow, Reply, Request};
use crate::core::ConnectionState;

pub fn peers(home: Option<&Path>, args: &PeersArgs) -> anyhow::Result<()> {
    let request = match &args.command {
        None => Request::Peers,
        Some(PeersCommand::Add { address }) => Request::PeersAdd {
            address: address
                .to_socket_addrs()
                .with_context(|| format!("{address:?} is not HOST:PORT"))?
                .next()
                .ok_or_else(|| anyhow!("{address:?} resolves to no address"))?,
        },
    };
    let reply = client::ask(home, request)?;
    print(&reply, args.json)
}

pub fn trust(home: Option<&Path>, args: &TrustArgs) -> anyhow::Result<()> {
    let request = match &args.command {
        TrustCommand::Add { device } => Request::TrustAdd {
            device: device.clone(),
        },
        TrustCommand::Remove { device } => Request::TrustRemove {
            device: device.clone(),
        },
        TrustCommand::List => Request::TrustList,
    };
    let reply = match super::provision::trust_offline(home, &request)? {
        Some(Reply::Error(error)) => return Err(client::refusal(&error)),
        Some(reply) => reply,
        None => client::ask(home, request)?,
    };
    print(&reply, args.json)
}

fn print(reply: &Reply, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(reply)?)?;
        return Ok(());
    }
    match reply {
        Reply::Peers { peers } => table(&mut out, peers)?,
        Reply::Trusted { peer } => writeln!(
            out,
            "trusted {} ({})\nverification code: {}  (the other device shows the same code for this pair)",
            peer.id, peer.name, peer.verification_code
        )?,
        Reply::Revoked { peer } => writeln!(out, "no longer trusted: {} ({})", peer.id, peer.name)?,
        Reply::TrustList { trusted, requests } => {
            writeln!(out, "trusted ({}):", trusted.len())?;
            table(&mut out, trusted)?;
            writeln!(out, "\nasked to connect ({}):", requests.len())?;
            table(&mut out, requests)?;
        }
        Reply::Status(status) => writeln!(out, "{status:?}")?,
        Reply::Transfers { transfers, .. } | Reply::Queued { transfers, .. } => {
            super::table::transfers(&mut out, transfers)?
        }
        Reply::Cancelled { transfer } => {
            super::table::transfers(&mut out, std::slice::from_ref(transfer))?
        }
        Reply::Event { .. }
        | Reply::Lagged { .. }
        | Reply::NodeStopping { .. }
        | Reply::Plugins { .. } => writeln!(out, "{}", serde_json::to_string(reply)?)?,
        Reply::Error(error) => bail!(client::refusal(error)),
    }
    Ok(())
}

fn table(out: &mut impl Write, peers: &[PeerRow]) -> anyhow::Result<()> {
    if peers.is_empty() {
        writeln!(out, "  (none)")?;
        return Ok(());
    }
    let mut table = super::table::plain(
        &[
            "DEVICE", "NAME", "TYPE", "ADDRESS", "PORT", "TRUSTED", "STATE", "CODE",
        ],
        &[4],
    );
    for peer in peers {
        let address = match peer.addresses.as_slice() {
            [] => "-".to_owned(),
            [one] => one.clone(),
            [first, more @ ..] => format!("{first} (+{})", more.len()),
        };
        // A browser cannot be dialled: it has no port.
        let port = match peer.port {
            0 => "-".to_owned(),
            port => port.to_string(),
        };
        let state = match (&peer.connection_state, peer.requested, peer.discovered) {
            (_, true, _) => "asked to connect".to_owned(),
            (ConnectionState::NotConnected, _, true) => "seen".to_owned(),
            (ConnectionState::NotConnected, _, false) => "offline".to_owned(),
            _ => peer.connection.clone(),
        };
        table.add_row(vec![
            peer.id.as_str()[..12].to_owned(),
            super::table::device_name(&peer.name),
            peer.device_type.to_string(),
            address,
            port,
            if peer.trusted { "yes" } else { "no" }.to_owned(),
            state,
            peer.verification_code.clone(),
        ]);
    }
    super::table::print(out, &table)
}
