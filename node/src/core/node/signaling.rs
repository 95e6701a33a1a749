//! Signaling messages from peers: the fingerprint check, offers from untrusted devices, and
//! offers on connections a trusted session was never authenticated through.

use super::*;

impl Core {
    pub(super) fn on_signal(&mut self, conn: ConnId, peer: DeviceId, message: Message, now: Now) {
        if peer == self.me.id {
            return;
        }
        let (sdp, is_offer) = match &message {
            Message::Offer { sdp, .. } => (Some(sdp), true),
            Message::Answer { sdp, .. } => (Some(sdp), false),
            _ => (None, false),
        };
        // Spec 3.4: every offer and answer must carry the fingerprint of the id its sender
        // announced; DTLS then proves the key. Checked before anything else looks at it.
        if let Some(sdp) = sdp
            && !sdp::fingerprints_match(sdp, &peer).unwrap_or(false)
        {
            let fingerprint = sdp::sha256_fingerprints(sdp)
                .ok()
                .and_then(|ids| ids.into_iter().find(|id| *id != peer))
                .map_or_else(|| "missing or malformed".to_owned(), |id| id.to_string());
            // Where the connection came from (not where the claimed device is known to be:
            // that is the point of an impostor).
            let address = self.conns.get(&conn).copied();
            self.record_mismatch(&peer, address, fingerprint, now);
            self.out
                .push_back(Output::Effect(Effect::CloseSignaling { conn }));
            return;
        }
        if !self.state.is_trusted(&peer) {
            // Answers and candidates from an untrusted device concern nothing we started; an
            // offer waits for policy.
            if is_offer {
                self.on_untrusted_offer(conn, peer, message, now);
            }
            return;
        }
        if matches!(message, Message::Offer { .. } | Message::Candidate(_))
            && self.live_elsewhere(&peer, conn)
        {
            // Spec 3.4: while a trusted device's session is up, an offer (or its candidates)
            // on a connection from an address the device was never authenticated at cannot
            // touch that session: renegotiating it on an unauthenticated word would let any
            // host cut two devices apart. A device that really moved is answered once its old
            // session fails (or when the link runs sessions side by side, spec 3.3).
            return;
        }
        if let Message::Offer { sdp, .. } | Message::Answer { sdp, .. } = &message {
            self.transfers
                .set_max_message_size(&peer, sdp::max_message_size(sdp));
            if let Some(via) = self.conns.get(&conn) {
                self.negotiated_via.insert(peer.clone(), *via);
            }
        }
        let input = match message {
            Message::Offer { sdp, seq } => negotiation::Input::RemoteOffer { sdp, seq },
            Message::Answer { sdp, seq } => negotiation::Input::RemoteAnswer { sdp, seq },
            Message::Candidate(candidate) => negotiation::Input::RemoteCandidate(candidate),
            Message::Bye { reason } => negotiation::Input::Bye { reason },
            Message::Hello(_) | Message::HelloWrongVersion | Message::Unknown => return,
        };
        self.negotiations
            .entry(peer.clone())
            .or_insert_with(|| Negotiation::new(&self.me.id, peer.clone()))
            .handle(input, now.instant);
        self.drain_negotiation(&peer, now);
    }

    /// An offer from a device the operator has not trusted: policy decides (spec 3.4). The
    /// built-in default records an authorization request, answers `bye unauthorized` and
    /// connects nothing; a plugin may trust the device, and then the offer proceeds (see
    /// [`Core::resume`]).
    pub(super) fn on_untrusted_offer(
        &mut self,
        conn: ConnId,
        peer: DeviceId,
        message: Message,
        now: Now,
    ) {
        if !self.admission.may_ask(&peer, now.instant) {
            // Not admitted (its address brought too many new ids, or it was evicted), or
            // asked about within the minute: refused without asking policy or recording
            // anything, whatever the rate of its offers.
            self.out.push_back(Output::Effect(Effect::Signal {
                peer,
                message: Message::Bye {
                    reason: "unauthorized".into(),
                },
            }));
            return;
        }
        let question = Question::OnOffer {
            peer: self.peer_facts(&peer),
        };
        let waiting = Waiting::Offer {
            conn,
            peer,
            message,
        };
        self.ask(question, waiting, now);
    }

    /// Whether `peer`'s session is up while `conn` comes from an address that is not one of
    /// its stored (authenticated) addresses.
    pub(super) fn live_elsewhere(&self, peer: &DeviceId, conn: ConnId) -> bool {
        let Some(known) = self.state.peers.get(peer) else {
            return false;
        };
        let connected = known.connection == crate::core::ConnectionState::Connected;
        connected
            && !self
                .conns
                .get(&conn)
                .is_some_and(|from| known.addresses.contains(&from.ip()))
    }
}

impl Core {
    /// Journals a device that proved to be someone else (an SDP fingerprint, a DTLS or QUIC
    /// certificate, a LocalSend server that is not the id it claimed). Once per claimed device
    /// and source address per hour, and for an untrusted claim only if admission holds it: a
    /// host repeating a bad offer or handshake cannot grow the journal (spec 3.4).
    pub(super) fn record_mismatch(
        &mut self,
        claimed: &DeviceId,
        address: Option<SocketAddr>,
        fingerprint: String,
        now: Now,
    ) {
        let key = (claimed.clone(), address.map(|a| a.ip()));
        let recent = self
            .recent_mismatches
            .iter()
            .any(|(k, at)| *k == key && now.wall_ms - at < REQUEST_JOURNAL_INTERVAL_MS);
        if recent || !(self.state.is_trusted(claimed) || self.admission.holds(claimed)) {
            return;
        }
        if self.recent_mismatches.len() >= MISMATCH_MEMORY {
            self.recent_mismatches.pop_front();
        }
        self.recent_mismatches.push_back((key, now.wall_ms));
        self.emit(
            Event::FingerprintMismatch {
                claimed: claimed.clone(),
                fingerprint,
                address,
            },
            now,
        );
    }
}
