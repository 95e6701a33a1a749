//! A simulated network in virtual time for link tests and the whole-node simulation:
//! datagrams between socket addresses with a serialisation rate per sender, a one-way delay,
//! and seeded loss, duplication, reordering, an MTU and cuts. Nothing here reads a clock:
//! time is what the drive loop says it is.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::Transmit;

#[derive(Clone, Debug)]
pub struct Conditions {
    /// Bytes per second each sender can put on the wire (serialisation delay).
    pub rate: f64,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by `reorder_delay` (arriving after later ones).
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Datagrams with a larger UDP payload are dropped (the path's MTU less headers).
    pub max_datagram: usize,
    /// A middlebox that drops QUIC (first byte 64-127 or 192-255) and passes STUN and DTLS.
    pub block_quic: bool,
}

impl Conditions {
    /// A switched gigabit LAN: 125 MB/s, 0.1 ms each way, nothing lost.
    pub fn gigabit() -> Self {
        Self {
            rate: 125e6,
            delay: Duration::from_micros(100),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_micros(500),
            max_datagram: 1472,
            block_quic: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

struct InFlight {
    at: Instant,
    seq: u64,
    datagram: Datagram,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    // Reversed: the heap pops the earliest arrival first, ties in send order.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub cut: u64,
    pub too_big: u64,
    /// Dropped by the QUIC-blocking middlebox.
    pub blocked: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

pub struct SimNet {
    pub conditions: Conditions,
    rng: StdRng,
    in_flight: BinaryHeap<InFlight>,
    seq: u64,
    /// When each sender's "wire" is free again.
    free_at: HashMap<SocketAddr, Instant>,
    /// Datagrams sent in `[start, end)` are dropped.
    cuts: Vec<(Instant, Instant)>,
    pub stats: NetStats,
}

impl SimNet {
    pub fn new(conditions: Conditions, seed: u64) -> Self {
        Self {
            conditions,
            rng: StdRng::seed_from_u64(seed),
            in_flight: BinaryHeap::new(),
            seq: 0,
            free_at: HashMap::new(),
            cuts: Vec::new(),
            stats: NetStats::default(),
        }
    }

    /// Nothing sent from `start` for `length` arrives.
    pub fn cut(&mut self, start: Instant, length: Duration) {
        self.cuts.push((start, start + length));
    }

    /// Puts a transmit's datagrams on the wire (a GSO batch is one datagram per segment).
    pub fn send(&mut self, transmit: Transmit, now: Instant) {
        if transmit.segment_size.is_some() {
            for datagram in transmit.datagrams() {
                self.send_one(transmit.from, transmit.to, datagram.to_vec(), now);
            }
        } else {
            self.send_one(transmit.from, transmit.to, transmit.bytes, now);
        }
    }

    fn send_one(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>, now: Instant) {
        self.stats.sent += 1;
        if self.cuts.iter().any(|(s, e)| now >= *s && now < *e) {
            self.stats.cut += 1;
            return;
        }
        if self.conditions.block_quic && matches!(bytes.first(), Some(64..=127 | 192..=255)) {
            self.stats.blocked += 1;
            return;
        }
        if bytes.len() > self.conditions.max_datagram {
            self.stats.too_big += 1;
            return;
        }
        if self.rng.random_bool(self.conditions.loss.clamp(0.0, 1.0)) {
            self.stats.lost += 1;
            return;
        }
        // IP + UDP headers on the wire.
        let wire = (bytes.len() + 28) as f64;
        let free = self.free_at.entry(from).or_insert(now);
        let start = (*free).max(now);
        let done = start + Duration::from_secs_f64(wire / self.conditions.rate);
        *free = done;
        let mut at = done + self.conditions.delay;
        if self
            .rng
            .random_bool(self.conditions.reorder.clamp(0.0, 1.0))
        {
            self.stats.reordered += 1;
            at += self.conditions.reorder_delay;
        }
        let copies = if self
            .rng
            .random_bool(self.conditions.duplicate.clamp(0.0, 1.0))
        {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let datagram = Datagram { from, to, bytes };
        for copy in 0..copies {
            self.seq += 1;
            self.in_flight.push(InFlight {
                at: at + Duration::from_micros(copy * 50),
                seq: self.seq,
                datagram: datagram.clone(),
            });
        }
    }

    pub fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.peek().map(|f| f.at)
    }

    /// The next datagram due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        if self.in_flight.peek().is_some_and(|f| f.at <= now) {
            self.stats.delivered += 1;
            return self.in_flight.pop().map(|f| f.datagram);
        }
        None
    }
}

/// A fresh self-signed DTLS certificate for a test link.
pub fn test_certificate() -> rtc_dtls::crypto::Certificate {
    let provider = rtc_crypto::default_provider().expect("the default crypto provider");
    rtc_dtls::crypto::Certificate::generate_self_signed(
        vec!["fsnode".to_owned()],
        provider.crypto(),
    )
    .expect("a self-signed certificate")
}
