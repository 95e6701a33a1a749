//! One negotiation per peer: starting them and moving their outputs into the core's.

use super::*;

impl Core {
    /// Connects to a trusted, reachable peer unless already connected or negotiating.
    pub(super) fn maybe_start(&mut self, peer: &DeviceId, now: Now) {
        // A LocalSend device is reached over its own protocol, never negotiated with.
        let reachable = !peer.is_localsend()
            && self.state.peers.get(peer).is_some_and(|p| p.trusted)
            && !self.dial_addresses(peer).is_empty();
        if !reachable {
            return;
        }
        self.negotiations
            .entry(peer.clone())
            .or_insert_with(|| Negotiation::new(&self.me.id, peer.clone()))
            .handle(negotiation::Input::Start, now.instant);
        self.drain_negotiation(peer, now);
    }

    /// Moves a negotiation's outputs into the core's: events journaled, messages and actions
    /// as effects.
    pub(super) fn drain_negotiation(&mut self, peer: &DeviceId, now: Now) {
        while let Some(output) = self
            .negotiations
            .get_mut(peer)
            .and_then(Negotiation::poll_output)
        {
            match output {
                negotiation::Output::Record(mut event) => {
                    if let Event::NegotiationFailed { reason, .. } = &mut event
                        && let Some(why) = self.unreachable.get(peer)
                    {
                        // No offer ever reached the peer: say what happened where it was
                        // dialled, not that it did not answer.
                        *reason = format!("unreachable: {why}");
                    }
                    let connected = matches!(event, Event::Connected { .. });
                    let disconnected = matches!(
                        event,
                        Event::Disconnected { .. } | Event::NegotiationFailed { .. }
                    );
                    self.emit(event, now);
                    if connected {
                        self.authenticated(peer, now);
                    }
                    if disconnected
                        && self.goodbyes_while_connected.remove(peer)
                        && self.state.peers.get(peer).is_some_and(|p| p.discovered)
                    {
                        self.emit(Event::PeerLost { peer: peer.clone() }, now);
                    }
                    if connected {
                        self.connect_transfers(peer, now);
                    } else if disconnected {
                        let mut work = Vec::new();
                        self.transfers.disconnected(peer, &mut work);
                        self.run(work, now);
                    }
                }
                negotiation::Output::Send(mut message) => {
                    if let Message::Candidate(candidate) = &mut message {
                        // Spec 3.2: every candidate, end-of-candidates included, names the
                        // data m-line (browsers reject one that does not), whatever the
                        // WebRTC adapter filled in.
                        if candidate.sdp_mid.as_deref().is_none_or(str::is_empty) {
                            candidate.sdp_mid = Some(DATA_MID.into());
                        }
                        candidate.sdp_mline_index.get_or_insert(0);
                    }
                    self.out.push_back(Output::Effect(Effect::Signal {
                        peer: peer.clone(),
                        message,
                    }))
                }
                negotiation::Output::Act(action) => {
                    self.out.push_back(Output::Effect(Effect::Rtc {
                        peer: peer.clone(),
                        action,
                    }))
                }
            }
        }
    }
}
