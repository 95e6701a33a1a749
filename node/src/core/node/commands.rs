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
                    match self.resolve(typed, true) {
                        Ok(peer) => peers.push(peer),
                        Err(mut refusal) => {
                            if refusal.kind == RefusalKind::NotFound {
                                refusal.message = format!(
                                    "{} (send goes to trusted devices only: `fsnode trust add` first)",
                                    refusal.message
                                );
                            }
                            return Some(Outcome::Refused(refusal));
                        }
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
}
