//! A node that restarts (gracefully or `kill -9`, same home) is seen again by the nodes that
//! knew it, at its new port, within 5 s, trusted or not; a trusted one reconnects on its own.
//! Restarts on both sides, and with the mDNS goodbye lost (dropped by nftables, or never sent
//! by a `kill -9`). `--port 0` makes each start take a new port, the case where stale
//! knowledge hurts.

use std::time::Duration;

use fsnode_testkit::Lan;
use serde_json::Value;

use crate::support::{Node, wait_for};

/// A restarted node is seen again within this long of answering on its control socket.
const SEEN_AGAIN: Duration = Duration::from_secs(5);

/// The port `observer` knows `id` at.
fn port_seen(observer: &Node, id: &str) -> Option<u64> {
    observer.peer(id).and_then(|p| p["port"].as_u64())
}

/// `observer` lists `id` as on the LAN at `port`.
fn seen_at(observer: &Node, id: &str, port: u64) -> bool {
    observer
        .peer(id)
        .is_some_and(|p| p["discovered"] == true && p["port"].as_u64() == Some(port))
}

/// The port `node` serves, as it says itself (`fsnode id --json`).
fn own_port(node: &Node) -> u64 {
    let id: Value = node.json(&["id", "--json"]);
    id["port"]
        .as_u64()
        .unwrap_or_else(|| panic!("`id --json` without a port: {id}"))
}

/// Drops every mDNS packet host `i` sends (its goodbye, when it stops), until
/// [`let_mdns_out`].
fn drop_mdns_out(lan: &Lan, i: usize) {
    lan.host(i)
        .nft(
            "add table inet fsn_mdns\n\
             delete table inet fsn_mdns\n\
             table inet fsn_mdns {\n\
             \tchain output { type filter hook output priority 0; policy accept; \
             udp dport 5353 drop; }\n\
             }\n",
        )
        .unwrap();
}

fn let_mdns_out(lan: &Lan, i: usize) {
    lan.host(i)
        .nft("add table inet fsn_mdns\ndelete table inet fsn_mdns\n")
        .unwrap();
}

#[test]
fn untrusted_nodes_see_each_other_again_after_restarts_on_either_side() {
    let lan = Lan::new(2).unwrap();
    let mut a = Node::start(&lan, 0, "alpha", &["--port", "0"]);
    let mut b = Node::start(&lan, 1, "beta", &["--port", "0"]);
    let (a_id, b_id) = (a.id(), b.id());
    wait_for("A sees B", SEEN_AGAIN, || a.peer(&b_id).is_some());
    wait_for("B sees A", SEEN_AGAIN, || b.peer(&a_id).is_some());

    // B restarts gracefully: A had its goodbye, then its announcement on a new port.
    b.stop();
    b.restart(&["--port", "0"]);
    let port = own_port(&b);
    let took = wait_for(
        "A sees B again after a graceful restart",
        SEEN_AGAIN,
        || seen_at(&a, &b_id, port),
    );
    eprintln!("graceful restart of B seen by A after {took:?}");

    // B is killed: no goodbye, only its announcement on a new port.
    b.kill();
    b.restart(&["--port", "0"]);
    let port = own_port(&b);
    let took = wait_for("A sees B again after kill -9", SEEN_AGAIN, || {
        seen_at(&a, &b_id, port)
    });
    eprintln!("kill -9 of B seen by A after {took:?}");

    // A itself restarts: B is known from its journal and is seen again too.
    a.stop();
    a.restart(&["--port", "0"]);
    let took = wait_for("A sees B again after A restarted", SEEN_AGAIN, || {
        seen_at(&a, &b_id, port)
    });
    eprintln!("A restarted, sees B after {took:?}");
    let port = own_port(&a);
    wait_for("B sees A at A's new port", SEEN_AGAIN, || {
        seen_at(&b, &a_id, port)
    });
    // Nothing is trusted, so nothing connected.
    assert!(a.peer(&b_id).is_some_and(|p| p["trusted"] == false));
}

#[test]
fn trusted_nodes_reconnect_after_restarts_on_both_sides_with_goodbyes_lost() {
    let lan = Lan::new(2).unwrap();
    let (mut a, mut b, a_id, b_id) = {
        // `support::trusting_pair`, with a new port at every start.
        let a = Node::start(&lan, 0, "alpha", &["--port", "0"]);
        let b = Node::start(&lan, 1, "beta", &["--port", "0"]);
        let (a_id, b_id) = (a.id(), b.id());
        wait_for("A sees B", SEEN_AGAIN, || a.peer(&b_id).is_some());
        wait_for("B sees A", SEEN_AGAIN, || b.peer(&a_id).is_some());
        a.json(&["trust", "add", &b_id, "--json"]);
        b.json(&["trust", "add", &a_id, "--json"]);
        (a, b, a_id, b_id)
    };
    let connected = |x: &Node, y: &str| x.connection(y) == "connected";
    wait_for("connected", Duration::from_secs(10), || {
        connected(&a, &b_id) && connected(&b, &a_id)
    });

    // Each side restarts in turn: gracefully with its goodbye dropped, then `kill -9`.
    for (round, restart_a) in [(1, false), (2, true), (3, false), (4, true)] {
        let graceful = round <= 2;
        let (node, other, node_id, other_id, host) = if restart_a {
            (&mut a, &b, &a_id, &b_id, 0)
        } else {
            (&mut b, &a, &b_id, &a_id, 1)
        };
        if graceful {
            drop_mdns_out(&lan, host);
            node.stop();
            let_mdns_out(&lan, host);
        } else {
            node.kill();
        }
        node.restart(&["--port", "0"]);
        let port = own_port(node);
        let took = wait_for(
            &format!("round {round}: reconnected at the new port"),
            SEEN_AGAIN,
            || {
                connected(node, other_id)
                    && connected(other, node_id)
                    && port_seen(other, node_id) == Some(port)
            },
        );
        let how = if graceful {
            "graceful, goodbye dropped"
        } else {
            "kill -9"
        };
        let who = if restart_a { "A" } else { "B" };
        eprintln!("round {round} ({who} {how}): reconnected after {took:?}");
    }
}

/// The operator's first meeting, with a restart before the trust: the node being trusted
/// restarted (new port) after it was first seen. Trusting it dials where it is now, so the
/// other side hears of the request at once and, once it trusts back, they connect.
#[test]
fn trusting_a_device_that_restarted_since_it_was_seen_reaches_it_at_its_new_port() {
    let lan = Lan::new(2).unwrap();
    let a = Node::start(&lan, 0, "alpha", &["--port", "0"]);
    let mut b = Node::start(&lan, 1, "beta", &["--port", "0"]);
    let (a_id, b_id) = (a.id(), b.id());
    wait_for("A sees B", SEEN_AGAIN, || a.peer(&b_id).is_some());
    b.stop();
    b.restart(&["--port", "0"]);
    let port = own_port(&b);
    wait_for("A sees B at its new port", SEEN_AGAIN, || {
        seen_at(&a, &b_id, port)
    });
    a.json(&["trust", "add", &b_id, "--json"]);
    wait_for("B lists A as asking to connect", SEEN_AGAIN, || {
        b.peer(&a_id).is_some_and(|p| p["requested"] == true)
    });
    b.json(&["trust", "add", &a_id, "--json"]);
    wait_for("connected", SEEN_AGAIN, || {
        a.connection(&b_id) == "connected" && b.connection(&a_id) == "connected"
    });
}
