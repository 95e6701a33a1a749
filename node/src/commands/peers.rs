//! `fsnode peers` and `fsnode trust`: clients of the running node's control socket (`trust`
//! works on the journal directly when no node runs, see `provision`).

use std::io::Write;
use std::net::ToSocketAddrs;
use std::path::Path;

use anyhow::{anyhow, bail};

use crate::cli::{PeersArgs, PeersCommand, TrustArgs, TrustCommand};
use crate::commands::client;
use crate::control::{PeerRow, Reply, Request};
use crate::core::ConnectionState;

pub fn peers(home: Option<&Path>, args: &PeersArgs) -> anyhow::Result<()> {
    let request = match &args.command {
        None => Request::Peers,
        Some(PeersCommand::Add { address }) => Request::PeersAdd {
            address: resolve(address)?,
        },
    };
    if !matches!(request, Request::Peers) {
        return print(&client::ask(home, request)?, args.json);
    }
    // Read-only: the node's answer, or (none answering, or one starting or stopping) the
    // devices as its journal last knew them, and still exit 3: `peers` succeeding is how
    // scripts tell that the node is up.
    let no_node = match client::ask(home, request.clone()) {
        Ok(reply) => return print(&reply, args.json),
        Err(err) => err,
    };
    if let Some(reply) = super::provision::read_offline(home, &request)? {
        print(&reply, args.json)?;
    }
    Err(no_node)
}

/// `HOST:PORT` (an address or a name) as the address to dial, with an error that says which
/// part was wrong.
fn resolve(address: &str) -> anyhow::Result<std::net::SocketAddr> {
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    let example = "e.g. 192.168.1.20:7452, [fd00::20]:7452 or nas.local:7452";
    let Some((host, port)) = address.rsplit_once(':') else {
        bail!("{address:?} is not HOST:PORT: the port is missing ({example})");
    };
    if port.parse::<u16>().is_err() {
        bail!("{address:?} is not HOST:PORT: {port:?} is not a port number ({example})");
    }
    match address.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| anyhow!("the name {host:?} resolves to no address")),
        Err(err) => Err(anyhow!(
            "the name {host:?} did not resolve ({err}); give the node's address instead ({example})"
        )),
    }
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
    if matches!(request, Request::TrustList) {
        // Read-only: the node's answer, else (none answering, or one starting or stopping)
        // the journal's, read without its lock.
        let reply = match client::ask(home, request.clone()) {
            Ok(reply) => reply,
            Err(_) => {
                eprintln!(
                    "no node is running for this home: the devices as its journal last knew them"
                );
                super::provision::read_offline(home, &request)?
                    .ok_or_else(|| anyhow!("no reply"))?
            }
        };
        return print(&reply, args.json);
    }
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
            // Read from a stopped node's journal: `last seen …`.
            (ConnectionState::NotConnected, _, false)
                if peer.connection != ConnectionState::NotConnected.label() =>
            {
                peer.connection.clone()
            }
            (ConnectionState::NotConnected, _, false) => "offline".to_owned(),
            (ConnectionState::Connected, _, _) => match peer.transport {
                Some(transport) => format!("{} ({transport})", peer.connection),
                None => peer.connection.clone(),
            },
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
