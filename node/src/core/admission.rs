//! The one admission point for what unauthenticated hosts say (spec 3.4): signaling
//! connections, `hello`s, mDNS announcements and offers from devices the node does not trust.
//!
//! Anyone on the LAN can open connections and claim device ids, so everything they can make the
//! node hold or record is bounded here, whatever their rate:
//! - new signaling connections per source address ([`ConnectionBudgets`], asked by the accept
//!   loop before a connection is served);
//! - new untrusted device ids per source address, and at most [`Limits::max_untrusted`] held at
//!   once (the oldest is evicted);
//! - journaling: a sighting that changes nothing known of an untrusted device is never
//!   recorded; a change (back on the LAN, a new address, port or name) is recorded within the
//!   device's budget ([`Limits::change_burst`], then one per [`Limits::change_every`]). The
//!   latest change beyond the budget is held back in memory, one per device, and recorded when
//!   the budget allows (or at once when the operator trusts the device): mDNS reports a
//!   service again only when its records change, so a change dropped here would never come
//!   back, and a restarted device would stay lost at its old port.
//!
//! Sans-IO: time comes in as `now`, nothing here reads a clock.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{DeviceId, DeviceType};

/// Untrusted devices held at once, in memory and in the journal's state.
pub const MAX_UNTRUSTED: usize = 1024;

/// The bounds, with the defaults README.md's Limits table lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Untrusted devices held at once; a new one evicts the oldest.
    pub max_untrusted: usize,
    /// New signaling connections one address may open at once...
    pub connection_burst: u32,
    /// ...and then one per this interval.
    pub connection_every: Duration,
    /// New untrusted device ids one address may introduce at once...
    pub new_id_burst: u32,
    /// ...and then one per this interval.
    pub new_id_every: Duration,
    /// Changes of one untrusted device journaled at once (a restart costs one or two: back
    /// on the LAN, then its IPv6 addresses a moment later)...
    pub change_burst: u32,
    /// ...and then one per this interval.
    pub change_every: Duration,
    /// Source addresses whose budgets are remembered; the least recently used is forgotten.
    pub max_addresses: usize,
    /// Policy is asked about an untrusted device's offers at most once per this interval.
    pub offer_question_every: Duration,
    /// Distinct ignored (spec-breaking) announcements journaled at once...
    pub ignored_burst: u32,
    /// ...and then one per this interval (mDNS carries no trustworthy source address, so
    /// this budget is the node's, not per address).
    pub ignored_every: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_untrusted: MAX_UNTRUSTED,
            connection_burst: 64,
            connection_every: Duration::from_millis(50),
            new_id_burst: 32,
            new_id_every: Duration::from_secs(10),
            change_burst: 10,
            change_every: Duration::from_secs(360),
            max_addresses: 4096,
            offer_question_every: Duration::from_secs(60),
            ignored_burst: 64,
            ignored_every: Duration::from_secs(60),
        }
    }
}

/// A token bucket: `burst` at once, then one token per `every`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    /// When the bucket last gained a token (or was created).
    refilled_at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: burst,
            refilled_at: now,
        }
    }

    fn take(&mut self, burst: u32, every: Duration, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let every_ns = every.as_nanos().max(1);
        let gained = elapsed.as_nanos() / every_ns;
        if gained > 0 {
            let gained_u32 = u32::try_from(gained).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(gained_u32).min(burst);
            // Keep the remainder so a steady rate is not rounded down.
            let used = every.saturating_mul(gained_u32);
            self.refilled_at = if self.tokens == burst {
                now
            } else {
                self.refilled_at + used
            };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// When the next token comes, for a bucket that `take` just found empty.
    fn next_token_at(&self, every: Duration) -> Instant {
        self.refilled_at + every
    }
}

/// Per-address buckets, bounded in number (least recently used forgotten).
#[derive(Debug)]
struct PerAddress {
    buckets: HashMap<IpAddr, (Bucket, Instant)>,
    max: usize,
}

impl PerAddress {
    fn new(max: usize) -> Self {
        Self {
            buckets: HashMap::new(),
            max: max.max(1),
        }
    }

    fn take(&mut self, ip: IpAddr, burst: u32, every: Duration, now: Instant) -> bool {
        let ip = budget_key(ip);
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max {
            // Forget the address used least recently; a forgotten address starts full again,
            // which costs at most one burst per eviction.
            if let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(ip, _)| *ip)
            {
                self.buckets.remove(&oldest);
            }
        }
        let (bucket, used) = self
            .buckets
            .entry(ip)
            .or_insert_with(|| (Bucket::full(burst, now), now));
        *used = now;
        bucket.take(burst, every, now)
    }
}

/// The address a budget is kept for: an IPv4 address, or an IPv6 address's /64 (one host picks
/// any address in its /64 at will, so per-address budgets would be per-attempt).
fn budget_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// The per-address budget of new signaling connections. The accept loop asks it before it
/// serves a connection; a refused one is closed without reading a byte.
#[derive(Debug)]
pub struct ConnectionBudgets {
    limits: Limits,
    per_address: PerAddress,
    refused: u64,
}

impl ConnectionBudgets {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            per_address: PerAddress::new(limits.max_addresses),
            refused: 0,
        }
    }

    /// May `from` open one more signaling connection now?
    pub fn admit(&mut self, from: IpAddr, now: Instant) -> bool {
        let ok = self.per_address.take(
            from,
            self.limits.connection_burst,
            self.limits.connection_every,
            now,
        );
        if !ok {
            self.refused += 1;
        }
        ok
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

/// What an untrusted device was seen as (an announcement or a `hello`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub name: String,
    pub device_type: DeviceType,
    pub addresses: Vec<IpAddr>,
    pub port: u16,
}

/// Counters of what was dropped, for the operator and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Sightings of devices that were not admitted.
    pub devices: u64,
    /// Changes of held devices not journaled when they came (over the device's budget; the
    /// latest is held back), and offers not put to policy (within the minute).
    pub sightings: u64,
    /// Held devices evicted to make room for newer ones.
    pub evicted: u64,
}

#[derive(Debug)]
struct Held {
    /// Its budget of journaled changes.
    changes: Bucket,
    /// The latest change over the budget, and when the budget allows it.
    held_back: Option<(Sighting, Instant)>,
    /// When policy was last asked about an offer of it (`None`: never).
    asked_at: Option<Instant>,
}

impl Held {
    fn new(limits: &Limits, now: Instant) -> Self {
        Self {
            changes: Bucket::full(limits.change_burst, now),
            held_back: None,
            asked_at: None,
        }
    }
}

/// Untrusted devices held in memory, and the per-address budget of new ones.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    held: HashMap<DeviceId, Held>,
    /// Held devices, oldest admitted first (may name devices already removed: skipped).
    order: VecDeque<DeviceId>,
    new_ids: PerAddress,
    /// Held-back changes by when their device's budget allows them (one per device).
    due: BTreeSet<(Instant, DeviceId)>,
    /// The budget of ignored announcements journaled (`None` until the first).
    ignored: Option<Bucket>,
    dropped: Dropped,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            held: HashMap::new(),
            order: VecDeque::new(),
            new_ids: PerAddress::new(limits.max_addresses),
            due: BTreeSet::new(),
            ignored: None,
            dropped: Dropped::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Holds a device the node already knows of (from its journal, or no longer trusted)
    /// without spending any address's budget, with its whole budget of changes: its first
    /// sighting after a restart (the node's or its own) is recorded at once.
    pub fn hold_known(&mut self, id: DeviceId, now: Instant) {
        if self.held.contains_key(&id) {
            return;
        }
        self.make_room();
        self.held.insert(id.clone(), Held::new(&self.limits, now));
        self.order.push_back(id);
    }

    /// One sighting of the untrusted device `id`, coming from `from` (the source address of
    /// a connection, the announced address of an mDNS record): whether it is held (admitted).
    /// A device not held yet spends one of `from`'s new-id budget; `operator` (the operator
    /// asked for this dial) bypasses it. A device not admitted is dropped and counted.
    pub fn admit(
        &mut self,
        id: &DeviceId,
        from: Option<IpAddr>,
        operator: bool,
        now: Instant,
    ) -> bool {
        if self.held.contains_key(id) {
            return true;
        }
        let within_budget = operator
            || from.is_none_or(|ip| {
                self.new_ids
                    .take(ip, self.limits.new_id_burst, self.limits.new_id_every, now)
            });
        if !within_budget {
            self.dropped.devices += 1;
            return false;
        }
        self.make_room();
        self.held.insert(id.clone(), Held::new(&self.limits, now));
        self.order.push_back(id.clone());
        true
    }

    /// May a change of the held device `id` be journaled now? Spends one of its budget; a
    /// change over the budget is counted (and should be [`Admission::hold_back`]).
    pub fn may_journal(&mut self, id: &DeviceId, now: Instant) -> bool {
        let (burst, every) = (self.limits.change_burst, self.limits.change_every);
        let Some(held) = self.held.get_mut(id) else {
            return false;
        };
        let ok = held.changes.take(burst, every, now);
        if !ok {
            self.dropped.sightings += 1;
        }
        ok
    }

    /// Keeps `sighting`, a change of the held device `id` over its budget, to be journaled
    /// when the budget allows ([`Admission::take_due`]); it replaces a change held back before.
    pub fn hold_back(&mut self, id: &DeviceId, sighting: Sighting) {
        let every = self.limits.change_every;
        let Some(held) = self.held.get_mut(id) else {
            return;
        };
        let at = match &held.held_back {
            Some((_, at)) => *at,
            None => {
                let at = held.changes.next_token_at(every);
                self.due.insert((at, id.clone()));
                at
            }
        };
        held.held_back = Some((sighting, at));
    }

    /// Takes the change held back for `id`, if any (it is being journaled, or is moot).
    pub fn take_held_back(&mut self, id: &DeviceId) -> Option<Sighting> {
        let (sighting, at) = self.held.get_mut(id)?.held_back.take()?;
        self.due.remove(&(at, id.clone()));
        Some(sighting)
    }

    /// When a held-back change may next be journaled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// The held-back changes whose devices' budgets allow them at `now`, each spending one.
    pub fn take_due(&mut self, now: Instant) -> Vec<(DeviceId, Sighting)> {
        let (burst, every) = (self.limits.change_burst, self.limits.change_every);
        let mut due = Vec::new();
        while let Some((at, id)) = self.due.first().cloned() {
            if at > now {
                break;
            }
            self.due.remove(&(at, id.clone()));
            let Some(held) = self.held.get_mut(&id) else {
                continue;
            };
            let Some((sighting, _)) = held.held_back.take() else {
                continue;
            };
            if held.changes.take(burst, every, now) {
                due.push((id, sighting));
            } else {
                let at = held.changes.next_token_at(every).max(now);
                self.due.insert((at, id.clone()));
                held.held_back = Some((sighting, at));
            }
        }
        due
    }

    /// May policy be asked about an offer of the held device `id` now? At most once per
    /// [`Limits::offer_question_every`]: a device repeating offers on an open connection, at
    /// any rate, costs one plugin call per interval, the rest are refused outright.
    pub fn may_ask(&mut self, id: &DeviceId, now: Instant) -> bool {
        let every = self.limits.offer_question_every;
        let Some(held) = self.held.get_mut(id) else {
            return false;
        };
        let due = held
            .asked_at
            .is_none_or(|at| now.saturating_duration_since(at) >= every);
        if due {
            held.asked_at = Some(now);
        } else {
            self.dropped.sightings += 1;
        }
        due
    }

    /// May one more ignored announcement be journaled now? Beyond the budget they are
    /// counted as dropped sightings.
    pub fn may_record_ignored(&mut self, now: Instant) -> bool {
        let (burst, every) = (self.limits.ignored_burst, self.limits.ignored_every);
        let ok = self
            .ignored
            .get_or_insert_with(|| Bucket::full(burst, now))
            .take(burst, every, now);
        if !ok {
            self.dropped.sightings += 1;
        }
        ok
    }

    /// Is `id` held (admitted and not evicted)?
    pub fn holds(&self, id: &DeviceId) -> bool {
        self.held.contains_key(id)
    }

    /// `id` became trusted (or was removed): it no longer counts against the bound.
    pub fn forget(&mut self, id: &DeviceId) {
        self.remove(id);
    }

    /// Removes a held device and what it held back.
    fn remove(&mut self, id: &DeviceId) -> bool {
        let Some(held) = self.held.remove(id) else {
            return false;
        };
        if let Some((_, at)) = held.held_back {
            self.due.remove(&(at, id.clone()));
        }
        true
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Evicts the oldest held devices until one more fits.
    fn make_room(&mut self) {
        while self.held.len() >= self.limits.max_untrusted.max(1) {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.remove(&oldest) {
                self.dropped.evicted += 1;
            }
        }
        // `order` may hold ids removed by `forget`; keep it from growing past the bound.
        if self.order.len() > 2 * self.limits.max_untrusted.max(1) {
            let held = &self.held;
            self.order.retain(|id| held.contains_key(id));
        }
    }
}

#[cfg(test)]
mod tests {
    // Tests pick an arbitrary epoch for virtual time; the module itself never reads the clock.
    #![allow(clippy::disallowed_methods)]

    use super::*;

    fn id(n: u32) -> DeviceId {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        DeviceId::from_sha256(&bytes)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 77, 0, last])
    }

    #[test]
    fn connections_from_one_address_get_a_burst_then_a_steady_rate() {
        let t0 = Instant::now();
        let limits = Limits::default();
        let mut budgets = ConnectionBudgets::new(limits);
        let admitted = (0..10_000).filter(|_| budgets.admit(ip(1), t0)).count();
        assert_eq!(admitted, limits.connection_burst as usize);
        assert_eq!(budgets.refused(), 10_000 - admitted as u64);
        // Another address is not affected.
        assert!(budgets.admit(ip(2), t0));
        // One second later: 1 s / 50 ms = 20 more.
        let later = t0 + Duration::from_secs(1);
        let admitted = (0..1000).filter(|_| budgets.admit(ip(1), later)).count();
        assert_eq!(admitted, 20);
        // Idle for long: the burst again, never more.
        let much_later = t0 + Duration::from_secs(3600);
        let admitted = (0..1000)
            .filter(|_| budgets.admit(ip(1), much_later))
            .count();
        assert_eq!(admitted, limits.connection_burst as usize);
    }

    #[test]
    fn a_flood_of_random_ids_from_one_address_admits_a_burst_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut admission = Admission::default();
        let mut admitted = 0;
        for n in 0..110_000 {
            // 110,000 hellos over 11 s.
            let now = t0 + Duration::from_micros(100 * u64::from(n));
            if admission.admit(&id(n), Some(ip(9)), false, now) {
                admitted += 1;
            }
        }
        // The burst, plus one per 10 s of the 11 s.
        assert_eq!(admitted, 33);
        assert_eq!(admission.held(), 33);
        assert_eq!(admission.dropped().devices, 110_000 - 33);
        // Another host still gets in.
        assert!(admission.admit(&id(999_999), Some(ip(10)), false, t0));
    }

    fn sighting(port: u16) -> Sighting {
        Sighting {
            name: "restarting".into(),
            device_type: DeviceType::Desktop,
            addresses: vec![ip(1)],
            port,
        }
    }

    /// A device that keeps changing (restarting on a new port, or a host forging it) gets its
    /// burst of journaled changes, then one per interval; the latest change over the budget is
    /// kept, one per device, and comes out when the budget allows.
    #[test]
    fn a_held_devices_changes_get_a_burst_then_a_steady_rate_and_the_latest_is_held_back() {
        let t0 = Instant::now();
        let limits = Limits::default();
        let mut admission = Admission::default();
        assert!(admission.admit(&id(1), Some(ip(1)), false, t0));
        let journaled = (0..limits.change_burst)
            .filter(|_| admission.may_journal(&id(1), t0))
            .count();
        assert_eq!(journaled, limits.change_burst as usize);
        assert_eq!(admission.poll_timeout(), None);
        for port in 1..1000 {
            let now = t0 + Duration::from_millis(u64::from(port));
            assert!(!admission.may_journal(&id(1), now));
            admission.hold_back(&id(1), sighting(port));
        }
        assert_eq!(admission.dropped().sightings, 999);
        let due = t0 + limits.change_every;
        assert_eq!(admission.poll_timeout(), Some(due), "one entry per device");
        assert!(
            admission
                .take_due(due - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(admission.take_due(due), vec![(id(1), sighting(999))]);
        assert_eq!(admission.poll_timeout(), None);
        // That spent the interval's token.
        assert!(!admission.may_journal(&id(1), due));
        // A change held back and then taken by the operator (trust add) leaves nothing due.
        admission.hold_back(&id(1), sighting(5));
        assert_eq!(admission.take_held_back(&id(1)), Some(sighting(5)));
        assert_eq!(admission.poll_timeout(), None);
        assert!(
            admission
                .take_due(due + limits.change_every * 10)
                .is_empty()
        );
        // A device held from the journal has its whole budget.
        admission.hold_known(id(2), t0);
        assert!((0..limits.change_burst).all(|_| admission.may_journal(&id(2), t0)));
        // A device not held has none.
        assert!(!admission.may_journal(&id(3), t0));
    }

    #[test]
    fn an_evicted_device_takes_what_it_held_back_with_it() {
        let t0 = Instant::now();
        let limits = Limits {
            max_untrusted: 2,
            change_burst: 1,
            ..Limits::default()
        };
        let mut admission = Admission::new(limits);
        for n in 0..2u8 {
            assert!(admission.admit(&id(u32::from(n)), Some(ip(n)), false, t0));
            assert!(admission.may_journal(&id(u32::from(n)), t0));
            assert!(!admission.may_journal(&id(u32::from(n)), t0));
            admission.hold_back(&id(u32::from(n)), sighting(u16::from(n)));
        }
        assert_eq!(admission.due.len(), 2);
        assert!(admission.admit(&id(7), Some(ip(7)), false, t0));
        assert!(!admission.holds(&id(0)));
        assert_eq!(admission.due.len(), 1);
        admission.forget(&id(1));
        assert!(admission.due.is_empty());
        assert!(admission.take_due(t0 + limits.change_every).is_empty());
    }

    #[test]
    fn at_most_max_untrusted_are_held_and_the_oldest_goes_first() {
        let t0 = Instant::now();
        let limits = Limits {
            max_untrusted: 4,
            ..Limits::default()
        };
        let mut admission = Admission::new(limits);
        for n in 0..6u8 {
            // Each from its own address: within every budget.
            assert!(admission.admit(&id(u32::from(n)), Some(ip(n)), false, t0));
        }
        assert_eq!(admission.held(), 4);
        assert_eq!(admission.dropped().evicted, 2);
        assert!(!admission.holds(&id(0)) && !admission.holds(&id(1)));
        assert!((2..6).all(|n| admission.holds(&id(n))));
        // A trusted device leaves the bound; the order queue stays bounded under churn.
        admission.forget(&id(2));
        assert_eq!(admission.held(), 3);
        for n in 100..10_000u32 {
            admission.admit(&id(n), None, false, t0);
        }
        assert_eq!(admission.held(), 4);
        assert!(admission.order.len() <= 8);
    }

    #[test]
    fn an_ipv6_host_gets_one_budget_for_its_whole_64() {
        let t0 = Instant::now();
        let limits = Limits::default();
        let mut budgets = ConnectionBudgets::new(limits);
        let admitted = (0..1000u16)
            .filter(|n| {
                let ip: IpAddr = format!("fd00:77::{n:x}:1").parse().unwrap();
                budgets.admit(ip, t0)
            })
            .count();
        assert_eq!(admitted, limits.connection_burst as usize);
        // Another /64 is another host.
        assert!(budgets.admit("fd00:78::1".parse().unwrap(), t0));
        // An IPv4-mapped address is that IPv4 address.
        let mapped: IpAddr = "::ffff:10.77.0.1".parse().unwrap();
        assert_eq!(budget_key(mapped), ip(1));
    }

    #[test]
    fn policy_is_asked_about_a_devices_offers_once_a_minute() {
        let t0 = Instant::now();
        let mut admission = Admission::default();
        assert!(!admission.may_ask(&id(1), t0), "not held: never asked");
        admission.admit(&id(1), Some(ip(1)), false, t0);
        assert!(admission.may_ask(&id(1), t0));
        assert!((1..60).all(|s| !admission.may_ask(&id(1), t0 + Duration::from_secs(s))));
        assert!(admission.may_ask(&id(1), t0 + Duration::from_secs(60)));
    }

    #[test]
    fn remembered_addresses_are_bounded() {
        let t0 = Instant::now();
        let limits = Limits {
            max_addresses: 16,
            ..Limits::default()
        };
        let mut budgets = ConnectionBudgets::new(limits);
        for n in 0..=255u8 {
            budgets.admit(ip(n), t0);
        }
        assert_eq!(budgets.per_address.buckets.len(), 16);
    }
}
