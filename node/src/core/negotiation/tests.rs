// Tests pick an arbitrary epoch for virtual time; the machine itself never reads the clock.
#![allow(clippy::disallowed_methods)]

use super::*;
use crate::core::link::TransportKind;

fn ids() -> (DeviceId, DeviceId) {
    let a = DeviceId::from_sha256(&[1; 32]);
    let b = DeviceId::from_sha256(&[2; 32]);
    if a.is_polite_towards(&b) {
        (a, b)
    } else {
        (b, a)
    }
}

/// (polite machine, impolite machine, epoch)
fn pair() -> (Negotiation, Negotiation, Instant) {
    let (polite_id, impolite_id) = ids();
    let polite = Negotiation::new(&polite_id, impolite_id.clone());
    let impolite = Negotiation::new(&impolite_id, polite_id);
    assert!(polite.is_polite() && !impolite.is_polite());
    (polite, impolite, Instant::now())
}

fn drain(n: &mut Negotiation) -> Vec<Output> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn cand(text: &str) -> Candidate {
    Candidate {
        candidate: text.into(),
        sdp_mid: Some("0".into()),
        sdp_mline_index: Some(0),
    }
}

fn sent_offers(outputs: &[Output]) -> Vec<u64> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send(Message::Offer { seq, .. }) => Some(*seq),
            _ => None,
        })
        .collect()
}

#[test]
fn the_impolite_side_initiates_at_once_the_polite_side_after_1_5_s() {
    let (mut polite, mut impolite, t0) = pair();
    impolite.handle(Input::Start, t0);
    assert_eq!(drain(&mut impolite), vec![Output::Act(Action::CreateOffer)]);
    polite.handle(Input::Start, t0);
    assert!(drain(&mut polite).is_empty());
    assert_eq!(polite.poll_timeout(), Some(t0 + POLITE_DELAY));
    polite.handle_timeout(t0 + secs(1.49));
    assert!(drain(&mut polite).is_empty());
    polite.handle_timeout(t0 + POLITE_DELAY);
    assert_eq!(drain(&mut polite), vec![Output::Act(Action::CreateOffer)]);
}

#[test]
fn an_offer_arriving_during_the_polite_delay_cancels_the_polite_initiation() {
    let (mut polite, _, t0) = pair();
    polite.handle(Input::Start, t0);
    polite.handle(
        Input::RemoteOffer {
            sdp: "offer-from-impolite".into(),
            seq: 1,
        },
        t0 + secs(0.5),
    );
    assert_eq!(
        drain(&mut polite),
        vec![Output::Act(Action::AnswerOffer {
            sdp: "offer-from-impolite".into()
        })]
    );
    polite.handle_timeout(t0 + secs(2.0));
    assert!(
        drain(&mut polite).is_empty(),
        "no own offer after answering"
    );
    polite.handle(Input::LocalAnswer { sdp: "ans".into() }, t0 + secs(2.0));
    assert_eq!(
        drain(&mut polite),
        vec![Output::Send(Message::Answer {
            sdp: "ans".into(),
            seq: 1
        })]
    );
}

/// Offers at 0, 11, 23, 37 s (10 s wait, then 1/2/4 s backoff), failure at 47 s.
#[test]
fn the_exact_retry_schedule_then_failure() {
    let (_, mut n, t0) = pair();
    n.handle(Input::Start, t0);
    n.handle(Input::LocalOffer { sdp: "o".into() }, t0);
    let first = drain(&mut n);
    assert_eq!(sent_offers(&first), vec![1]);
    assert!(first.contains(&Output::Record(Event::OfferSent {
        peer: ids().0,
        seq: 1
    })));
    let mut sends = vec![0.0];
    let mut failed_at = None;
    let mut t = 0.0;
    while t < 60.0 {
        t += 0.25;
        n.handle_timeout(t0 + secs(t));
        for output in drain(&mut n) {
            match output {
                Output::Send(Message::Offer { seq, sdp }) => {
                    assert_eq!((seq, sdp.as_str()), (1, "o"), "same SDP and seq");
                    sends.push(t);
                }
                Output::Record(Event::OfferRetried { attempt, .. }) => {
                    assert_eq!(attempt as usize, sends.len() - 1)
                }
                Output::Record(Event::NegotiationFailed { reason, .. }) => {
                    assert!(reason.contains("no answer"), "{reason}");
                    failed_at = Some(t);
                }
                Output::Act(Action::Close) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(sends, vec![0.0, 11.0, 23.0, 37.0]);
    assert_eq!(failed_at, Some(47.0));
    assert!(matches!(n.status(), Status::Failed(_)));
    assert_eq!(n.poll_timeout(), None, "nothing more after failing");
}

#[test]
fn an_answer_for_another_seq_is_ignored_the_right_one_stops_the_timers() {
    let (_, mut n, t0) = pair();
    n.handle(Input::Start, t0);
    n.handle(Input::LocalOffer { sdp: "o".into() }, t0);
    drain(&mut n);
    n.handle(
        Input::RemoteAnswer {
            sdp: "a".into(),
            seq: 7,
        },
        t0 + secs(1.0),
    );
    assert!(drain(&mut n).is_empty());
    n.handle(
        Input::RemoteAnswer {
            sdp: "a".into(),
            seq: 1,
        },
        t0 + secs(2.0),
    );
    let out = drain(&mut n);
    assert!(out.contains(&Output::Act(Action::ApplyAnswer { sdp: "a".into() })));
    assert!(out.contains(&Output::Record(Event::AnswerReceived {
        peer: ids().0,
        seq: 1
    })));
    n.handle_timeout(t0 + secs(30.0));
    assert!(drain(&mut n).is_empty(), "no retry once answered");
    // An answer with no offer outstanding is ignored too.
    n.handle(
        Input::RemoteAnswer {
            sdp: "again".into(),
            seq: 1,
        },
        t0 + secs(31.0),
    );
    assert!(drain(&mut n).is_empty());
}

#[test]
fn glare_on_the_polite_side_rolls_back_and_answers() {
    let (mut polite, _, t0) = pair();
    polite.handle(Input::Start, t0);
    polite.handle_timeout(t0 + POLITE_DELAY);
    polite.handle(
        Input::LocalOffer {
            sdp: "p-offer".into(),
        },
        t0 + POLITE_DELAY,
    );
    drain(&mut polite);
    polite.handle(
        Input::RemoteOffer {
            sdp: "i-offer".into(),
            seq: 4,
        },
        t0 + secs(2.0),
    );
    assert_eq!(
        drain(&mut polite),
        vec![
            Output::Act(Action::Rollback),
            Output::Act(Action::AnswerOffer {
                sdp: "i-offer".into()
            })
        ]
    );
    polite.handle(
        Input::LocalAnswer {
            sdp: "p-answer".into(),
        },
        t0 + secs(2.1),
    );
    assert_eq!(
        drain(&mut polite),
        vec![Output::Send(Message::Answer {
            sdp: "p-answer".into(),
            seq: 4
        })]
    );
    // Its own offer is abandoned: no resend.
    polite.handle_timeout(t0 + secs(20.0));
    assert!(sent_offers(&drain(&mut polite)).is_empty());
}

#[test]
fn glare_on_the_polite_side_while_its_offer_is_being_made_discards_that_offer() {
    let (mut polite, _, t0) = pair();
    polite.handle(Input::Start, t0);
    polite.handle_timeout(t0 + POLITE_DELAY);
    drain(&mut polite); // CreateOffer in flight
    polite.handle(
        Input::RemoteOffer {
            sdp: "i-offer".into(),
            seq: 1,
        },
        t0 + secs(1.6),
    );
    assert_eq!(
        drain(&mut polite),
        vec![
            Output::Act(Action::Rollback),
            Output::Act(Action::AnswerOffer {
                sdp: "i-offer".into()
            })
        ]
    );
    // The offer the adapter finishes creating is never sent.
    polite.handle(Input::LocalOffer { sdp: "late".into() }, t0 + secs(1.7));
    assert!(drain(&mut polite).is_empty());
}

#[test]
fn glare_on_the_impolite_side_ignores_the_offer_and_its_candidates() {
    let (_, mut impolite, t0) = pair();
    impolite.handle(Input::Start, t0);
    impolite.handle(
        Input::LocalOffer {
            sdp: "i-offer".into(),
        },
        t0,
    );
    drain(&mut impolite);
    impolite.handle(
        Input::RemoteOffer {
            sdp: "p-offer".into(),
            seq: 1,
        },
        t0 + secs(0.1),
    );
    impolite.handle(
        Input::RemoteCandidate(cand("c-of-ignored-offer")),
        t0 + secs(0.1),
    );
    assert!(drain(&mut impolite).is_empty());
    // The polite side rolls back and answers ours.
    impolite.handle(
        Input::RemoteAnswer {
            sdp: "p-answer".into(),
            seq: 1,
        },
        t0 + secs(0.2),
    );
    let out = drain(&mut impolite);
    assert!(out.contains(&Output::Act(Action::ApplyAnswer {
        sdp: "p-answer".into()
    })));
    impolite.handle(Input::RemoteApplied, t0 + secs(0.3));
    impolite.handle(Input::RemoteCandidate(cand("c-of-answer")), t0 + secs(0.3));
    assert_eq!(
        drain(&mut impolite),
        vec![Output::Act(Action::AddCandidate(cand("c-of-answer")))]
    );
}

#[test]
fn candidates_before_the_remote_description_are_buffered_then_flushed_or_expire() {
    let (_, mut n, t0) = pair();
    n.handle(Input::Start, t0);
    n.handle(Input::LocalOffer { sdp: "o".into() }, t0);
    drain(&mut n);
    n.handle(Input::RemoteCandidate(cand("early-1")), t0 + secs(1.0));
    n.handle(Input::RemoteCandidate(cand("early-2")), t0 + secs(20.0));
    assert!(drain(&mut n).is_empty());
    // 30 s after its arrival the first one is discarded.
    n.handle_timeout(t0 + secs(31.0));
    n.handle(
        Input::RemoteAnswer {
            sdp: "a".into(),
            seq: 1,
        },
        t0 + secs(31.5),
    );
    drain(&mut n);
    n.handle(Input::RemoteApplied, t0 + secs(32.0));
    assert_eq!(
        drain(&mut n),
        vec![Output::Act(Action::AddCandidate(cand("early-2")))]
    );
}

#[test]
fn the_candidate_buffer_is_bounded() {
    let (_, mut n, t0) = pair();
    for i in 0..1000 {
        n.handle(Input::RemoteCandidate(cand(&format!("c{i}"))), t0);
    }
    assert_eq!(n.buffered.len(), MAX_BUFFERED_CANDIDATES);
    assert_eq!(n.buffered.back().unwrap().0, cand("c999"));
}

#[test]
fn a_repeated_offer_gets_the_same_answer_again() {
    let (_, mut n, t0) = pair();
    let offer = Input::RemoteOffer {
        sdp: "o".into(),
        seq: 3,
    };
    n.handle(offer.clone(), t0);
    n.handle(
        Input::LocalAnswer {
            sdp: "ans-3".into(),
        },
        t0,
    );
    drain(&mut n);
    n.handle(offer, t0 + secs(11.0));
    assert_eq!(
        drain(&mut n),
        vec![Output::Send(Message::Answer {
            sdp: "ans-3".into(),
            seq: 3
        })]
    );
}

/// A restarted peer numbers its offers from 1 again: the same seq with another SDP is a new
/// offer, answered afresh, not with the answer to the old one.
#[test]
fn a_new_offer_reusing_an_answered_seq_is_answered_afresh() {
    let (_, mut n, t0) = pair();
    n.handle(
        Input::RemoteOffer {
            sdp: "before-restart".into(),
            seq: 1,
        },
        t0,
    );
    n.handle(
        Input::LocalAnswer {
            sdp: "ans-1".into(),
        },
        t0,
    );
    drain(&mut n);
    n.handle(
        Input::RemoteOffer {
            sdp: "after-restart".into(),
            seq: 1,
        },
        t0 + secs(3.0),
    );
    assert_eq!(
        drain(&mut n),
        vec![Output::Act(Action::AnswerOffer {
            sdp: "after-restart".into()
        })]
    );
}

/// Spec 3.3: a new session negotiated while connected replaces the old one when its channel
/// opens: the journal shows the old one ending there (so transfers restart on the new one),
/// and nothing is closed before.
#[test]
fn a_session_replacing_a_connected_one_ends_it_only_when_it_opens() {
    let (_, mut n, t0) = pair();
    let peer = n.peer.clone();
    n.handle(
        Input::RemoteOffer {
            sdp: "first".into(),
            seq: 1,
        },
        t0,
    );
    n.handle(Input::LocalAnswer { sdp: "a1".into() }, t0);
    n.handle(Input::RemoteApplied, t0);
    n.handle(
        Input::ChannelOpen {
            transport: TransportKind::DataChannel,
        },
        t0,
    );
    drain(&mut n);
    n.handle(
        Input::RemoteOffer {
            sdp: "second".into(),
            seq: 1,
        },
        t0 + secs(5.0),
    );
    let outputs = drain(&mut n);
    assert!(
        !outputs.contains(&Output::Act(Action::Close)),
        "{outputs:?}"
    );
    assert!(
        !outputs
            .iter()
            .any(|o| matches!(o, Output::Record(Event::Disconnected { .. }))),
        "{outputs:?}"
    );
    n.handle(Input::LocalAnswer { sdp: "a2".into() }, t0 + secs(5.0));
    n.handle(Input::RemoteApplied, t0 + secs(5.0));
    n.handle(
        Input::ChannelOpen {
            transport: TransportKind::Quic,
        },
        t0 + secs(5.1),
    );
    let records: Vec<_> = drain(&mut n)
        .into_iter()
        .filter_map(|o| match o {
            Output::Record(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(
        records,
        vec![
            Event::Disconnected {
                peer: peer.clone(),
                reason: "replaced by a new session".into()
            },
            Event::Connected {
                peer,
                transport: TransportKind::Quic
            }
        ]
    );
    assert_eq!(n.status(), &Status::Connected);
}

#[test]
fn a_remote_hang_up_mid_negotiation_fails_or_disconnects_and_closes() {
    let (_, mut n, t0) = pair();
    n.handle(Input::Start, t0);
    n.handle(Input::LocalOffer { sdp: "o".into() }, t0);
    drain(&mut n);
    n.handle(
        Input::Bye {
            reason: "unauthorized".into(),
        },
        t0 + secs(1.0),
    );
    let out = drain(&mut n);
    assert_eq!(out[0], Output::Act(Action::Close));
    assert!(
        matches!(&out[1], Output::Record(Event::NegotiationFailed { reason, .. }) if reason.contains("unauthorized"))
    );
    n.handle_timeout(t0 + secs(60.0));
    assert!(drain(&mut n).is_empty(), "no retries after a refusal");

    // Connected, then ICE fails: disconnected, closed, reconnect after 1 s.
    n.handle(Input::Start, t0 + secs(61.0));
    n.handle(Input::LocalOffer { sdp: "o2".into() }, t0 + secs(61.0));
    n.handle(
        Input::RemoteAnswer {
            sdp: "a2".into(),
            seq: 2,
        },
        t0 + secs(61.1),
    );
    n.handle(
        Input::ChannelOpen {
            transport: TransportKind::DataChannel,
        },
        t0 + secs(61.2),
    );
    drain(&mut n);
    assert_eq!(n.status(), &Status::Connected);
    n.handle(
        Input::Lost {
            reason: "ice failed".into(),
        },
        t0 + secs(70.0),
    );
    let out = drain(&mut n);
    assert_eq!(out[0], Output::Act(Action::Close));
    assert!(matches!(
        &out[1],
        Output::Record(Event::Disconnected { .. })
    ));
    assert_eq!(n.poll_timeout(), Some(t0 + secs(71.0)));
    n.handle_timeout(t0 + secs(71.0));
    assert_eq!(drain(&mut n), vec![Output::Act(Action::CreateOffer)]);
}

/// Two machines wired back to back with an adapter simulation: whatever the start times,
/// exactly one offer is answered and both sides end connected.
#[test]
fn simulated_pairs_always_converge_on_one_negotiation() {
    for (p_start, i_start) in [(0.0, 0.0), (0.0, 3.0), (3.0, 0.0), (0.0, 1.5), (1.5, 0.0)] {
        let (mut polite, mut impolite, t0) = pair();
        let mut answered = 0;
        let mut applied = [false, false];
        let mut t = 0.0;
        let mut started = [false, false];
        while t < 20.0 {
            if !started[0] && t >= p_start {
                polite.handle(Input::Start, t0 + secs(t));
                started[0] = true;
            }
            if !started[1] && t >= i_start {
                impolite.handle(Input::Start, t0 + secs(t));
                started[1] = true;
            }
            polite.handle_timeout(t0 + secs(t));
            impolite.handle_timeout(t0 + secs(t));
            // Deliver each side's outputs to the other (instant network, instant adapter).
            #[allow(clippy::needless_range_loop)] // `side` names the machine, not just the slot
            for side in 0..2 {
                let (me, other) = if side == 0 {
                    (&mut polite, &mut impolite)
                } else {
                    (&mut impolite, &mut polite)
                };
                let now = t0 + secs(t);
                for output in drain(me) {
                    match output {
                        Output::Act(Action::CreateOffer) => me.handle(
                            Input::LocalOffer {
                                sdp: format!("offer-{side}"),
                            },
                            now,
                        ),
                        Output::Act(Action::AnswerOffer { .. }) => {
                            me.handle(Input::RemoteApplied, now);
                            me.handle(
                                Input::LocalAnswer {
                                    sdp: format!("answer-{side}"),
                                },
                                now,
                            );
                            applied[side] = true;
                        }
                        Output::Act(Action::ApplyAnswer { .. }) => {
                            me.handle(Input::RemoteApplied, now);
                            applied[side] = true;
                        }
                        Output::Send(Message::Offer { sdp, seq }) => {
                            other.handle(Input::RemoteOffer { sdp, seq }, now)
                        }
                        Output::Send(Message::Answer { sdp, seq }) => {
                            answered += 1;
                            other.handle(Input::RemoteAnswer { sdp, seq }, now)
                        }
                        _ => {}
                    }
                }
            }
            if applied == [true, true] {
                polite.handle(
                    Input::ChannelOpen {
                        transport: TransportKind::DataChannel,
                    },
                    t0 + secs(t),
                );
                impolite.handle(
                    Input::ChannelOpen {
                        transport: TransportKind::DataChannel,
                    },
                    t0 + secs(t),
                );
            }
            t += 0.1;
        }
        assert_eq!(answered, 1, "starts {p_start}/{i_start}");
        assert_eq!(polite.status(), &Status::Connected);
        assert_eq!(impolite.status(), &Status::Connected);
    }
}

#[test]
fn a_channel_that_never_opens_counts_as_lost_and_is_retried() {
    let (_, mut n, t0) = pair();
    n.handle(Input::Start, t0);
    n.handle(Input::LocalOffer { sdp: "o".into() }, t0);
    n.handle(
        Input::RemoteAnswer {
            sdp: "a".into(),
            seq: 1,
        },
        t0 + secs(0.1),
    );
    n.handle(Input::RemoteApplied, t0 + secs(0.2));
    drain(&mut n);
    assert_eq!(n.poll_timeout(), Some(t0 + secs(0.2) + OPEN_TIMEOUT));
    n.handle_timeout(t0 + secs(15.2));
    let out = drain(&mut n);
    assert_eq!(out[0], Output::Act(Action::Close));
    assert!(
        matches!(&out[1], Output::Record(Event::Disconnected { reason, .. }) if reason.contains("did not open"))
    );
    assert_eq!(
        n.poll_timeout(),
        Some(t0 + secs(16.2)),
        "retried after the backoff"
    );
}
