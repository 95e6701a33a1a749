//! Policy questions: the one way the core asks (`ask`), what waits for each answer, and how
//! it resumes (`resume`) with the decision, the default when no answer comes in time.

use super::*;

/// A question out to policy and what waits for its answer.
#[derive(Debug)]
pub(super) struct Asked {
    pub(super) question: Question,
    pub(super) deadline: Instant,
    pub(super) waiting: Waiting,
}

/// What the core was doing when it asked policy: resumed with the decision.
#[derive(Debug)]
pub(super) enum Waiting {
    /// An untrusted device was discovered (or changed).
    Discovered { peer: DeviceId },
    /// An untrusted device's offer, handled again if policy trusts it.
    Offer {
        conn: ConnId,
        peer: DeviceId,
        message: Message,
    },
    /// A trusted device's `start` of a new file, fed to the transfers again with the answer.
    Start {
        peer: DeviceId,
        message: transfer::Message,
    },
    /// A peer connected: its queued sends start in the order policy gives.
    Schedule { peer: DeviceId },
    /// A received file's `Finalize`, sent to the store with the mode policy gives.
    Finalize { id: TransferId, op: StoreOp },
    /// A LocalSend `prepare-upload` from an untrusted device, resumed if policy trusts it.
    LocalSendTrust {
        req: crate::core::localsend::RequestId,
    },
    /// File `index` of a LocalSend `prepare-upload`: accepted (where) or refused.
    LocalSendFile {
        req: crate::core::localsend::RequestId,
        index: usize,
    },
}

impl Core {
    /// From now on the questions go to the plugins (as `AskPolicy` effects) instead of the
    /// built-in default; journals the plugins the host could not load.
    /// The plugins the host loaded (`loaded`, in order) and those it could not; journaled.
    /// Without any loaded, the built-in default decides at once again.
    pub fn use_plugins(&mut self, loaded: Vec<String>, disabled: Vec<Disabled>, now: Now) {
        self.asks_plugins = !loaded.is_empty();
        self.emit(Event::PluginsLoaded { plugins: loaded }, now);
        self.journal_disabled(disabled, now);
    }

    pub(super) fn journal_disabled(&mut self, disabled: Vec<Disabled>, now: Now) {
        for Disabled { plugin, reason } in disabled {
            self.emit(Event::PluginDisabled { plugin, reason }, now);
        }
    }

    /// The one way the core asks policy: `question` goes out as an `AskPolicy` effect and
    /// `waiting` resumes with the decision when the answer comes (or, after
    /// [`POLICY_ANSWER_TIMEOUT`], with the default). Without plugins, with nothing to choose,
    /// or with [`MAX_QUESTIONS`] out, the default decides at once.
    pub(super) fn ask(&mut self, question: Question, waiting: Waiting, now: Now) {
        let asks = self.asks_plugins && question.needs_asking();
        if !asks || self.questions.len() >= MAX_QUESTIONS {
            let (decision, _) = question.decide(None);
            self.resume(waiting, decision, now);
            return;
        }
        let id = self.next_question;
        self.next_question += 1;
        self.out
            .push_back(Output::Effect(Effect::AskPolicy(PolicyRequest {
                id,
                node: self.node_facts(now),
                question: question.clone(),
            })));
        self.questions.insert(
            id,
            Asked {
                question,
                deadline: now.instant + POLICY_ANSWER_TIMEOUT,
                waiting,
            },
        );
    }

    /// The plugins answered: the decision is journaled, then what waited resumes. An answer
    /// after its timeout finds nothing waiting (the default was applied).
    pub(super) fn on_policy_answer(&mut self, answer: PolicyAnswer, now: Now) {
        self.journal_disabled(answer.disabled, now);
        let Some(asked) = self.questions.remove(&answer.id) else {
            return;
        };
        let (decision, event) = asked.question.decide(Some(answer.answer));
        self.emit_all(event.into_iter().collect(), now);
        self.resume(asked.waiting, decision, now);
    }

    /// Questions unanswered past their deadline get the built-in default.
    pub(super) fn expire_questions(&mut self, now: Now) {
        let expired: Vec<QuestionId> = self
            .questions
            .iter()
            .filter(|(_, asked)| asked.deadline <= now.instant)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(asked) = self.questions.remove(&id) {
                tracing::debug!(question = %asked.question.label(), "no policy answer in time; the default decides");
                let (decision, _) = asked.question.decide(None);
                self.resume(asked.waiting, decision, now);
            }
        }
    }

    /// Carries on with what waited for `decision`.
    pub(super) fn resume(&mut self, waiting: Waiting, decision: Decision, now: Now) {
        match (waiting, decision) {
            (Waiting::Discovered { peer }, Decision::Trust { answer, plugin }) => {
                match (answer, plugin) {
                    (TrustAnswer::Trust, Some(plugin)) => {
                        self.trust_by_policy(&peer, plugin, now);
                        self.maybe_start(&peer, now);
                    }
                    (TrustAnswer::Ask, _) => self.request_authorization(&peer, now),
                    _ => {}
                }
            }
            (
                Waiting::Offer {
                    conn,
                    peer,
                    message,
                },
                Decision::Trust { answer, plugin },
            ) => match (answer, plugin) {
                (TrustAnswer::Trust, Some(plugin)) => {
                    self.trust_by_policy(&peer, plugin, now);
                    // Trusted now: the offer proceeds.
                    self.on_signal(conn, peer, message, now);
                }
                (answer, _) => {
                    if answer != TrustAnswer::Ignore {
                        self.request_authorization(&peer, now);
                    }
                    self.out.push_back(Output::Effect(Effect::Signal {
                        peer,
                        message: Message::Bye {
                            reason: "unauthorized".into(),
                        },
                    }));
                }
            },
            (Waiting::Start { peer, message }, Decision::Accept(answer)) => {
                // (A sender that left meanwhile sends its `start` again on reconnecting, and
                // that one rebuilds the receiver, as for any reconnect the node noticed late.)
                if self.state.is_trusted(&peer) {
                    self.feed_transfers(&peer, message, Some(answer), now);
                }
            }
            (Waiting::Schedule { peer }, Decision::Order(order)) => {
                let connected = self
                    .state
                    .peers
                    .get(&peer)
                    .is_some_and(|p| p.connection == crate::core::ConnectionState::Connected);
                if connected {
                    let mut work = Vec::new();
                    self.transfers.connected(
                        &peer,
                        &self.state,
                        now.instant,
                        &mut work,
                        &mut |_| Some(order.clone()),
                    );
                    self.run(work, now);
                }
            }
            (Waiting::Finalize { id, mut op }, Decision::Mode(decided)) => {
                if let StoreOp::Finalize { mode, .. } | StoreOp::FinalizeStream { mode, .. } =
                    &mut op
                {
                    *mode = decided.or(*mode);
                }
                self.out.push_back(Output::Effect(Effect::Store { id, op }));
            }
            (Waiting::LocalSendTrust { req }, decision @ Decision::Trust { .. }) => {
                self.ls_trust_decided(req, decision, now)
            }
            (Waiting::LocalSendFile { req, index }, Decision::Accept(answer)) => {
                let decided = match answer {
                    AcceptAnswer::Accept { dir } => Ok(dir),
                    AcceptAnswer::Reject { reason } => Err(reason),
                };
                self.ls_decided(req, index, decided, now);
            }
            // `Question::decide` answers each question with a decision of its own kind.
            (waiting, decision) => {
                tracing::warn!(?waiting, ?decision, "a policy decision of the wrong kind")
            }
        }
    }

    pub(super) fn node_facts(&self, now: Now) -> NodeFacts {
        NodeFacts {
            id: self.me.id.clone(),
            name: self.me.name.clone(),
            platform: Platform::current(),
            os: std::env::consts::OS,
            now_ms: now.wall_ms,
        }
    }

    pub(super) fn peer_facts(&self, id: &DeviceId) -> PeerFacts {
        let known = self.state.peers.get(id);
        PeerFacts {
            id: id.clone(),
            name: known.map(|p| p.name.clone()).unwrap_or_default(),
            device_type: known.map_or(DeviceType::Unknown, |p| p.device_type),
            addresses: known.map(|p| p.addresses.clone()).unwrap_or_default(),
            port: known.map_or(0, |p| p.port),
        }
    }

    /// Journals what a round of questions recorded; the same plugin answer to the same
    /// question is journaled once per [`REQUEST_JOURNAL_INTERVAL_MS`] within a bounded memory.
    pub(super) fn emit_all(&mut self, events: Vec<Event>, now: Now) {
        for event in events {
            if let Event::PolicyDecision {
                plugin,
                question,
                answer,
            } = &event
            {
                let key = format!("{plugin}\n{question}\n{answer}");
                let recent = self
                    .recent_decisions
                    .iter()
                    .any(|(k, at)| *k == key && now.wall_ms - at < REQUEST_JOURNAL_INTERVAL_MS);
                if recent {
                    continue;
                }
                if self.recent_decisions.len() == IGNORED_MEMORY {
                    self.recent_decisions.pop_front();
                }
                self.recent_decisions.push_back((key, now.wall_ms));
            }
            self.emit(event, now);
        }
    }
}
