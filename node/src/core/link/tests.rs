//! Two links over the simulated network, in virtual time, with a bounded drive loop.
#![allow(clippy::disallowed_methods)] // one real `Instant::now()` as the virtual epoch

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng, rngs::StdRng};
use sha2::{Digest, Sha256};

use super::sim::{Conditions, SimNet};
use super::*;

use super::quic::QuicSettings;
use super::sim::test_certificate as certificate;

fn device_id(certificate: &rtc_dtls::crypto::Certificate) -> DeviceId {
    DeviceId::from_certificate_der(certificate.certificate[0].as_ref())
}

const A_ADDR: &str = "10.77.0.1:40001";
const B_ADDR: &str = "10.77.0.2:40002";

/// A link that offers only the data channel (what every peer but fsnode speaks).
fn config(own: &rtc_dtls::crypto::Certificate, peer: DeviceId, addr: &str, seed: u8) -> LinkConfig {
    LinkConfig {
        certificate: own.clone(),
        peer,
        local_addrs: vec![addr.parse().unwrap()],
        path_max_datagram: 1472,
        advertise_max_datagram: None,
        max_message_size: MAX_MESSAGE_SIZE,
        sctp: SctpTuning::default(),
        quic: QuicSettings {
            enabled: false,
            ..QuicSettings::default()
        },
        seed: [seed; 32],
    }
}

/// A link that offers QUIC too (spec 6), as fsnode nodes do.
fn quic_config(
    own: &rtc_dtls::crypto::Certificate,
    peer: DeviceId,
    addr: &str,
    seed: u8,
) -> LinkConfig {
    LinkConfig {
        quic: QuicSettings::default(),
        ..config(own, peer, addr, seed)
    }
}

fn config_for(
    kind: TransportKind,
) -> fn(&rtc_dtls::crypto::Certificate, DeviceId, &str, u8) -> LinkConfig {
    match kind {
        TransportKind::DataChannel => config,
        TransportKind::Quic => quic_config,
    }
}

/// One side of the drive loop.
struct Side {
    link: Link,
    addr: SocketAddr,
    timeout: Instant,
    candidates: Vec<Candidate>,
    opened_at: Option<Instant>,
    authenticated: bool,
    lost: Option<(LinkError, Instant)>,
    received: Vec<Vec<u8>>,
    received_bytes: usize,
    hasher: Sha256,
    /// Keep messages (small tests) or only hash them (bulk).
    keep_messages: bool,
}

impl Side {
    fn new(link: Link, addr: &str, now: Instant) -> Self {
        Self {
            link,
            addr: addr.parse().unwrap(),
            timeout: now,
            candidates: Vec::new(),
            opened_at: None,
            authenticated: false,
            lost: None,
            received: Vec::new(),
            received_bytes: 0,
            hasher: Sha256::new(),
            keep_messages: true,
        }
    }

    /// Drains the link's outputs into the network and this side's records.
    fn drain(&mut self, net: &mut SimNet, now: Instant) {
        loop {
            match self.link.poll_output() {
                Output::Transmit(t) => {
                    assert_eq!(t.from, self.addr, "sent from a socket it was not given");
                    net.send(t, now);
                }
                Output::Event(Event::LocalCandidate(c)) => self.candidates.push(c),
                Output::Event(Event::Authenticated) => self.authenticated = true,
                Output::Event(Event::ChannelOpen) => self.opened_at = Some(now),
                Output::Event(Event::Message(m)) => {
                    self.received_bytes += m.len();
                    self.hasher.update(&m);
                    if self.keep_messages {
                        self.received.push(m);
                    }
                }
                Output::Event(Event::Lost(e)) => self.lost = Some((e, now)),
                Output::Timeout(t) => {
                    self.timeout = t;
                    return;
                }
            }
        }
    }
}

struct World {
    /// When the descriptions were exchanged.
    start: Instant,
    now: Instant,
    net: SimNet,
    a: Side,
    b: Side,
    steps: u64,
    first_bytes: FirstBytes,
}

/// Delivered datagrams by RFC 9443's first-byte ranges.
#[derive(Debug, Default)]
struct FirstBytes {
    stun: u64,
    dtls: u64,
    quic: u64,
    other: u64,
}

impl FirstBytes {
    fn record(&mut self, bytes: &[u8]) {
        match bytes.first() {
            Some(0..=3) => self.stun += 1,
            Some(20..=63) => self.dtls += 1,
            Some(64..=127 | 192..=255) => self.quic += 1,
            _ => self.other += 1,
        }
    }
}

/// Offers from A, answers from B, candidates trickled both ways: the signaling that
/// negotiation would carry, done at once. On the data channel.
fn connect_pair(conditions: Conditions, seed: u64) -> World {
    connect_pair_on(conditions, seed, TransportKind::DataChannel)
}

/// [`connect_pair`] with both ends offering `kind`.
fn connect_pair_on(conditions: Conditions, seed: u64, kind: TransportKind) -> World {
    let ca = certificate();
    let cb = certificate();
    let now = Instant::now();
    let make = config_for(kind);
    let (a, offer) = Link::offer(make(&ca, device_id(&cb), A_ADDR, 1), now).unwrap();
    let (b, answer) = Link::answer(make(&cb, device_id(&ca), B_ADDR, 2), &offer, now).unwrap();
    let mut world = World {
        start: now,
        now,
        net: SimNet::new(conditions, seed),
        a: Side::new(a, A_ADDR, now),
        b: Side::new(b, B_ADDR, now),
        steps: 0,
        first_bytes: FirstBytes::default(),
    };
    world.a.link.apply_answer(&answer, now).unwrap();
    world
}

impl World {
    /// Runs until `done` holds, at most `limit` of virtual time (and a step bound).
    fn run(&mut self, limit: Duration, mut done: impl FnMut(&mut World) -> bool) -> bool {
        let deadline = self.now + limit;
        loop {
            self.steps += 1;
            assert!(self.steps < 20_000_000, "drive loop did not settle");
            self.a.drain(&mut self.net, self.now);
            self.b.drain(&mut self.net, self.now);
            // Trickle: what one side gathered goes to the other.
            for c in std::mem::take(&mut self.a.candidates) {
                let _ = self.b.link.add_remote_candidate(&c, self.now);
            }
            for c in std::mem::take(&mut self.b.candidates) {
                let _ = self.a.link.add_remote_candidate(&c, self.now);
            }
            if done(self) {
                return true;
            }
            self.a.drain(&mut self.net, self.now);
            self.b.drain(&mut self.net, self.now);
            let mut next = self.a.timeout.min(self.b.timeout);
            if let Some(t) = self.net.next_arrival() {
                next = next.min(t);
            }
            if next > deadline {
                return false;
            }
            self.now = self.now.max(next);
            while let Some(d) = self.net.pop_due(self.now) {
                let side = if d.to == self.a.addr {
                    &mut self.a
                } else {
                    &mut self.b
                };
                self.first_bytes.record(&d.bytes);
                side.link.handle_input(
                    Input::Datagram {
                        from: d.from,
                        to: d.to,
                        ecn: None,
                        bytes: &d.bytes,
                    },
                    self.now,
                );
                side.drain(&mut self.net, self.now);
            }
            if self.a.timeout <= self.now {
                self.a.link.handle_input(Input::Timeout, self.now);
            }
            if self.b.timeout <= self.now {
                self.b.link.handle_input(Input::Timeout, self.now);
            }
        }
    }

    fn open(&mut self) {
        let opened = self.run(Duration::from_secs(10), |w| {
            w.a.opened_at.is_some() && w.b.opened_at.is_some()
        });
        assert!(
            opened,
            "not open: a lost {:?}, b lost {:?}",
            self.a.lost, self.b.lost
        );
    }
}

#[test]
fn two_links_connect_authenticate_and_exchange_messages() {
    let mut w = connect_pair(Conditions::gigabit(), 1);
    w.open();
    assert!(w.a.authenticated && w.b.authenticated);
    let elapsed = w.a.opened_at.unwrap().max(w.b.opened_at.unwrap()) - w.start;
    println!("descriptions to channel open (ICE + DTLS + SCTP), virtual time: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(100), "{elapsed:?}");
    // Both directions; an empty message survives as empty (PPID 57).
    let now = w.now;
    w.a.link.send(b"hello", now).unwrap();
    w.a.link.send(b"", now).unwrap();
    w.b.link.send(&vec![7u8; 200_000], now).unwrap();
    assert!(w.run(Duration::from_secs(5), |w| w.b.received.len() == 2
        && w.a.received.len() == 1));
    assert_eq!(w.b.received, vec![b"hello".to_vec(), Vec::new()]);
    assert_eq!(w.a.received[0], vec![7u8; 200_000]);
    // Both fsnode ends offer RFC 9653 zero checksum over DTLS, so it is in use.
    assert!(w.a.link.uses_zero_checksum() && w.b.link.uses_zero_checksum());
    assert_eq!(w.a.link.sctp_mtu(), 1472 - DTLS_RECORD_OVERHEAD);
    // Candidates carried the data m-line's mid and index (spec 3.2).
    assert!(w.a.lost.is_none() && w.b.lost.is_none());
}

/// Small messages queued together share SCTP packets: 40 messages of 100 bytes sent as one
/// batch take a fraction of the datagrams that 40 single sends take, arrive in order, and a
/// batch stops at the send-buffer limit, handing back the rest in order.
#[test]
fn a_batch_of_small_messages_shares_packets() {
    let mut w = connect_pair(Conditions::gigabit(), 5);
    w.open();
    let messages =
        |tag: u8| -> Vec<Vec<u8>> { (0..40u8).map(|i| [tag, i, 0, 0].repeat(25)).collect() };
    let before = w.a.link.stats().datagrams_out;
    let now = w.now;
    for m in messages(1) {
        w.a.link.send(&m, now).unwrap();
    }
    assert!(w.run(Duration::from_secs(5), |w| w.b.received.len() == 40));
    let one_by_one = w.a.link.stats().datagrams_out - before;
    let before = w.a.link.stats().datagrams_out;
    let now = w.now;
    let left =
        w.a.link
            .send_batch(messages(2).into(), sessions::SEND_BUFFER_LIMIT, now);
    assert!(left.is_empty());
    assert!(w.run(Duration::from_secs(5), |w| w.b.received.len() == 80));
    let batched = w.a.link.stats().datagrams_out - before;
    println!("40 x 100 bytes: {one_by_one} datagrams one by one, {batched} as one batch");
    assert!(batched * 4 <= one_by_one, "{batched} vs {one_by_one}");
    assert_eq!(w.b.received[40..], messages(2)[..]);
    // A limit of 250 bytes takes three messages of 100 (each counted before the next).
    let now = w.now;
    let left = w.a.link.send_batch(messages(3).into(), 250, now);
    assert_eq!(Vec::from(left), messages(3)[3..].to_vec());
    assert!(w.run(Duration::from_secs(5), |w| w.b.received.len() == 83));
    assert_eq!(w.b.received[80..], messages(3)[..3]);
}

#[test]
fn candidates_name_the_mid_and_only_the_given_addresses() {
    let ca = certificate();
    let cb = certificate();
    let now = Instant::now();
    let (mut a, offer) = Link::offer(config(&ca, device_id(&cb), A_ADDR, 1), now).unwrap();
    let mut candidates = Vec::new();
    while let Output::Event(Event::LocalCandidate(c)) = a.poll_output() {
        candidates.push(c);
    }
    assert_eq!(candidates.len(), 2, "{candidates:?}");
    assert!(candidates[0].candidate.starts_with("candidate:"));
    assert!(
        candidates[0]
            .candidate
            .contains(" 10.77.0.1 40001 typ host")
    );
    assert_eq!(candidates[1].candidate, "", "end of candidates");
    for c in &candidates {
        assert_eq!(c.sdp_mid.as_deref(), Some("0"));
        assert_eq!(c.sdp_mline_index, Some(0));
    }
    assert!(!offer.contains(".local"));
    // The offer's fingerprint is our device id (spec 1).
    assert_eq!(
        crate::core::sdp::sha256_fingerprints(&offer).unwrap(),
        vec![device_id(&ca)]
    );
    // A bad or mDNS candidate is an error for the log, not a panic.
    let (mut b, _) = Link::answer(config(&cb, device_id(&ca), B_ADDR, 2), &offer, now).unwrap();
    for bad in [
        "candidate:x",
        "candidate:1 1 udp 1 host.local 9 typ host",
        "🙂",
    ] {
        let bad = Candidate {
            candidate: bad.into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        };
        assert!(b.add_remote_candidate(&bad, now).is_err());
    }
}

#[test]
fn same_seeds_give_the_same_descriptions() {
    let ca = certificate();
    let cb = certificate();
    let now = Instant::now();
    let (_, one) = Link::offer(config(&ca, device_id(&cb), A_ADDR, 9), now).unwrap();
    let (_, two) = Link::offer(config(&ca, device_id(&cb), A_ADDR, 9), now).unwrap();
    let (_, three) = Link::offer(config(&ca, device_id(&cb), A_ADDR, 10), now).unwrap();
    assert_eq!(one, two);
    assert_ne!(one, three);
}

#[test]
fn a_description_naming_another_device_is_refused() {
    let ca = certificate();
    let cb = certificate();
    let stranger = certificate();
    let now = Instant::now();
    let (_, offer) = Link::offer(config(&ca, device_id(&cb), A_ADDR, 1), now).unwrap();
    let refused = Link::answer(config(&cb, device_id(&stranger), B_ADDR, 2), &offer, now);
    assert_eq!(
        refused.err(),
        Some(LinkError::DescriptionFingerprint {
            expected: device_id(&stranger),
            got: device_id(&ca),
        })
    );
}

/// An impostor copies the real device's fingerprint into its offer but holds another key:
/// DTLS refuses it with a typed error, and nothing opens.
#[test]
fn a_dtls_certificate_other_than_the_expected_device_is_a_typed_error() {
    let real = certificate();
    let impostor = certificate();
    let cb = certificate();
    let now = Instant::now();
    let (a, offer) = Link::offer(config(&impostor, device_id(&cb), A_ADDR, 1), now).unwrap();
    let hex = |c: &rtc_dtls::crypto::Certificate| {
        Sha256::digest(c.certificate[0].as_ref())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let forged = offer.replace(&hex(&impostor), &hex(&real));
    assert_ne!(forged, offer);
    let (b, answer) = Link::answer(config(&cb, device_id(&real), B_ADDR, 2), &forged, now).unwrap();
    let mut w = World {
        start: now,
        now,
        net: SimNet::new(Conditions::gigabit(), 3),
        a: Side::new(a, A_ADDR, now),
        b: Side::new(b, B_ADDR, now),
        steps: 0,
        first_bytes: FirstBytes::default(),
    };
    w.a.link.apply_answer(&answer, now).unwrap();
    assert!(w.run(Duration::from_secs(10), |w| w.b.lost.is_some()));
    assert_eq!(
        w.b.lost.as_ref().map(|(e, _)| e.clone()),
        Some(LinkError::FingerprintMismatch {
            expected: device_id(&real),
            got: device_id(&impostor),
        })
    );
    assert!(w.b.opened_at.is_none() && !w.b.authenticated);
    assert!(w.a.opened_at.is_none());
}

/// CPU time of this thread: the simulation (both links, the network) runs on it alone.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Moves `total` bytes A -> B in 128 KiB messages of seeded random content; returns the
/// virtual-time goodput in MB/s from channel open to the last byte.
fn bulk(conditions: Conditions, seed: u64, total: usize, kind: TransportKind) -> (f64, World) {
    let mut w = connect_pair_on(conditions, seed, kind);
    assert_eq!(w.a.link.transport(), Some(kind));
    w.b.keep_messages = false;
    w.open();
    let start = w.now;
    let cpu_start = thread_cpu();
    let mut content = StdRng::seed_from_u64(seed);
    let mut sent = 0usize;
    let mut sender_hash = Sha256::new();
    // QUIC's opening frame arrives first, as a message of its own.
    let opening = if kind == TransportKind::Quic {
        quic::opening_frame()
    } else {
        Vec::new()
    };
    sender_hash.update(&opening);
    let total_received = total + opening.len();
    let message = 128 * 1024;
    let mut pending: Option<Vec<u8>> = None;
    let finished = w.run(Duration::from_secs(120), |w| {
        let now = w.now;
        while sent < total {
            let chunk = pending.take().unwrap_or_else(|| {
                let mut chunk = vec![0u8; message.min(total - sent)];
                content.fill_bytes(&mut chunk);
                chunk
            });
            if w.a.link.buffered_amount() + chunk.len() > 2 * 1024 * 1024 {
                pending = Some(chunk);
                break;
            }
            match w.a.link.send(&chunk, now) {
                Ok(()) => {
                    sender_hash.update(&chunk);
                    sent += chunk.len();
                }
                Err(SendError::BufferFull) => {
                    pending = Some(chunk);
                    break;
                }
                Err(e) => panic!("send: {e:?}"),
            }
        }
        w.b.received_bytes >= total_received || w.a.lost.is_some() || w.b.lost.is_some()
    });
    assert!(
        finished,
        "stalled at {} of {total} bytes",
        w.b.received_bytes
    );
    assert!(
        w.a.lost.is_none() && w.b.lost.is_none(),
        "{:?} {:?}",
        w.a.lost,
        w.b.lost
    );
    assert_eq!(w.b.received_bytes, total_received);
    assert_eq!(
        std::mem::take(&mut w.b.hasher).finalize(),
        sender_hash.finalize(),
        "bytes differ"
    );
    let seconds = (w.now - start).as_secs_f64();
    let cpu = (thread_cpu() - cpu_start).as_secs_f64();
    println!(
        "  CPU: {:.2} CPU-s per GiB for both links ({kind}), the simulated network and the \
         test's content generation and hashing (no syscalls; this build's fsnode code is \
         unoptimised, its dependencies opt-level 2)",
        cpu / (total as f64 / (1u64 << 30) as f64)
    );
    (total as f64 / seconds / 1e6, w)
}

#[test]
fn thirty_two_mib_arrive_byte_identical_at_0_1_and_5_percent_loss() {
    let total = 32 << 20;
    for loss in [0.0, 0.01, 0.05] {
        let conditions = Conditions {
            loss,
            ..Conditions::gigabit()
        };
        let (goodput, w) = bulk(conditions, 7, total, TransportKind::DataChannel);
        println!(
            "link goodput, gigabit 0.2 ms RTT, loss {:.0} % each way: {goodput:.1} MB/s \
             (virtual time; {} datagrams, {} lost)",
            loss * 100.0,
            w.net.stats.sent,
            w.net.stats.lost
        );
        let floor = if loss == 0.0 {
            80.0
        } else if loss <= 0.01 {
            30.0
        } else {
            10.0
        };
        assert!(goodput > floor, "loss {loss}: {goodput:.1} MB/s");
    }
}

#[test]
fn reordering_and_duplication_do_not_corrupt_or_stall() {
    let conditions = Conditions {
        loss: 0.01,
        duplicate: 0.02,
        reorder: 0.05,
        ..Conditions::gigabit()
    };
    let (goodput, w) = bulk(conditions, 11, 4 << 20, TransportKind::DataChannel);
    assert!(w.net.stats.duplicated > 0 && w.net.stats.reordered > 0);
    println!("link goodput with 1 % loss, 2 % duplication, 5 % reordering: {goodput:.1} MB/s");
}

/// A cut longer than ICE's consent budget: both ends report the session lost, within the
/// disconnected timeout (plus a keepalive interval) of the cut.
#[test]
fn a_cut_link_is_lost_on_both_sides() {
    let mut w = connect_pair(Conditions::gigabit(), 5);
    w.open();
    let cut_at = w.now;
    w.net.cut(cut_at, Duration::from_secs(60));
    assert!(w.run(Duration::from_secs(30), |w| w.a.lost.is_some()
        && w.b.lost.is_some()));
    for (error, at) in [w.a.lost.clone().unwrap(), w.b.lost.clone().unwrap()] {
        assert_eq!(error, LinkError::IceState("disconnected"));
        let after = at - cut_at;
        assert!(
            after <= ICE_DISCONNECTED_TIMEOUT + 2 * ICE_KEEPALIVE_INTERVAL,
            "{after:?}"
        );
    }
}

/// A short cut mid-transfer (shorter than ICE's budget) only delays the bytes.
#[test]
fn a_short_cut_mid_transfer_recovers() {
    let conditions = Conditions::gigabit();
    let mut w = connect_pair(conditions, 13);
    w.b.keep_messages = false;
    w.open();
    let now = w.now;
    w.net
        .cut(now + Duration::from_millis(5), Duration::from_secs(2));
    let total = 4 << 20;
    let mut sent = 0;
    assert!(w.run(Duration::from_secs(30), |w| {
        while sent < total && w.a.link.buffered_amount() < 1 << 20 {
            let now = w.now;
            w.a.link.send(&[0x42; 65536], now).unwrap();
            sent += 65536;
        }
        w.b.received_bytes >= total
    }));
    assert!(w.a.lost.is_none() && w.b.lost.is_none());
    assert!(w.net.stats.cut > 0);
}

#[test]
fn spec5_larger_datagrams_only_when_both_advertise() {
    let ca = certificate();
    let cb = certificate();
    let now = Instant::now();
    let big = |c: &rtc_dtls::crypto::Certificate, peer, addr, seed, n| LinkConfig {
        advertise_max_datagram: n,
        path_max_datagram: 65507,
        ..config(c, peer, addr, seed)
    };
    let (mut a, offer) = Link::offer(big(&ca, device_id(&cb), A_ADDR, 1, Some(9000)), now).unwrap();
    assert!(offer.contains("a=x-fsnode-max-datagram:9000\r\n"));
    let (b, answer) = Link::answer(
        big(&cb, device_id(&ca), B_ADDR, 2, Some(16000)),
        &offer,
        now,
    )
    .unwrap();
    a.apply_answer(&answer, now).unwrap();
    assert_eq!(a.sctp_mtu(), 9000 - DTLS_RECORD_OVERHEAD);
    assert_eq!(b.sctp_mtu(), 9000 - DTLS_RECORD_OVERHEAD);
    // Without the peer's attribute: the default size, whatever the path.
    let (_, plain_answer) =
        Link::answer(big(&cb, device_id(&ca), B_ADDR, 2, None), &offer, now).unwrap();
    let (mut a2, _) = Link::offer(big(&ca, device_id(&cb), A_ADDR, 1, Some(9000)), now).unwrap();
    a2.apply_answer(&plain_answer, now).unwrap();
    assert_eq!(a2.sctp_mtu(), DEFAULT_MAX_DATAGRAM - DTLS_RECORD_OVERHEAD);
}

/// Spec 4: a peer may send us messages up to the max-message-size *we* advertise, whatever it
/// advertised for itself; what we send it stays within its own.
#[test]
fn each_side_sends_within_the_others_max_message_size() {
    let ca = certificate();
    let cb = certificate();
    let now = Instant::now();
    let (a, offer) = Link::offer(config(&ca, device_id(&cb), A_ADDR, 1), now).unwrap();
    let small = LinkConfig {
        max_message_size: 64 * 1024,
        ..config(&cb, device_id(&ca), B_ADDR, 2)
    };
    let (b, answer) = Link::answer(small, &offer, now).unwrap();
    assert!(answer.contains("a=max-message-size:65536\r\n"));
    let mut w = World {
        start: now,
        now,
        net: SimNet::new(Conditions::gigabit(), 17),
        a: Side::new(a, A_ADDR, now),
        b: Side::new(b, B_ADDR, now),
        steps: 0,
        first_bytes: FirstBytes::default(),
    };
    w.a.link.apply_answer(&answer, now).unwrap();
    w.open();
    assert_eq!(w.a.link.max_message_size(), 64 * 1024);
    assert_eq!(w.b.link.max_message_size(), MAX_MESSAGE_SIZE as usize);
    let now = w.now;
    assert!(matches!(
        w.a.link.send(&vec![1; 64 * 1024 + 1], now),
        Err(SendError::TooLarge { .. })
    ));
    w.b.link.send(&vec![2; 128 * 1024], now).unwrap();
    assert!(w.run(Duration::from_secs(5), |w| !w.a.received.is_empty()));
    assert_eq!(w.a.received[0], vec![2; 128 * 1024]);
}

// ---- QUIC (spec 6) ----

/// The first datagram `side` sends whose first byte says QUIC, captured from a fresh pair.
fn first_quic_datagram_of_client() -> (Vec<u8>, Vec<u8>) {
    let mut w = connect_pair_on(Conditions::gigabit(), 3, TransportKind::Quic);
    let mut captured = None;
    let limit = w.now + Duration::from_secs(5);
    while captured.is_none() && w.now < limit {
        w.a.drain(&mut w.net, w.now);
        for c in std::mem::take(&mut w.a.candidates) {
            let _ = w.b.link.add_remote_candidate(&c, w.now);
        }
        for c in std::mem::take(&mut w.b.candidates) {
            let _ = w.a.link.add_remote_candidate(&c, w.now);
        }
        w.b.drain(&mut w.net, w.now);
        let next = [
            w.a.timeout,
            w.b.timeout,
            w.net.next_arrival().unwrap_or(limit),
        ]
        .into_iter()
        .min()
        .unwrap();
        w.now = w.now.max(next);
        while let Some(d) = w.net.pop_due(w.now) {
            if d.from == w.a.addr && matches!(d.bytes.first(), Some(192..=255)) {
                captured = Some(d.bytes.clone());
            }
            let side = if d.to == w.a.addr { &mut w.a } else { &mut w.b };
            side.link.handle_input(
                Input::Datagram {
                    from: d.from,
                    to: d.to,
                    ecn: None,
                    bytes: &d.bytes,
                },
                w.now,
            );
        }
        for side in [&mut w.a, &mut w.b] {
            if side.timeout <= w.now {
                side.link.handle_input(Input::Timeout, w.now);
            }
        }
    }
    let initial = captured.expect("the client sent a QUIC Initial");
    // The offer the server answered, for a fresh server that has not run ICE.
    (initial, Vec::new())
}

/// Two fsnode links that both offer `a=x-fsnode-quic:1` run QUIC: the channel opens, the peer
/// is authenticated, messages of every size go both ways in order (an empty one included), and
/// every datagram on the wire starts with a byte of STUN's or QUIC's range (RFC 9443; no QUIC
/// bit greasing).
#[test]
fn two_quic_links_connect_authenticate_and_exchange_messages() {
    let mut w = connect_pair_on(Conditions::gigabit(), 1, TransportKind::Quic);
    w.open();
    assert_eq!(w.a.link.transport(), Some(TransportKind::Quic));
    assert_eq!(w.b.link.transport(), Some(TransportKind::Quic));
    assert!(w.a.authenticated && w.b.authenticated);
    let elapsed = w.a.opened_at.unwrap().max(w.b.opened_at.unwrap()) - w.start;
    println!("descriptions to channel open (ICE + QUIC), virtual time: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(100), "{elapsed:?}");
    let now = w.now;
    w.a.link.send(b"hello", now).unwrap();
    w.a.link.send(b"", now).unwrap();
    w.b.link.send(&vec![7u8; 200_000], now).unwrap();
    w.b.link.send(b"after", now).unwrap();
    assert!(w.run(Duration::from_secs(5), |w| w.b.received.len() == 3
        && w.a.received.len() == 2));
    // The server's first message is the client's opening frame (ignored by the core).
    assert_eq!(w.b.received[0], quic::opening_frame());
    assert_eq!(w.b.received[1..], [b"hello".to_vec(), Vec::new()]);
    assert_eq!(w.a.received, vec![vec![7u8; 200_000], b"after".to_vec()]);
    assert_eq!(
        w.first_bytes.dtls + w.first_bytes.other,
        0,
        "{:?}",
        w.first_bytes
    );
    assert!(w.first_bytes.quic > 0 && w.first_bytes.stun > 0);
    assert!(w.a.lost.is_none() && w.b.lost.is_none());
    // The opening frame is one CBOR `progress` naming a transfer no one has.
    assert_eq!(
        crate::core::transfer::decode(&quic::opening_frame()).unwrap(),
        Some(crate::core::transfer::Message::Progress {
            id: quic::OPENING_ID,
            next: 0
        })
    );
}

/// QUIC only when both descriptions carry the attribute: an offer without it (a browser,
/// aiortc, fsnode with QUIC off) or an answer without it gives the data channel, and the data
/// channel still opens.
#[test]
fn quic_runs_only_when_offer_and_answer_both_carry_the_attribute() {
    let ca = certificate();
    let cb = certificate();
    let now = Instant::now();
    for (a_quic, b_quic) in [(true, false), (false, true), (true, true), (false, false)] {
        let make = |c, peer, addr, seed, on: bool| {
            if on {
                quic_config(c, peer, addr, seed)
            } else {
                config(c, peer, addr, seed)
            }
        };
        let (a, offer) = Link::offer(make(&ca, device_id(&cb), A_ADDR, 1, a_quic), now).unwrap();
        assert_eq!(offer.contains("a=x-fsnode-quic:1\r\n"), a_quic);
        assert!(offer.contains("a=sctp-port:5000") && offer.contains("a=fingerprint:sha-256"));
        let (b, answer) =
            Link::answer(make(&cb, device_id(&ca), B_ADDR, 2, b_quic), &offer, now).unwrap();
        assert_eq!(answer.contains("a=x-fsnode-quic:1\r\n"), b_quic);
        let mut w = World {
            start: now,
            now,
            net: SimNet::new(Conditions::gigabit(), 4),
            a: Side::new(a, A_ADDR, now),
            b: Side::new(b, B_ADDR, now),
            steps: 0,
            first_bytes: FirstBytes::default(),
        };
        w.a.link.apply_answer(&answer, now).unwrap();
        w.open();
        let want = if a_quic && b_quic {
            TransportKind::Quic
        } else {
            TransportKind::DataChannel
        };
        assert_eq!(w.a.link.transport(), Some(want), "{a_quic} {b_quic}");
        assert_eq!(w.b.link.transport(), Some(want), "{a_quic} {b_quic}");
    }
}

#[test]
fn quic_moves_32_mib_byte_identical_at_0_1_and_5_percent_loss() {
    let total = 32 << 20;
    for loss in [0.0, 0.01, 0.05] {
        let conditions = Conditions {
            loss,
            ..Conditions::gigabit()
        };
        let (goodput, w) = bulk(conditions, 7, total, TransportKind::Quic);
        println!(
            "QUIC link goodput, gigabit 0.2 ms RTT, loss {:.0} % each way: {goodput:.1} MB/s \
             (virtual time; {} datagrams, {} lost)",
            loss * 100.0,
            w.net.stats.sent,
            w.net.stats.lost
        );
        // Far above the data channel's floors at loss (80 / 30 / 10): QUIC keeps most of
        // the rate.
        let floor = if loss == 0.0 {
            80.0
        } else if loss <= 0.01 {
            60.0
        } else {
            40.0
        };
        assert!(goodput > floor, "loss {loss}: {goodput:.1} MB/s");
    }
}

#[test]
fn quic_survives_reordering_and_duplication() {
    let conditions = Conditions {
        loss: 0.01,
        duplicate: 0.02,
        reorder: 0.05,
        ..Conditions::gigabit()
    };
    let (goodput, w) = bulk(conditions, 11, 4 << 20, TransportKind::Quic);
    assert!(w.net.stats.duplicated > 0 && w.net.stats.reordered > 0);
    println!("QUIC goodput with 1 % loss, 2 % duplication, 5 % reordering: {goodput:.1} MB/s");
}

/// Batches of QUIC datagrams (one transmit, several segments) become separate datagrams on the
/// wire, each within the path.
#[test]
fn quic_hands_out_batches_of_datagrams() {
    let mut w = connect_pair_on(Conditions::gigabit(), 9, TransportKind::Quic);
    w.open();
    let now = w.now;
    let mut batches = 0;
    w.a.link.send(&vec![3u8; 200_000], now).unwrap();
    loop {
        match w.a.link.poll_output() {
            Output::Transmit(t) => {
                if let Some(size) = t.segment_size {
                    batches += 1;
                    assert!(t.bytes.len() > size && size <= 1472);
                }
                w.net.send(t, now);
            }
            Output::Event(_) => {}
            Output::Timeout(t) => {
                w.a.timeout = t;
                break;
            }
        }
    }
    assert!(batches > 0, "no batched transmit");
    assert!(w.run(Duration::from_secs(5), |w| w.b.received.len() == 2));
    assert_eq!(w.net.stats.too_big, 0);
}

/// A cut longer than ICE's consent budget ends a QUIC session on both sides as it ends a data
/// channel: ICE's disconnected state, not QUIC's longer idle timeout.
#[test]
fn a_cut_quic_link_is_lost_on_both_sides() {
    let mut w = connect_pair_on(Conditions::gigabit(), 5, TransportKind::Quic);
    w.open();
    let cut_at = w.now;
    w.net.cut(cut_at, Duration::from_secs(60));
    assert!(w.run(Duration::from_secs(30), |w| w.a.lost.is_some()
        && w.b.lost.is_some()));
    for (error, at) in [w.a.lost.clone().unwrap(), w.b.lost.clone().unwrap()] {
        assert_eq!(error, LinkError::IceState("disconnected"));
        assert!(at - cut_at <= ICE_DISCONNECTED_TIMEOUT + 2 * ICE_KEEPALIVE_INTERVAL);
    }
}

#[test]
fn a_short_cut_mid_quic_transfer_recovers() {
    let mut w = connect_pair_on(Conditions::gigabit(), 13, TransportKind::Quic);
    w.b.keep_messages = false;
    w.open();
    let now = w.now;
    w.net
        .cut(now + Duration::from_millis(5), Duration::from_secs(2));
    let total = 4 << 20;
    let mut sent = 0;
    assert!(w.run(Duration::from_secs(30), |w| {
        while sent < total && w.a.link.buffered_amount() < 1 << 20 {
            let now = w.now;
            w.a.link.send(&[0x42; 65536], now).unwrap();
            sent += 65536;
        }
        // The opening frame arrives too.
        w.b.received_bytes >= total + quic::opening_frame().len()
    }));
    assert!(w.a.lost.is_none() && w.b.lost.is_none());
    assert!(w.net.stats.cut > 0);
}

/// A server with something to send and a client with nothing: the client's opening frame
/// opens stream 0, so the server's message arrives although the client never sends one.
#[test]
fn a_quic_server_can_send_first() {
    let mut w = connect_pair_on(Conditions::gigabit(), 21, TransportKind::Quic);
    w.open();
    let now = w.now;
    w.b.link.send(b"from the server", now).unwrap();
    assert!(w.run(Duration::from_secs(2), |w| !w.a.received.is_empty()));
    assert_eq!(w.a.received, vec![b"from the server".to_vec()]);
}

/// An independent client that does not send the opening frame: the server's channel opens with
/// the client's first real message; if none comes within 5 s of ICE selecting a pair, the
/// server gives the session up with the error that makes `Sessions` fall back to the data
/// channel (it never waits forever).
#[test]
fn a_quic_server_copes_with_a_client_that_sends_no_opening_frame() {
    // The client sends a message later: the server opens then.
    let mut w = connect_pair_on(Conditions::gigabit(), 22, TransportKind::Quic);
    w.a.link.skip_opening_frame();
    assert!(w.run(Duration::from_secs(2), |w| w.a.opened_at.is_some()));
    assert!(!w.run(Duration::from_millis(500), |w| w.b.opened_at.is_some()));
    let later = w.now;
    w.a.link.send(b"first", later).unwrap();
    assert!(w.run(Duration::from_secs(1), |w| w.b.opened_at.is_some()
        && !w.b.received.is_empty()));
    assert!(w.b.opened_at.unwrap() >= later);
    assert_eq!(w.b.received, vec![b"first".to_vec()]);
    let now = w.now;
    w.b.link.send(b"answer", now).unwrap();
    assert!(w.run(Duration::from_secs(1), |w| !w.a.received.is_empty()));

    // The client never sends: the server's channel never opens, and it gives up at 5 s.
    let mut w = connect_pair_on(Conditions::gigabit(), 23, TransportKind::Quic);
    w.a.link.skip_opening_frame();
    assert!(w.run(Duration::from_secs(10), |w| w.b.lost.is_some()));
    let (error, at) = w.b.lost.clone().unwrap();
    assert_eq!(error, LinkError::QuicTimeout("stream 0 was not opened"));
    assert!(error.is_quic_setup_failure());
    assert!(w.b.opened_at.is_none());
    let after = at - w.start;
    assert!(
        after >= quic::OPEN_TIMEOUT && after < quic::OPEN_TIMEOUT + Duration::from_millis(200),
        "{after:?}"
    );
    // The client hears of it at once (CONNECTION_CLOSE), not after an idle timeout.
    assert!(w.run(Duration::from_millis(100), |w| w.a.lost.is_some()));
}

/// A path that drops QUIC but passes STUN (a middlebox): ICE selects a pair, the handshake
/// never completes, and both sides give the session up 5 s after the pair was selected with a
/// fallback error.
#[test]
fn a_quic_handshake_that_cannot_complete_is_lost_after_5_s() {
    let conditions = Conditions {
        block_quic: true,
        ..Conditions::gigabit()
    };
    let mut w = connect_pair_on(conditions, 31, TransportKind::Quic);
    assert!(w.run(Duration::from_secs(10), |w| w.a.lost.is_some()
        && w.b.lost.is_some()));
    for (error, at) in [w.a.lost.clone().unwrap(), w.b.lost.clone().unwrap()] {
        assert_eq!(
            error,
            LinkError::QuicTimeout("the handshake did not complete")
        );
        assert!(error.is_quic_setup_failure());
        let after = at - w.start;
        assert!(
            after >= quic::OPEN_TIMEOUT && after < quic::OPEN_TIMEOUT + Duration::from_millis(200),
            "{after:?}"
        );
    }
    assert!(w.net.stats.blocked > 0);
    assert!(!w.a.authenticated && !w.b.authenticated);
}

/// An impostor with another key, on either side of the QUIC handshake: the side that checks it
/// refuses with `FingerprintMismatch` naming both ids and never opens a channel, the impostor's
/// side is closed too, and the failure is not one that makes `Sessions` fall back. (A TLS 1.3
/// client counts its handshake done before the server has checked the client's certificate,
/// so an impostor client may believe itself open for a round trip; an honest node as the
/// server never opens, and never reads its stream.)
#[test]
fn a_quic_certificate_other_than_the_expected_device_is_a_typed_error() {
    for impostor_offers in [true, false] {
        let real = certificate();
        let impostor = certificate();
        let honest = certificate();
        let now = Instant::now();
        let hex = |c: &rtc_dtls::crypto::Certificate| {
            Sha256::digest(c.certificate[0].as_ref())
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        // The impostor writes the real device's fingerprint into its description.
        let (a, b, answer) = if impostor_offers {
            let (a, offer) =
                Link::offer(quic_config(&impostor, device_id(&honest), A_ADDR, 1), now).unwrap();
            let forged = offer.replace(&hex(&impostor), &hex(&real));
            let (b, answer) = Link::answer(
                quic_config(&honest, device_id(&real), B_ADDR, 2),
                &forged,
                now,
            )
            .unwrap();
            (a, b, answer)
        } else {
            let (a, offer) =
                Link::offer(quic_config(&honest, device_id(&real), A_ADDR, 1), now).unwrap();
            let (b, answer) = Link::answer(
                quic_config(&impostor, device_id(&honest), B_ADDR, 2),
                &offer,
                now,
            )
            .unwrap();
            (a, b, answer.replace(&hex(&impostor), &hex(&real)))
        };
        let mut w = World {
            start: now,
            now,
            net: SimNet::new(Conditions::gigabit(), 3),
            a: Side::new(a, A_ADDR, now),
            b: Side::new(b, B_ADDR, now),
            steps: 0,
            first_bytes: FirstBytes::default(),
        };
        w.a.link.apply_answer(&answer, now).unwrap();
        let (checker, impostor_side) = if impostor_offers {
            ("b", "a")
        } else {
            ("a", "b")
        };
        assert!(w.run(Duration::from_secs(10), |w| w.a.lost.is_some()
            && w.b.lost.is_some()));
        let checked = if impostor_offers { &w.b } else { &w.a };
        let error = checked.lost.clone().unwrap().0;
        assert_eq!(
            error,
            LinkError::FingerprintMismatch {
                expected: device_id(&real),
                got: device_id(&impostor),
            },
            "{checker} checks {impostor_side}"
        );
        assert!(!error.is_quic_setup_failure());
        assert!(checked.opened_at.is_none() && !checked.authenticated);
        assert!(checked.received.is_empty());
    }
}

/// QUIC datagrams before ICE selected a pair, and after it from an address ICE did not
/// validate, are dropped unread: no connection, no answer, nothing held.
#[test]
fn quic_datagrams_before_a_pair_or_from_an_unvalidated_address_are_dropped() {
    let (initial, _) = first_quic_datagram_of_client();
    let ca = certificate();
    let cb = certificate();
    let now = Instant::now();
    let (_a, offer) = Link::offer(quic_config(&ca, device_id(&cb), A_ADDR, 1), now).unwrap();
    let (mut b, _) =
        Link::answer(quic_config(&cb, device_id(&ca), B_ADDR, 2), &offer, now).unwrap();
    while let Output::Event(_) = b.poll_output() {}
    let before = b.stats().dropped;
    b.handle_input(
        Input::Datagram {
            from: A_ADDR.parse().unwrap(),
            to: B_ADDR.parse().unwrap(),
            ecn: None,
            bytes: &initial,
        },
        now,
    );
    assert_eq!(b.stats().dropped, before + 1, "before ICE selected a pair");
    assert!(
        !matches!(b.poll_output(), Output::Transmit(_)),
        "no answer to it"
    );
    // With a selected pair, from another port of the peer's address: dropped too.
    let mut w = connect_pair_on(Conditions::gigabit(), 6, TransportKind::Quic);
    w.open();
    let before = w.b.link.stats().dropped;
    let now = w.now;
    w.b.link.handle_input(
        Input::Datagram {
            from: "10.77.0.1:40999".parse().unwrap(),
            to: B_ADDR.parse().unwrap(),
            ecn: None,
            bytes: &initial,
        },
        now,
    );
    assert_eq!(w.b.link.stats().dropped, before + 1);
    // A DTLS record on a QUIC session and garbage: dropped as well, the session unharmed.
    for bytes in [&[22u8, 254, 253, 0][..], &[150u8; 40][..]] {
        w.b.link.handle_input(
            Input::Datagram {
                from: A_ADDR.parse().unwrap(),
                to: B_ADDR.parse().unwrap(),
                ecn: None,
                bytes,
            },
            now,
        );
    }
    assert_eq!(w.b.link.stats().dropped, before + 3);
    let now = w.now;
    w.a.link.send(b"still fine", now).unwrap();
    assert!(w.run(Duration::from_secs(1), |w| w.b.received.len() == 2));
    assert!(w.b.lost.is_none());
}

/// A peer that sends a stream-0 frame longer than our `a=max-message-size` (256 KiB): the
/// length is refused before its body is read or held, the connection is closed, and both
/// sides hear of it at once.
#[test]
fn an_oversized_stream_0_frame_closes_the_quic_connection() {
    let ca = certificate();
    let cb = certificate();
    let now = Instant::now();
    let (a, offer) = Link::offer(quic_config(&ca, device_id(&cb), A_ADDR, 1), now).unwrap();
    let (b, answer) =
        Link::answer(quic_config(&cb, device_id(&ca), B_ADDR, 2), &offer, now).unwrap();
    // A client that believes b takes 1 MiB messages.
    let lying = answer.replace("a=max-message-size:262144", "a=max-message-size:1048576");
    let mut w = World {
        start: now,
        now,
        net: SimNet::new(Conditions::gigabit(), 8),
        a: Side::new(a, A_ADDR, now),
        b: Side::new(b, B_ADDR, now),
        steps: 0,
        first_bytes: FirstBytes::default(),
    };
    w.a.link.apply_answer(&lying, now).unwrap();
    w.open();
    let now = w.now;
    w.a.link.send(b"fine", now).unwrap();
    w.a.link
        .send(&vec![1u8; MAX_MESSAGE_SIZE as usize + 1], now)
        .unwrap();
    assert!(w.run(Duration::from_secs(2), |w| w.a.lost.is_some()
        && w.b.lost.is_some()));
    assert_eq!(w.b.received, vec![quic::opening_frame(), b"fine".to_vec()]);
    assert_eq!(
        w.b.lost.clone().unwrap().0,
        LinkError::Frame(framing::FrameError::TooLarge {
            len: u64::from(MAX_MESSAGE_SIZE) + 1,
            max: MAX_MESSAGE_SIZE as usize
        })
    );
    assert!(
        matches!(w.a.lost.clone().unwrap().0, LinkError::Quic(ref r) if r.contains("too large"))
    );
    // What the honest sender refuses itself.
    let mut w = connect_pair_on(Conditions::gigabit(), 8, TransportKind::Quic);
    w.open();
    let now = w.now;
    assert_eq!(
        w.a.link
            .send(&vec![1u8; MAX_MESSAGE_SIZE as usize + 1], now),
        Err(SendError::TooLarge {
            len: MAX_MESSAGE_SIZE as usize + 1,
            max: MAX_MESSAGE_SIZE as usize
        })
    );
}

/// Whether a message is exactly one CBOR item is not the link's business on either transport:
/// a frame holding trailing bytes after its CBOR, or no CBOR at all, arrives as the message it
/// is, and the core closes the channel on it exactly as for a data-channel message
/// (`sim::tests::a_frame_that_is_not_one_cbor_item_ends_the_session` shows the whole path).
#[test]
fn a_frame_that_is_not_one_cbor_item_reaches_the_node_unchanged() {
    for kind in [TransportKind::Quic, TransportKind::DataChannel] {
        let mut w = connect_pair_on(Conditions::gigabit(), 41, kind);
        w.open();
        let mut trailing =
            crate::core::transfer::encode(&crate::core::transfer::Message::Progress {
                id: quic::OPENING_ID,
                next: 1,
            });
        trailing.push(0);
        let now = w.now;
        w.a.link.send(&trailing, now).unwrap();
        w.a.link.send(&[0xff, 0xff, 0x00], now).unwrap();
        let skip = usize::from(kind == TransportKind::Quic);
        assert!(w.run(Duration::from_secs(1), |w| w.b.received.len() == skip + 2));
        assert_eq!(w.b.received[skip..], [trailing, vec![0xff, 0xff, 0x00]]);
        assert!(w.b.lost.is_none());
    }
}
