//! Signaling and WebRTC connections with perfect negotiation, end to end: real nodes on a
//! namespace LAN, real webrtc-rs data channels.

use std::time::{Duration, Instant};

use fsnode_testkit::Lan;

use crate::support::{Node, trusting_pair, wait_for};

#[test]
fn mutually_trusting_nodes_connect_and_reconnect_after_a_simultaneous_restart() {
    let lan = Lan::new(2).unwrap();
    let (mut a, mut b, a_id, b_id) = trusting_pair(&lan);
    wait_for("connected after trusting", Duration::from_secs(5), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    // Both stop, then both start at once (glare): exactly one connection comes up.
    a.stop();
    b.stop();
    let before = (a.count("Connected", &b_id), b.count("Connected", &a_id));
    let answers_before = a.count("AnswerReceived", &b_id) + b.count("AnswerReceived", &a_id);
    let started = Instant::now();
    a.home
        .start(&["--name", "alpha", "--interface", "eth0"])
        .unwrap();
    b.home
        .start(&["--name", "beta", "--interface", "eth0"])
        .unwrap();
    a.wait_ready();
    b.wait_ready();
    let took = wait_for(
        "connected after both restarted",
        Duration::from_secs(3),
        || a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected",
    );
    eprintln!(
        "connected {:?} after both started ({:?} of it waiting for control sockets)",
        started.elapsed(),
        took
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        a.count("Connected", &b_id),
        before.0 + 1,
        "one connection on A"
    );
    assert_eq!(
        b.count("Connected", &a_id),
        before.1 + 1,
        "one connection on B"
    );
    let answers = a.count("AnswerReceived", &b_id) + b.count("AnswerReceived", &a_id);
    assert_eq!(
        answers,
        answers_before + 1,
        "exactly one offer was answered"
    );
}

#[test]
fn an_untrusting_peer_refuses_offers_lists_the_asker_and_connects_once_it_trusts() {
    let lan = Lan::new(2).unwrap();
    let a = Node::start(&lan, 0, "alpha", &[]);
    let b = Node::start(&lan, 1, "beta", &[]);
    let (a_id, b_id) = (a.id(), b.id());
    wait_for("A sees B", Duration::from_secs(5), || {
        a.peer(&b_id).is_some()
    });
    a.json(&["trust", "add", &b_id, "--json"]);
    wait_for("B lists A as asking", Duration::from_secs(5), || {
        let list = b.json(&["trust", "list", "--json"]);
        list["requests"]
            .as_array()
            .is_some_and(|r| r.iter().any(|p| p["id"] == a_id.as_str()))
    });
    wait_for(
        "A marks B failed: unauthorized",
        Duration::from_secs(5),
        || a.connection(&b_id).contains("unauthorized"),
    );
    assert_eq!(b.count("AuthorizationRequested", &a_id), 1);
    assert_eq!(a.count("Connected", &b_id), 0);
    assert_eq!(b.connection(&a_id), "not connected");
    let requested = b.peer(&a_id).unwrap();
    assert_eq!(requested["requested"], true);

    // Once B trusts A, B initiates and they connect.
    b.json(&["trust", "add", &a_id, "--json"]);
    wait_for("connected once B trusts A", Duration::from_secs(5), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    assert!(b.count("OfferSent", &a_id) >= 1, "B initiated");
}

#[test]
fn a_killed_peer_shows_not_connected_and_reconnects_by_itself_after_restarting() {
    let lan = Lan::new(2).unwrap();
    let (a, mut b, a_id, b_id) = trusting_pair(&lan);
    wait_for("connected", Duration::from_secs(5), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    b.kill();
    let lost = wait_for("A notices B is gone", Duration::from_secs(40), || {
        a.connection(&b_id) != "connected"
    });
    eprintln!("A noticed the loss after {lost:?}");
    assert!(a.count("Disconnected", &b_id) >= 1);
    b.restart(&[]);
    let back = wait_for("reconnected by itself", Duration::from_secs(15), || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
    eprintln!("reconnected {back:?} after B restarted");
}
