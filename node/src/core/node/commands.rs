//! The operator's commands (`core::request`): trust, dial, send, cancel.

use super::*;

impl Core {
    pub(super) fn on_command(
        &mut self,
        command: Command,
        token: Token,
        now: Now,
    ) -> Option<Outcome> {
        Some(match command {
            Command::TrustAdd { device } => {
                let id = match self.resolve(&device, false) {
                    Ok(id) => id,
                    Err(refusal) => return Some(Outcome::Refused(refusal)),
                };
                if id == self.me.id {
                    return Some(Outcome::refused(
                        RefusalKind::BadRequest,
                        "that is this node's own id",
                    ));
                }
                if !self.state.is_trusted(&id) {
                    self.journal_held_back(&id, now);
                    self.emit(
                        Event::PeerAuthorized {
                            peer: id.clone(),
                            name: None,
                            by: Authority::Operator,
                        },
                        now,
                    );
                    self.out.push_back(Output::Effect(Effect::TrustChanged));
                }
                // Authorizing a device makes this node the initiator towards it (spec 3.4).
                self.maybe_start(&id, now);
                Outcome::Trusted(id)
            }
            Command::TrustRemove { device } => {
                let id = match self.resolve(&device, true) {
                    Ok(id) => id,
                    Err(refusal) => return Some(Outcome::Refused(refusal)),
                };
                let was_trusted = self.state.is_trusted(&id);
                if was_trusted {
                    self.emit(
                        Event::PeerRevoked {
                            peer: id.clone(),
                            by: Authority::Operator,
                        },
                        now,
                    );
                    self.out.push_back(Output::Effect(Effect::TrustChanged));
                }
                // The session ends now, whatever the peer: its link is closed (DTLS
                // close_notify) and the peer is told on signaling, as for an untrusted offer,
                // so that it stops at once instead of waiting for its connection to time out
                // (browsers see no close_notify: their session otherwise lingers for seconds).
                if was_trusted {
                    self.out.push_back(Output::Effect(Effect::Signal {
                        peer: id.clone(),
                        message: Message::Bye {
                            reason: "unauthorized".into(),
                        },
                    }));
                }
                if self.negotiations.remove(&id).is_some() {
                    self.out.push_back(Output::Effect(Effect::Rtc {
                        peer: id.clone(),
                        action: Action::Close,
                    }));
                    let connected = self.state.peers.get(&id).is_some_and(|p| {
                        p.connection != crate::core::ConnectionState::NotConnected
                    });
                    if connected {
                        self.emit(
                            Event::Disconnected {
                                peer: id.clone(),
                                reason: "no longer trusted".into(),
                            },
                            now,
                        );
                    }
                }
                Outcome::Revoked(id)
            }
            Command::Send { paths, to } => {
                let mut peers = Vec::new();
                for typed in &to {
                    match self.resolve_trusted(typed) {
                        Ok(peer) => peers.push(peer),
                        Err(refusal) => return Some(Outcome::Refused(refusal)),
                    }
                }
                if paths.is_empty() || peers.is_empty() {
                    return Some(Outcome::refused(RefusalKind::BadRequest, "nothing to send"));
                }
                // `--to A --to B --to A` sends once to A: keep each device's first mention.
                let mut seen = std::collections::HashSet::new();
                peers.retain(|peer| seen.insert(peer.clone()));
                self.out.push_back(Output::Effect(Effect::PrepareSend {
                    token,
                    paths,
                    peers,
                }));
                // Answered once the files are hashed and queued.
                return None;
            }
            Command::Cancel { transfer } => self.on_cancel(&transfer, now),
            Command::Dial { address } => {
                self.out.push_back(Output::Effect(Effect::Dial {
                    addr: address,
                    token: Some(token),
                }));
                // Answered when the hello arrives or the dial fails.
                return None;
            }
        })
    }

    /// A trusted device for `send`, from a full id or a prefix. A full id resolves for any
    /// device (trust accepts one never seen), so the trust is checked here: a send to a device
    /// that is not trusted would wait forever.
    fn resolve_trusted(&self, typed: &str) -> Result<DeviceId, Refusal> {
        let not_trusted = |id: &DeviceId| {
            let known = match self.state.peers.get(id) {
                Some(peer) if !peer.name.is_empty() => format!(" ({})", peer.name),
                _ => String::new(),
            };
            Refusal::new(
                RefusalKind::NotFound,
                format!(
                    "{id}{known} is not trusted; send goes to trusted devices only: `fsnode trust add {id}` first (a full id works also for a device not seen yet)"
                ),
            )
        };
        match self.resolve(typed, true) {
            Ok(id) if self.state.is_trusted(&id) => Ok(id),
            Ok(id) => Err(not_trusted(&id)),
            Err(refusal) if refusal.kind == RefusalKind::NotFound => {
                // A prefix of a device seen but not trusted gets the same hint.
                match self.resolve(typed, false) {
                    Ok(id) => Err(not_trusted(&id)),
                    Err(_) => Err(Refusal::new(
                        RefusalKind::NotFound,
                        format!(
                            "no trusted device matches {typed:?}; send goes to trusted devices only: `fsnode trust list` lists them, `fsnode trust add ID` trusts one"
                        ),
                    )),
                }
            }
            Err(refusal) => Err(refusal),
        }
    }
}
