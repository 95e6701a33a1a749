//! `fsnode trust add|remove|list` and `fsnode peers` without a running node: a server is
//! provisioned before its first start by appending to its journal directly, and what a stopped
//! node knew is read from its journal.
//!
//! `trust add|remove` append, so they take the journal's writer lock: when `Journal::open` is
//! refused with `Locked`, a node runs and the caller goes through the control socket as usual.
//! Otherwise the request is answered by the same core the node runs (replayed from the
//! journal), and the trust events it emits are journaled; nothing else (no dialing, no
//! negotiation) happens offline. `trust list` and `peers` only read: they ask the node when
//! its control socket answers, else read the journal without its lock ([`Reader`]), so a
//! node starting at that moment never finds the journal locked by them, and they show each
//! device's last known state as such (`last seen …`), never a connection of a run that ended.

use std::path::Path;

use anyhow::Context;
use fsnode_journal::{Journal, JournalError, Reader};

use crate::config::{ConfigFile, resolve_dirs};
use crate::control::{Reply, Request};
use crate::core::node::{Core, Input, Me, Now, Output};
use crate::core::{DeviceType, Event};
use crate::identity::Identity;
use crate::record::{self, JournalEntry};
use crate::shell::runtime::{Clock, SystemClock};

/// Answers `trust list` or `peers` from the journal, read without its lock: for when no node
/// answered on the control socket (`None` for other requests).
pub fn read_offline(home: Option<&Path>, request: &Request) -> anyhow::Result<Option<Reply>> {
    let dirs = resolve_dirs(home)?;
    let journal_dir = dirs.journal();
    if !journal_dir.is_dir() || !dirs.identity().exists() {
        // Never started: nothing known yet. (A reader creates nothing, not even the identity:
        // a node starting at this moment does.)
        return Ok(match request {
            Request::Peers => Some(Reply::Peers { peers: Vec::new() }),
            Request::TrustList => Some(Reply::TrustList {
                trusted: Vec::new(),
                requests: Vec::new(),
            }),
            _ => None,
        });
    }
    let options = ConfigFile::load(&dirs.config_file())?.journal.options();
    let reader = Reader::<JournalEntry>::open(&journal_dir, options)
        .with_context(|| format!("opening the journal at {}", journal_dir.display()))?;
    let replay = reader
        .replay()
        .with_context(|| format!("reading the journal at {}", journal_dir.display()))?;
    let (mut state, _) = record::fold(replay, None)
        .with_context(|| format!("reading the journal at {}", journal_dir.display()))?;
    let me = offline_me(Identity::load(&dirs.identity())?, &state);
    // Nothing of the last run's network state holds now (as a restart's `NodeStarted` says):
    // no device is on the LAN or connected for a node that is not running.
    for peer in state.peers.values_mut() {
        peer.discovered = false;
        peer.connection = crate::core::ConnectionState::NotConnected;
    }
    let mut reply = crate::control::view(request, &state, &me);
    let rows: Vec<&mut crate::control::PeerRow> = match &mut reply {
        Some(Reply::Peers { peers }) => peers.iter_mut().collect(),
        Some(Reply::TrustList { trusted, requests }) => {
            trusted.iter_mut().chain(requests.iter_mut()).collect()
        }
        _ => Vec::new(),
    };
    for row in rows {
        row.connection = last_seen(state.peers.get(&row.id).and_then(|p| p.last_seen_ms));
    }
    Ok(reply)
}

/// A device's state for a node that is not running: when it was last seen.
fn last_seen(at_ms: Option<i64>) -> String {
    let Some(at) = at_ms.and_then(|ms| {
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms.try_into().ok()?))
    }) else {
        return "never seen".into();
    };
    format!("last seen {}", humantime::format_rfc3339_seconds(at))
}

/// This node's facts for a view built offline: its identity and the name it last ran with.
fn offline_me(identity: Identity, state: &crate::core::State) -> Me {
    Me {
        id: identity.device_id,
        name: state
            .node
            .as_ref()
            .map_or_else(String::new, |n| n.name.clone()),
        device_type: state
            .node
            .as_ref()
            .map_or(DeviceType::Server, |n| n.device_type),
        signaling_port: 0,
    }
}

/// Answers `trust add|remove` from the journal when no node holds it; `None` when a node runs.
pub fn trust_offline(home: Option<&Path>, request: &Request) -> anyhow::Result<Option<Reply>> {
    if !matches!(
        request,
        Request::TrustAdd { .. } | Request::TrustRemove { .. }
    ) {
        return Ok(None);
    }
    let dirs = resolve_dirs(home)?;
    let options = ConfigFile::load(&dirs.config_file())?.journal.options();
    crate::shell::run::create_private_dir(&dirs.data)?;
    let journal_dir = dirs.journal();
    let journal = match Journal::<JournalEntry>::open(&journal_dir, options) {
        Ok((journal, _)) => journal,
        Err(JournalError::Locked { .. }) => return Ok(None),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("opening the journal at {}", journal_dir.display()));
        }
    };
    let clock = SystemClock;
    let (identity, _) = Identity::load_or_create(&dirs.identity(), clock.wall())?;
    let (state, _) = record::fold(journal.replay()?, None)?;
    let me = offline_me(identity, &state);
    let now = Now {
        instant: clock.now(),
        wall_ms: clock.wall_ms(),
    };
    let mut core = Core::new(me, state, now.instant);
    let Some(command) = request.command() else {
        journal.close().context("closing the journal")?;
        return Ok(None);
    };
    core.handle(Input::Command { token: 0, command }, now);
    let mut reply = None;
    let mut last = None;
    while let Some(output) = core.poll_output() {
        match output {
            Output::Event(stamped) => {
                // Only the operator's decision; the rest (dialing a trusted peer, dropping a
                // connection) is the running node's business.
                if matches!(
                    stamped.event,
                    Event::PeerAuthorized { .. } | Event::PeerRevoked { .. }
                ) {
                    last = Some(journal.append(&JournalEntry::Event(stamped))?);
                }
            }
            Output::Outcome { outcome, .. } => {
                reply = Some(crate::control::reply(outcome, core.state(), &core.me().id))
            }
            Output::Effect(_) => {}
        }
    }
    if let Some(pending) = last {
        pending.wait().context("writing to the journal")?;
    }
    journal.close().context("closing the journal")?;
    Ok(reply)
}
