// Tests pick an arbitrary epoch for virtual time; the core itself never reads the clock.
#![allow(clippy::disallowed_methods)]

use super::*;
use crate::control::Request;
use crate::core::TransferStatus;
use crate::core::discovery::{instance_name, txt_records};
use crate::core::policy::{Policy, PolicyRequest};
use sha2::{Digest, Sha256};

fn id(n: u8) -> DeviceId {
    DeviceId::from_sha256(&[n; 32])
}

fn me() -> Me {
    Me {
        id: id(0),
        name: "me".into(),
        device_type: DeviceType::Server,
        signaling_port: 4000,
    }
}

struct Harness {
    core: Core,
    start: Instant,
    /// Answers the core's questions at once (the shell's policy thread, without the thread).
    policy: Option<Box<dyn Policy>>,
}

impl Harness {
    fn new() -> Self {
        let start = Instant::now();
        Self {
            core: Core::new(me(), State::default(), start),
            start,
            policy: None,
        }
    }

    /// A node with plugins: `policy` answers every question before [`Harness::handle`]
    /// returns; the plugins it could not load are journaled at once.
    fn with_policy(mut policy: impl Policy + 'static) -> Self {
        let mut h = Self::new();
        let disabled = policy.take_disabled();
        let loaded = vec!["test-policy".to_owned()];
        h.core.use_plugins(loaded, disabled, h.at(1));
        h.policy = Some(Box::new(policy));
        h
    }

    fn at(&self, secs: u64) -> Now {
        Now {
            instant: self.start + Duration::from_secs(secs),
            wall_ms: 1_000 * secs as i64,
        }
    }

    fn handle(&mut self, input: Input) -> Vec<Output> {
        self.handle_at(input, self.at(1))
    }

    fn handle_at(&mut self, input: Input, now: Now) -> Vec<Output> {
        self.core.handle(input, now);
        let mut out = Vec::new();
        while let Some(output) = self.core.poll_output() {
            match (output, self.policy.as_mut()) {
                (Output::Effect(Effect::AskPolicy(request)), Some(policy)) => {
                    let answer = request.ask(policy.as_mut());
                    self.core.handle(Input::PolicyAnswer(answer), now);
                }
                (output, _) => out.push(output),
            }
        }
        out
    }

    fn events(outputs: &[Output]) -> Vec<&'static str> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Event(s) => Some(s.event.kind()),
                _ => None,
            })
            .collect()
    }
}

fn announcement(n: u8, addr: &str) -> Announcement {
    Announcement {
        instance: instance_name(&id(n)),
        port: 4000 + u16::from(n),
        addresses: vec![addr.parse().unwrap()],
        txt: txt_records(&id(n), &format!("peer-{n}"), DeviceType::Desktop)
            .into_iter()
            .collect(),
    }
}

/// The core's command for a control-socket request.
fn request(token: Token, request: Request) -> Input {
    let command = request.command().expect("a command");
    Input::Command { token, command }
}

fn reply(outputs: &[Output]) -> &Outcome {
    outputs
        .iter()
        .find_map(|o| match o {
            Output::Outcome { outcome, .. } => Some(outcome),
            _ => None,
        })
        .expect("an outcome")
}

fn refused(outcome: &Outcome) -> Option<RefusalKind> {
    match outcome {
        Outcome::Refused(refusal) => Some(refusal.kind),
        _ => None,
    }
}

#[test]
fn an_announcement_is_journaled_once_until_it_changes() {
    let mut h = Harness::new();
    let out = h.handle(Input::Announced(announcement(1, "10.77.0.2")));
    assert_eq!(Harness::events(&out), ["PeerDiscovered"]);
    assert!(
        h.handle(Input::Announced(announcement(1, "10.77.0.2")))
            .is_empty()
    );
    // A device that moves is journaled where it is now.
    let moved = h.handle(Input::Announced(announcement(1, "10.77.0.9")));
    assert_eq!(Harness::events(&moved), ["PeerDiscovered"]);
    let peer = &h.core.state().peers[&id(1)];
    assert!(peer.discovered);
    assert_eq!(peer.addresses, vec!["10.77.0.9".parse::<IpAddr>().unwrap()]);
}

/// A restart of the device: gracefully (a goodbye, then its announcement on a new port) or
/// `kill -9` (no goodbye, only the new announcement). Either way it is journaled again at once,
/// where it is now: mDNS reports a service only when its records change, so a sighting not
/// recorded when it comes would never come back.
#[test]
fn an_untrusted_device_that_restarts_on_a_new_port_is_seen_again_at_once() {
    let mut h = Harness::new();
    let at_port = |port: u16| {
        let mut a = announcement(1, "10.77.0.2");
        a.port = port;
        Input::Announced(a)
    };
    assert_eq!(
        Harness::events(&h.handle_at(at_port(4001), h.at(1))),
        ["PeerDiscovered"]
    );
    let goodbye = Input::Withdrawn {
        instance: instance_name(&id(1)),
    };
    assert_eq!(
        Harness::events(&h.handle_at(goodbye, h.at(10))),
        ["PeerLost"]
    );
    assert_eq!(
        Harness::events(&h.handle_at(at_port(4100), h.at(11))),
        ["PeerDiscovered"]
    );
    // kill -9: no goodbye.
    assert_eq!(
        Harness::events(&h.handle_at(at_port(4200), h.at(20))),
        ["PeerDiscovered"]
    );
    let peer = &h.core.state().peers[&id(1)];
    assert!(peer.discovered);
    assert_eq!(peer.port, 4200);
}

/// The node itself restarts: every device of its journal is off the LAN for the new run
/// (`NodeStarted`) until seen again, and the first sighting of each is journaled at once.
#[test]
fn a_restarted_node_journals_its_first_sighting_of_each_known_untrusted_device() {
    let mut first = Harness::new();
    first.handle(Input::Announced(announcement(1, "10.77.0.2")));
    let mut state = first.core.state().clone();
    state.apply(&Stamped {
        time_ms: 5_000,
        event: Event::NodeStarted {
            device_id: id(0),
            name: "me".into(),
            device_type: DeviceType::Server,
            version: "test".into(),
        },
    });
    assert!(!state.peers[&id(1)].discovered);
    let start = Instant::now();
    let mut h = Harness {
        core: Core::new(me(), state, start),
        start,
        policy: None,
    };
    let out = h.handle(Input::Announced(announcement(1, "10.77.0.2")));
    assert_eq!(Harness::events(&out), ["PeerDiscovered"]);
    assert!(h.core.state().peers[&id(1)].discovered);
    assert_eq!(h.core.admission().held(), 1);
}

#[test]
fn our_own_announcement_is_not_a_peer() {
    let mut h = Harness::new();
    assert!(
        h.handle(Input::Announced(announcement(0, "10.77.0.1")))
            .is_empty()
    );
    assert!(h.core.state().peers.is_empty());
}

#[test]
fn a_burst_of_bad_announcements_is_journaled_once_each_and_bounded() {
    let mut h = Harness::new();
    let mut bad = announcement(1, "10.77.0.2");
    bad.txt.insert("id".into(), id(2).to_string());
    let first = h.handle(Input::Announced(bad.clone()));
    assert_eq!(Harness::events(&first), ["AnnouncementIgnored"]);
    for _ in 0..1000 {
        assert!(h.handle(Input::Announced(bad.clone())).is_empty());
    }
    // 1,000 distinct bad instances: memory of them stays bounded, and so does what is
    // journaled (admission's budget of ignored announcements).
    let mut journaled = 1;
    for i in 0..1000 {
        let mut other = bad.clone();
        other.instance = format!("Peer-garbage-{i}");
        journaled += Harness::events(&h.handle(Input::Announced(other))).len();
    }
    assert!(h.core.ignored.len() <= IGNORED_MEMORY);
    assert_eq!(
        journaled,
        h.core.admission().limits().ignored_burst as usize
    );
    assert!(h.core.state().peers.is_empty());
}

#[test]
fn a_goodbye_loses_the_peer_but_keeps_trust() {
    let mut h = Harness::new();
    h.handle(Input::Announced(announcement(1, "10.77.0.2")));
    h.handle(request(
        1,
        Request::TrustAdd {
            device: id(1).as_str()[..10].into(),
        },
    ));
    let out = h.handle(Input::Withdrawn {
        instance: instance_name(&id(1)),
    });
    assert_eq!(Harness::events(&out), ["PeerLost"]);
    assert!(
        h.handle(Input::Withdrawn {
            instance: instance_name(&id(1))
        })
        .is_empty()
    );
    assert!(
        h.handle(Input::Withdrawn {
            instance: "Peer-nonsense".into()
        })
        .is_empty()
    );
    let peer = &h.core.state().peers[&id(1)];
    assert!(peer.trusted && !peer.discovered);
}

#[test]
fn trust_add_journals_before_it_replies_and_is_idempotent() {
    let mut h = Harness::new();
    h.handle(Input::Announced(announcement(1, "10.77.0.2")));
    let out = h.handle(request(
        7,
        Request::TrustAdd {
            device: id(1).as_str()[..8].into(),
        },
    ));
    assert!(matches!(&out[0], Output::Event(s) if s.event.kind() == "PeerAuthorized"));
    assert_eq!(out[1], Output::Effect(Effect::TrustChanged));
    let Output::Outcome {
        token: 7,
        outcome: Outcome::Trusted(peer),
    } = &out[2]
    else {
        panic!("{out:?}")
    };
    assert!(h.core.state().is_trusted(peer));
    // Rendered beside the control socket, with the pair's verification code.
    let crate::control::Reply::Trusted { peer: row } =
        crate::control::reply(Outcome::Trusted(peer.clone()), h.core.state(), &id(0))
    else {
        panic!("a trusted reply")
    };
    assert!(row.trusted);
    assert_eq!(
        row.verification_code,
        trust::verification_code(&id(0), &id(1))
    );
    let again = h.handle(request(
        8,
        Request::TrustAdd {
            device: id(1).to_string(),
        },
    ));
    assert!(Harness::events(&again).is_empty());
    assert!(matches!(reply(&again), Outcome::Trusted(_)));
}

#[test]
fn ambiguous_unknown_and_self_trust_requests_are_refused() {
    let mut h = Harness::new();
    // Two devices whose ids share their first 20 characters.
    let base = id(1).to_string();
    let twin: DeviceId = format!(
        "{}{}",
        &base[..51],
        if base.ends_with('a') { "b" } else { "a" }
    )
    .parse()
    .unwrap();
    h.handle(Input::Announced(announcement(1, "10.77.0.2")));
    let mut twin_ann = announcement(1, "10.77.0.3");
    twin_ann.instance = instance_name(&twin);
    twin_ann.txt.insert("id".into(), twin.to_string());
    h.handle(Input::Announced(twin_ann));
    let out = h.handle(request(
        1,
        Request::TrustAdd {
            device: base[..20].into(),
        },
    ));
    match reply(&out) {
        Outcome::Refused(refusal) => {
            assert_eq!(refusal.kind, RefusalKind::Ambiguous);
            assert_eq!(refusal.candidates.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(Harness::events(&out).is_empty());
    let unknown = h.handle(request(
        2,
        Request::TrustAdd {
            device: "zzzzzzzzzz".into(),
        },
    ));
    assert_eq!(refused(reply(&unknown)), Some(RefusalKind::NotFound));
    let short = h.handle(request(
        3,
        Request::TrustAdd {
            device: "abc".into(),
        },
    ));
    assert_eq!(refused(reply(&short)), Some(RefusalKind::BadRequest));
    let me = h.handle(request(
        4,
        Request::TrustAdd {
            device: id(0).to_string(),
        },
    ));
    assert_eq!(refused(reply(&me)), Some(RefusalKind::BadRequest));
}

#[test]
fn trust_remove_only_matches_trusted_devices() {
    let mut h = Harness::new();
    h.handle(Input::Announced(announcement(1, "10.77.0.2")));
    let out = h.handle(request(
        1,
        Request::TrustRemove {
            device: id(1).as_str()[..9].into(),
        },
    ));
    assert_eq!(refused(reply(&out)), Some(RefusalKind::NotFound));
    h.handle(request(
        2,
        Request::TrustAdd {
            device: id(1).to_string(),
        },
    ));
    let out = h.handle(request(
        3,
        Request::TrustRemove {
            device: id(1).as_str()[..9].into(),
        },
    ));
    assert_eq!(Harness::events(&out), ["PeerRevoked"]);
    assert!(!h.core.state().is_trusted(&id(1)));
}

#[test]
fn peers_add_dials_and_replies_when_the_hello_arrives() {
    let mut h = Harness::new();
    let addr: SocketAddr = "10.77.0.5:4005".parse().unwrap();
    let out = h.handle(request(9, Request::PeersAdd { address: addr }));
    assert_eq!(
        out,
        vec![Output::Effect(Effect::Dial {
            addr,
            token: Some(9)
        })]
    );
    let hello = Hello {
        id: id(5),
        name: "nas".into(),
        device_type: DeviceType::Server,
        port: 4005,
    };
    let out = h.handle(Input::Hello {
        conn: 1,
        from: "10.77.0.5:51000".parse().unwrap(),
        hello,
        token: Some(9),
    });
    assert_eq!(Harness::events(&out), ["PeerDiscovered"]);
    let Outcome::Reached(peer) = reply(&out) else {
        panic!("{out:?}")
    };
    let known = &h.core.state().peers[peer];
    assert_eq!(
        known.addresses,
        vec!["10.77.0.5".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(known.port, 4005);
    let failed = h.handle(Input::DialFailed {
        token: 10,
        error: "connection refused".into(),
    });
    assert_eq!(refused(reply(&failed)), Some(RefusalKind::Unreachable));
}

#[test]
fn unseen_trusted_devices_are_probed_at_their_last_address_on_a_timer() {
    let mut h = Harness::new();
    trusted_peer_at(&mut h, 1, "10.77.0.2");
    h.handle(Input::Withdrawn {
        instance: instance_name(&id(1)),
    });
    let dials = |h: &mut Harness, at: Instant| -> Vec<Effect> {
        h.core.handle_timeout(Now {
            instant: at,
            wall_ms: 0,
        });
        std::iter::from_fn(|| h.core.poll_output())
            .filter_map(|o| match o {
                Output::Effect(e @ Effect::Dial { .. }) => Some(e),
                _ => None,
            })
            .collect()
    };
    let probe = vec![Effect::Dial {
        addr: "10.77.0.2:4001".parse().unwrap(),
        token: None,
    }];
    // At start, then on the startup schedule, then every interval.
    let start = h.start;
    assert_eq!(dials(&mut h, start), probe);
    for offset in &STARTUP_PROBES[1..] {
        let due = start + *offset;
        assert!(
            dials(&mut h, due - Duration::from_millis(1)).is_empty(),
            "not before {offset:?}"
        );
        assert_eq!(dials(&mut h, due), probe, "at {offset:?}");
    }
    let last = start + STARTUP_PROBES[STARTUP_PROBES.len() - 1];
    assert!(dials(&mut h, last + PROBE_INTERVAL - Duration::from_millis(1)).is_empty());
    assert_eq!(dials(&mut h, last + PROBE_INTERVAL), probe);
    // A discovered device is not probed.
    h.handle(Input::Announced(announcement(1, "10.77.0.2")));
    assert!(dials(&mut h, last + PROBE_INTERVAL * 3).is_empty());
}

#[test]
fn a_flood_of_valid_announcements_of_unknown_devices_is_capped() {
    let mut h = Harness::new();
    let mut discovered = 0;
    for i in 0..(MAX_UNTRUSTED_PEERS + 50) {
        let mut digest = [0u8; 32];
        digest[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        let fake = DeviceId::from_sha256(&digest);
        // Each from its own address, so no per-address budget is what stops them.
        let addr = std::net::Ipv4Addr::from(0x0a4d_0000 + i as u32).to_string();
        let mut a = announcement(1, &addr);
        a.instance = instance_name(&fake);
        a.txt.insert("id".into(), fake.to_string());
        // One a second: the oldest is the first.
        h.core.handle(Input::Announced(a), h.at(i as u64 + 1));
        let out: Vec<_> = std::iter::from_fn(|| h.core.poll_output()).collect();
        discovered += Harness::events(&out)
            .iter()
            .filter(|e| **e == "PeerDiscovered")
            .count();
    }
    // Every one is recorded once; the oldest are evicted, so at most the bound is held.
    assert_eq!(discovered, MAX_UNTRUSTED_PEERS + 50);
    assert_eq!(h.core.state().peers.len(), MAX_UNTRUSTED_PEERS);
    assert_eq!(h.core.admission().held(), MAX_UNTRUSTED_PEERS);
    assert_eq!(h.core.admission().dropped().evicted, 50);
    let first = DeviceId::from_sha256(&{
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&1u64.to_be_bytes());
        d
    });
    assert!(
        !h.core.state().peers.contains_key(&first),
        "the oldest went"
    );
}

fn random_digest(n: u64) -> [u8; 32] {
    let mut digest = [0xa5u8; 32];
    digest[..8].copy_from_slice(&n.to_be_bytes());
    digest
}

fn random_id(n: u64) -> DeviceId {
    DeviceId::from_sha256(&random_digest(n))
}

fn hello_from(conn: ConnId, n: u64, from: &str, port: u16) -> Input {
    Input::Hello {
        conn,
        from: from.parse().unwrap(),
        hello: Hello {
            id: random_id(n),
            name: format!("flood{n}"),
            device_type: DeviceType::Desktop,
            port,
        },
        token: None,
    }
}

/// A hostile host's flood: 110,000 `hello`s with random ids, one per connection, from one host.
/// The burst of new ids is recorded, the rest dropped and counted; another host still gets in.
#[test]
fn a_flood_of_random_id_hellos_from_one_host_records_a_bounded_few() {
    let mut h = Harness::new();
    let mut journaled = 0;
    for n in 0..110_000u64 {
        let out = h.handle(hello_from(n, n, "10.77.0.66:40000", 1));
        journaled += Harness::events(&out).len();
    }
    let limits = *h.core.admission().limits();
    assert_eq!(
        journaled, limits.new_id_burst as usize,
        "one PeerDiscovered each"
    );
    assert_eq!(h.core.state().peers.len(), limits.new_id_burst as usize);
    assert_eq!(
        h.core.admission().dropped().devices,
        110_000 - u64::from(limits.new_id_burst)
    );
    // An offer from a dropped id is refused without a record or a policy question.
    let out = h.handle(Input::Signal {
        conn: 109_999,
        peer: random_id(109_999),
        message: Message::Offer {
            sdp: {
                let fp: Vec<String> = random_digest(109_999)
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect();
                format!("v=0\r\na=fingerprint:sha-256 {}\r\n", fp.join(":"))
            },
            seq: 1,
        },
    });
    assert!(Harness::events(&out).is_empty(), "{out:?}");
    assert_eq!(
        effects(&out),
        vec![&Effect::Signal {
            peer: random_id(109_999),
            message: Message::Bye {
                reason: "unauthorized".into()
            }
        }]
    );
    let out = h.handle(hello_from(200_000, 200_000, "10.77.0.67:40000", 4000));
    assert_eq!(
        Harness::events(&out),
        ["PeerDiscovered"],
        "another host is admitted"
    );
}

/// A device that keeps changing (a host forging it, or one restarting in a loop) is journaled
/// within its budget; the latest change over it is held back and journaled when the budget
/// allows, so what the journal says ends up where the device is.
#[test]
fn an_untrusted_devices_changes_are_journaled_within_its_budget_and_the_latest_later() {
    let mut h = Harness::new();
    let limits = *h.core.admission().limits();
    let mut journaled = 0;
    for port in 1..500u16 {
        let out = h.handle(hello_from(u64::from(port), 7, "10.77.0.7:40000", port));
        journaled += Harness::events(&out).len();
    }
    assert_eq!(journaled, limits.change_burst as usize);
    assert_eq!(
        h.core.admission().dropped().sightings,
        499 - u64::from(limits.change_burst)
    );
    assert_eq!(
        h.core.state().peers[&random_id(7)].port,
        limits.change_burst as u16
    );
    let due = h.start + Duration::from_secs(1) + limits.change_every;
    assert_eq!(h.core.admission().poll_timeout(), Some(due));
    assert!(h.core.poll_timeout().is_some_and(|at| at <= due));
    let now = Now {
        instant: due,
        wall_ms: 400_000,
    };
    h.core.handle_timeout(now);
    let out: Vec<_> = std::iter::from_fn(|| h.core.poll_output()).collect();
    assert_eq!(Harness::events(&out), ["PeerDiscovered"]);
    assert_eq!(h.core.state().peers[&random_id(7)].port, 499);
    assert!(h.core.admission().poll_timeout().is_none());
}

/// The operator trusts a device whose latest change was held back: that sighting is
/// journaled first, so the node dials where the device is now.
#[test]
fn trusting_a_device_journals_its_held_back_sighting_first() {
    let mut h = Harness::new();
    let limits = *h.core.admission().limits();
    for port in 1..=u16::try_from(limits.change_burst).unwrap() + 1 {
        h.handle(hello_from(u64::from(port), 7, "10.77.0.7:40000", port));
    }
    let held_back = limits.change_burst as u16 + 1;
    assert_ne!(h.core.state().peers[&random_id(7)].port, held_back);
    let out = h.handle(request(
        1,
        Request::TrustAdd {
            device: random_id(7).to_string(),
        },
    ));
    assert_eq!(
        Harness::events(&out)[..2],
        ["PeerDiscovered", "PeerAuthorized"]
    );
    assert_eq!(
        h.core.dial_addresses(&random_id(7)),
        vec![SocketAddr::new("10.77.0.7".parse().unwrap(), held_back)]
    );
    assert!(h.core.admission().poll_timeout().is_none());
}

/// Nothing listens where a trusted device was (it restarted elsewhere, or is off): the
/// negotiation that times out says so, not that the peer did not answer; a connection with
/// the device clears it.
#[test]
fn a_negotiation_whose_offers_never_left_says_why() {
    let mut h = Harness::new();
    // A peer this node is impolite towards, so it offers at once.
    let n = (1..=255u8)
        .find(|n| !h.core.me().id.is_polite_towards(&id(*n)))
        .unwrap();
    trusted_peer_at(&mut h, n, "10.77.0.2");
    h.handle(Input::Rtc {
        peer: id(n),
        event: negotiation::Input::LocalOffer { sdp: "v=0".into() },
    });
    let why = format!(
        "nothing listens at 10.77.0.2:{} (connection refused)",
        4000 + u16::from(n)
    );
    h.handle(Input::Unreachable {
        peer: id(n),
        errors: vec![why.clone()],
    });
    let mut failed = None;
    for s in 1..60 {
        let now = h.at(s);
        h.core.handle_timeout(now);
        for output in std::iter::from_fn(|| h.core.poll_output()) {
            if let Output::Event(Stamped {
                event: Event::NegotiationFailed { reason, .. },
                ..
            }) = output
            {
                failed = Some(reason);
            }
        }
    }
    assert_eq!(failed, Some(format!("unreachable: {why}")));
    assert_eq!(
        h.core.state().peers[&id(n)].connection.label(),
        format!("failed: unreachable: {why}")
    );
    // Once a connection with it comes up, a later failure is the peer's again.
    h.handle(Input::Hello {
        conn: 3,
        from: "10.77.0.2:50000".parse().unwrap(),
        hello: Hello {
            id: id(n),
            name: format!("peer-{n}"),
            device_type: DeviceType::Desktop,
            port: 4000 + u16::from(n),
        },
        token: None,
    });
    assert!(!h.core.unreachable.contains_key(&id(n)));
}

fn trusted_peer_at(h: &mut Harness, n: u8, addr: &str) {
    h.handle(Input::Announced(announcement(n, addr)));
    h.handle(request(
        1,
        Request::TrustAdd {
            device: id(n).to_string(),
        },
    ));
}

/// Spec 3.4: a `hello` claiming a trusted id from elsewhere changes nothing stored; its
/// address is only a candidate, recorded once a session negotiated through it opens.
#[test]
fn a_hello_impostor_of_a_trusted_device_changes_nothing_stored() {
    let mut h = Harness::new();
    trusted_peer_at(&mut h, 1, "10.77.0.2");
    let before = h.core.state().peers[&id(1)].clone();
    let impostor = Input::Hello {
        conn: 77,
        from: "10.77.0.99:50000".parse().unwrap(),
        hello: Hello {
            id: id(1),
            name: "impostor".into(),
            device_type: DeviceType::Mobile,
            port: 1,
        },
        token: None,
    };
    let out = h.handle(impostor);
    assert!(Harness::events(&out).is_empty(), "{out:?}");
    assert!(
        effects(&out).contains(&&Effect::PeerSeen { peer: id(1) }),
        "what waits for it may be tried at the candidate: {out:?}"
    );
    assert_eq!(h.core.state().peers[&id(1)], before);
    assert_eq!(
        h.core.dial_addresses(&id(1)),
        vec![
            "10.77.0.2:4001".parse::<SocketAddr>().unwrap(),
            "10.77.0.99:1".parse().unwrap()
        ],
        "the stored address first, the claim only as a candidate"
    );
    // mDNS the same: an announcement elsewhere is a candidate, nothing stored.
    let out = h.handle(Input::Announced(announcement(1, "10.77.0.98")));
    assert!(Harness::events(&out).is_empty(), "{out:?}");
    assert_eq!(h.core.state().peers[&id(1)].addresses, before.addresses);
}

/// The real device moved (a new DHCP lease): once a session negotiated on a connection from
/// the new address opens, that address is stored.
#[test]
fn a_trusted_device_at_a_new_address_is_recorded_once_its_session_opens() {
    let mut h = Harness::new();
    trusted_peer_at(&mut h, 1, "10.77.0.2");
    h.handle(Input::Hello {
        conn: 5,
        from: "10.77.0.20:50000".parse().unwrap(),
        hello: Hello {
            id: id(1),
            name: "peer-1".into(),
            device_type: DeviceType::Desktop,
            port: 4001,
        },
        token: None,
    });
    assert_eq!(
        h.core.state().peers[&id(1)].addresses,
        vec!["10.77.0.2".parse::<IpAddr>().unwrap()]
    );
    h.handle(Input::Signal {
        conn: 5,
        peer: id(1),
        message: Message::Offer {
            sdp: sdp_with_fingerprint(1),
            seq: 1,
        },
    });
    let out = h.handle(Input::Rtc {
        peer: id(1),
        event: negotiation::Input::ChannelOpen {
            transport: crate::core::link::TransportKind::Quic,
        },
    });
    assert_eq!(
        Harness::events(&out),
        ["Connected", "PeerDiscovered"],
        "{out:?}"
    );
    let peer = &h.core.state().peers[&id(1)];
    assert_eq!(peer.addresses[0], "10.77.0.20".parse::<IpAddr>().unwrap());
    assert_eq!(peer.port, 4001);
    // A goodbye (unauthenticated) while its session is up changes nothing.
    let out = h.handle(Input::Withdrawn {
        instance: instance_name(&id(1)),
    });
    assert!(out.is_empty(), "{out:?}");
    assert!(h.core.state().peers[&id(1)].discovered);
    // If the session then ends, the goodbye was true after all: lost (and probed again).
    let out = h.handle(Input::Rtc {
        peer: id(1),
        event: negotiation::Input::Lost {
            reason: "connection failed".into(),
        },
    });
    assert!(Harness::events(&out).contains(&"PeerLost"), "{out:?}");
    assert!(!h.core.state().peers[&id(1)].discovered);
}

fn sdp_with_fingerprint(id_bytes: u8) -> String {
    let fp: Vec<String> = [id_bytes; 32].iter().map(|b| format!("{b:02X}")).collect();
    format!("v=0\r\na=fingerprint:sha-256 {}\r\n", fp.join(":"))
}

/// Device `n` offers (on connection 1) with a fingerprint that matches its id.
fn offer(h: &mut Harness, n: u8, seq: u64) -> Vec<Output> {
    h.handle(Input::Signal {
        conn: 1,
        peer: id(n),
        message: Message::Offer {
            sdp: sdp_with_fingerprint(n),
            seq,
        },
    })
}

fn effects(outputs: &[Output]) -> Vec<&Effect> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Effect(e) => Some(e),
            _ => None,
        })
        .collect()
}

#[test]
fn an_offer_whose_fingerprint_is_not_its_senders_id_is_journaled_and_closed() {
    let mut h = Harness::new();
    trusted_peer_at(&mut h, 1, "10.77.0.2");
    let out = h.handle(Input::Signal {
        conn: 42,
        peer: id(1),
        message: Message::Offer {
            sdp: sdp_with_fingerprint(9),
            seq: 1,
        },
    });
    assert_eq!(Harness::events(&out), ["FingerprintMismatch"]);
    assert_eq!(effects(&out), vec![&Effect::CloseSignaling { conn: 42 }]);
    // No fingerprint at all is a mismatch too.
    // No fingerprint at all is a mismatch too: closed. From the same source within the
    // hour it is not journaled again (a host reconnecting to repeat it cannot grow the
    // journal); from another source it is.
    let out = h.handle(Input::Signal {
        conn: 43,
        peer: id(1),
        message: Message::Answer {
            sdp: "v=0\r\n".into(),
            seq: 1,
        },
    });
    assert!(Harness::events(&out).is_empty(), "{out:?}");
    assert_eq!(effects(&out), vec![&Effect::CloseSignaling { conn: 43 }]);
    h.handle(Input::Hello {
        conn: 44,
        from: "10.77.0.66:50000".parse().unwrap(),
        hello: Hello {
            id: id(1),
            name: "impostor".into(),
            device_type: DeviceType::Desktop,
            port: 4001,
        },
        token: None,
    });
    let out = h.handle(Input::Signal {
        conn: 44,
        peer: id(1),
        message: Message::Offer {
            sdp: sdp_with_fingerprint(9),
            seq: 2,
        },
    });
    assert!(
        matches!(&out[0], Output::Event(Stamped { event: Event::FingerprintMismatch { address: Some(a), .. }, .. })
            if a.ip() == "10.77.0.66".parse::<IpAddr>().unwrap()),
        "the impostor's own address is recorded: {out:?}"
    );
    // Claims of ids admission does not hold are not journaled at all.
    let out = h.handle(Input::Signal {
        conn: 45,
        peer: id(77),
        message: Message::Offer {
            sdp: sdp_with_fingerprint(9),
            seq: 1,
        },
    });
    assert!(Harness::events(&out).is_empty(), "{out:?}");
    assert_eq!(effects(&out), vec![&Effect::CloseSignaling { conn: 45 }]);
}

#[test]
fn an_untrusted_offer_is_recorded_once_an_hour_and_refused() {
    let mut h = Harness::new();
    h.handle(Input::Announced(announcement(2, "10.77.0.3")));
    let offer = |seq| Input::Signal {
        conn: 1,
        peer: id(2),
        message: Message::Offer {
            sdp: sdp_with_fingerprint(2),
            seq,
        },
    };
    let out = h.handle(offer(1));
    assert_eq!(Harness::events(&out), ["AuthorizationRequested"]);
    let bye = Effect::Signal {
        peer: id(2),
        message: Message::Bye {
            reason: "unauthorized".into(),
        },
    };
    assert_eq!(effects(&out), vec![&bye]);
    let again = h.handle(offer(2));
    assert!(
        Harness::events(&again).is_empty(),
        "not journaled twice within an hour"
    );
    assert_eq!(effects(&again), vec![&bye]);
    assert!(h.core.state().peers[&id(2)].requested_at_ms.is_some());
    assert!(
        !h.core.negotiations.contains_key(&id(2)),
        "nothing connects"
    );
}

#[test]
fn trusting_a_discovered_device_starts_a_negotiation_towards_it() {
    let mut h = Harness::new();
    // id(0) is this node; pick a peer this node is impolite towards, so it offers at once.
    let peer = (1..=255u8)
        .map(id)
        .find(|p| !h.core.me().id.is_polite_towards(p))
        .unwrap();
    let n = peer.as_str().as_bytes()[0];
    let mut a = announcement(1, "10.77.0.2");
    a.instance = instance_name(&peer);
    a.txt.insert("id".into(), peer.to_string());
    h.handle(Input::Announced(a));
    let out = h.handle(request(
        1,
        Request::TrustAdd {
            device: peer.to_string(),
        },
    ));
    assert!(
        effects(&out).contains(&&Effect::Rtc {
            peer: peer.clone(),
            action: Action::CreateOffer
        }),
        "{out:?} ({n})"
    );
    // Revoking closes it.
    let out = h.handle(request(
        2,
        Request::TrustRemove {
            device: peer.to_string(),
        },
    ));
    assert!(effects(&out).contains(&&Effect::Rtc {
        peer: peer.clone(),
        action: Action::Close
    }));
}

/// Revoking a connected device ends its session at once: journaled (`PeerRevoked`, then
/// `Disconnected`), the link closed, and the peer told `bye unauthorized` on signaling (a
/// browser otherwise kept showing "connected" until its connection timed out).
#[test]
fn revoking_a_connected_device_closes_its_session_and_tells_it_at_once() {
    let mut h = Harness::new();
    trusted_peer_at(&mut h, 1, "10.77.0.2");
    h.handle(Input::Signal {
        conn: 5,
        peer: id(1),
        message: Message::Offer {
            sdp: sdp_with_fingerprint(1),
            seq: 1,
        },
    });
    let out = h.handle(Input::Rtc {
        peer: id(1),
        event: negotiation::Input::ChannelOpen {
            transport: crate::core::link::TransportKind::Quic,
        },
    });
    assert_eq!(Harness::events(&out), ["Connected"], "{out:?}");
    let out = h.handle(request(
        2,
        Request::TrustRemove {
            device: id(1).to_string(),
        },
    ));
    assert_eq!(Harness::events(&out), ["PeerRevoked", "Disconnected"]);
    let done = effects(&out);
    assert!(
        done.contains(&&Effect::Rtc {
            peer: id(1),
            action: Action::Close
        }),
        "{out:?}"
    );
    assert!(
        done.contains(&&Effect::Signal {
            peer: id(1),
            message: Message::Bye {
                reason: "unauthorized".into()
            }
        }),
        "{out:?}"
    );
    let peer = &h.core.state().peers[&id(1)];
    assert!(!peer.trusted);
    assert_eq!(peer.connection, crate::core::ConnectionState::NotConnected);
    assert!(!h.core.negotiations.contains_key(&id(1)));
    // A device that was not trusted is not told anything.
    let out = h.handle(request(
        3,
        Request::TrustRemove {
            device: id(1).to_string(),
        },
    ));
    assert!(
        !effects(&out)
            .iter()
            .any(|e| matches!(e, Effect::Signal { .. })),
        "{out:?}"
    );
}

fn channel_replies(outputs: &[Output]) -> Vec<transfer::Message> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Effect(Effect::ChannelSend { data, .. }) => {
                transfer::decode(data).ok().flatten()
            }
            _ => None,
        })
        .collect()
}

fn start(name: &str, size: u64, chunk_size: u32, chunks: u64) -> Vec<u8> {
    // Each start its own transfer id.
    let mut id = [7; 16];
    let facts = format!("{name}/{size}/{chunk_size}/{chunks}");
    id[..8].copy_from_slice(&Sha256::digest(facts.as_bytes())[..8]);
    transfer::encode(&transfer::Message::Start {
        id: TransferId(id),
        name: name.into(),
        size,
        chunk_size,
        chunks,
        mime: "application/octet-stream".into(),
        mode: None,
        mtime: None,
        start_chunk: 0,
    })
}

/// Hostile `start`s from a trusted, connected peer are refused with a reason, and nothing
/// reaches the store; an untrusted peer's data is not even looked at.
#[test]
fn hostile_starts_are_rejected_with_a_reason_before_any_file_io() {
    let mut h = Harness::new();
    trusted_peer_at(&mut h, 1, "10.77.0.2");
    use transfer::wire::RejectCode;
    for (data, why, code) in [
        (start("../escape", 10, 1024, 1), "..", RejectCode::Name),
        (
            start("/etc/passwd", 10, 1024, 1),
            "absolute",
            RejectCode::Name,
        ),
        (start("a\\b", 10, 1024, 1), "backslash", RejectCode::Name),
        (
            start("ok.bin", 10_000, 1024, 3),
            "disagree",
            RejectCode::Size,
        ),
        (start("ok.bin", 10, 100, 1), "chunk_size", RejectCode::Size),
    ] {
        let out = h.handle(Input::Channel { peer: id(1), data });
        let replies = channel_replies(&out);
        assert!(
            matches!(&replies[..], [transfer::Message::Reject { reason, code: Some(c), .. }]
                if reason.contains(why) && *c == code),
            "{why}: {replies:?}"
        );
        assert!(
            !effects(&out)
                .iter()
                .any(|e| matches!(e, Effect::Store { .. })),
            "no file IO for a refused start"
        );
        assert!(
            out.iter().any(|o| matches!(
                o,
                Output::Event(Stamped { event: Event::TransferRejected { reason, .. }, .. })
                    if reason.contains(why)
            )),
            "{why}: journaled, so the operator sees what was refused: {out:?}"
        );
    }
    // A chunk for an unknown transfer is ignored.
    let chunk = transfer::encode(&transfer::Message::Chunk {
        id: TransferId([9; 16]),
        index: 0,
        sha256: [0; 32],
        data: vec![1, 2, 3],
    });
    assert!(
        h.handle(Input::Channel {
            peer: id(1),
            data: chunk
        })
        .is_empty()
    );
    // From an untrusted device: nothing at all.
    let out = h.handle(Input::Channel {
        peer: id(5),
        data: start("fine.bin", 10, 1024, 1),
    });
    assert!(out.is_empty());
}

/// A policy with scripted answers, named "scripted".
#[derive(Default)]
struct Scripted {
    offer: Option<TrustAnswer>,
    transfer: Option<crate::core::policy::AcceptAnswer>,
    disabled: Vec<crate::core::policy::Disabled>,
}

impl Scripted {
    fn decided<T>(answer: Option<T>) -> Option<crate::core::policy::Decided<T>> {
        answer.map(|answer| crate::core::policy::Decided {
            plugin: "scripted".into(),
            answer,
        })
    }
}

impl Policy for Scripted {
    fn on_offer(
        &mut self,
        _: &NodeFacts,
        _: &PeerFacts,
    ) -> Option<crate::core::policy::Decided<TrustAnswer>> {
        Self::decided(self.offer)
    }

    fn on_transfer(
        &mut self,
        _: &NodeFacts,
        _: &PeerFacts,
        _: &FileFacts,
    ) -> Option<crate::core::policy::Decided<crate::core::policy::AcceptAnswer>> {
        Self::decided(self.transfer.clone())
    }

    fn take_disabled(&mut self) -> Vec<crate::core::policy::Disabled> {
        std::mem::take(&mut self.disabled)
    }
}

#[test]
fn a_policy_that_trusts_an_offer_authorizes_the_device_and_the_offer_proceeds() {
    let mut h = Harness::with_policy(Scripted {
        offer: Some(TrustAnswer::Trust),
        ..Scripted::default()
    });
    h.handle(Input::Announced(announcement(2, "10.77.0.3")));
    let out = offer(&mut h, 2, 1);
    let events = Harness::events(&out);
    assert_eq!(
        events[..2],
        ["PolicyDecision", "PeerAuthorized"],
        "{events:?}"
    );
    assert!(!events.contains(&"AuthorizationRequested"));
    let authorized = out.iter().find_map(|o| match o {
        Output::Event(Stamped {
            event: Event::PeerAuthorized { by, .. },
            ..
        }) => Some(by.clone()),
        _ => None,
    });
    assert_eq!(
        authorized,
        Some(Authority::Policy {
            plugin: "scripted".into()
        })
    );
    assert!(effects(&out).contains(&&Effect::TrustChanged));
    assert!(
        !effects(&out).iter().any(|e| matches!(
            e,
            Effect::Signal {
                message: Message::Bye { .. },
                ..
            }
        )),
        "no bye: the offer is answered"
    );
    assert!(h.core.state().is_trusted(&id(2)));
    assert!(h.core.negotiations.contains_key(&id(2)));
}

#[test]
fn a_policy_that_ignores_an_offer_refuses_it_without_a_request() {
    let mut h = Harness::with_policy(Scripted {
        offer: Some(TrustAnswer::Ignore),
        ..Scripted::default()
    });
    h.handle(Input::Announced(announcement(2, "10.77.0.3")));
    let out = offer(&mut h, 2, 1);
    assert_eq!(Harness::events(&out), ["PolicyDecision"]);
    assert!(matches!(
        effects(&out)[..],
        [Effect::Signal {
            message: Message::Bye { .. },
            ..
        }]
    ));
    assert!(!h.core.state().is_trusted(&id(2)));
    // The same offer again: refused again, the same decision not journaled twice.
    let again = offer(&mut h, 2, 2);
    assert!(Harness::events(&again).is_empty(), "{again:?}");
    assert_eq!(effects(&again).len(), 1);
}

#[test]
fn a_policy_refuses_or_routes_an_incoming_file_and_disabled_plugins_are_journaled() {
    let mut h = Harness::with_policy(Scripted {
        transfer: Some(crate::core::policy::AcceptAnswer::Reject {
            reason: "too large".into(),
        }),
        disabled: vec![crate::core::policy::Disabled {
            plugin: "broken".into(),
            reason: "trapped: unreachable".into(),
        }],
        ..Scripted::default()
    });
    let startup: Vec<Output> = std::iter::from_fn(|| h.core.poll_output()).collect();
    assert_eq!(
        Harness::events(&startup),
        ["PluginsLoaded", "PluginDisabled"]
    );
    trusted_peer_at(&mut h, 1, "10.77.0.2");
    let out = h.handle(Input::Channel {
        peer: id(1),
        data: start("big.iso", 10, 1024, 1),
    });
    // The decision, then the refused file with the plugin's reason (visible in `transfers`).
    assert_eq!(
        Harness::events(&out),
        ["PolicyDecision", "TransferQueued", "TransferRejected"]
    );
    assert!(matches!(
        &channel_replies(&out)[..],
        [transfer::Message::Reject { reason, .. }] if reason == "too large"
    ));
    assert!(
        !effects(&out)
            .iter()
            .any(|e| matches!(e, Effect::Store { .. }))
    );

    let mut h = Harness::with_policy(Scripted {
        transfer: Some(crate::core::policy::AcceptAnswer::Accept {
            dir: Some("Pictures".into()),
        }),
        ..Scripted::default()
    });
    trusted_peer_at(&mut h, 1, "10.77.0.2");
    let out = h.handle(Input::Channel {
        peer: id(1),
        data: start("cat.png", 10, 1024, 1),
    });
    assert!(
        effects(&out).iter().any(|e| matches!(
            e,
            Effect::Store {
                op: StoreOp::Prepare { name, size: 10 },
                ..
            } if name == "Pictures/cat.png"
        )),
        "{out:?}"
    );
}

/// A large file is queued before it is hashed: the core asks the shell to hash it once for all
/// its transfers, journals the hash when it comes, fails the transfers if it cannot, and asks
/// again after a restart for a transfer whose hash never came.
#[test]
fn large_files_are_hashed_once_per_file_after_queueing() {
    let mut h = Harness::new();
    h.handle(Input::Announced(announcement(1, "10.77.0.2")));
    h.handle(Input::Announced(announcement(2, "10.77.0.3")));
    for n in [1, 2] {
        h.handle(request(
            n.into(),
            Request::TrustAdd {
                device: id(n).to_string(),
            },
        ));
    }
    let file = |n: u8, peer: u8, path: &str| QueuedFile {
        id: TransferId([n; 16]),
        peer: id(peer),
        path: path.into(),
        name: path.trim_start_matches('/').into(),
        size: 1 << 30,
        mime: "application/octet-stream".into(),
        mode: 0o644,
        mtime: None,
        sha256: None,
    };
    let out = h.handle(Input::SendPrepared {
        token: 7,
        result: Ok(vec![
            file(1, 1, "/big"),
            file(2, 2, "/big"),
            file(3, 1, "/gone"),
        ]),
        more: false,
    });
    let hashes: Vec<_> = effects(&out)
        .into_iter()
        .filter(|e| matches!(e, Effect::HashSource { .. }))
        .collect();
    assert_eq!(
        hashes,
        vec![
            &Effect::HashSource {
                path: "/big".into(),
                ids: vec![TransferId([1; 16]), TransferId([2; 16])]
            },
            &Effect::HashSource {
                path: "/gone".into(),
                ids: vec![TransferId([3; 16])]
            },
        ]
    );
    // A restart before the hashes came asks again.
    let restarted = Core::new(me(), h.core.state().clone(), h.start);
    let mut restarted = Harness {
        policy: None,
        core: restarted,
        start: h.start,
    };
    let again: Vec<_> = std::iter::from_fn(|| restarted.core.poll_output()).collect();
    assert_eq!(
        effects(&again)
            .iter()
            .filter(|e| matches!(e, Effect::HashSource { .. }))
            .count(),
        2
    );

    let out = h.handle(Input::SourceHashed {
        ids: vec![TransferId([1; 16]), TransferId([2; 16])],
        result: Ok([7; 32]),
    });
    assert_eq!(
        Harness::events(&out),
        vec!["TransferHashed", "TransferHashed"]
    );
    assert_eq!(
        h.core.state().transfers[&TransferId([1; 16])].sha256,
        Some([7; 32])
    );
    let out = h.handle(Input::SourceHashed {
        ids: vec![TransferId([3; 16])],
        result: Err("cannot read /gone: No such file or directory".into()),
    });
    assert_eq!(Harness::events(&out), vec!["TransferFailed"]);
    let gone = &h.core.state().transfers[&TransferId([3; 16])];
    assert_eq!(gone.status, TransferStatus::Failed);
    assert!(gone.reason.as_deref().unwrap_or("").contains("/gone"));
    // Nothing is left to hash after a restart now.
    let mut restarted = Core::new(me(), h.core.state().clone(), h.start);
    assert!(
        !std::iter::from_fn(|| restarted.poll_output())
            .any(|o| matches!(o, Output::Effect(Effect::HashSource { .. })))
    );
}

#[test]
fn send_to_the_same_device_twice_queues_its_files_once() {
    let mut h = Harness::new();
    for n in [1, 2] {
        h.handle(Input::Announced(announcement(
            n,
            &format!("10.77.0.{}", n + 1),
        )));
        h.handle(request(
            u64::from(n),
            Request::TrustAdd {
                device: id(n).as_str().into(),
            },
        ));
    }
    let (a, b) = (id(1).as_str().to_owned(), id(2).as_str().to_owned());
    let out = h.handle(request(
        9,
        Request::Send {
            paths: vec!["/srv/file".into()],
            // Not neighbours: A, B, then A again by a prefix.
            to: vec![a.clone(), b.clone(), a[..10].to_owned()],
            wait: false,
        },
    ));
    let peers = out
        .iter()
        .find_map(|o| match o {
            Output::Effect(Effect::PrepareSend { peers, .. }) => Some(peers.clone()),
            _ => None,
        })
        .expect("the send is prepared");
    assert_eq!(peers, [id(1), id(2)]);
}

/// A send to a device that is not trusted is refused with the hint to trust it, whether it is
/// named by a prefix or by a full id (which resolves even for a device never seen, and used to
/// queue transfers that waited forever); trusting it first makes the same send go.
#[test]
fn a_send_to_a_device_that_is_not_trusted_is_refused_with_the_hint_to_trust_it() {
    let mut h = Harness::new();
    h.handle(Input::Announced(announcement(1, "10.77.0.2")));
    let send = |to: String| Request::Send {
        paths: vec!["/srv/file".into()],
        to: vec![to],
        wait: false,
    };
    let unseen = id(7).to_string();
    let seen = id(1).to_string();
    for (token, typed) in [
        (1, unseen.clone()),
        (2, seen.clone()),
        (3, seen[..10].to_owned()),
        (4, "zzzzzzzzzz".to_owned()),
    ] {
        let out = h.handle(request(token, send(typed.clone())));
        let Outcome::Refused(refusal) = reply(&out) else {
            panic!("{typed}: {out:?}");
        };
        assert_eq!(refusal.kind, RefusalKind::NotFound, "{typed}");
        assert!(
            refusal.message.contains("trusted devices only")
                && refusal.message.contains("fsnode trust"),
            "{typed}: {}",
            refusal.message
        );
        assert!(Harness::events(&out).is_empty());
    }
    let out = h.handle(request(5, send(seen[..10].to_owned())));
    let Outcome::Refused(refusal) = reply(&out) else {
        panic!()
    };
    assert!(
        refusal
            .message
            .contains(&format!("fsnode trust add {seen}"))
            && refusal.message.contains("(peer-1)"),
        "{}",
        refusal.message
    );
    h.handle(request(
        6,
        Request::TrustAdd {
            device: unseen.clone(),
        },
    ));
    let out = h.handle(request(7, send(unseen)));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Effect(Effect::PrepareSend { .. }))),
        "{out:?}"
    );
}

/// `cancel` of a finished transfer says how it ended and that there is nothing to cancel (it
/// used to answer "cancelled" for a completed one); a live one is cancelled; an unknown id is
/// not found.
#[test]
fn cancel_of_a_finished_transfer_says_how_it_ended() {
    let mut state = State::default();
    let ends = [
        (
            1,
            Some(Event::TransferCompleted {
                id: TransferId([1; 16]),
                path: None,
            }),
        ),
        (
            2,
            Some(Event::TransferFailed {
                id: TransferId([2; 16]),
                reason: "source file changed".into(),
            }),
        ),
        (
            3,
            Some(Event::TransferCancelled {
                id: TransferId([3; 16]),
                by: crate::core::Side::Remote,
                reason: "cancelled by the operator".into(),
            }),
        ),
        (4, None),
    ];
    for (n, end) in &ends {
        let transfer = TransferId([*n; 16]);
        let events = [
            Some(Event::queued_bare(
                transfer,
                id(1),
                Direction::Send,
                format!("f{n}.txt"),
                10,
            )),
            end.clone(),
        ];
        for event in events.into_iter().flatten() {
            state.apply(&Stamped { time_ms: 1, event });
        }
    }
    let mut h = Harness::new();
    h.core = Core::new(me(), state, h.start);
    let cancel = |h: &mut Harness, typed: String| {
        let out = h.handle(request(1, Request::Cancel { transfer: typed }));
        reply(&out).clone()
    };
    let expect = [
        (
            1,
            "transfer 01010101 (f1.txt) already completed; nothing to cancel",
        ),
        (
            2,
            "transfer 02020202 (f2.txt) already failed (source file changed); nothing to cancel",
        ),
        (
            3,
            "transfer 03030303 (f3.txt) was already cancelled by the peer's operator; nothing to cancel",
        ),
    ];
    for (n, message) in expect {
        match cancel(&mut h, TransferId([n; 16]).to_string()[..8].to_owned()) {
            Outcome::Refused(refusal) => {
                assert_eq!(refusal.kind, RefusalKind::Finished);
                assert_eq!(refusal.message, message);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        cancel(&mut h, "04040404".into()),
        Outcome::Cancelled(TransferId([4; 16]))
    );
    assert_eq!(
        refused(&cancel(&mut h, "0909".into())),
        Some(RefusalKind::NotFound)
    );
}

/// Spec 4 strictness: a `start` missing a key (or with one of the wrong type) whose `id` is
/// readable gets `reject` `code: "invalid"`, and the channel stays; one whose `id` is not
/// readable closes the channel.
#[test]
fn a_start_missing_a_key_gets_reject_invalid_when_its_id_is_readable() {
    use ciborium::Value;
    let mut h = Harness::new();
    trusted_peer_at(&mut h, 1, "10.77.0.2");
    let encode = |entries: Vec<(&str, Value)>| {
        let map = Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::Text(k.into()), v))
                .collect(),
        );
        let mut bytes = Vec::new();
        ciborium::into_writer(&map, &mut bytes).unwrap();
        bytes
    };
    let no_size = encode(vec![
        ("t", Value::Text("start".into())),
        ("id", Value::Bytes(vec![4; 16])),
        ("name", Value::Text("a.bin".into())),
        ("chunk_size", Value::Integer(1024.into())),
        ("chunks", Value::Integer(1.into())),
        ("mime", Value::Text("text/plain".into())),
        ("start_chunk", Value::Integer(0.into())),
    ]);
    let out = h.handle(Input::Channel {
        peer: id(1),
        data: no_size,
    });
    assert!(
        matches!(
            &channel_replies(&out)[..],
            [transfer::Message::Reject { id, reason, code: Some(transfer::wire::RejectCode::Invalid) }]
                if *id == TransferId([4; 16]) && reason.contains("size")
        ),
        "{out:?}"
    );
    assert!(
        !effects(&out)
            .iter()
            .any(|e| matches!(e, Effect::Rtc { .. })),
        "the channel stays"
    );
    // Without a readable id there is no one to answer: the channel closes (the negotiation
    // hears it lost, which the adapter carries out).
    let no_id = encode(vec![
        ("t", Value::Text("start".into())),
        ("name", Value::Text("a.bin".into())),
    ]);
    let out = h.handle(Input::Channel {
        peer: id(1),
        data: no_id,
    });
    assert!(channel_replies(&out).is_empty(), "{out:?}");
}

/// Spec 4: a `start` for a transfer this receiver already finished is answered again with
/// its outcome, never ignored: `reject` `cancelled` for a cancelled one, `reject` `finished`
/// for a failed one, the code it was refused with for a refused one (`name` here), and
/// `finished` for a refusal journaled by a build before codes (the sender lost the first
/// answer to a disconnect).
#[test]
fn repeated_starts_for_finished_transfers_are_answered_with_their_code() {
    use transfer::wire::RejectCode;
    let mut state = State::default();
    let stamp = |event| Stamped { time_ms: 1, event };
    state.apply(&stamp(Event::PeerAuthorized {
        peer: id(1),
        name: None,
        by: Authority::Operator,
    }));
    let (failed, cancelled) = (TransferId([1; 16]), TransferId([2; 16]));
    let (refused, refused_before_codes) = (TransferId([3; 16]), TransferId([4; 16]));
    for (id_, name) in [
        (failed, "failed.bin"),
        (cancelled, "cancelled.bin"),
        (refused, "refused.bin"),
        (refused_before_codes, "old.bin"),
    ] {
        state.apply(&stamp(Event::queued_bare(
            id_,
            id(1),
            Direction::Receive,
            name.into(),
            10,
        )));
    }
    state.apply(&stamp(Event::TransferFailed {
        id: failed,
        reason: "the whole-file SHA-256 does not match".into(),
    }));
    state.apply(&stamp(Event::TransferCancelled {
        id: cancelled,
        by: super::super::Side::Remote,
        reason: "cancelled".into(),
    }));
    state.apply(&stamp(Event::TransferRejected {
        id: refused,
        reason: "a symbolic link on the way".into(),
        code: Some(RejectCode::Name),
    }));
    state.apply(&stamp(Event::TransferRejected {
        id: refused_before_codes,
        reason: "refused".into(),
        code: None,
    }));
    let mut h = Harness::new();
    h.core = Core::new(me(), state, h.start);
    let start_of = |id_: TransferId, name: &str| {
        transfer::encode(&transfer::Message::Start {
            id: id_,
            name: name.into(),
            size: 10,
            chunk_size: 1024,
            chunks: 1,
            mime: "application/octet-stream".into(),
            mode: None,
            mtime: None,
            start_chunk: 0,
        })
    };
    for (id_, name, code) in [
        (failed, "failed.bin", RejectCode::Finished),
        (cancelled, "cancelled.bin", RejectCode::Cancelled),
        (refused, "refused.bin", RejectCode::Name),
        (refused_before_codes, "old.bin", RejectCode::Finished),
    ] {
        for _ in 0..2 {
            let out = h.handle(Input::Channel {
                peer: id(1),
                data: start_of(id_, name),
            });
            assert!(
                matches!(&channel_replies(&out)[..],
                    [transfer::Message::Reject { id: i, code: Some(c), .. }] if *i == id_ && *c == code),
                "{name}: {out:?}"
            );
        }
    }
}

/// The questions the core asked (its `AskPolicy` effects).
fn asked(outputs: &[Output]) -> Vec<PolicyRequest> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Effect(Effect::AskPolicy(request)) => Some(request.clone()),
            _ => None,
        })
        .collect()
}

fn prepares(outputs: &[Output]) -> Vec<String> {
    effects(outputs)
        .into_iter()
        .filter_map(|e| match e {
            Effect::Store {
                op: StoreOp::Prepare { name, .. },
                ..
            } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn accepted(id: QuestionId, plugin: &str) -> Input {
    Input::PolicyAnswer(PolicyAnswer {
        id,
        answer: crate::core::policy::Answer::Accept(Some(crate::core::policy::Decided {
            plugin: plugin.into(),
            answer: AcceptAnswer::Accept { dir: None },
        })),
        disabled: Vec::new(),
    })
}

/// A node with plugins whose answers the test gives by hand, trusting devices 1 and 2.
fn thinking_node() -> Harness {
    let mut h = Harness::new();
    let now = h.at(1);
    h.core
        .use_plugins(vec!["by-hand".to_owned()], Vec::new(), now);
    for n in [1, 2] {
        h.handle(Input::Announced(announcement(
            n,
            &format!("10.77.0.{}", n + 1),
        )));
        h.handle(request(
            u64::from(n),
            Request::TrustAdd {
                device: id(n).to_string(),
            },
        ));
    }
    h
}

fn transfer_id_of(data: &[u8]) -> TransferId {
    transfer::wire::decode_within(data, usize::MAX)
        .unwrap()
        .unwrap()
        .id()
}

/// While policy thinks 90 ms about peer 1's file, peer 2's accepted transfer goes on: its
/// `accept` and its chunk's write go out at once; peer 1's file is prepared when the answer
/// comes, after its `PolicyDecision` is journaled.
#[test]
fn a_file_waits_for_policy_while_another_peers_chunks_flow() {
    let mut h = thinking_node();
    let t0 = h.at(2);
    let later = |ms: u64| Now {
        instant: t0.instant + Duration::from_millis(ms),
        wall_ms: t0.wall_ms + ms as i64,
    };
    let a_start = start("a.bin", 10, 1024, 1);
    let out = h.handle_at(
        Input::Channel {
            peer: id(1),
            data: a_start.clone(),
        },
        later(0),
    );
    let [question_a] = &asked(&out)[..] else {
        panic!("one question for a.bin: {out:?}")
    };
    assert!(matches!(
        &question_a.question,
        Question::OnTransfer { file, .. } if file.name == "a.bin"
    ));
    assert!(prepares(&out).is_empty(), "a.bin waits for policy");
    // The same `start` again while policy thinks: no second question.
    let again = h.handle_at(
        Input::Channel {
            peer: id(1),
            data: a_start.clone(),
        },
        later(5),
    );
    assert!(asked(&again).is_empty() && prepares(&again).is_empty());

    // Peer 2's file: answered at once (another plugin call), prepared, its chunk written.
    let b_start = start("b.bin", 4, 1024, 1);
    let b = transfer_id_of(&b_start);
    let out = h.handle_at(
        Input::Channel {
            peer: id(2),
            data: b_start,
        },
        later(10),
    );
    let question_b = asked(&out)[0].id;
    let out = h.handle_at(accepted(question_b, "slow"), later(11));
    assert_eq!(prepares(&out), ["b.bin"]);
    let out = h.handle_at(
        Input::Store {
            id: b,
            result: StoreResult::Prepared { part_len: 0 },
        },
        later(12),
    );
    assert!(
        channel_replies(&out)
            .iter()
            .any(|m| matches!(m, transfer::Message::Accept { .. })),
        "{out:?}"
    );
    let data = vec![1, 2, 3, 4];
    let chunk = transfer::encode(&transfer::Message::Chunk {
        id: b,
        index: 0,
        sha256: Sha256::digest(&data).into(),
        data,
    });
    let out = h.handle_at(
        Input::Channel {
            peer: id(2),
            data: chunk,
        },
        later(13),
    );
    assert!(
        effects(&out)
            .iter()
            .any(|e| matches!(e, Effect::Store { id, op: StoreOp::Write { .. } } if *id == b)),
        "peer 2's chunk is written while peer 1's question is out: {out:?}"
    );

    // 90 ms later policy answers for a.bin: journaled, then prepared.
    let out = h.handle_at(accepted(question_a.id, "slow"), later(90));
    assert_eq!(Harness::events(&out), ["PolicyDecision"]);
    assert_eq!(prepares(&out), ["a.bin"]);
    assert!(
        !h.core
            .questions
            .values()
            .any(|asked| matches!(asked.question, Question::OnTransfer { .. }))
    );
}

/// An answer that does not come in time: the default decides (a file is accepted, an offer
/// from an untrusted device becomes a request and a `bye`), nothing is journaled as a plugin's
/// decision, and the late answer changes nothing (the plugins it disabled are journaled).
#[test]
fn an_unanswered_question_gets_the_default_at_its_timeout_and_a_late_answer_is_moot() {
    let mut h = thinking_node();
    let now = h.at(2);
    let out = h.handle_at(
        Input::Channel {
            peer: id(1),
            data: start("late.bin", 10, 1024, 1),
        },
        now,
    );
    let question = asked(&out)[0].id;
    let deadline = now.instant + POLICY_ANSWER_TIMEOUT;
    assert_eq!(h.core.poll_timeout().map(|at| at <= deadline), Some(true));
    // Just before the deadline: still waiting.
    let before = Now {
        instant: deadline - Duration::from_millis(1),
        wall_ms: now.wall_ms + 9_999,
    };
    h.core.handle_timeout(before);
    let out: Vec<_> = std::iter::from_fn(|| h.core.poll_output()).collect();
    assert!(prepares(&out).is_empty());
    let at = Now {
        instant: deadline,
        wall_ms: now.wall_ms + 10_000,
    };
    h.core.handle_timeout(at);
    let out: Vec<_> = std::iter::from_fn(|| h.core.poll_output()).collect();
    assert_eq!(prepares(&out), ["late.bin"]);
    assert!(Harness::events(&out).is_empty(), "{out:?}");
    let late = h.handle_at(
        Input::PolicyAnswer(PolicyAnswer {
            id: question,
            answer: crate::core::policy::Answer::Accept(Some(crate::core::policy::Decided {
                plugin: "slow".into(),
                answer: AcceptAnswer::Reject {
                    reason: "too late".into(),
                },
            })),
            disabled: vec![Disabled {
                plugin: "slow".into(),
                reason: "ran past the wall-clock deadline".into(),
            }],
        }),
        at,
    );
    assert_eq!(Harness::events(&late), ["PluginDisabled"]);
    assert!(effects(&late).is_empty(), "{late:?}");

    // An untrusted device's offer.
    h.handle(Input::Announced(announcement(3, "10.77.0.4")));
    let out = h.handle_at(
        Input::Signal {
            conn: 1,
            peer: id(3),
            message: Message::Offer {
                sdp: sdp_with_fingerprint(3),
                seq: 1,
            },
        },
        at,
    );
    assert!(
        matches!(
            &asked(&out)[..],
            [PolicyRequest {
                question: Question::OnOffer { .. },
                ..
            }]
        ),
        "{out:?}"
    );
    assert!(
        effects(&out).len() == 1,
        "no bye before policy answers: {out:?}"
    );
    let expired = Now {
        instant: at.instant + POLICY_ANSWER_TIMEOUT,
        wall_ms: at.wall_ms + 10_000,
    };
    h.core.handle_timeout(expired);
    let out: Vec<_> = std::iter::from_fn(|| h.core.poll_output()).collect();
    assert_eq!(Harness::events(&out), ["AuthorizationRequested"]);
    assert!(effects(&out).iter().any(|e| matches!(
        e,
        Effect::Signal {
            message: Message::Bye { .. },
            ..
        }
    )));
}

/// At most [`MAX_QUESTIONS`] questions are out; a further one is decided by the default at
/// once, so a flood of `start`s cannot queue unbounded work for the plugins.
#[test]
fn questions_out_are_bounded_and_a_further_one_gets_the_default_at_once() {
    let mut h = thinking_node();
    // Questions the announcements of untrusted devices 1 and 2 raised are still out.
    let already = h.core.questions.len();
    for n in already..MAX_QUESTIONS {
        let out = h.handle(Input::Channel {
            peer: id(1),
            data: start(&format!("f{n}.bin"), 10, 1024, 1),
        });
        assert_eq!(asked(&out).len(), 1);
    }
    let out = h.handle(Input::Channel {
        peer: id(1),
        data: start("one-too-many.bin", 10, 1024, 1),
    });
    assert!(asked(&out).is_empty());
    assert_eq!(prepares(&out), ["one-too-many.bin"]);
    assert_eq!(h.core.questions.len(), MAX_QUESTIONS);
}

/// Accepts every file after thinking for 90 ms (as a plugin at its limits would).
struct SlowAccept;

impl Policy for SlowAccept {
    fn on_transfer(
        &mut self,
        _: &NodeFacts,
        _: &PeerFacts,
        _: &FileFacts,
    ) -> Option<crate::core::policy::Decided<AcceptAnswer>> {
        std::thread::sleep(Duration::from_millis(90));
        Some(crate::core::policy::Decided {
            plugin: "slow".into(),
            answer: AcceptAnswer::Accept { dir: None },
        })
    }
}

/// The core with the shell's real policy thread and a plugin that takes 90 ms per call, in
/// real time: while the plugin thinks about peer 1's file, peer 2's chunk is handled at once
/// (its write goes out before the answer exists), and peer 1's file is prepared once the
/// answer comes back from the thread.
#[test]
fn a_plugin_taking_90_ms_does_not_hold_another_peers_chunks() {
    use crate::shell::policy::PolicyThread;
    let mut h = thinking_node();
    let (answers_tx, answers) = async_channel::bounded(16);
    let thread = PolicyThread::start(Box::new(SlowAccept), answers_tx).unwrap();
    let ask = |out: &[Output], what: &str| {
        let [request] = &asked(out)[..] else {
            panic!("one question for {what}: {out:?}")
        };
        thread.ask(request.clone());
    };
    let answer = |h: &mut Harness| {
        let input = answers.recv_blocking().unwrap();
        h.handle(input)
    };
    // Peer 2's file: accepted (after 90 ms), prepared, ready for chunks.
    let b_start = start("b.bin", 4, 1024, 1);
    let b = transfer_id_of(&b_start);
    let out = h.handle(Input::Channel {
        peer: id(2),
        data: b_start,
    });
    ask(&out, "b.bin");
    assert_eq!(prepares(&answer(&mut h)), ["b.bin"]);
    h.handle(Input::Store {
        id: b,
        result: StoreResult::Prepared { part_len: 0 },
    });
    // Peer 1 offers a file: the plugin starts thinking.
    let out = h.handle(Input::Channel {
        peer: id(1),
        data: start("a.bin", 10, 1024, 1),
    });
    let asked_at = Instant::now();
    ask(&out, "a.bin");
    // Peer 2's chunk meanwhile: written at once.
    let data = vec![1, 2, 3, 4];
    let out = h.handle(Input::Channel {
        peer: id(2),
        data: transfer::encode(&transfer::Message::Chunk {
            id: b,
            index: 0,
            sha256: Sha256::digest(&data).into(),
            data,
        }),
    });
    let handled_after = asked_at.elapsed();
    assert!(
        effects(&out)
            .iter()
            .any(|e| matches!(e, Effect::Store { id, op: StoreOp::Write { .. } } if *id == b)),
        "{out:?}"
    );
    assert!(
        handled_after < Duration::from_millis(90) && answers.is_empty(),
        "peer 2's chunk was handled {handled_after:?} after the question, before its answer"
    );
    let out = answer(&mut h);
    assert!(asked_at.elapsed() >= Duration::from_millis(90));
    assert_eq!(Harness::events(&out), ["PolicyDecision"]);
    assert_eq!(prepares(&out), ["a.bin"]);
}
