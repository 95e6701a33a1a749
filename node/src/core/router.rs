//! The signaling router: which connection carries each peer's messages, when to dial, what
//! waits for a connection, and when a connection closes (spec 3.1, 3.2, 3.4). Sans-IO, in the
//! machines' usual shape: `handle_input(input, now)`, then `poll_output()` until `None`, and
//! `handle_timeout(now)` at `poll_timeout()`. The shell owns the sockets and the writers; the
//! router only names connections by [`ConnId`].
//!
//! Rules:
//! - Messages are routed by the peer's device id, not by connection (3.2). Several connections
//!   with one peer may be open at once (both sides dialled); none is closed because another
//!   exists (3.1). A message goes out on the newest open connection that comes from where the
//!   peer's authenticated session is (its stored addresses), else on the newest open one: a
//!   connection from anywhere else, whatever its `hello` claims, never takes over a trusted
//!   device's route while a connection from its own address is open (3.4).
//! - With no connection open, messages wait (bounded) while the router dials the peer's
//!   addresses in order (stored first, then candidates); a peer with no address to dial (an
//!   untrusted device, a browser whose `hello` has port 0) is never dialled, so no host can
//!   make the node connect elsewhere; its messages go only on a connection it opened.
//! - What no dial could deliver is kept for a while and goes out when the peer is seen again
//!   or connects (the peer restarted on a new port, say), so an offer does not wait for the
//!   negotiation's next retry. The router says why each address failed ([`Output::Unreachable`]),
//!   so that a negotiation that then times out tells the operator what happened, not that the
//!   peer did not answer.
//! - Closing is graceful: the shell stops writing, keeps handling what arrives until the peer
//!   closes too or [`GRACEFUL_CLOSE`] passes.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::DeviceId;
use super::node::ConnId;

/// Lines queued for one peer while no connection to it is open; more are dropped.
pub const MAX_OUTBOX: usize = 64;
/// Peers with queued or undelivered lines; lines for further peers are dropped.
pub const MAX_QUEUED_PEERS: usize = 1024;
/// Open connections tracked (the shell caps inbound ones at 64; dialled ones are few).
pub const MAX_CONNS: usize = 1024;
/// Lines no dial could deliver are kept this long for the peer's next appearance.
pub const UNDELIVERED_FOR: Duration = Duration::from_secs(120);
/// After the node stops writing on a connection it closes, it still reads this long.
pub const GRACEFUL_CLOSE: Duration = Duration::from_secs(2);

/// Where a peer can be reached, as the core knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// Where its authenticated session last was (journaled): preferred for connections and
    /// dialled first.
    pub stored: Vec<SocketAddr>,
    /// Learned from unauthenticated input (`hello`, mDNS): dialled after the stored ones.
    pub candidates: Vec<SocketAddr>,
}

impl Route {
    /// Addresses to dial, in order, each once; port 0 (a peer that cannot be dialled) is none,
    /// and neither is an IPv6 link-local address (no interface to dial it on; journals of
    /// earlier builds may hold some).
    pub fn dial_order(&self) -> VecDeque<SocketAddr> {
        let mut order = VecDeque::new();
        for addr in self.stored.iter().chain(&self.candidates) {
            if addr.port() != 0
                && !super::discovery::is_unscoped_link_local(&addr.ip())
                && !order.contains(addr)
            {
                order.push_back(*addr);
            }
        }
        order
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Connection `conn` finished its `hello` exchange with `peer`; it comes from `from`
    /// (the remote address: for a dialled one, where the node dialled).
    Up {
        conn: ConnId,
        peer: DeviceId,
        from: SocketAddr,
    },
    /// Connection `conn` closed (its reader ended).
    Down { conn: ConnId },
    /// A dial the router asked for, to `addr` for `peer`, failed; `error` says how (for
    /// people: "nothing listens at ADDR (connection refused)").
    DialFailed {
        peer: DeviceId,
        addr: SocketAddr,
        error: String,
    },
    /// Send `line` (one encoded message) to `peer`, reachable by `route`.
    Send {
        peer: DeviceId,
        line: Vec<u8>,
        route: Route,
    },
    /// `peer` was seen (discovered again, or announced a new address): what no dial could
    /// deliver goes out now.
    Seen { peer: DeviceId, route: Route },
    /// Close `conn` (after a fingerprint mismatch, a framing error, at shutdown).
    Close { conn: ConnId },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write `line` on `conn`.
    Write { conn: ConnId, line: Vec<u8> },
    /// Open a signaling connection to `addr`, expecting `peer`'s `hello`.
    Dial { peer: DeviceId, addr: SocketAddr },
    /// Close `conn` gracefully: stop writing, keep reading until the peer closes or
    /// [`GRACEFUL_CLOSE`] passes.
    Close { conn: ConnId },
    /// Every address of `peer` was dialled and none answered: what waits for it is kept for
    /// its next appearance. `errors` says why, one per address, in dial order.
    Unreachable { peer: DeviceId, errors: Vec<String> },
}

#[derive(Debug)]
struct Conn {
    peer: DeviceId,
    from: SocketAddr,
    /// Up order: a larger number is newer.
    order: u64,
    closing: bool,
}

/// Lines waiting for a peer, and the dial under way.
#[derive(Debug, Default)]
struct Waiting {
    lines: Vec<Vec<u8>>,
    /// The address being dialled, and those left to try after it.
    dialing: Option<SocketAddr>,
    untried: VecDeque<SocketAddr>,
    /// Why each address dialled in this round failed.
    errors: Vec<String>,
    /// Every dial failed: kept until then for the peer's next appearance.
    undelivered_until: Option<Instant>,
    /// The route of the latest `Send`, to prefer connections from its stored addresses.
    route: Route,
}

#[derive(Debug, Default)]
pub struct Router {
    conns: BTreeMap<ConnId, Conn>,
    next_order: u64,
    waiting: BTreeMap<DeviceId, Waiting>,
    /// Each peer's route as last given, for choosing among its connections.
    routes: BTreeMap<DeviceId, Route>,
    out: VecDeque<Output>,
    /// Lines dropped (queue full, nowhere to send), for tests and measurements.
    dropped: u64,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiting
            .values()
            .filter_map(|w| w.undelivered_until)
            .min()
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Open (not closing) connections with `peer`.
    pub fn connections(&self, peer: &DeviceId) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.peer == *peer && !c.closing)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.waiting.retain(|_, w| {
            let expired = w.undelivered_until.is_some_and(|until| until <= now);
            if expired {
                self.dropped += w.lines.len() as u64;
            }
            !expired
        });
    }

    pub fn handle_input(&mut self, input: Input, now: Instant) {
        match input {
            Input::Up { conn, peer, from } => {
                if !self.conns.contains_key(&conn) && self.conns.len() >= MAX_CONNS {
                    // Not routable; the shell's own caps make this unreachable in practice.
                    self.out.push_back(Output::Close { conn });
                    return;
                }
                self.next_order += 1;
                self.conns.insert(
                    conn,
                    Conn {
                        peer: peer.clone(),
                        from,
                        order: self.next_order,
                        closing: false,
                    },
                );
                // Whoever dialled, the connection carries what waited for the peer.
                if let Some(waiting) = self.waiting.remove(&peer) {
                    for line in waiting.lines {
                        self.out.push_back(Output::Write { conn, line });
                    }
                }
            }
            Input::Down { conn } => {
                self.conns.remove(&conn);
            }
            Input::DialFailed { peer, addr, error } => self.on_dial_failed(peer, addr, error, now),
            Input::Send { peer, line, route } => self.send(peer, line, route, now),
            Input::Seen { peer, route } => {
                self.remember(&peer, &route);
                let Some(waiting) = self.waiting.get_mut(&peer) else {
                    return;
                };
                waiting.route = route;
                if waiting.dialing.is_none() {
                    waiting.untried = waiting.route.dial_order();
                    waiting.errors.clear();
                    waiting.undelivered_until = None;
                    self.dial_next(&peer, now);
                }
            }
            Input::Close { conn } => {
                if let Some(c) = self.conns.get_mut(&conn)
                    && !c.closing
                {
                    c.closing = true;
                    self.out.push_back(Output::Close { conn });
                }
            }
        }
    }

    /// Keeps `peer`'s route for choosing among its connections; only peers with an address
    /// (trusted ones) are remembered, so a flood of ids leaves nothing behind.
    fn remember(&mut self, peer: &DeviceId, route: &Route) {
        if *route == Route::default() {
            self.routes.remove(peer);
        } else {
            self.routes.insert(peer.clone(), route.clone());
        }
    }

    /// The connection `peer`'s messages go on: the newest open one from a stored address of
    /// its route, else the newest open one.
    fn route_of(&self, peer: &DeviceId) -> Option<ConnId> {
        let stored = self.routes.get(peer).map(|r| r.stored.as_slice());
        let from_stored =
            |c: &Conn| stored.is_some_and(|stored| stored.iter().any(|a| a.ip() == c.from.ip()));
        let open = || {
            self.conns
                .iter()
                .filter(|(_, c)| c.peer == *peer && !c.closing)
        };
        open()
            .filter(|(_, c)| from_stored(c))
            .max_by_key(|(_, c)| c.order)
            .or_else(|| open().max_by_key(|(_, c)| c.order))
            .map(|(id, _)| *id)
    }

    fn send(&mut self, peer: DeviceId, line: Vec<u8>, route: Route, now: Instant) {
        self.remember(&peer, &route);
        if let Some(conn) = self.route_of(&peer) {
            self.out.push_back(Output::Write { conn, line });
            return;
        }
        let dial_order = route.dial_order();
        if dial_order.is_empty() && !self.waiting.contains_key(&peer) {
            // Nowhere to dial and nothing open: the message has no way out.
            self.dropped += 1;
            return;
        }
        if !self.waiting.contains_key(&peer) && self.waiting.len() >= MAX_QUEUED_PEERS {
            self.dropped += 1;
            return;
        }
        let waiting = self.waiting.entry(peer.clone()).or_default();
        waiting.route = route;
        // A retry of the same offer is the same line: queued once.
        if !waiting.lines.contains(&line) {
            if waiting.lines.len() < MAX_OUTBOX {
                waiting.lines.push(line);
            } else {
                self.dropped += 1;
            }
        }
        if waiting.dialing.is_none() {
            waiting.untried = dial_order;
            waiting.errors.clear();
            waiting.undelivered_until = None;
            self.dial_next(&peer, now);
        }
    }

    fn on_dial_failed(&mut self, peer: DeviceId, addr: SocketAddr, error: String, now: Instant) {
        let Some(waiting) = self.waiting.get_mut(&peer) else {
            return;
        };
        if waiting.dialing != Some(addr) {
            return;
        }
        waiting.dialing = None;
        // One per address dialled this round (at most the route's addresses).
        waiting.errors.push(error);
        self.dial_next(&peer, now);
    }

    /// Dials the next untried address of `peer`, or, with none left, keeps its lines as
    /// undelivered until [`UNDELIVERED_FOR`] from `now` and says why none answered.
    fn dial_next(&mut self, peer: &DeviceId, now: Instant) {
        let Some(waiting) = self.waiting.get_mut(peer) else {
            return;
        };
        match waiting.untried.pop_front() {
            Some(addr) => {
                waiting.dialing = Some(addr);
                self.out.push_back(Output::Dial {
                    peer: peer.clone(),
                    addr,
                });
            }
            None => {
                waiting.undelivered_until = Some(now + UNDELIVERED_FOR);
                if !waiting.errors.is_empty() {
                    self.out.push_back(Output::Unreachable {
                        peer: peer.clone(),
                        errors: std::mem::take(&mut waiting.errors),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    // Tests pick an arbitrary epoch for virtual time; the router never reads the clock.
    #![allow(clippy::disallowed_methods)]

    use super::*;

    fn peer(n: u8) -> DeviceId {
        DeviceId::from_sha256(&[n; 32])
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn route() -> Route {
        Route {
            stored: vec![addr("10.77.0.2:4000")],
            candidates: vec![addr("10.77.0.9:4000")],
        }
    }

    fn send(r: &mut Router, line: &str, now: Instant) -> Vec<Output> {
        r.handle_input(
            Input::Send {
                peer: peer(1),
                line: line.as_bytes().to_vec(),
                route: route(),
            },
            now,
        );
        drain(r)
    }

    fn drain(r: &mut Router) -> Vec<Output> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    fn write(conn: ConnId, line: &str) -> Output {
        Output::Write {
            conn,
            line: line.as_bytes().to_vec(),
        }
    }

    fn up(r: &mut Router, conn: ConnId, from: &str, now: Instant) -> Vec<Output> {
        r.handle_input(
            Input::Up {
                conn,
                peer: peer(1),
                from: addr(from),
            },
            now,
        );
        drain(r)
    }

    #[test]
    fn duplicate_connections_stay_open_and_either_carries_messages() {
        let t0 = Instant::now();
        let mut r = Router::new();
        assert!(up(&mut r, 1, "10.77.0.2:50000", t0).is_empty());
        // Both sides dialled: the second connection closes nothing.
        assert!(up(&mut r, 2, "10.77.0.2:4000", t0).is_empty());
        assert_eq!(r.connections(&peer(1)), vec![1, 2]);
        assert_eq!(send(&mut r, "a", t0), vec![write(2, "a")], "the newest");
        r.handle_input(Input::Down { conn: 2 }, t0);
        assert_eq!(send(&mut r, "b", t0), vec![write(1, "b")], "the other one");
    }

    #[test]
    fn a_connection_from_elsewhere_does_not_take_a_trusted_devices_route() {
        let t0 = Instant::now();
        let mut r = Router::new();
        up(&mut r, 1, "10.77.0.2:50000", t0);
        send(&mut r, "x", t0);
        // An impostor's newer connection, claiming the same id from another host.
        up(&mut r, 2, "10.77.0.66:50000", t0);
        assert_eq!(send(&mut r, "a", t0), vec![write(1, "a")]);
        // With the real one gone, the other connection is all there is (the session's DTLS
        // decides whether anything comes of it).
        r.handle_input(Input::Down { conn: 1 }, t0);
        assert_eq!(send(&mut r, "b", t0), vec![write(2, "b")]);
    }

    #[test]
    fn with_no_connection_it_dials_stored_then_candidate_addresses_and_delivers_in_order() {
        let t0 = Instant::now();
        let mut r = Router::new();
        let dial = |a: &str| Output::Dial {
            peer: peer(1),
            addr: addr(a),
        };
        assert_eq!(send(&mut r, "offer", t0), vec![dial("10.77.0.2:4000")]);
        assert!(
            send(&mut r, "candidate", t0).is_empty(),
            "one dial at a time"
        );
        assert!(
            send(&mut r, "offer", t0).is_empty(),
            "a retry is queued once"
        );
        r.handle_input(
            Input::DialFailed {
                peer: peer(1),
                addr: addr("10.77.0.2:4000"),
                error: "refused".into(),
            },
            t0,
        );
        assert_eq!(drain(&mut r), vec![dial("10.77.0.9:4000")]);
        assert_eq!(
            up(&mut r, 7, "10.77.0.9:4000", t0),
            vec![write(7, "offer"), write(7, "candidate")]
        );
    }

    #[test]
    fn undelivered_lines_go_out_when_the_peer_is_seen_again_and_expire() {
        let t0 = Instant::now();
        let mut r = Router::new();
        send(&mut r, "offer", t0);
        for a in ["10.77.0.2:4000", "10.77.0.9:4000"] {
            r.handle_input(
                Input::DialFailed {
                    peer: peer(1),
                    addr: addr(a),
                    error: format!("nothing listens at {a}"),
                },
                t0,
            );
        }
        // The last failure says why none answered, address by address.
        assert_eq!(
            drain(&mut r),
            vec![
                Output::Dial {
                    peer: peer(1),
                    addr: addr("10.77.0.9:4000")
                },
                Output::Unreachable {
                    peer: peer(1),
                    errors: vec![
                        "nothing listens at 10.77.0.2:4000".into(),
                        "nothing listens at 10.77.0.9:4000".into()
                    ]
                }
            ]
        );
        assert_eq!(r.poll_timeout(), Some(t0 + UNDELIVERED_FOR));
        // Seen again on a new port: dialled there, and the offer goes out when it is up.
        let moved = Route {
            stored: vec![addr("10.77.0.2:4100")],
            candidates: vec![],
        };
        r.handle_input(
            Input::Seen {
                peer: peer(1),
                route: moved,
            },
            t0,
        );
        assert_eq!(
            drain(&mut r),
            vec![Output::Dial {
                peer: peer(1),
                addr: addr("10.77.0.2:4100")
            }]
        );
        assert_eq!(up(&mut r, 3, "10.77.0.2:4100", t0), vec![write(3, "offer")]);
        // Never seen again: dropped after a while.
        let mut r = Router::new();
        send(&mut r, "offer", t0);
        for a in ["10.77.0.2:4000", "10.77.0.9:4000"] {
            r.handle_input(
                Input::DialFailed {
                    peer: peer(1),
                    addr: addr(a),
                    error: "refused".into(),
                },
                t0,
            );
        }
        drain(&mut r);
        r.handle_timeout(t0 + UNDELIVERED_FOR);
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.dropped(), 1);
        assert!(up(&mut r, 4, "10.77.0.2:4000", t0).is_empty());
    }

    #[test]
    fn a_peer_with_nothing_to_dial_is_answered_only_on_its_own_connection() {
        let t0 = Instant::now();
        let mut r = Router::new();
        let bye = |r: &mut Router| {
            r.handle_input(
                Input::Send {
                    peer: peer(2),
                    line: b"bye".to_vec(),
                    route: Route::default(),
                },
                t0,
            );
            drain(r)
        };
        // An untrusted device, or a browser (`hello` port 0) with no connection open: nothing.
        assert!(bye(&mut r).is_empty());
        assert_eq!(r.dropped(), 1);
        r.handle_input(
            Input::Up {
                conn: 9,
                peer: peer(2),
                from: addr("10.77.0.50:0"),
            },
            t0,
        );
        assert_eq!(bye(&mut r), vec![write(9, "bye")]);
        // Port 0 is never dialled either.
        r.handle_input(Input::Down { conn: 9 }, t0);
        r.handle_input(
            Input::Send {
                peer: peer(2),
                line: b"offer".to_vec(),
                route: Route {
                    stored: vec![addr("10.77.0.50:0")],
                    candidates: vec![],
                },
            },
            t0,
        );
        assert!(drain(&mut r).is_empty());
    }

    #[test]
    fn a_closed_connection_is_closed_once_and_carries_nothing_more() {
        let t0 = Instant::now();
        let mut r = Router::new();
        up(&mut r, 1, "10.77.0.2:50000", t0);
        up(&mut r, 2, "10.77.0.2:50001", t0);
        r.handle_input(Input::Close { conn: 2 }, t0);
        r.handle_input(Input::Close { conn: 2 }, t0);
        assert_eq!(drain(&mut r), vec![Output::Close { conn: 2 }]);
        assert_eq!(send(&mut r, "a", t0), vec![write(1, "a")]);
        assert_eq!(r.connections(&peer(1)), vec![1]);
    }

    #[test]
    fn queues_are_bounded() {
        let t0 = Instant::now();
        let mut r = Router::new();
        for i in 0..(MAX_OUTBOX + 10) {
            send(&mut r, &format!("line{i}"), t0);
        }
        assert_eq!(r.dropped(), 10);
        let out = up(&mut r, 1, "10.77.0.2:4000", t0);
        assert_eq!(out.len(), MAX_OUTBOX);
    }
}
