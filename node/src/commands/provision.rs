//! `fsnode trust add|remove|list` without a running node: a server is provisioned before its
//! first start by appending to (or reading) its journal directly.
//!
//! The journal's lock says whether a node runs: when `Journal::open` is refused with `Locked`,
//! the caller goes through the control socket as usual. Otherwise the request is answered by
//! the same core the node runs (replayed from the journal), and the trust events it emits are
//! journaled; nothing else (no dialing, no negotiation) happens offline.

use std::path::Path;

use anyhow::Context;
use fsnode_journal::{Journal, JournalError};

use crate::config::{ConfigFile, resolve_dirs};
use crate::control::{Reply, Request};
use crate::core::node::{Core, Input, Me, Now, Output};
use crate::core::{DeviceType, Event};
use crate::identity::Identity;
use crate::record::{self, JournalEntry};
use crate::shell::runtime::{Clock, SystemClock};

/// Answers a trust request from the journal when no node holds it; `None` when a node runs.
pub fn trust_offline(home: Option<&Path>, request: &Request) -> anyhow::Result<Option<Reply>> {
    if !matches!(
        request,
        Request::TrustAdd { .. } | Request::TrustRemove { .. } | Request::TrustList
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
    let me = Me {
        id: identity.device_id.clone(),
        name: state
            .node
            .as_ref()
            .map_or_else(String::new, |n| n.name.clone()),
        device_type: state
            .node
            .as_ref()
            .map_or(DeviceType::Server, |n| n.device_type),
        signaling_port: 0,
    };
    let now = Now {
        instant: clock.now(),
        wall_ms: clock.wall_ms(),
    };
    let mut core = Core::new(me, state, now.instant);
    let Some(command) = request.command() else {
        // `trust list` only reads the replayed state.
        let reply = crate::control::view(request, core.state(), core.me());
        journal.close().context("closing the journal")?;
        return Ok(reply);
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
