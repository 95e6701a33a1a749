use super::*;
use crate::core::Authority;
use crate::core::link::TransportKind;
use proptest::prelude::*;

fn peer(n: u8) -> DeviceId {
    DeviceId::from_sha256(&[n; 32])
}

fn at(time_ms: i64, event: Event) -> Stamped {
    Stamped { time_ms, event }
}

fn started(n: u8) -> Event {
    Event::NodeStarted {
        device_id: peer(n),
        name: "me".into(),
        device_type: DeviceType::Server,
        version: "test".into(),
    }
}

fn discovered(n: u8) -> Event {
    Event::PeerDiscovered {
        peer: peer(n),
        name: format!("peer-{n}"),
        device_type: DeviceType::Desktop,
        addresses: vec!["10.77.0.2".parse().unwrap()],
        port: 4000 + u16::from(n),
    }
}

fn queued(id: u8, p: u8, size: u64) -> Event {
    Event::queued_bare(
        TransferId([id; 16]),
        peer(p),
        Direction::Receive,
        format!("file-{id}"),
        size,
    )
}

#[test]
fn a_lost_peer_keeps_its_trust_and_last_address() {
    let state = State::replay(&[
        at(1, started(0)),
        at(2, discovered(1)),
        at(
            3,
            Event::PeerAuthorized {
                peer: peer(1),
                name: None,
                by: Authority::Operator,
            },
        ),
        at(4, Event::PeerLost { peer: peer(1) }),
    ]);
    let p = &state.peers[&peer(1)];
    assert!(p.trusted);
    assert!(!p.discovered);
    assert_eq!(p.addresses, vec!["10.77.0.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(p.port, 4001);
}

#[test]
fn a_restart_voids_connections_and_discovery_but_not_trust_or_transfers() {
    let mut state = State::replay(&[
        at(1, started(0)),
        at(2, discovered(1)),
        at(
            3,
            Event::PeerAuthorized {
                peer: peer(1),
                name: None,
                by: Authority::Operator,
            },
        ),
        at(
            4,
            Event::Connected {
                peer: peer(1),
                transport: TransportKind::Quic,
            },
        ),
        at(5, queued(9, 1, 10_000)),
        at(
            6,
            Event::TransferStarted {
                id: TransferId([9; 16]),
                chunk_size: 1024,
                chunks: 10,
                start_chunk: 0,
            },
        ),
        at(
            7,
            Event::TransferAccepted {
                id: TransferId([9; 16]),
                start_chunk: 0,
                window: 8,
            },
        ),
    ]);
    assert_eq!(state.peers[&peer(1)].connection, ConnectionState::Connected);
    assert_eq!(state.peers[&peer(1)].transport, Some(TransportKind::Quic));
    assert_eq!(
        state.transfers[&TransferId([9; 16])].status,
        TransferStatus::Active
    );
    // kill -9: no NodeStopped, then the next start.
    state.apply(&at(100, started(0)));
    let p = &state.peers[&peer(1)];
    assert_eq!(p.connection, ConnectionState::NotConnected);
    assert_eq!(p.transport, None);
    assert!(!p.discovered);
    assert!(p.trusted);
    assert_eq!(
        state.transfers[&TransferId([9; 16])].status,
        TransferStatus::Queued
    );
    assert_eq!(state.starts, 2);
}

/// `Connected` written before QUIC had no transport: it replays as the data channel, which it
/// was; and `journal show --json` names the transport.
#[test]
fn a_connected_event_of_an_older_journal_replays_as_the_data_channel() {
    #[derive(serde::Serialize)]
    enum Old {
        Connected { peer: DeviceId },
    }
    let mut bytes = Vec::new();
    ciborium::into_writer(&Old::Connected { peer: peer(1) }, &mut bytes).unwrap();
    let event: Event = ciborium::from_reader(bytes.as_slice()).unwrap();
    assert_eq!(
        event,
        Event::Connected {
            peer: peer(1),
            transport: TransportKind::DataChannel
        }
    );
    let quic = Event::Connected {
        peer: peer(1),
        transport: TransportKind::Quic,
    };
    assert_eq!(quic.to_json()["transport"], "quic");
    assert_eq!(event.to_json()["transport"], "data-channel");
}

#[test]
fn durable_ranges_with_gaps_advance_next_only_over_the_leading_run() {
    let id = TransferId([3; 16]);
    let mut state = State::replay(&[
        at(1, queued(3, 1, 10 * 1024)),
        at(
            2,
            Event::TransferStarted {
                id,
                chunk_size: 1024,
                chunks: 10,
                start_chunk: 0,
            },
        ),
        at(
            3,
            Event::TransferAccepted {
                id,
                start_chunk: 0,
                window: 8,
            },
        ),
        at(
            4,
            Event::ChunksDurable {
                id,
                start: 0,
                end: 3,
            },
        ),
        at(
            5,
            Event::ChunksDurable {
                id,
                start: 4,
                end: 6,
            },
        ),
    ]);
    assert_eq!(state.transfers[&id].next, 3);
    assert_eq!(state.transfers[&id].durable_beyond, vec![(4, 6)]);
    state.apply(&at(
        6,
        Event::ChunksDurable {
            id,
            start: 3,
            end: 4,
        },
    ));
    assert_eq!(state.transfers[&id].next, 6);
    assert!(state.transfers[&id].durable_beyond.is_empty());
    assert_eq!(state.transfers[&id].durable_bytes(), 6 * 1024);
    // A range past the end is clamped to the chunk count.
    state.apply(&at(
        7,
        Event::ChunksDurable {
            id,
            start: 6,
            end: 99,
        },
    ));
    assert_eq!(state.transfers[&id].next, 10);
    assert_eq!(state.transfers[&id].durable_bytes(), 10 * 1024);
}

#[test]
fn the_receiver_is_authoritative_on_accept() {
    let id = TransferId([4; 16]);
    let state = State::replay(&[
        at(1, queued(4, 1, 100 * 1024)),
        at(
            2,
            Event::TransferStarted {
                id,
                chunk_size: 1024,
                chunks: 100,
                start_chunk: 50,
            },
        ),
        at(
            3,
            Event::TransferAccepted {
                id,
                start_chunk: 20,
                window: 8,
            },
        ),
    ]);
    assert_eq!(state.transfers[&id].next, 20);
}

#[test]
fn a_finished_transfer_ignores_later_events() {
    let id = TransferId([5; 16]);
    let state = State::replay(&[
        at(1, queued(5, 1, 10)),
        at(
            2,
            Event::TransferCancelled {
                id,
                by: Side::Remote,
                reason: "operator".into(),
            },
        ),
        at(3, Event::TransferCompleted { id, path: None }),
        at(
            4,
            Event::ChunksDurable {
                id,
                start: 0,
                end: 1,
            },
        ),
    ]);
    let t = &state.transfers[&id];
    assert_eq!(t.status, TransferStatus::Cancelled);
    assert_eq!(t.reason.as_deref(), Some("cancelled by the peer: operator"));
    assert_eq!(t.next, 0);
}

#[test]
fn events_about_unknown_things_change_nothing() {
    let state = State::replay(&[
        at(
            1,
            Event::ChunksDurable {
                id: TransferId([1; 16]),
                start: 0,
                end: 5,
            },
        ),
        at(2, Event::PeerLost { peer: peer(7) }),
        at(
            3,
            Event::Disconnected {
                peer: peer(7),
                reason: "x".into(),
            },
        ),
    ]);
    assert_eq!(state, State::default());
}

#[test]
fn a_request_is_listed_until_trusted() {
    let mut state = State::replay(&[at(
        1,
        Event::AuthorizationRequested {
            peer: peer(2),
            name: "laptop".into(),
            device_type: DeviceType::Mobile,
            address: Some("10.77.0.3:4000".parse().unwrap()),
        },
    )]);
    assert_eq!(state.requests().count(), 1);
    state.apply(&at(
        2,
        Event::PeerAuthorized {
            peer: peer(2),
            name: None,
            by: Authority::Operator,
        },
    ));
    assert_eq!(state.requests().count(), 0);
    assert_eq!(state.trusted().count(), 1);
    assert_eq!(state.peers[&peer(2)].name, "laptop");
}

fn arb_event() -> impl Strategy<Value = Event> {
    let p = (0u8..4).prop_map(peer);
    let id = (0u8..4).prop_map(|n| TransferId([n; 16]));
    prop_oneof![
        (0u8..2).prop_map(started),
        Just(Event::NodeStopped {
            reason: "signal".into()
        }),
        (0u8..4).prop_map(discovered),
        p.clone().prop_map(|peer| Event::PeerLost { peer }),
        p.clone().prop_map(|peer| Event::PeerAuthorized {
            peer,
            name: Some("n".into()),
            by: Authority::Operator
        }),
        p.clone().prop_map(|peer| Event::PeerRevoked {
            peer,
            by: Authority::Policy {
                plugin: "allowlist".into()
            }
        }),
        p.clone().prop_map(|peer| Event::AuthorizationRequested {
            peer,
            name: "asker".into(),
            device_type: DeviceType::Unknown,
            address: None
        }),
        (p.clone(), 1u64..5).prop_map(|(peer, seq)| Event::OfferSent { peer, seq }),
        (p.clone(), any::<bool>()).prop_map(|(peer, quic)| Event::Connected {
            peer,
            transport: if quic {
                TransportKind::Quic
            } else {
                TransportKind::DataChannel
            },
        }),
        p.clone().prop_map(|peer| Event::NegotiationFailed {
            peer,
            reason: "no answer".into()
        }),
        p.clone().prop_map(|peer| Event::Disconnected {
            peer,
            reason: "ice failed".into()
        }),
        (0u8..4, 0u8..4, 0u64..100_000).prop_map(|(i, p, s)| queued(i, p, s)),
        (id.clone(), any::<u8>()).prop_map(|(id, b)| Event::TransferHashed {
            id,
            sha256: [b; 32]
        }),
        (id.clone(), 0u64..200).prop_map(|(id, s)| Event::TransferStarted {
            id,
            chunk_size: 1024,
            chunks: 100,
            start_chunk: s
        }),
        (id.clone(), 0u64..120).prop_map(|(id, s)| Event::TransferAccepted {
            id,
            start_chunk: s,
            window: 16
        }),
        (id.clone(), 0u64..120, 0u64..40).prop_map(|(id, s, n)| Event::ChunksDurable {
            id,
            start: s,
            end: s + n
        }),
        id.clone()
            .prop_map(|id| Event::TransferCompleted { id, path: None }),
        id.clone().prop_map(|id| Event::TransferFailed {
            id,
            reason: "hash".into()
        }),
        Just(Event::PolicyDecision {
            plugin: "default".into(),
            question: "on-offer".into(),
            answer: "ask".into()
        }),
    ]
}

fn cbor_round_trip<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).unwrap();
    ciborium::from_reader(bytes.as_slice()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A snapshot (the state, through CBOR) plus the events after it folds to the same state
    /// as all the events: what compaction relies on.
    #[test]
    fn snapshot_then_suffix_equals_full_replay(
        events in proptest::collection::vec(arb_event(), 0..60),
        cut in 0usize..60,
    ) {
        let stamped: Vec<Stamped> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| at(i as i64, event))
            .collect();
        let cut = cut.min(stamped.len());
        let full = State::replay(&stamped);
        let mut resumed: State = cbor_round_trip(&State::replay(&stamped[..cut]));
        for s in &stamped[cut..] {
            resumed.apply(s);
        }
        prop_assert_eq!(&resumed, &full);
        // Events survive the journal's encoding unchanged.
        for s in &stamped {
            prop_assert_eq!(&cbor_round_trip(s), s);
        }
        // Durable progress never exceeds the chunk count.
        for t in full.transfers.values() {
            prop_assert!(t.next <= t.chunks || t.chunks == 0 && t.next == 0);
        }
    }
}

fn tid(n: u32) -> TransferId {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&n.to_be_bytes());
    TransferId(b)
}

fn queued_n(n: u32, direction: Direction) -> Event {
    Event::queued_bare(tid(n), peer(1), direction, format!("file-{n}"), 10)
}

fn started_n(n: u32) -> Event {
    Event::TransferStarted {
        id: tid(n),
        chunk_size: 1024,
        chunks: 1,
        start_chunk: 0,
    }
}

/// The outcome rule: a finished transfer leaves live state once its peer has the outcome,
/// never because of how many others finished since.
#[test]
fn a_finished_transfer_stays_live_until_its_peer_has_the_outcome() {
    let mut state = State::default();
    let mut t = 0;
    let mut put = |state: &mut State, event: Event| {
        t += 1;
        state.apply(&at(t, event));
    };
    // A receive we completed: our `done` may not have arrived, so it stays live.
    put(&mut state, queued_n(1, Direction::Receive));
    put(
        &mut state,
        Event::TransferCompleted {
            id: tid(1),
            path: None,
        },
    );
    // A send the operator cancelled after its `start` went out: the `cancel` must reach the
    // receiver (which deletes its `.part`).
    put(&mut state, queued_n(2, Direction::Send));
    put(&mut state, started_n(2));
    put(
        &mut state,
        Event::TransferCancelled {
            id: tid(2),
            by: Side::Local,
            reason: "operator".into(),
        },
    );
    assert_eq!(state.undelivered, [tid(1), tid(2)]);
    // Outcomes the peer gave it has already: a send completed by the receiver's `done`, a
    // receive the sender cancelled, a send cancelled before its `start` went out.
    put(&mut state, queued_n(3, Direction::Send));
    put(&mut state, started_n(3));
    put(
        &mut state,
        Event::TransferCompleted {
            id: tid(3),
            path: None,
        },
    );
    put(&mut state, queued_n(4, Direction::Receive));
    put(
        &mut state,
        Event::TransferCancelled {
            id: tid(4),
            by: Side::Remote,
            reason: "sender".into(),
        },
    );
    put(&mut state, queued_n(5, Direction::Send));
    put(
        &mut state,
        Event::TransferCancelled {
            id: tid(5),
            by: Side::Local,
            reason: "operator".into(),
        },
    );
    assert_eq!(state.undelivered, [tid(1), tid(2)]);
    assert_eq!(state.finished, [tid(3), tid(4), tid(5)]);
    // Thousands of later finishes do not push the undelivered ones out (the cancelled send
    // used to leave after 1,000 and its `.part` stayed on the receiver).
    for n in 100..(100 + 3 * RECENT_FINISHED as u32) {
        put(&mut state, queued_n(n, Direction::Send));
        put(&mut state, started_n(n));
        put(
            &mut state,
            Event::TransferCompleted {
                id: tid(n),
                path: None,
            },
        );
    }
    assert_eq!(state.undelivered, [tid(1), tid(2)]);
    assert!(state.transfers.contains_key(&tid(1)) && state.transfers.contains_key(&tid(2)));
    assert_eq!(state.finished.len(), RECENT_FINISHED);
    assert_eq!(state.transfers.len(), RECENT_FINISHED + 2);
    // Once delivered they join the recent window (for `fsnode transfers`), newest last, and
    // leave it like any other.
    put(
        &mut state,
        Event::OutcomesDelivered {
            ids: vec![tid(2), tid(1), tid(999_999)],
        },
    );
    assert!(state.undelivered.is_empty());
    assert_eq!(state.finished.back(), Some(&tid(1)));
    assert_eq!(state.transfers.len(), RECENT_FINISHED);
    // A repeated delivery changes nothing.
    let before = state.clone();
    put(&mut state, Event::OutcomesDelivered { ids: vec![tid(1)] });
    assert_eq!(state.finished, before.finished);
    assert_eq!(state.transfers.len(), before.transfers.len());
}

/// Whatever the journal holds (a build before the rule never recorded deliveries), the
/// undelivered are bounded: beyond MAX_UNDELIVERED the oldest count as delivered.
#[test]
fn undelivered_outcomes_are_bounded() {
    let mut state = State::default();
    for n in 0..(MAX_UNDELIVERED as u32 + 500) {
        state.apply(&at(i64::from(n), queued_n(n, Direction::Receive)));
        state.apply(&at(
            i64::from(n),
            Event::TransferCompleted {
                id: tid(n),
                path: None,
            },
        ));
    }
    assert_eq!(state.undelivered.len(), MAX_UNDELIVERED);
    assert_eq!(state.undelivered.front(), Some(&tid(500)));
    assert_eq!(state.finished.len(), 500);
    assert_eq!(state.transfers.len(), MAX_UNDELIVERED + 500);
}

/// A cancelled transfer's reason says who cancelled and why once: fsnode's own reasons start
/// with "cancelled", and the status shown before the reason is "cancelled" too.
#[test]
fn a_cancel_reason_says_cancelled_once() {
    let cases = [
        (
            Side::Local,
            "cancelled by the operator",
            "cancelled by the operator",
        ),
        (Side::Local, "", "cancelled here"),
        (Side::Local, "disk removed", "cancelled here: disk removed"),
        (
            Side::Remote,
            "cancelled by the operator",
            "cancelled by the peer's operator",
        ),
        (
            Side::Remote,
            "cancelled by the sender",
            "cancelled by the peer (the sender)",
        ),
        (Side::Remote, "Cancelled", "cancelled by the peer"),
        (
            Side::Remote,
            "Cancelled: by the user",
            "cancelled by the peer's user",
        ),
        (Side::Remote, "cancelled", "cancelled by the peer"),
        (
            Side::Remote,
            "chunk 20 failed its hash 3 times",
            "cancelled by the peer: chunk 20 failed its hash 3 times",
        ),
    ];
    for (by, reason, shown) in cases {
        assert_eq!(cancel_reason(by, reason), shown, "{by:?} {reason:?}");
    }
}
