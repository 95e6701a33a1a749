//! The node's side of the transfers: feeding `Transfers` the channel messages, prepared sends,
//! hashes and cancels, and carrying out the work it returns.

use super::*;

impl Core {
    /// A send stopped: the next waiting ones start, within the caps (`core::transfers`).
    pub(super) fn start_waiting_sends(&mut self, now: Now) {
        if self.transfers.slot_freed() {
            let mut work = Vec::new();
            self.transfers.fill(&self.state, now.instant, &mut work);
            self.run(work, now);
        }
    }

    /// Starts `peer`'s queued sends in the order policy gives (once it gave it).
    pub(super) fn connect_transfers(&mut self, peer: &DeviceId, now: Now) {
        let mut queue = Vec::new();
        let mut work = Vec::new();
        self.transfers
            .connected(peer, &self.state, now.instant, &mut work, &mut |facts| {
                queue = facts;
                None
            });
        self.run(work, now);
        let connected: Vec<DeviceId> = self
            .state
            .peers
            .keys()
            .filter(|id| self.transfers.is_connected(id))
            .cloned()
            .collect();
        let question = Question::Schedule { queue, connected };
        self.ask(question, Waiting::Schedule { peer: peer.clone() }, now);
    }

    /// Does the work the transfer manager asked for, in order.
    pub(super) fn run(&mut self, work: Vec<Work>, now: Now) {
        for item in work {
            match item {
                Work::Record(event) => self.emit(event, now),
                Work::Store {
                    id,
                    op: op @ StoreOp::Finalize { mode, mtime, .. },
                } => match self.state.transfers.get(&id) {
                    Some(t) => {
                        let file = FileFacts {
                            id,
                            name: t.name.clone(),
                            size: t.size,
                            mime: t.mime.clone().unwrap_or_default(),
                            mode,
                            mtime,
                        };
                        self.ask(
                            Question::MapMode { file },
                            Waiting::Finalize { id, op },
                            now,
                        );
                    }
                    None => self.out.push_back(Output::Effect(Effect::Store { id, op })),
                },
                Work::Store {
                    id,
                    op: StoreOp::Close,
                } => {
                    // Over here: a finalize still waiting for its mode is moot.
                    self.questions.retain(
                        |_, asked| !matches!(&asked.waiting, Waiting::Finalize { id: f, .. } if *f == id),
                    );
                    self.out.push_back(Output::Effect(Effect::Store {
                        id,
                        op: StoreOp::Close,
                    }))
                }
                Work::Channel { peer, message } => {
                    self.out.push_back(Output::Effect(Effect::ChannelSend {
                        peer,
                        data: transfer::encode(&message),
                    }))
                }
                Work::Store { id, op } => {
                    self.out.push_back(Output::Effect(Effect::Store { id, op }))
                }
            }
        }
    }

    pub(super) fn on_channel(&mut self, peer: DeviceId, data: &[u8], now: Now) {
        if !self.state.is_trusted(&peer) {
            return; // never accept data from a device that is not trusted (spec 3.4)
        }
        match transfer::wire::decode_within(data, crate::core::transfers::MAX_MESSAGE_BYTES) {
            Ok(Some(message)) => self.feed_transfers(&peer, message, None, now),
            Ok(None) => {} // an unknown kind: ignored (spec 4)
            Err(error) => match error.readable_id() {
                // Spec 4: a known kind with a key missing or mistyped, whose `id` is readable,
                // gets `reject` `invalid`; the channel stays.
                Some(id) => self.out.push_back(Output::Effect(Effect::ChannelSend {
                    peer,
                    data: transfer::encode(&transfer::Message::Reject {
                        id,
                        reason: error.into_cause().to_string(),
                        code: Some(transfer::wire::RejectCode::Invalid),
                    }),
                })),
                // Spec 4: a message that is not valid CBOR closes the data channel.
                None => {
                    if let Some(negotiation) = self.negotiations.get_mut(&peer) {
                        negotiation.handle(
                            negotiation::Input::Lost {
                                reason: format!("invalid transfer message: {error}"),
                            },
                            now.instant,
                        );
                        self.drain_negotiation(&peer, now);
                    }
                }
            },
        }
    }

    /// A message from `peer`'s channel for the transfers. A `start` of a new file waits for
    /// policy unless `accept` already is its answer.
    pub(super) fn feed_transfers(
        &mut self,
        peer: &DeviceId,
        message: transfer::Message,
        accept: Option<AcceptAnswer>,
        now: Now,
    ) {
        let start = matches!(message, transfer::Message::Start { .. }).then(|| message.clone());
        let mut offered = None;
        let mut work = Vec::new();
        self.transfers.on_message(
            peer,
            message,
            &self.state,
            now.instant,
            &mut work,
            &mut |_, start| {
                if accept.is_none() {
                    offered = Some(FileFacts {
                        id: start.id,
                        name: start.name.clone(),
                        size: start.size,
                        mime: start.mime.clone(),
                        mode: start.mode,
                        mtime: start.mtime,
                    });
                }
                accept.clone()
            },
        );
        self.run(work, now);
        let (Some(file), Some(message)) = (offered, start) else {
            return;
        };
        let asked_already = self.questions.values().any(|asked| {
            matches!(&asked.waiting, Waiting::Start { message: transfer::Message::Start { id, .. }, .. } if *id == file.id)
        });
        if asked_already {
            return; // a repeated `start`: the first one's answer serves it
        }
        let question = Question::OnTransfer {
            peer: self.peer_facts(peer),
            file,
        };
        let waiting = Waiting::Start {
            peer: peer.clone(),
            message,
        };
        self.ask(question, waiting, now);
    }

    pub(super) fn on_send_prepared(
        &mut self,
        token: Token,
        result: Result<Vec<QueuedFile>, String>,
        more: bool,
        now: Now,
    ) {
        let files = match result {
            Ok(files) => files,
            Err(message) => {
                self.sends_queueing.remove(&token);
                self.out.push_back(Output::Outcome {
                    token,
                    outcome: Outcome::refused(RefusalKind::BadRequest, message),
                });
                return;
            }
        };
        let (mut ids, mut peers) = self.sends_queueing.remove(&token).unwrap_or_default();
        ids.reserve(files.len());
        for file in &files {
            self.emit(
                Event::TransferQueued {
                    id: file.id,
                    peer: file.peer.clone(),
                    direction: Direction::Send,
                    name: file.name.clone(),
                    size: file.size,
                    path: Some(file.path.clone()),
                    mime: Some(file.mime.clone()),
                    mode: Some(file.mode),
                    mtime: file.mtime,
                    sha256: file.sha256,
                    dir: None,
                },
                now,
            );
            ids.push(file.id);
            if !peers.contains(&file.peer) {
                peers.push(file.peer.clone());
            }
        }
        self.hash_sources(
            files
                .iter()
                .filter(|f| f.sha256.is_none())
                .map(|f| (f.path.clone(), f.id)),
        );
        if more {
            // Started together with the last slice, so policy orders the whole send.
            self.sends_queueing.insert(token, (ids, peers));
            return;
        }
        self.out.push_back(Output::Outcome {
            token,
            outcome: Outcome::Queued(ids),
        });
        // Peers already connected start at once; the others when they connect.
        for peer in peers {
            if self.transfers.is_connected(&peer) {
                self.connect_transfers(&peer, now);
            }
        }
    }

    /// Asks the shell to hash each file once for all the transfers sending it.
    pub(super) fn hash_sources(
        &mut self,
        files: impl Iterator<Item = (std::path::PathBuf, TransferId)>,
    ) {
        let mut by_path: BTreeMap<std::path::PathBuf, Vec<TransferId>> = BTreeMap::new();
        for (path, id) in files {
            by_path.entry(path).or_default().push(id);
        }
        for (path, ids) in by_path {
            self.out
                .push_back(Output::Effect(Effect::HashSource { path, ids }));
        }
    }

    pub(super) fn on_source_hashed(
        &mut self,
        ids: Vec<TransferId>,
        result: Result<[u8; 32], String>,
        now: Now,
    ) {
        for id in ids {
            let pending = self
                .state
                .transfers
                .get(&id)
                .is_some_and(|t| !t.status.is_finished() && t.sha256.is_none());
            if !pending {
                continue;
            }
            let mut work = Vec::new();
            match &result {
                Ok(sha256) => {
                    self.emit(
                        Event::TransferHashed {
                            id,
                            sha256: *sha256,
                        },
                        now,
                    );
                    self.transfers.hashed(&id, *sha256, now.instant, &mut work);
                }
                Err(reason) => {
                    if !self
                        .transfers
                        .hash_failed(&id, reason.clone(), now.instant, &mut work)
                    {
                        self.emit(
                            Event::TransferFailed {
                                id,
                                reason: format!("sender: {reason}"),
                            },
                            now,
                        );
                    }
                }
            }
            self.run(work, now);
        }
    }

    pub(super) fn on_cancel(&mut self, typed: &str, now: Now) -> Outcome {
        let typed = typed.trim().to_ascii_lowercase();
        let matches: Vec<TransferId> = self
            .state
            .transfers
            .keys()
            .filter(|id| id.to_string().starts_with(&typed))
            .copied()
            .collect();
        let id = match (typed.len() >= 4, matches.as_slice()) {
            (false, _) => {
                return Outcome::refused(
                    RefusalKind::BadRequest,
                    "type at least 4 hex digits of the transfer id (`fsnode transfers`)",
                );
            }
            (true, [id]) => *id,
            (true, []) => {
                return Outcome::refused(RefusalKind::NotFound, format!("no transfer {typed}"));
            }
            (true, _) => {
                return Outcome::refused(
                    RefusalKind::Ambiguous,
                    format!("{typed} matches {} transfers; type more", matches.len()),
                );
            }
        };
        let t = &self.state.transfers[&id];
        if t.status.is_finished() {
            let message = crate::core::request::nothing_to_cancel(
                &id.to_string(),
                &t.name,
                t.status,
                t.reason.as_deref(),
            );
            return Outcome::refused(RefusalKind::Finished, message);
        }
        if self.ls_cancel(&id, now) {
            return Outcome::Cancelled(id);
        }
        let mut work = Vec::new();
        let live = self.transfers.cancel_local(&id, now.instant, &mut work);
        self.run(work, now);
        if !live {
            // Not running now: record it; a sender re-sends the cancel on reconnecting.
            self.emit(
                Event::TransferCancelled {
                    id,
                    by: crate::core::Side::Local,
                    reason: "cancelled by the operator".into(),
                },
                now,
            );
        }
        Outcome::Cancelled(id)
    }
}
