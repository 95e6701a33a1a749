//! Browsers' `.local` ICE candidates. With their defaults, Chromium, Firefox and Safari hide a
//! host candidate's address behind a random mDNS name, `<uuid>.local`
//! (draft-ietf-rtcweb-mdns-ice-candidates), which webrtc-rs (mDNS mode off) cannot use: the
//! node then connects only through the peer-reflexive candidates the browser's checks create.
//! This piece resolves such names with the node's own mDNS daemon, which works only on the
//! interfaces the node serves (`--interface`), and hands the WebRTC adapter the candidate
//! with the address in place of the name.
//!
//! It sits where remote candidates reach the adapter (`map`, one call in the node loop):
//! a candidate whose name is known is rewritten at once; one whose name is not passes on
//! unchanged (harmless: the adapter ignores it) while the name is resolved in the
//! background, and the rewritten candidate then comes back into the core as a remote
//! candidate (`Input::Rtc`), from where it reaches the adapter like any other.
//!
//! Everything here is bounded, because candidates come from peers and the page's peers are
//! browsers: only names of the browsers' form (a UUID and `.local`, so a peer cannot make the
//! node look up and probe `nas.local`) are resolved; at most [`MAX_RESOLVING`] at once, each
//! for at most [`RESOLVE_TIMEOUT`]; at most [`MAX_WAITING_PER_NAME`] candidates wait on one
//! name; answers are cached for [`CACHE_TTL`], at most [`MAX_CACHED`] names, and failures
//! are remembered as long, so a name that does not resolve is not asked again and again;
//! only unicast, non-loopback addresses are taken.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mdns_sd::{HostnameResolutionEvent, ServiceDaemon};
use tracing::{debug, info};

use crate::core::DeviceId;
use crate::core::negotiation::{self, Action};
use crate::core::node::Input;
use crate::core::signal::Candidate;
use crate::shell::runtime::{self, Clock, SystemClock};

/// Names being resolved at once; a candidate beyond that passes on unresolved.
pub const MAX_RESOLVING: usize = 4;
/// How long one name is looked up.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Candidates kept waiting for one name (a browser signals one per component and session).
pub const MAX_WAITING_PER_NAME: usize = 4;
/// How long an answer (or a failure) is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(120);
/// Names remembered; the oldest is forgotten first.
pub const MAX_CACHED: usize = 64;

/// The mDNS name a candidate's address is, if it is of the browsers' form
/// (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.local`, any letter case), lower-cased.
pub fn browser_name(candidate: &str) -> Option<String> {
    let address = address_field(candidate)?;
    let (label, domain) = address.split_once('.')?;
    if !domain.eq_ignore_ascii_case("local") || !is_uuid(label) {
        return None;
    }
    Some(address.to_ascii_lowercase())
}

/// `candidate:<foundation> <component> <transport> <priority> <address> <port> typ ...`:
/// the address is the fifth field.
fn address_field(candidate: &str) -> Option<&str> {
    let candidate = candidate.strip_prefix("candidate:").unwrap_or(candidate);
    let mut fields = candidate.split_ascii_whitespace();
    let address = fields.nth(4)?;
    // A candidate line is short; a port and a type must follow the address.
    fields.next()?;
    (fields.next()? == "typ").then_some(address)
}

fn is_uuid(label: &str) -> bool {
    let groups: Vec<&str> = label.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The candidate with its address field replaced by `ip` (everything else as it was).
pub fn with_address(candidate: &Candidate, ip: IpAddr) -> Option<Candidate> {
    let line = &candidate.candidate;
    let address = address_field(line)?;
    // The address field's position in the line (the first occurrence past the fourth field).
    let start = line.find(&format!(" {address} "))? + 1;
    let mut rewritten = String::with_capacity(line.len());
    rewritten.push_str(&line[..start]);
    rewritten.push_str(&ip.to_string());
    rewritten.push_str(&line[start + address.len()..]);
    Some(Candidate {
        candidate: rewritten,
        ..candidate.clone()
    })
}

/// Whether a resolved address may stand for a browser's host candidate.
pub fn usable(ip: IpAddr) -> bool {
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    !(ip.is_loopback() || ip.is_multicast() || ip.is_unspecified() || broadcast)
}

/// The cache and the lookups under way (pure: time comes in as `now`).
#[derive(Default)]
pub struct Names {
    /// name -> (address, or `None` for "did not resolve"; when it was learnt)
    known: HashMap<String, (Option<IpAddr>, Instant)>,
    order: VecDeque<String>,
    /// name -> the candidates waiting for it
    resolving: HashMap<String, Vec<(DeviceId, Candidate)>>,
}

/// What to do with a `.local` candidate.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The name is known: use this address.
    Known(IpAddr),
    /// Start resolving the name (the candidate waits for it).
    Start,
    /// Nothing to do now: the name is being resolved (the candidate waits), it failed
    /// recently, or too much is under way (the candidate is dropped).
    Wait,
}

impl Names {
    pub fn lookup(
        &mut self,
        name: &str,
        peer: &DeviceId,
        candidate: &Candidate,
        now: Instant,
    ) -> Lookup {
        if let Some((answer, at)) = self.known.get(name) {
            if now.saturating_duration_since(*at) < CACHE_TTL {
                return answer.map_or(Lookup::Wait, Lookup::Known);
            }
            self.known.remove(name);
            self.order.retain(|n| n != name);
        }
        if let Some(waiting) = self.resolving.get_mut(name) {
            if waiting.len() < MAX_WAITING_PER_NAME {
                waiting.push((peer.clone(), candidate.clone()));
            }
            return Lookup::Wait;
        }
        if self.resolving.len() >= MAX_RESOLVING {
            return Lookup::Wait;
        }
        self.resolving
            .insert(name.to_owned(), vec![(peer.clone(), candidate.clone())]);
        Lookup::Start
    }

    /// A lookup ended: remembers the answer and returns the candidates that waited for it.
    pub fn resolved(
        &mut self,
        name: &str,
        answer: Option<IpAddr>,
        now: Instant,
    ) -> Vec<(DeviceId, Candidate)> {
        let waiting = self.resolving.remove(name).unwrap_or_default();
        if self.order.len() >= MAX_CACHED
            && let Some(oldest) = self.order.pop_front()
        {
            self.known.remove(&oldest);
        }
        self.order.retain(|n| n != name);
        self.order.push_back(name.to_owned());
        self.known.insert(name.to_owned(), (answer, now));
        waiting
    }
}

/// The shell piece: the node's mDNS daemon, the cache, and where rewritten candidates go.
pub struct LocalNames {
    daemon: ServiceDaemon,
    inputs: async_channel::Sender<Input>,
    names: Arc<Mutex<Names>>,
}

impl LocalNames {
    /// `daemon` is the node's mDNS daemon (already confined to the served interfaces).
    pub fn new(daemon: ServiceDaemon, inputs: async_channel::Sender<Input>) -> Self {
        Self {
            daemon,
            inputs,
            names: Arc::default(),
        }
    }

    /// Maps an action on its way to the WebRTC adapter: a `.local` candidate whose name is
    /// known gets its address; every other action passes unchanged.
    pub fn map(&self, peer: &DeviceId, action: Action) -> Action {
        let Action::AddCandidate(candidate) = &action else {
            return action;
        };
        let Some(name) = browser_name(&candidate.candidate) else {
            return action;
        };
        let lookup = lock(&self.names).lookup(&name, peer, candidate, SystemClock.now());
        match lookup {
            Lookup::Known(ip) => match with_address(candidate, ip) {
                Some(mapped) => {
                    debug!(%peer, %name, %ip, "a .local candidate mapped from the cache");
                    Action::AddCandidate(mapped)
                }
                None => action,
            },
            Lookup::Start => {
                self.resolve(name);
                action
            }
            Lookup::Wait => action,
        }
    }

    fn resolve(&self, name: String) {
        let daemon = self.daemon.clone();
        let inputs = self.inputs.clone();
        let names = self.names.clone();
        runtime::spawn(async move {
            let answer = resolve(&daemon, &name).await;
            let waiting = lock(&names).resolved(&name, answer, SystemClock.now());
            let Some(ip) = answer else {
                debug!(%name, "a .local candidate did not resolve");
                return;
            };
            info!(%name, %ip, "resolved a browser's .local ICE candidate");
            for (peer, candidate) in waiting {
                let Some(mapped) = with_address(&candidate, ip) else {
                    continue;
                };
                let input = Input::Rtc {
                    peer,
                    event: negotiation::Input::RemoteCandidate(mapped),
                };
                // Best effort: a full queue loses a candidate that peer-reflexive ones cover.
                let _ = inputs.try_send(input);
            }
        })
        .detach();
    }
}

fn lock(names: &Mutex<Names>) -> std::sync::MutexGuard<'_, Names> {
    names.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks the daemon for `name`'s addresses for at most [`RESOLVE_TIMEOUT`]: the first usable
/// one, IPv4 preferred.
async fn resolve(daemon: &ServiceDaemon, name: &str) -> Option<IpAddr> {
    let query = format!("{name}.");
    let timeout_ms = u64::try_from(RESOLVE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
    let events = match daemon.resolve_hostname(&query, Some(timeout_ms)) {
        Ok(events) => events,
        Err(err) => {
            debug!(%name, "cannot resolve: {err}");
            return None;
        }
    };
    let found = runtime::timeout(RESOLVE_TIMEOUT, async {
        loop {
            match events.recv_async().await {
                Ok(HostnameResolutionEvent::AddressesFound(_, addresses)) => {
                    let mut ips: Vec<IpAddr> = addresses
                        .iter()
                        .map(|a| a.to_ip_addr())
                        .filter(|ip| usable(*ip))
                        .collect();
                    ips.sort_by_key(|ip| !ip.is_ipv4());
                    if let Some(ip) = ips.first() {
                        return Ok(Some(*ip));
                    }
                }
                Ok(HostnameResolutionEvent::SearchTimeout(_))
                | Ok(HostnameResolutionEvent::SearchStopped(_))
                | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .flatten();
    let _ = daemon.stop_resolve_hostname(&query);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "4c1e8a2b-9f3d-4e6a-8b7c-1d2e3f4a5b6c.local";

    fn candidate(address: &str) -> Candidate {
        Candidate {
            candidate: format!(
                "candidate:2913399463 1 udp 2113937151 {address} 41234 typ host generation 0 \
                 network-cost 999"
            ),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        }
    }

    fn peer() -> DeviceId {
        DeviceId::from_sha256(&[7; 32])
    }

    #[test]
    fn only_browser_style_names_are_resolved() {
        assert_eq!(
            browser_name(&candidate(NAME).candidate).as_deref(),
            Some(NAME)
        );
        let upper = candidate(&NAME.to_ascii_uppercase().replace("LOCAL", "Local"));
        assert_eq!(browser_name(&upper.candidate).as_deref(), Some(NAME));
        // Addresses, other hosts' names, and look-alikes are left alone.
        for address in [
            "10.77.0.2",
            "fe80::1",
            "nas.local",
            "printer.lan.local",
            "4c1e8a2b-9f3d-4e6a-8b7c-1d2e3f4a5b6c.lan",
            "4c1e8a2b-9f3d-4e6a-8b7c-1d2e3f4a5b6.local",
            "4c1e8a2b-9f3d-4e6a-8b7c-1d2e3f4a5b6g.local",
            "4c1e8a2b-9f3d-4e6a-8b7c-1d2e3f4a5b6c.local.evil",
        ] {
            assert_eq!(
                browser_name(&candidate(address).candidate),
                None,
                "{address}"
            );
        }
        // Not a candidate line: too short, or no `typ` after the port.
        assert_eq!(browser_name(&format!("candidate:1 1 udp 1 {NAME}")), None);
        assert_eq!(
            browser_name(&format!("candidate:1 1 udp 1 {NAME} 9 host")),
            None
        );
        assert_eq!(browser_name(""), None);
    }

    #[test]
    fn the_address_replaces_the_name_and_nothing_else() {
        let ip: IpAddr = "10.77.3.2".parse().unwrap();
        let mapped = with_address(&candidate(NAME), ip).unwrap();
        assert_eq!(mapped, candidate("10.77.3.2"));
        // A foundation that happens to equal the name's text does not confuse it.
        let tricky = Candidate {
            candidate: format!("candidate:{NAME} 1 udp 5 {NAME} 9 typ host"),
            ..candidate(NAME)
        };
        assert_eq!(
            with_address(&tricky, ip).unwrap().candidate,
            format!("candidate:{NAME} 1 udp 5 10.77.3.2 9 typ host")
        );
        assert!(usable(ip));
        for bad in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "224.0.0.251",
            "255.255.255.255",
        ] {
            assert!(!usable(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn lookups_are_bounded_cached_and_failures_remembered() {
        let now = SystemClock.now();
        let mut names = Names::default();
        let c = candidate(NAME);
        assert_eq!(names.lookup(NAME, &peer(), &c, now), Lookup::Start);
        // More candidates for the same name wait, up to the bound.
        for _ in 0..10 {
            assert_eq!(names.lookup(NAME, &peer(), &c, now), Lookup::Wait);
        }
        // At most MAX_RESOLVING names at once.
        let others: Vec<String> = (0..10)
            .map(|i| format!("00000000-0000-0000-0000-{i:012}.local"))
            .collect();
        let started = others
            .iter()
            .filter(|n| names.lookup(n, &peer(), &c, now) == Lookup::Start)
            .count();
        assert_eq!(started, MAX_RESOLVING - 1);
        let ip: IpAddr = "10.77.3.2".parse().unwrap();
        let waited = names.resolved(NAME, Some(ip), now);
        assert_eq!(waited.len(), MAX_WAITING_PER_NAME);
        // Known now, until the cache entry is older than CACHE_TTL.
        assert_eq!(names.lookup(NAME, &peer(), &c, now), Lookup::Known(ip));
        assert_eq!(
            names.lookup(NAME, &peer(), &c, now + CACHE_TTL),
            Lookup::Start
        );
        // A name that did not resolve is not asked again within CACHE_TTL.
        let failed = &others[0];
        assert_eq!(names.resolved(failed, None, now).len(), 1);
        assert_eq!(names.lookup(failed, &peer(), &c, now), Lookup::Wait);
        // The cache holds at most MAX_CACHED names.
        for i in 0..(MAX_CACHED * 2) {
            names.resolved(&format!("name-{i}"), Some(ip), now);
        }
        assert!(names.known.len() <= MAX_CACHED && names.order.len() <= MAX_CACHED);
    }
}
