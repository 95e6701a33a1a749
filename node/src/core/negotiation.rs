//! Perfect negotiation with one peer (spec 3.3), as a sans-IO state machine.
//!
//! Both peers run this same code; `polite` (our id sorts first) decides who yields in a glare.
//! The machine never touches WebRTC itself: it asks the WebRTC adapter to create offers and
//! answers, roll back, apply remote descriptions and add candidates (`Action`), and hears back
//! through `Input`s. The adapter carries out actions for one peer strictly in order, so a
//! rollback always follows the offer it undoes.
//!
//! Timing (spec 3.3): an offer waits 10 s for its answer; without one it is re-sent (same SDP,
//! same `seq`) after a further 1 s, 2 s and 4 s, each resend again waiting 10 s. So offers go
//! out at t = 0, 11, 23 and 37 s and the peer is `failed` at 47 s. The polite side waits 1.5 s
//! before initiating, so that when both sides trust each other the impolite one usually wins.
//! Candidates that arrive before the remote description are buffered for at most 30 s.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::DeviceId;
use super::Event;
use super::link::TransportKind;
use super::signal::{Candidate, Message};

pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
pub const RETRY_BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
pub const POLITE_DELAY: Duration = Duration::from_millis(1500);
pub const CANDIDATE_TTL: Duration = Duration::from_secs(30);
/// After both descriptions are set, the channel must open within this long; otherwise the
/// attempt counts as lost (webrtc-rs reports no failure when, say, DTLS never completes).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// Candidates buffered per peer before the remote description; the oldest go first.
pub const MAX_BUFFERED_CANDIDATES: usize = 64;

/// What the WebRTC adapter must do for this peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ensure a peer connection (with the `fileshare` channel) exists, create an offer, set it
    /// as the local description, then report `Input::LocalOffer`.
    CreateOffer,
    /// `setLocalDescription({type: rollback})`.
    Rollback,
    /// Ensure a peer connection exists, set the remote offer, create an answer, set it as the
    /// local description, then report `RemoteApplied` and `LocalAnswer`.
    AnswerOffer {
        sdp: String,
    },
    /// Set the remote answer, then report `RemoteApplied`.
    ApplyAnswer {
        sdp: String,
    },
    AddCandidate(Candidate),
    /// Close the peer connection and free it.
    Close,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The peer is trusted and reachable: connect (now if impolite, after 1.5 s if polite).
    Start,
    LocalOffer {
        sdp: String,
    },
    LocalAnswer {
        sdp: String,
    },
    /// A gathered local candidate (`""` = end of candidates) to trickle to the peer.
    LocalCandidate(Candidate),
    RemoteOffer {
        sdp: String,
        seq: u64,
    },
    RemoteAnswer {
        sdp: String,
        seq: u64,
    },
    RemoteCandidate(Candidate),
    /// The adapter finished setting the remote description.
    RemoteApplied,
    /// The channel opened (on `transport`): connected.
    ChannelOpen {
        transport: TransportKind,
    },
    /// ICE or the connection went `disconnected`/`failed`, or the adapter failed.
    Lost {
        reason: String,
    },
    /// The link's handshake (DTLS or QUIC) met a certificate that is not the peer's: lost like
    /// `Lost`; the core journals the impostor (`FingerprintMismatch`) first.
    CertificateRefused {
        presented: DeviceId,
        reason: String,
    },
    /// The peer said `bye` (e.g. `unauthorized`).
    Bye {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Send(Message),
    Act(Action),
    Record(Event),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Wait {
    /// Waiting for the answer until the deadline.
    Answer,
    /// Backing off before resending.
    Backoff,
}

#[derive(Clone, Debug)]
struct OutstandingOffer {
    seq: u64,
    sdp: String,
    /// Resends done so far (0..=3).
    retries: usize,
    wait: Wait,
    deadline: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Idle,
    Negotiating,
    Connected,
    Failed(String),
}

pub struct Negotiation {
    peer: DeviceId,
    polite: bool,
    next_seq: u64,
    /// `CreateOffer` asked, `LocalOffer` not yet back.
    making_offer: bool,
    /// The offer being made was overtaken (polite rollback): drop it when it arrives.
    discard_making_offer: bool,
    offer: Option<OutstandingOffer>,
    /// A remote offer being answered (its seq).
    answering: Option<u64>,
    /// The latest answer we gave, for a repeated offer with the same seq.
    last_answer: Option<(u64, String)>,
    /// The offer being answered or last answered: a "repeat" must be this very offer (a
    /// restarted peer numbers its offers from 1 again, with new ICE credentials).
    answered_offer: Option<String>,
    /// A new session is being negotiated while the old one is connected (spec 3.3): when its
    /// channel opens, the old session has ended for everything that ran on it.
    replacing: bool,
    remote_applied: bool,
    /// Impolite side ignoring a colliding offer: its candidates are ignored too.
    ignoring_offer: bool,
    buffered: VecDeque<(Candidate, Instant)>,
    initiate_at: Option<Instant>,
    open_deadline: Option<Instant>,
    has_connection: bool,
    status: Status,
    /// Consecutive losses, for the reconnect backoff.
    losses: usize,
    out: VecDeque<Output>,
}

impl Negotiation {
    pub fn new(me: &DeviceId, peer: DeviceId) -> Self {
        Self {
            polite: me.is_polite_towards(&peer),
            peer,
            next_seq: 1,
            making_offer: false,
            discard_making_offer: false,
            offer: None,
            answering: None,
            last_answer: None,
            answered_offer: None,
            replacing: false,
            remote_applied: false,
            ignoring_offer: false,
            buffered: VecDeque::new(),
            initiate_at: None,
            open_deadline: None,
            has_connection: false,
            status: Status::Idle,
            losses: 0,
            out: VecDeque::new(),
        }
    }

    pub fn is_polite(&self) -> bool {
        self.polite
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest time `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.initiate_at,
            self.open_deadline,
            self.offer.as_ref().map(|o| o.deadline),
            self.buffered.front().map(|(_, at)| *at + CANDIDATE_TTL),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn busy(&self) -> bool {
        self.making_offer || self.offer.is_some() || self.answering.is_some()
    }

    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Start => {
                if self.status == Status::Connected || self.busy() || self.initiate_at.is_some() {
                    return;
                }
                if self.polite {
                    self.initiate_at = Some(now + POLITE_DELAY);
                } else {
                    self.initiate();
                }
            }
            Input::LocalOffer { sdp } => {
                if !self.making_offer {
                    return;
                }
                self.making_offer = false;
                if std::mem::take(&mut self.discard_making_offer) {
                    return;
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.out.push_back(Output::Send(Message::Offer {
                    sdp: sdp.clone(),
                    seq,
                }));
                self.record(Event::OfferSent {
                    peer: self.peer.clone(),
                    seq,
                });
                self.offer = Some(OutstandingOffer {
                    seq,
                    sdp,
                    retries: 0,
                    wait: Wait::Answer,
                    deadline: now + ANSWER_TIMEOUT,
                });
            }
            Input::LocalAnswer { sdp } => {
                if let Some(seq) = self.answering.take() {
                    self.out.push_back(Output::Send(Message::Answer {
                        sdp: sdp.clone(),
                        seq,
                    }));
                    self.last_answer = Some((seq, sdp));
                }
            }
            Input::LocalCandidate(candidate) => {
                if self.has_connection {
                    self.out
                        .push_back(Output::Send(Message::Candidate(candidate)));
                }
            }
            Input::RemoteOffer { sdp, seq } => self.on_remote_offer(sdp, seq),
            Input::RemoteAnswer { sdp, seq } => {
                let Some(offer) = &self.offer else { return };
                if offer.seq != seq {
                    return;
                }
                self.offer = None;
                // Candidates from now on belong to this answer, not to an offer we ignored.
                self.ignoring_offer = false;
                self.record(Event::AnswerReceived {
                    peer: self.peer.clone(),
                    seq,
                });
                self.act(Action::ApplyAnswer { sdp });
            }
            Input::RemoteCandidate(candidate) => {
                if self.ignoring_offer {
                    return;
                }
                if self.remote_applied {
                    self.act(Action::AddCandidate(candidate));
                } else {
                    if self.buffered.len() == MAX_BUFFERED_CANDIDATES {
                        self.buffered.pop_front();
                    }
                    self.buffered.push_back((candidate, now));
                }
            }
            Input::RemoteApplied => {
                self.remote_applied = true;
                if self.status != Status::Connected {
                    self.open_deadline = Some(now + OPEN_TIMEOUT);
                }
                while let Some((candidate, _)) = self.buffered.pop_front() {
                    self.act(Action::AddCandidate(candidate));
                }
            }
            Input::ChannelOpen { transport } => {
                self.open_deadline = None;
                if self.status != Status::Connected {
                    if std::mem::take(&mut self.replacing) {
                        self.record(Event::Disconnected {
                            peer: self.peer.clone(),
                            reason: "replaced by a new session".into(),
                        });
                    }
                    self.status = Status::Connected;
                    self.losses = 0;
                    self.record(Event::Connected {
                        peer: self.peer.clone(),
                        transport,
                    });
                }
            }
            Input::Lost { reason } | Input::CertificateRefused { reason, .. } => {
                if !self.has_connection {
                    // A report from a connection already closed on purpose.
                    return;
                }
                let was = self.status.clone();
                self.reset();
                if was == Status::Connected || was == Status::Negotiating {
                    self.record(Event::Disconnected {
                        peer: self.peer.clone(),
                        reason,
                    });
                }
                self.status = Status::Idle;
                // Reconnect with the retry backoff; the peer's next appearance also restarts.
                let delay = RETRY_BACKOFF[self.losses.min(RETRY_BACKOFF.len() - 1)];
                self.losses += 1;
                self.initiate_at = Some(now + delay);
            }
            Input::Bye { reason } => {
                if !self.busy() && self.status != Status::Negotiating {
                    return;
                }
                self.reset();
                self.fail(format!("the peer declined to negotiate: {reason}"));
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.open_deadline.is_some_and(|at| at <= now) {
            self.open_deadline = None;
            self.handle(
                Input::Lost {
                    reason: format!("the data channel did not open within {OPEN_TIMEOUT:?}"),
                },
                now,
            );
            return;
        }
        while self
            .buffered
            .front()
            .is_some_and(|(_, at)| *at + CANDIDATE_TTL <= now)
        {
            self.buffered.pop_front();
        }
        if self.initiate_at.is_some_and(|at| at <= now) {
            self.initiate_at = None;
            if !self.busy() && self.status != Status::Connected {
                self.initiate();
            }
        }
        let Some(offer) = &mut self.offer else { return };
        if offer.deadline > now {
            return;
        }
        match offer.wait {
            Wait::Answer if offer.retries < RETRY_BACKOFF.len() => {
                offer.wait = Wait::Backoff;
                offer.deadline = now + RETRY_BACKOFF[offer.retries];
            }
            Wait::Answer => {
                let reason = format!(
                    "no answer to offer {} after {} attempts",
                    offer.seq,
                    offer.retries + 1
                );
                self.reset();
                self.fail(reason);
            }
            Wait::Backoff => {
                offer.retries += 1;
                offer.wait = Wait::Answer;
                offer.deadline = now + ANSWER_TIMEOUT;
                let (seq, sdp, attempt) = (offer.seq, offer.sdp.clone(), offer.retries as u32);
                self.out
                    .push_back(Output::Send(Message::Offer { sdp, seq }));
                self.record(Event::OfferRetried {
                    peer: self.peer.clone(),
                    seq,
                    attempt,
                });
            }
        }
    }

    fn on_remote_offer(&mut self, sdp: String, seq: u64) {
        if let Some((answered, answer)) = &self.last_answer
            && *answered == seq
            && self.answered_offer.as_deref() == Some(sdp.as_str())
        {
            // A resend of an offer we already answered: the same answer again.
            self.out.push_back(Output::Send(Message::Answer {
                sdp: answer.clone(),
                seq,
            }));
            return;
        }
        let collision = self.making_offer || self.offer.is_some();
        if collision && !self.polite {
            self.ignoring_offer = true;
            return;
        }
        self.ignoring_offer = false;
        self.initiate_at = None;
        if collision {
            if self.making_offer {
                self.discard_making_offer = true;
            }
            // Roll back our own offer (the adapter does it after the offer it is creating).
            self.act(Action::Rollback);
            self.offer = None;
        }
        self.remote_applied = false;
        self.answering = Some(seq);
        self.has_connection = true;
        if self.status == Status::Connected {
            self.replacing = true;
        }
        self.answered_offer = Some(sdp.clone());
        self.status = Status::Negotiating;
        self.act(Action::AnswerOffer { sdp });
    }

    fn initiate(&mut self) {
        self.making_offer = true;
        self.has_connection = true;
        self.status = Status::Negotiating;
        self.act(Action::CreateOffer);
    }

    fn fail(&mut self, reason: String) {
        self.status = Status::Failed(reason.clone());
        self.record(Event::NegotiationFailed {
            peer: self.peer.clone(),
            reason,
        });
    }

    /// Forgets the current negotiation and closes the peer connection.
    fn reset(&mut self) {
        if self.has_connection {
            self.act(Action::Close);
        }
        self.has_connection = false;
        self.making_offer = false;
        self.discard_making_offer = false;
        self.offer = None;
        self.answering = None;
        self.last_answer = None;
        self.answered_offer = None;
        self.replacing = false;
        self.remote_applied = false;
        self.ignoring_offer = false;
        self.buffered.clear();
        self.initiate_at = None;
        self.open_deadline = None;
    }

    fn act(&mut self, action: Action) {
        self.out.push_back(Output::Act(action));
    }

    fn record(&mut self, event: Event) {
        self.out.push_back(Output::Record(event));
    }
}

#[cfg(test)]
mod tests;
