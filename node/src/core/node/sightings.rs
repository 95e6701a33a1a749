//! Discovery and admission: announcements, goodbyes and `hello`s become sightings of devices
//! (untrusted ones through admission), and the addresses a trusted device is reached at.

use super::*;

impl Core {
    pub(super) fn on_announced(&mut self, announcement: &Announcement, now: Now) {
        let peer = match discovery::check(announcement) {
            Ok(peer) => peer,
            Err(reason) => {
                self.ignore(&announcement.instance, reason, now);
                return;
            }
        };
        if peer.id == self.me.id {
            return;
        }
        if self.state.is_trusted(&peer.id) {
            let learned = peer
                .addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, peer.port))
                .collect();
            self.seen_trusted(peer.id, peer.name, peer.device_type, learned, now);
            return;
        }
        let from = peer.addresses.first().copied();
        let sighting = Sighting {
            name: peer.name,
            device_type: peer.device_type,
            addresses: peer.addresses,
            port: peer.port,
        };
        self.seen_untrusted(peer.id, sighting, from, false, now);
    }

    /// One sighting of an untrusted device, from `from`: admission decides whether the device
    /// is held at all; a sighting that changes what is known of it (back on the LAN, a new
    /// address, port or name) is journaled within the device's budget, or held back until the
    /// budget allows. `operator`: the operator asked for this dial (`peers add`), always
    /// recorded.
    pub(super) fn seen_untrusted(
        &mut self,
        id: DeviceId,
        sighting: Sighting,
        from: Option<IpAddr>,
        operator: bool,
        now: Now,
    ) {
        if !self.admission.admit(&id, from, operator, now.instant) {
            return;
        }
        if self.is_recorded(&id, &sighting) {
            // Back to what the journal says: a change held back is moot.
            self.admission.take_held_back(&id);
            return;
        }
        if operator || self.admission.may_journal(&id, now.instant) {
            self.admission.take_held_back(&id);
            self.discovered(
                id,
                sighting.name,
                sighting.device_type,
                sighting.addresses,
                sighting.port,
                now,
            );
        } else {
            self.admission.hold_back(&id, sighting);
        }
    }

    /// Whether the journal already says `id` is on the LAN as `sighting` describes it.
    fn is_recorded(&self, id: &DeviceId, sighting: &Sighting) -> bool {
        self.state.peers.get(id).is_some_and(|known| {
            known.discovered
                && known.name == sighting.name
                && known.device_type == sighting.device_type
                && known.addresses == sighting.addresses
                && known.port == sighting.port
        })
    }

    /// Journals the changes held back whose devices' budgets allow them now.
    pub(super) fn journal_due_sightings(&mut self, now: Now) {
        for (id, sighting) in self.admission.take_due(now.instant) {
            if self.state.is_trusted(&id) || self.is_recorded(&id, &sighting) {
                continue;
            }
            self.discovered(
                id,
                sighting.name,
                sighting.device_type,
                sighting.addresses,
                sighting.port,
                now,
            );
        }
    }

    /// The operator (or a plugin) is about to trust `id`: the latest sighting held back for
    /// it is journaled first, so the node dials where the device is now, not where it was
    /// when its budget ran out.
    pub(super) fn journal_held_back(&mut self, id: &DeviceId, now: Now) {
        let Some(sighting) = self.admission.take_held_back(id) else {
            return;
        };
        if self.is_recorded(id, &sighting) {
            return;
        }
        self.emit(
            Event::PeerDiscovered {
                peer: id.clone(),
                name: sighting.name,
                device_type: sighting.device_type,
                addresses: sighting.addresses,
                port: sighting.port,
            },
            now,
        );
    }

    /// A trusted device seen through unauthenticated input (`hello` or mDNS) at `learned`
    /// (spec 3.4). Nothing stored changes unless it is seen where it was already known to be:
    /// another address is only a candidate to try, recorded once a session authenticated with
    /// its key is negotiated through it.
    pub(super) fn seen_trusted(
        &mut self,
        id: DeviceId,
        name: String,
        device_type: DeviceType,
        learned: Vec<SocketAddr>,
        now: Now,
    ) {
        let Some(known) = self.state.peers.get(&id) else {
            return;
        };
        let never_reached = known.port == 0 || known.addresses.is_empty();
        let dialable: Vec<SocketAddr> = learned.into_iter().filter(|a| a.port() != 0).collect();
        if never_reached {
            // Nothing authenticated to protect yet (trusted by id before it was ever seen):
            // the first address heard of is where to try.
            if let Some(first) = dialable.first() {
                let addresses = dialable.iter().map(SocketAddr::ip).collect();
                self.discovered(id, name, device_type, addresses, first.port(), now);
            }
            return;
        }
        let (addresses, port) = (known.addresses.clone(), known.port);
        let at_known = dialable
            .iter()
            .any(|a| a.port() == port && addresses.contains(&a.ip()));
        if at_known {
            self.discovered(id, name, device_type, addresses, port, now);
            return;
        }
        let candidates = self.candidates.entry(id.clone()).or_default();
        let before = candidates.clone();
        for addr in dialable.into_iter().rev() {
            candidates.retain(|a| *a != addr);
            candidates.push_front(addr);
        }
        candidates.truncate(MAX_CANDIDATES);
        if *candidates != before {
            self.out
                .push_back(Output::Effect(Effect::PeerSeen { peer: id.clone() }));
        }
        self.maybe_start(&id, now);
    }

    /// Where `peer` can be reached: its stored addresses (where an authenticated session last
    /// was), then the candidates unauthenticated input named. Empty for an untrusted device:
    /// the node never dials what it does not trust, so no host can make it connect elsewhere.
    pub fn route(&self, peer: &DeviceId) -> Route {
        let Some(known) = self.state.peers.get(peer).filter(|p| p.trusted) else {
            return Route::default();
        };
        let stored = if known.port == 0 {
            Vec::new()
        } else {
            known
                .addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, known.port))
                .collect()
        };
        let candidates = self
            .candidates
            .get(peer)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default();
        Route { stored, candidates }
    }

    /// The addresses `peer` is dialled at, in order (see [`Core::route`]).
    pub fn dial_addresses(&self, peer: &DeviceId) -> Vec<SocketAddr> {
        self.route(peer).dial_order().into()
    }

    /// A session with `peer` came up (its data channel opened, so DTLS proved its key): the
    /// address it was negotiated through becomes its stored address.
    pub(super) fn authenticated(&mut self, peer: &DeviceId, now: Now) {
        let Some(via) = self.negotiated_via.get(peer).copied() else {
            return;
        };
        let Some(known) = self.state.peers.get(peer) else {
            return;
        };
        if via.port() == 0
            || (known.port == via.port() && known.addresses.first() == Some(&via.ip()))
        {
            return;
        }
        let mut addresses = vec![via.ip()];
        addresses.extend(known.addresses.iter().filter(|ip| **ip != via.ip()));
        addresses.truncate(discovery::MAX_ADDRESSES);
        let (name, device_type) = (known.name.clone(), known.device_type);
        if let Some(candidates) = self.candidates.get_mut(peer) {
            candidates.retain(|a| *a != via);
        }
        self.emit(
            Event::PeerDiscovered {
                peer: peer.clone(),
                name,
                device_type,
                addresses,
                port: via.port(),
            },
            now,
        );
    }

    /// Journals an ignored announcement once per (instance, reason) within a bounded memory,
    /// and within admission's budget of ignored announcements.
    pub(super) fn ignore(&mut self, instance: &str, reason: String, now: Now) {
        let key = format!("{instance}\n{reason}");
        if self.ignored.contains(&key) {
            return;
        }
        if self.ignored.len() == IGNORED_MEMORY {
            self.ignored.pop_front();
        }
        self.ignored.push_back(key);
        if !self.admission.may_record_ignored(now.instant) {
            return; // a flood of distinct bad announcements: counted, not journaled
        }
        let instance: String = instance.chars().take(128).collect();
        self.emit(Event::AnnouncementIgnored { instance, reason }, now);
    }

    /// Records a peer as seen, unless nothing changed (re-announcements are frequent).
    pub(super) fn discovered(
        &mut self,
        id: DeviceId,
        name: String,
        device_type: DeviceType,
        addresses: Vec<std::net::IpAddr>,
        port: u16,
        now: Now,
    ) {
        let unchanged = self.state.peers.get(&id).is_some_and(|known| {
            known.discovered
                && known.name == name
                && known.device_type == device_type
                && known.addresses == addresses
                && known.port == port
        });
        if !unchanged {
            self.emit(
                Event::PeerDiscovered {
                    peer: id.clone(),
                    name,
                    device_type,
                    addresses,
                    port,
                },
                now,
            );
            // Asked when what is known of an untrusted device changes, not per announcement.
            if !self.state.is_trusted(&id) {
                let question = Question::OnDiscovered {
                    peer: self.peer_facts(&id),
                };
                self.ask(question, Waiting::Discovered { peer: id.clone() }, now);
            }
        }
        self.maybe_start(&id, now);
    }

    pub(super) fn on_withdrawn(&mut self, instance: &str, now: Now) {
        let Some(id) = discovery::instance_device_id(instance) else {
            return;
        };
        let Some(known) = self.state.peers.get(&id) else {
            return;
        };
        // An mDNS goodbye is unauthenticated: while a trusted device's session is up, that
        // session is the better evidence, so a forged goodbye changes nothing (spec 3.4).
        if known.trusted && known.connection == crate::core::ConnectionState::Connected {
            // Held until the session ends: if it does, the goodbye was likely true.
            self.goodbyes_while_connected.insert(id);
            return;
        }
        if known.discovered {
            self.emit(Event::PeerLost { peer: id }, now);
        }
    }

    pub(super) fn on_hello(
        &mut self,
        conn: ConnId,
        from: SocketAddr,
        hello: Hello,
        token: Option<Token>,
        now: Now,
    ) {
        if self.conns.len() < MAX_CONNS || self.conns.contains_key(&conn) {
            self.conns
                .insert(conn, SocketAddr::new(from.ip(), hello.port));
        }
        if hello.id == self.me.id {
            if let Some(token) = token {
                self.out.push_back(Output::Outcome {
                    token,
                    outcome: Outcome::refused(RefusalKind::BadRequest, "that address is this node"),
                });
            }
            return;
        }
        let id = hello.id.clone();
        // A connection with it is up: whatever waited for it goes out on it.
        self.unreachable.remove(&id);
        if self.state.is_trusted(&id) {
            let learned = vec![SocketAddr::new(from.ip(), hello.port)];
            self.seen_trusted(id.clone(), hello.name, hello.device_type, learned, now);
        } else {
            self.hello_from_untrusted(from, hello, token.is_some(), now);
        }
        if let Some(token) = token {
            self.out.push_back(Output::Outcome {
                token,
                outcome: Outcome::Reached(id),
            });
        }
    }

    /// A `hello` from an untrusted device: the address it came from (added to those known)
    /// and the port it announces.
    pub(super) fn hello_from_untrusted(
        &mut self,
        from: SocketAddr,
        hello: Hello,
        operator: bool,
        now: Now,
    ) {
        let mut addresses = self
            .state
            .peers
            .get(&hello.id)
            .map(|p| p.addresses.clone())
            .unwrap_or_default();
        if !addresses.contains(&from.ip()) {
            addresses.insert(0, from.ip());
            addresses.truncate(discovery::MAX_ADDRESSES);
        }
        let sighting = Sighting {
            name: hello.name,
            device_type: hello.device_type,
            addresses,
            port: hello.port,
        };
        self.seen_untrusted(hello.id, sighting, Some(from.ip()), operator, now);
    }
}
