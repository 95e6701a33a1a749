//! One peer's link sessions, sans-IO: which session carries data, a newer one replacing the
//! old only once its channel is open (spec 3.3), the negotiation machine's `Action`s mapped to
//! link calls, and what is reported back as negotiation inputs and channel messages. The shell
//! (`shell/rtc.rs`) binds sockets for each new session and moves datagrams and timers; the
//! whole-node simulation drives the very same machine over its simulated network.
//!
//! Every offer answered is a new session with fresh sockets and ICE credentials. The session
//! that carries data keeps doing so until a newer one opens its channel (then the old one is
//! closed) or until it fails itself; an offer alone never ends it.
//!
//! Spec 6's fallback lives here too, because it is about this peer and outlives its sessions
//! (a `Close` ends every session but keeps this memory): when QUIC does not bring a session's
//! channel up, this node's next offers and answers to the peer leave out `a=x-fsnode-quic`
//! for [`QUIC_FALLBACK_FIRST`], doubling with every further failure up to
//! [`QUIC_FALLBACK_LONGEST`]; a QUIC channel that opens ends the fallback. So a peer behind
//! something that breaks QUIC costs one failed attempt per period, never a flapping session
//! (a data-channel session that is up stays up, whatever the period), and a long-running node
//! tries QUIC again within hours.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{
    Event, Input as LinkInput, Link, LinkConfig, LinkError, Output as LinkOutput, Transmit,
    TransportKind,
};
use crate::core::negotiation::{Action, Input as NegotiationInput};

/// How long sessions with a peer use the data channel after QUIC first failed to come up.
pub const QUIC_FALLBACK_FIRST: Duration = Duration::from_secs(10 * 60);
/// The longest fallback (each further failure doubles it up to this).
pub const QUIC_FALLBACK_LONGEST: Duration = Duration::from_secs(4 * 3600);

/// Spec 6's fallback for one peer: until when its sessions leave QUIC out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicFallback {
    until: Option<Instant>,
    next: Duration,
}

impl Default for QuicFallback {
    fn default() -> Self {
        Self {
            until: None,
            next: QUIC_FALLBACK_FIRST,
        }
    }
}

impl QuicFallback {
    /// Whether sessions made at `now` leave QUIC out.
    pub fn active(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// When the fallback ends (if one is running).
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// QUIC did not bring a session's channel up.
    fn failed(&mut self, now: Instant) {
        if self.active(now) {
            return; // an older attempt's failure reported late: already falling back
        }
        self.until = Some(now + self.next);
        self.next = (self.next * 2).min(QUIC_FALLBACK_LONGEST);
    }

    /// A QUIC channel opened: QUIC works with this peer again.
    fn succeeded(&mut self) {
        *self = Self::default();
    }
}

/// Bytes a channel may have queued in SCTP before further messages wait here.
pub const SEND_BUFFER_LIMIT: usize = 4 * 1024 * 1024;

/// Sessions kept at once: the one carrying data and the one being negotiated.
const MAX_SESSIONS: usize = 2;

/// A session as the shell numbers its sockets: ids grow, a larger one is newer.
pub type SessionId = u64;

/// What the sessions ask of the shell, in the order it must happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutput {
    /// Send a datagram from the socket `transmit.from` of `session`.
    Transmit {
        session: SessionId,
        transmit: Transmit,
    },
    /// Report to the negotiation machine (`core::node::Input::Rtc`).
    Negotiation(NegotiationInput),
    /// A message that arrived on the carrying channel (`core::node::Input::Channel`).
    Message(Vec<u8>),
}

struct Session {
    id: SessionId,
    link: Link,
    timeout: Instant,
    /// Its channel opened (it carries, or carried, data).
    opened: bool,
    /// Our offer, before the answer is applied.
    offering: bool,
}

/// What one pass over the links found, reported once every link was drained.
enum Report {
    Negotiation(NegotiationInput),
    Opened(SessionId, TransportKind),
    Message(SessionId, Vec<u8>),
}

/// One peer's sessions: oldest first; the last one is the session negotiation works on.
pub struct Sessions {
    sessions: Vec<Session>,
    next_session: SessionId,
    /// Messages waiting for SCTP buffer space.
    pending: VecDeque<Vec<u8>>,
    /// A channel is open to carry messages.
    carrying: bool,
    quic_fallback: QuicFallback,
    out: VecDeque<SessionOutput>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

impl Sessions {
    pub fn new() -> Self {
        Self {
            sessions: Vec::new(),
            next_session: 1,
            pending: VecDeque::new(),
            carrying: false,
            quic_fallback: QuicFallback::default(),
            out: VecDeque::new(),
        }
    }

    /// Spec 6's fallback towards this peer.
    pub fn quic_fallback(&self) -> &QuicFallback {
        &self.quic_fallback
    }

    /// The transport of the session carrying data, if one is.
    pub fn transport(&self) -> Option<TransportKind> {
        self.sessions
            .iter()
            .rev()
            .find(|s| s.opened && s.link.is_open())
            .and_then(|s| s.link.transport())
    }

    /// A new session's configuration: QUIC left out while the fallback runs.
    fn session_config(
        &self,
        now: Instant,
        config: &mut dyn FnMut() -> Result<LinkConfig, String>,
    ) -> Result<LinkConfig, String> {
        let mut config = config()?;
        if self.quic_fallback.active(now) {
            config.quic.enabled = false;
        }
        Ok(config)
    }

    /// The id the next session made by `perform` gets (the shell binds its sockets first).
    pub fn next_id(&self) -> SessionId {
        self.next_session
    }

    /// The sessions alive: a shell drops the sockets of every other one.
    pub fn ids(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.sessions.iter().map(|s| s.id)
    }

    /// A channel is open: messages given to `send` go out.
    pub fn is_carrying(&self) -> bool {
        self.carrying
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions.iter().map(|s| s.timeout).min()
    }

    pub fn poll_output(&mut self) -> Option<SessionOutput> {
        self.out.pop_front()
    }

    /// Queues one binary message for the carrying channel; false if none is open.
    pub fn send(&mut self, data: Vec<u8>) -> bool {
        if !self.carrying {
            return false;
        }
        self.pending.push_back(data);
        true
    }

    /// Carries out one negotiation action. `config` makes a new session's link configuration
    /// (the shell binds its sockets, for session [`Self::next_id`]). A failure closes every
    /// session and reports `Lost`; its reason is returned for the log.
    pub fn act(
        &mut self,
        action: Action,
        now: Instant,
        config: &mut dyn FnMut() -> Result<LinkConfig, String>,
    ) -> Result<(), String> {
        match self.perform(action, now, config) {
            Ok(()) => Ok(()),
            Err(reason) => {
                self.close_all(now);
                self.out
                    .push_back(SessionOutput::Negotiation(NegotiationInput::Lost {
                        reason: reason.clone(),
                    }));
                Err(reason)
            }
        }
    }

    fn perform(
        &mut self,
        action: Action,
        now: Instant,
        config: &mut dyn FnMut() -> Result<LinkConfig, String>,
    ) -> Result<(), String> {
        match action {
            Action::CreateOffer => {
                let config = self.session_config(now, config)?;
                let (link, sdp) = Link::offer(config, now).map_err(|e| e.to_string())?;
                self.add_session(link, true, now);
                self.report(NegotiationInput::LocalOffer { sdp });
            }
            Action::Rollback => {
                // Our outstanding offer's session is dropped; a fresh one answers.
                if self.sessions.last().is_some_and(|s| s.offering) {
                    self.sessions.pop();
                }
            }
            Action::AnswerOffer { sdp } => {
                // A session still offering is superseded by the one answering.
                if self.sessions.last().is_some_and(|s| s.offering) {
                    self.sessions.pop();
                }
                let config = self.session_config(now, config)?;
                let (link, answer) =
                    Link::answer(config, &sdp, now).map_err(|e| format!("answering: {e}"))?;
                self.add_session(link, false, now);
                self.report(NegotiationInput::RemoteApplied);
                self.report(NegotiationInput::LocalAnswer { sdp: answer });
            }
            Action::ApplyAnswer { sdp } => {
                if let Some(last) = self.sessions.last_mut()
                    && last.offering
                {
                    last.link
                        .apply_answer(&sdp, now)
                        .map_err(|e| format!("applying the answer: {e}"))?;
                    last.offering = false;
                    self.report(NegotiationInput::RemoteApplied);
                }
            }
            Action::AddCandidate(candidate) => {
                if let Some(last) = self.sessions.last_mut()
                    && let Err(err) = last.link.add_remote_candidate(&candidate, now)
                {
                    // A bad candidate from the peer is not fatal to the session.
                    tracing::debug!("ignored a remote candidate: {err}");
                }
            }
            Action::Close => self.close_all(now),
        }
        Ok(())
    }

    fn report(&mut self, event: NegotiationInput) {
        self.out.push_back(SessionOutput::Negotiation(event));
    }

    fn add_session(&mut self, link: Link, offering: bool, now: Instant) {
        let id = self.next_session;
        self.next_session += 1;
        // At most the carrying session and the one being negotiated: older attempts go.
        while self.sessions.len() >= MAX_SESSIONS {
            let index = self.sessions.iter().position(|s| !s.opened).unwrap_or(0);
            self.sessions.remove(index);
        }
        self.sessions.push(Session {
            id,
            link,
            timeout: now,
            opened: false,
            offering,
        });
    }

    /// Closes every session (their DTLS close_notify goes out as transmits now) and drops them.
    pub fn close_all(&mut self, now: Instant) {
        for s in &mut self.sessions {
            close_session(s, now, &mut self.out);
        }
        self.sessions.clear();
        self.carrying = false;
        self.pending.clear();
    }

    /// A datagram arrived on a socket of `session` (one already gone is ignored), with the
    /// ECN bits of its IP header when the socket reports them.
    pub fn deliver(
        &mut self,
        session: SessionId,
        from: SocketAddr,
        to: SocketAddr,
        ecn: Option<u8>,
        bytes: &[u8],
        now: Instant,
    ) {
        if let Some(s) = self.sessions.iter_mut().find(|s| s.id == session) {
            s.link.handle_input(
                LinkInput::Datagram {
                    from,
                    to,
                    ecn,
                    bytes,
                },
                now,
            );
        }
    }

    /// After any input: due timers fire, waiting messages go to the carrying channel, and every
    /// link's outputs become [`SessionOutput`]s.
    pub fn advance(&mut self, now: Instant) {
        for s in &mut self.sessions {
            if s.timeout <= now {
                s.link.handle_input(LinkInput::Timeout, now);
            }
        }
        self.flush_pending(now);
        self.drain(now);
    }

    /// The session carrying data: the newest one whose channel is open.
    fn active(&mut self) -> Option<&mut Session> {
        self.sessions
            .iter_mut()
            .rev()
            .find(|s| s.opened && s.link.is_open())
    }

    fn flush_pending(&mut self, now: Instant) {
        let mut pending = std::mem::take(&mut self.pending);
        if let Some(session) = self.active() {
            if !pending.is_empty() {
                pending = session.link.send_batch(pending, SEND_BUFFER_LIMIT, now);
            }
        } else {
            // No channel: the transfer layer resends after reconnecting.
            pending.clear();
        }
        self.pending = pending;
    }

    fn drain(&mut self, now: Instant) {
        let newest = self.sessions.last().map(|s| s.id);
        // In the order the links produced them: a channel's first messages can arrive in the
        // same batch as its opening, and the core must hear of the opening first.
        let mut reports = Vec::new();
        let mut lost = Vec::new();
        for s in &mut self.sessions {
            loop {
                match s.link.poll_output() {
                    LinkOutput::Transmit(transmit) => self.out.push_back(SessionOutput::Transmit {
                        session: s.id,
                        transmit,
                    }),
                    LinkOutput::Event(Event::LocalCandidate(c)) if Some(s.id) == newest => {
                        reports.push(Report::Negotiation(NegotiationInput::LocalCandidate(c)));
                    }
                    LinkOutput::Event(Event::LocalCandidate(_) | Event::Authenticated) => {}
                    LinkOutput::Event(Event::ChannelOpen) => {
                        s.opened = true;
                        let kind = s.link.transport().unwrap_or_default();
                        reports.push(Report::Opened(s.id, kind));
                    }
                    LinkOutput::Event(Event::Message(data)) => {
                        reports.push(Report::Message(s.id, data));
                    }
                    LinkOutput::Event(Event::Lost(error)) => lost.push((s.id, error)),
                    LinkOutput::Timeout(t) => {
                        s.timeout = t;
                        break;
                    }
                }
            }
        }
        for (id, error) in lost {
            if error.is_quic_setup_failure() {
                self.quic_fallback.failed(now);
                tracing::info!(
                    "QUIC did not come up ({error}); the data channel is used for the next \
                     sessions with this peer"
                );
            }
            let was_newest = Some(id) == newest;
            self.sessions.retain(|s| s.id != id);
            if self.active().is_none() {
                self.carrying = false;
            }
            // A replaced session's end concerns nobody; the newest one's is negotiation's.
            if was_newest {
                let reason = error.to_string();
                reports.push(Report::Negotiation(match error {
                    LinkError::FingerprintMismatch { got, .. } => {
                        NegotiationInput::CertificateRefused {
                            presented: got,
                            reason,
                        }
                    }
                    _ => NegotiationInput::Lost { reason },
                }));
            } else {
                tracing::debug!("an older session ended: {error}");
            }
        }
        // Messages of a session older than one that opened in this batch are stale.
        let mut newest_open = 0;
        for report in reports {
            match report {
                Report::Negotiation(event) => self.report(event),
                Report::Opened(id, transport) => {
                    if transport == TransportKind::Quic {
                        self.quic_fallback.succeeded();
                    }
                    // The new session is up: every older one is closed (spec 3.3).
                    for s in self.sessions.iter_mut().filter(|s| s.id < id) {
                        close_session(s, now, &mut self.out);
                    }
                    self.sessions.retain(|s| s.id >= id);
                    newest_open = id;
                    self.carrying = true;
                    self.report(NegotiationInput::ChannelOpen { transport });
                }
                Report::Message(id, _) if id < newest_open => {}
                Report::Message(_, data) => self.out.push_back(SessionOutput::Message(data)),
            }
        }
    }

    /// Sessions alive and whether each one's channel is open (for tests and logs).
    pub fn summary(&self) -> Vec<(SessionId, bool)> {
        self.sessions
            .iter()
            .map(|s| (s.id, s.opened && s.link.is_open()))
            .collect()
    }
}

/// Closes one session's link and queues its last datagrams (DTLS close_notify, QUIC's
/// CONNECTION_CLOSE), so the peer learns of the end at once. Events still queued concern
/// nobody now, but those datagrams may wait behind them: everything is taken.
fn close_session(s: &mut Session, now: Instant, out: &mut VecDeque<SessionOutput>) {
    s.link.close(now);
    loop {
        match s.link.poll_output() {
            LinkOutput::Transmit(transmit) => out.push_back(SessionOutput::Transmit {
                session: s.id,
                transmit,
            }),
            LinkOutput::Event(_) => {}
            LinkOutput::Timeout(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    // One real `Instant::now()` is the virtual epoch.
    #![allow(clippy::disallowed_methods)]

    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::core::DeviceId;
    use crate::core::link::TransportKind;
    use crate::core::link::quic::QuicSettings;
    use crate::core::link::sim::{Conditions, SimNet};
    use crate::core::link::{MAX_MESSAGE_SIZE, SctpTuning};

    use crate::core::link::sim::test_certificate as certificate;

    /// One peer's side: its sessions, its certificate, the port each session was given.
    struct Side {
        sessions: Sessions,
        certificate: rtc_dtls::crypto::Certificate,
        peer: DeviceId,
        ip: [u8; 4],
        next_port: u16,
        ports: BTreeMap<u16, SessionId>,
        reported: Vec<NegotiationInput>,
        messages: Vec<Vec<u8>>,
        quic: bool,
    }

    impl Side {
        fn new(certificate: rtc_dtls::crypto::Certificate, peer: DeviceId, ip: [u8; 4]) -> Self {
            Self {
                sessions: Sessions::new(),
                certificate,
                peer,
                ip,
                next_port: 41_000,
                ports: BTreeMap::new(),
                reported: Vec::new(),
                messages: Vec::new(),
                quic: true,
            }
        }

        fn act(&mut self, action: Action, net: &mut SimNet, now: Instant) {
            let port = self.next_port;
            let config = LinkConfig {
                certificate: self.certificate.clone(),
                peer: self.peer.clone(),
                local_addrs: vec![SocketAddr::from((self.ip, port))],
                path_max_datagram: 1472,
                advertise_max_datagram: None,
                max_message_size: MAX_MESSAGE_SIZE,
                sctp: SctpTuning::default(),
                quic: QuicSettings {
                    enabled: self.quic,
                    ..QuicSettings::default()
                },
                seed: [port as u8 ^ self.ip[3]; 32],
            };
            let id = self.sessions.next_id();
            let mut config = Some(config);
            self.sessions
                .act(action, now, &mut || config.take().ok_or_else(String::new))
                .unwrap();
            if self.sessions.ids().any(|s| s == id) {
                self.ports.insert(port, id);
                self.next_port += 1;
            }
            self.flush(net, now);
        }

        fn flush(&mut self, net: &mut SimNet, now: Instant) {
            self.sessions.advance(now);
            while let Some(output) = self.sessions.poll_output() {
                match output {
                    SessionOutput::Transmit { transmit, .. } => net.send(transmit, now),
                    SessionOutput::Negotiation(event) => self.reported.push(event),
                    SessionOutput::Message(data) => self.messages.push(data),
                }
            }
        }

        /// Reports of kind `pick` taken out of what was reported.
        fn take<T>(&mut self, mut pick: impl FnMut(&NegotiationInput) -> Option<T>) -> Vec<T> {
            let mut taken = Vec::new();
            self.reported.retain(|r| match pick(r) {
                Some(t) => {
                    taken.push(t);
                    false
                }
                None => true,
            });
            taken
        }

        fn open_sessions(&self) -> Vec<SessionId> {
            self.sessions
                .summary()
                .into_iter()
                .filter(|(_, open)| *open)
                .map(|(id, _)| id)
                .collect()
        }
    }

    struct Pair {
        now: Instant,
        net: SimNet,
        a: Side,
        b: Side,
    }

    impl Pair {
        fn new() -> Self {
            let (ca, cb) = (certificate(), certificate());
            let ida = DeviceId::from_certificate_der(ca.certificate[0].as_ref());
            let idb = DeviceId::from_certificate_der(cb.certificate[0].as_ref());
            Self {
                now: Instant::now(),
                net: SimNet::new(Conditions::gigabit(), 5),
                a: Side::new(ca, idb, [10, 77, 0, 1]),
                b: Side::new(cb, ida, [10, 77, 0, 2]),
            }
        }

        /// Steps in virtual time (bounded) until `done`.
        fn run(&mut self, mut done: impl FnMut(&Pair) -> bool) -> bool {
            let deadline = self.now + Duration::from_secs(60);
            for _ in 0..100_000 {
                self.a.flush(&mut self.net, self.now);
                self.b.flush(&mut self.net, self.now);
                if done(self) {
                    return true;
                }
                let next = [
                    self.net.next_arrival(),
                    self.a.sessions.poll_timeout(),
                    self.b.sessions.poll_timeout(),
                ]
                .into_iter()
                .flatten()
                .min();
                let Some(next) = next else { return done(self) };
                self.now = self.now.max(next);
                if self.now > deadline {
                    return false;
                }
                while let Some(d) = self.net.pop_due(self.now) {
                    let side = if d.to.ip() == SocketAddr::from((self.a.ip, 0)).ip() {
                        &mut self.a
                    } else {
                        &mut self.b
                    };
                    if let Some(&session) = side.ports.get(&d.to.port()) {
                        side.sessions
                            .deliver(session, d.from, d.to, None, &d.bytes, self.now);
                    }
                }
            }
            done(self)
        }

        /// `offerer` offers, the other answers, candidates go both ways: one negotiation.
        fn negotiate(&mut self, a_offers: bool) {
            let now = self.now;
            let Pair { net, a, b, .. } = self;
            let (offerer, answerer) = if a_offers { (a, b) } else { (b, a) };
            offerer.act(Action::CreateOffer, net, now);
            let offer = offerer.take(|r| match r {
                NegotiationInput::LocalOffer { sdp } => Some(sdp.clone()),
                _ => None,
            });
            answerer.act(
                Action::AnswerOffer {
                    sdp: offer[0].clone(),
                },
                net,
                now,
            );
            let answer = answerer.take(|r| match r {
                NegotiationInput::LocalAnswer { sdp } => Some(sdp.clone()),
                _ => None,
            });
            offerer.act(
                Action::ApplyAnswer {
                    sdp: answer[0].clone(),
                },
                net,
                now,
            );
            // Candidates gathered so far, both ways.
            self.a.flush(&mut self.net, now);
            self.b.flush(&mut self.net, now);
            for from_a in [true, false] {
                let Pair { net, a, b, .. } = &mut *self;
                let (from, to) = if from_a { (a, b) } else { (b, a) };
                let candidates = from.take(|r| match r {
                    NegotiationInput::LocalCandidate(c) => Some(c.clone()),
                    _ => None,
                });
                for c in candidates {
                    to.act(Action::AddCandidate(c), net, now);
                }
            }
        }
    }

    fn channel_opens(side: &Side) -> usize {
        side.reported
            .iter()
            .filter(|r| matches!(r, NegotiationInput::ChannelOpen { .. }))
            .count()
    }

    /// A new offer is a new session; the old one carries data until the new one's channel
    /// opens, then it is closed: exactly one open session on each side, and messages flow on.
    #[test]
    fn a_new_session_replaces_the_carrying_one_only_once_it_is_up() {
        let mut pair = Pair::new();
        pair.negotiate(true);
        assert!(pair.run(|p| channel_opens(&p.a) == 1 && channel_opens(&p.b) == 1));
        assert!(pair.a.sessions.is_carrying() && pair.b.sessions.is_carrying());
        let first = pair.a.open_sessions();
        assert_eq!(first.len(), 1);

        // b re-offers (new ICE credentials): until the answer, a's old session still carries.
        let now = pair.now;
        pair.b.act(Action::CreateOffer, &mut pair.net, now);
        assert_eq!(
            pair.b.sessions.summary().len(),
            2,
            "old and new side by side"
        );
        assert!(pair.a.sessions.send(vec![1; 1000]));
        assert!(
            pair.run(|p| p.b.messages.len() == 1),
            "the old session carries meanwhile"
        );
        // b's offer is rolled back unanswered (a polite side in a glare); a's fresh offer is
        // the new session that replaces the old one.
        pair.b.act(Action::Rollback, &mut pair.net, now);
        pair.b.take(|r| {
            matches!(
                r,
                NegotiationInput::LocalOffer { .. } | NegotiationInput::LocalCandidate(_)
            )
            .then_some(())
        });
        pair.negotiate(true);
        assert!(pair.run(|p| channel_opens(&p.a) == 2 && channel_opens(&p.b) == 2));
        let second = pair.a.open_sessions();
        assert_eq!(second.len(), 1, "one open session after the replacement");
        assert_ne!(first, second);
        assert_eq!(pair.b.open_sessions().len(), 1);
        assert_eq!(
            pair.a.sessions.summary().len(),
            1,
            "the old session is gone"
        );
        assert!(pair.b.sessions.send(vec![2; 1000]));
        assert!(pair.run(|p| p.a.messages.len() == 1));
        assert_eq!(pair.a.messages[0], vec![2; 1000]);
        // No Lost reported: a replaced session's end concerns nobody.
        assert!(
            !pair
                .a
                .reported
                .iter()
                .chain(&pair.b.reported)
                .any(|r| matches!(r, NegotiationInput::Lost { .. }))
        );
    }

    fn lost(side: &Side) -> Vec<String> {
        side.reported
            .iter()
            .filter_map(|r| match r {
                NegotiationInput::Lost { reason } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    fn opened_on(side: &Side) -> Vec<TransportKind> {
        side.reported
            .iter()
            .filter_map(|r| match r {
                NegotiationInput::ChannelOpen { transport } => Some(*transport),
                _ => None,
            })
            .collect()
    }

    /// The SDP of the offer `side` makes now (the offer is then rolled back).
    fn offer_of(side: &mut Side, net: &mut SimNet, now: Instant) -> String {
        side.act(Action::CreateOffer, net, now);
        let offer = side.take(|r| match r {
            NegotiationInput::LocalOffer { sdp } => Some(sdp.clone()),
            _ => None,
        });
        side.act(Action::Rollback, net, now);
        side.take(|r| matches!(r, NegotiationInput::LocalCandidate(_)).then_some(()));
        offer[0].clone()
    }

    /// Two fsnode peers run QUIC, and report which transport opened.
    #[test]
    fn two_fsnode_peers_open_on_quic() {
        let mut pair = Pair::new();
        pair.negotiate(true);
        assert!(pair.run(|p| channel_opens(&p.a) == 1 && channel_opens(&p.b) == 1));
        assert_eq!(opened_on(&pair.a), [TransportKind::Quic]);
        assert_eq!(opened_on(&pair.b), [TransportKind::Quic]);
        assert_eq!(pair.a.sessions.transport(), Some(TransportKind::Quic));
        assert!(pair.a.sessions.send(vec![5; 1000]));
        assert!(pair.run(|p| p.b.messages.len() == 2));
        // The opening frame first (the core ignores it), then the message.
        assert_eq!(pair.b.messages[1], vec![5; 1000]);
    }

    /// Spec 6's fallback. A path that drops QUIC: the session is lost 5 s after ICE selected a
    /// pair, with a reason naming QUIC, on both sides; the memory survives the `Close` that
    /// negotiation then sends; the next offer and answer leave `a=x-fsnode-quic` out and the
    /// data channel opens. Ten minutes later offers carry it again; a further failure falls
    /// back for twice as long; a QUIC channel that opens ends the fallback.
    #[test]
    fn a_quic_failure_falls_back_to_the_data_channel_for_a_while() {
        let mut pair = Pair::new();
        pair.net.conditions.block_quic = true;
        let start = pair.now;
        pair.negotiate(true);
        assert!(pair.run(|p| !lost(&p.a).is_empty() && !lost(&p.b).is_empty()));
        for side in [&pair.a, &pair.b] {
            assert!(lost(side)[0].contains("QUIC"), "{:?}", lost(side));
            assert!(side.sessions.quic_fallback().active(pair.now));
            let until = side.sessions.quic_fallback().until().unwrap();
            assert!(until >= start + QUIC_FALLBACK_FIRST);
            assert!(until < pair.now + QUIC_FALLBACK_FIRST + Duration::from_millis(1));
        }
        let now = pair.now;
        pair.a.act(Action::Close, &mut pair.net, now);
        pair.b.act(Action::Close, &mut pair.net, now);
        assert!(
            pair.a.sessions.quic_fallback().active(now),
            "outlives Close"
        );
        let offer = offer_of(&mut pair.a, &mut pair.net, now);
        assert!(!offer.contains("x-fsnode-quic"), "{offer}");
        // An offer with QUIC (from a's key, without a's memory) gets an answer without it.
        let mut fresh = Side::new(
            pair.a.certificate.clone(),
            pair.a.peer.clone(),
            [10, 77, 0, 1],
        );
        fresh.next_port = 42_000;
        let offer = offer_of(&mut fresh, &mut pair.net, now);
        assert!(offer.contains("a=x-fsnode-quic:1\r\n"));
        pair.b
            .act(Action::AnswerOffer { sdp: offer }, &mut pair.net, now);
        let answer = pair.b.take(|r| match r {
            NegotiationInput::LocalAnswer { sdp } => Some(sdp.clone()),
            _ => None,
        });
        assert!(!answer[0].contains("x-fsnode-quic"), "{}", answer[0]);
        pair.b.act(Action::Close, &mut pair.net, now);
        pair.b.reported.clear();
        pair.negotiate(true);
        assert!(pair.run(|p| channel_opens(&p.a) == 1 && channel_opens(&p.b) == 1));
        assert_eq!(opened_on(&pair.a), [TransportKind::DataChannel]);
        assert_eq!(opened_on(&pair.b), [TransportKind::DataChannel]);
        assert!(pair.a.sessions.send(vec![6; 1000]));
        assert!(pair.run(|p| p.b.messages == [vec![6; 1000]]));

        // Later, with nothing up: offers carry QUIC again.
        let later = [&pair.a, &pair.b]
            .iter()
            .filter_map(|side| side.sessions.quic_fallback().until())
            .max()
            .unwrap();
        let now = pair.now;
        pair.a.act(Action::Close, &mut pair.net, now);
        pair.b.act(Action::Close, &mut pair.net, now);
        pair.now = later;
        let offer = offer_of(&mut pair.b, &mut pair.net, later);
        assert!(offer.contains("a=x-fsnode-quic:1\r\n"));
        // A second failure: twice as long.
        pair.b.reported.clear();
        pair.negotiate(false);
        assert!(pair.run(|p| !lost(&p.b).is_empty()));
        let second = pair.b.sessions.quic_fallback().until().unwrap() - pair.now;
        assert!(
            second > 2 * QUIC_FALLBACK_FIRST - Duration::from_secs(6),
            "{second:?}"
        );
        assert!(second <= 2 * QUIC_FALLBACK_FIRST);
    }

    #[test]
    fn the_fallback_doubles_up_to_four_hours_and_ends_when_quic_opens() {
        let t0 = Instant::now();
        let mut fallback = QuicFallback::default();
        assert!(!fallback.active(t0));
        let mut at = t0;
        let mut lengths = Vec::new();
        for _ in 0..8 {
            fallback.failed(at);
            // A late report of the same failure changes nothing.
            let until = fallback.until().unwrap();
            fallback.failed(at + Duration::from_secs(1));
            assert_eq!(fallback.until(), Some(until));
            lengths.push((until - at).as_secs() / 60);
            assert!(fallback.active(until - Duration::from_secs(1)));
            assert!(!fallback.active(until));
            at = until;
        }
        assert_eq!(lengths, [10, 20, 40, 80, 160, 240, 240, 240]);
        fallback.succeeded();
        assert!(!fallback.active(at));
        fallback.failed(at);
        assert_eq!(fallback.until(), Some(at + QUIC_FALLBACK_FIRST));
    }

    /// `Close` ends every session; sending then fails, and the peer hears of it at once.
    #[test]
    fn close_ends_every_session_and_the_peer_hears_of_it() {
        let mut pair = Pair::new();
        pair.negotiate(false);
        assert!(pair.run(|p| channel_opens(&p.a) == 1 && channel_opens(&p.b) == 1));
        let now = pair.now;
        pair.a.act(Action::Close, &mut pair.net, now);
        assert!(!pair.a.sessions.is_carrying());
        assert!(!pair.a.sessions.send(vec![3]));
        assert!(pair.run(|p| {
            p.b.reported
                .iter()
                .any(|r| matches!(r, NegotiationInput::Lost { .. }))
        }));
        assert!(pair.b.sessions.summary().is_empty());
    }
}
