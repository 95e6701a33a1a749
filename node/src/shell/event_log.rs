//! The node's log lines for what it journals: one line per transfer that ends or pauses (name,
//! size, peer, rate), per connection that comes or goes, per trust given by a plugin, per
//! device asking to connect, and the warnings an operator acts on. Quiet by default still means
//! no noise: progress, discovery and negotiation steps are `debug`.

use tracing::{debug, info, warn};

use crate::core::{Authority, DeviceId, Direction, Event, State, TransferId};

/// Logs `event`, already folded into `state` (so a finished transfer's facts are there).
pub fn log(event: &Event, state: &State, me: &DeviceId) {
    match event {
        Event::NegotiationFailed { peer, reason } => {
            let name = peer_name(state, peer);
            if reason.ends_with("declined to negotiate: unauthorized") {
                // The usual first meeting: the other side has not trusted this node yet.
                info!(
                    %peer,
                    %name,
                    "{name} does not trust this node yet; on that device: fsnode trust add {}",
                    &me.as_str()[..12]
                );
            } else {
                warn!(%peer, %name, %reason, "could not connect")
            }
        }
        Event::FingerprintMismatch {
            claimed, address, ..
        } => warn!(
            %claimed,
            ?address,
            "refused a peer whose certificate is not the device it claims to be"
        ),
        Event::Connected { peer, transport } => {
            info!(%peer, name = %peer_name(state, peer), %transport, "connected")
        }
        Event::Disconnected { peer, reason } => {
            info!(%peer, name = %peer_name(state, peer), %reason, "disconnected")
        }
        Event::PluginDisabled { plugin, reason } => {
            warn!(%plugin, %reason, "policy plugin disabled; the next one or the default decides")
        }
        Event::AuthorizationRequested { peer, name, .. } => info!(
            %peer,
            %name,
            "an untrusted device asked to connect; `fsnode trust add {}` allows it",
            &peer.as_str()[..12]
        ),
        Event::PeerAuthorized {
            peer,
            by: Authority::Policy { plugin },
            ..
        } => info!(%peer, name = %peer_name(state, peer), %plugin, "trusted by a policy plugin"),
        Event::PeerAuthorized { peer, .. } => {
            info!(%peer, name = %peer_name(state, peer), "trusted")
        }
        Event::PeerRevoked { peer, .. } => {
            info!(%peer, name = %peer_name(state, peer), "no longer trusted")
        }
        Event::TransferCompleted { id, .. } => transfer(state, id, "", None),
        Event::TransferFailed { id, reason } => transfer(state, id, "failed", Some(reason)),
        Event::TransferRejected { id, reason, .. } => transfer(state, id, "rejected", Some(reason)),
        Event::TransferCancelled { id, reason, .. } => {
            transfer(state, id, "cancelled", Some(reason))
        }
        Event::TransferPaused { id, reason } => transfer(state, id, "paused", Some(reason)),
        other => debug!(event = ?other, "event"),
    }
}

/// One line for a transfer that ended (`outcome` empty: completed) or paused.
fn transfer(state: &State, id: &TransferId, outcome: &str, reason: Option<&String>) {
    let Some(t) = state.transfers.get(id) else {
        return;
    };
    let name = &t.name;
    let size = bytes(t.size);
    let peer = peer_name(state, &t.peer);
    let rate = t
        .rate()
        .map_or_else(|| "-".to_owned(), |r| format!("{}/s", bytes(r)));
    let (verb, towards) = match (t.direction, outcome) {
        (Direction::Send, "") => ("sent", "to"),
        (Direction::Receive, "") => ("received", "from"),
        (Direction::Send, _) => ("send", "to"),
        (Direction::Receive, _) => ("receive", "from"),
    };
    let id = id.to_string();
    let id = &id[..8.min(id.len())];
    match (outcome, reason) {
        ("", _) => info!(transfer = %id, "{verb} {name} ({size}) {towards} {peer} at {rate}"),
        ("failed", Some(reason)) => warn!(
            transfer = %id,
            "{verb} of {name} ({size}) {towards} {peer} failed: {reason}"
        ),
        (outcome, reason) => info!(
            transfer = %id,
            "{verb} of {name} ({size}) {towards} {peer} {outcome}: {}",
            reason.map_or("", String::as_str)
        ),
    }
}

fn peer_name(state: &State, peer: &DeviceId) -> String {
    state
        .peers
        .get(peer)
        .map(|p| p.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| peer.as_str()[..12].to_owned())
}

/// Bytes in binary units, as the progress bars show them (`1.5 MiB`).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(10 * 1024 * 1024), "10.0 MiB");
    }
}
