//! LocalSend (protocol v2.1, PROTOCOL.md section 7): the sessions of files sent to this node
//! and by it, the fingerprints verified for addresses, and the bounds on what a LocalSend
//! device can make the node hold. Sans-IO: the HTTPS server and client and the multicast
//! socket are `shell::localsend`; they turn requests, bodies and answers into [`Input`]s and
//! carry out [`Effect`]s. The decisions (trust, which uploads are expected, what is journaled
//! and what the store must do) are the core's: this module holds the data and the rules,
//! `core::node::localsend` drives them with the rest of the core (events, policy, the store).

pub mod wire;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{DeviceId, TransferId};

/// The port LocalSend uses for HTTPS and multicast unless configured otherwise.
pub const DEFAULT_PORT: u16 = 53317;
/// The multicast group of LocalSend's discovery.
pub const MULTICAST_GROUP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(224, 0, 0, 167);
/// API paths.
pub const PATH_REGISTER: &str = "/api/localsend/v2/register";
pub const PATH_INFO: &str = "/api/localsend/v2/info";
pub const PATH_PREPARE: &str = "/api/localsend/v2/prepare-upload";
pub const PATH_UPLOAD: &str = "/api/localsend/v2/upload";
pub const PATH_CANCEL: &str = "/api/localsend/v2/cancel";

/// Sessions receiving at once (answered `409` beyond); one per device.
pub const MAX_SESSIONS: usize = 4;
/// `prepare-upload`s waiting for a fingerprint check or a policy answer at once (`409`).
pub const MAX_PENDING: usize = 16;
/// A receiving session with no upload running for this long ends; its files not uploaded
/// yet fail.
pub const SESSION_IDLE: Duration = Duration::from_secs(120);
/// A fingerprint verified for an address holds this long; then the next `prepare-upload`
/// checks again.
pub const BINDING_TTL: Duration = Duration::from_secs(3600);
/// Fingerprints bound to addresses, at most (the oldest goes).
pub const MAX_BINDINGS: usize = 1024;
/// Transfers of a LocalSend upload count progress in chunks of this size (the protocol has
/// none; they are for `fsnode transfers`).
pub const CHUNK: u32 = 1024 * 1024;
/// An upload's received bytes are synced and journaled as durable every this many bytes.
pub const SYNC_EVERY: u64 = 8 * 1024 * 1024;
/// Body pieces of one upload on their way to the disk at once: the shell reads the next only
/// when the core says `Proceed`, so an upload holds at most this many pieces in memory.
pub const WINDOW: usize = 4;
/// The largest body piece the shell hands over.
pub const MAX_PIECE: usize = 256 * 1024;
/// Wrong PINs from one address before it is answered `429` for [`PIN_LOCKOUT`].
pub const PIN_ATTEMPTS: u32 = 3;
pub const PIN_LOCKOUT: Duration = Duration::from_secs(60);
/// Addresses whose wrong PINs are remembered, at most.
const MAX_PIN_ADDRESSES: usize = 256;
/// Files one outgoing session offers at most (the rest go in the next).
pub const MAX_SEND_BATCH: usize = 64;
/// After a failed or refused attempt to send to a device, the next waits this long.
pub const SEND_RETRY: Duration = Duration::from_secs(10);
/// A trusted device with sends waiting is asked again at its last address this often.
pub const SEND_PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// The node announces itself on the multicast group this often (and at start).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(300);
/// An announcement from one address is answered at most this often.
pub const ANSWER_INTERVAL: Duration = Duration::from_secs(10);
/// Addresses whose answers are remembered, at most.
const MAX_ANSWERED: usize = 1024;

/// An HTTP request the shell holds open until the core answers it.
pub type RequestId = u64;
/// An outgoing HTTP call.
pub type CallId = u64;

/// This node's LocalSend facts.
#[derive(Clone, Debug)]
pub struct Settings {
    /// SHA-256 of the LocalSend certificate the HTTPS server presents.
    pub fingerprint: [u8; 32],
    pub port: u16,
    /// The PIN senders must give (`?pin=`), if the operator set one.
    pub pin: Option<String>,
    /// `deviceType` announced: `headless` or `server`.
    pub device_type: &'static str,
}

/// A request to fsnode's LocalSend server, already routed by path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Register {
        body: Vec<u8>,
    },
    Info,
    PrepareUpload {
        pin: Option<String>,
        body: Vec<u8>,
        /// Fresh randomness from the shell: the session id, the tokens and the transfer ids
        /// are derived from it (the core draws no randomness).
        nonce: [u8; 32],
    },
    Upload {
        session: String,
        file: String,
        token: String,
        /// `Content-Length`, when the request has one.
        length: Option<u64>,
    },
    Cancel {
        session: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Request {
        req: RequestId,
        from: SocketAddr,
        request: Request,
    },
    /// The next piece of an upload's body (the shell reads one after each `Proceed`).
    Body { req: RequestId, data: Vec<u8> },
    /// The upload's body ended.
    BodyEnd { req: RequestId },
    /// The request's connection ended or timed out before the core answered.
    Gone { req: RequestId },
    /// A multicast datagram from `from`.
    Datagram { from: SocketAddr, data: Vec<u8> },
    /// What the HTTPS server at `ip:port` presented (the SHA-256 of its certificate), asked
    /// by `Effect::Probe`.
    Probed {
        ip: IpAddr,
        port: u16,
        claimed: [u8; 32],
        presented: Result<[u8; 32], String>,
    },
    /// The answer to `Effect::Call`: status and body, or why there was none (a certificate
    /// other than the pinned one is an error).
    Answered {
        call: CallId,
        result: Result<(u16, Vec<u8>), String>,
    },
    /// The answer to `Effect::Upload`: the status, or why there was none.
    Uploaded {
        id: TransferId,
        result: Result<u16, String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Answer request `req` (a JSON body, or none) and close it; an upload still reading its
    /// body stops reading.
    Reply {
        req: RequestId,
        status: u16,
        body: Vec<u8>,
    },
    /// Read the next piece of upload `req`'s body.
    Proceed { req: RequestId },
    /// Connect to `ip:port` over TLS and report the certificate's SHA-256 (`Input::Probed`).
    Probe {
        ip: IpAddr,
        port: u16,
        claimed: [u8; 32],
    },
    /// POST `body` (JSON) to `path` at `to` over HTTPS, accepting only a certificate whose
    /// SHA-256 is `fingerprint`; answer `Input::Answered`.
    Call {
        call: CallId,
        to: SocketAddr,
        fingerprint: [u8; 32],
        path: String,
        body: Vec<u8>,
    },
    /// POST the file at `file` (`size` bytes) as the body of `path` at `to`, pinned to
    /// `fingerprint`; answer `Input::Uploaded`.
    Upload {
        id: TransferId,
        to: SocketAddr,
        fingerprint: [u8; 32],
        path: String,
        file: PathBuf,
        size: u64,
    },
    /// Stop sending transfer `id`'s upload (its `Input::Uploaded` still comes).
    StopUpload { id: TransferId },
    /// Send `body` to the multicast group.
    Multicast { body: Vec<u8> },
}

/// One file of a receiving session.
#[derive(Clone, Debug)]
pub struct SessionFile {
    pub transfer: TransferId,
    pub token: String,
    /// The name under the receive directory (policy's subdirectory included).
    pub name: String,
    pub size: u64,
    pub sha256: Option<[u8; 32]>,
    pub mtime: Option<i64>,
    pub state: FileState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileState {
    Expected,
    /// Request `req` is uploading it.
    Running(RequestId),
    Finished,
}

/// Files being sent to this node by one device.
#[derive(Clone, Debug)]
pub struct Session {
    pub device: DeviceId,
    /// Uploads are taken only from this address (the one the fingerprint was verified for).
    pub ip: IpAddr,
    /// By the sender's file id.
    pub files: BTreeMap<String, SessionFile>,
    pub last_activity: Instant,
}

impl Session {
    pub fn is_over(&self) -> bool {
        self.files.values().all(|f| f.state == FileState::Finished)
    }

    pub fn running(&self) -> bool {
        self.files
            .values()
            .any(|f| matches!(f.state, FileState::Running(_)))
    }
}

/// One upload's body on its way to the store.
#[derive(Clone, Debug)]
pub struct Upload {
    pub session: String,
    pub file: String,
    pub transfer: TransferId,
    pub size: u64,
    /// The `.part` is open (the store answered `Prepare`); no piece is asked before.
    pub prepared: bool,
    /// Bytes handed to the store.
    pub written: u64,
    /// Bytes written and synced (journaled as `ChunksDurable`).
    pub durable: u64,
    /// Where the next sync is due.
    pub next_sync: u64,
    /// `Append`s not answered yet.
    pub in_flight: usize,
    /// A `Proceed` held back because [`WINDOW`] pieces were in flight.
    pub owed: bool,
    /// The body ended; finalizing.
    pub ended: bool,
}

/// A `prepare-upload` between its arrival and its answer.
#[derive(Clone, Debug)]
pub struct Pending {
    pub from: SocketAddr,
    pub device: DeviceId,
    pub claim: wire::Claim,
    pub files: Vec<wire::Offered>,
    pub nonce: [u8; 32],
    /// The right PIN came with it.
    pub pin_ok: bool,
    pub stage: Stage,
    /// Per offered file: policy's subdirectory once it accepted, the reason once it refused.
    pub decided: Vec<Option<Result<Option<String>, String>>>,
    /// The transfer whose `Prepare` checks the free space (stage `Space`).
    pub space_check: Option<TransferId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Policy is asked whether to trust the device.
    Trust,
    /// The claimed fingerprint is being checked at the sender's address.
    Verify,
    /// Policy is asked about the files.
    Files,
    /// The store checks the free space for the whole session.
    Space,
}

/// A session of files this node sends to a LocalSend device.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub to: SocketAddr,
    pub fingerprint: [u8; 32],
    /// The sender's file id (the transfer id in hex) → transfer, in order.
    pub files: Vec<(String, TransferId)>,
    /// The receiver's session id, once it answered.
    pub session: Option<String>,
    /// Tokens by file id.
    pub tokens: BTreeMap<String, String>,
    /// The transfer being uploaded now.
    pub uploading: Option<TransferId>,
}

/// What an outgoing call was for.
#[derive(Clone, Debug)]
pub enum CallFor {
    /// Answering an announcement (`register`) of the device claiming `fingerprint` at `to`;
    /// on failure, a multicast answer.
    Register {
        to: SocketAddr,
        fingerprint: [u8; 32],
    },
    /// `prepare-upload` of `device`'s outgoing session.
    Prepare { device: DeviceId },
    /// A `cancel` sent; the answer does not matter.
    Cancel,
}

/// Everything LocalSend holds in the core, each map bounded by a constant above.
#[derive(Debug)]
pub struct LocalSend {
    pub settings: Settings,
    pub sessions: BTreeMap<String, Session>,
    pub pending: BTreeMap<RequestId, Pending>,
    pub uploads: HashMap<RequestId, Upload>,
    /// Verified fingerprint → the address it was verified at, and when.
    pub bindings: HashMap<[u8; 32], (IpAddr, Instant)>,
    /// Probes out: (address, port, claimed fingerprint).
    pub probing: Vec<(IpAddr, u16, [u8; 32])>,
    /// Wrong PINs per address: how many, since when.
    pub pin_failures: HashMap<IpAddr, (u32, Instant)>,
    /// Where each LocalSend device was last heard of (unauthenticated: a place to try).
    pub last_heard: HashMap<DeviceId, (SocketAddr, Instant)>,
    /// Sessions this node sends, by device.
    pub outgoing: BTreeMap<DeviceId, Outgoing>,
    pub calls: HashMap<CallId, CallFor>,
    pub next_call: CallId,
    /// When each device may be tried again after a failed attempt to send.
    pub retry_at: HashMap<DeviceId, Instant>,
    /// When announcements from each address were last answered.
    pub answered: VecDeque<(IpAddr, Instant)>,
    pub next_announce: Option<Instant>,
    pub next_send_probe: Option<Instant>,
    /// Receives interrupted by a restart were failed (once, at the first tick).
    pub recovered: bool,
}

impl LocalSend {
    pub fn new(settings: Settings, now: Instant) -> Self {
        Self {
            settings,
            sessions: BTreeMap::new(),
            pending: BTreeMap::new(),
            uploads: HashMap::new(),
            bindings: HashMap::new(),
            probing: Vec::new(),
            pin_failures: HashMap::new(),
            last_heard: HashMap::new(),
            outgoing: BTreeMap::new(),
            calls: HashMap::new(),
            next_call: 0,
            retry_at: HashMap::new(),
            answered: VecDeque::new(),
            next_announce: Some(now),
            next_send_probe: Some(now + SEND_PROBE_INTERVAL),
            recovered: false,
        }
    }

    /// This node's `Info` (register answers, announcements, `prepare-upload`).
    pub fn info(&self, alias: &str, announce: Option<bool>) -> wire::Info {
        wire::Info {
            alias: alias.to_owned(),
            version: Some(wire::PROTOCOL_VERSION.into()),
            device_model: Some("fsnode".into()),
            device_type: Some(self.settings.device_type.into()),
            fingerprint: wire::fingerprint_text(&self.settings.fingerprint),
            port: Some(self.settings.port),
            protocol: Some("https".into()),
            download: Some(false),
            announce,
            announcement: announce,
        }
    }

    /// Whether a PIN from `ip` is refused outright for now (too many wrong ones).
    pub fn pin_locked(&mut self, ip: IpAddr, now: Instant) -> bool {
        match self.pin_failures.get(&ip) {
            Some((count, since)) if now.saturating_duration_since(*since) >= PIN_LOCKOUT => {
                let _ = count;
                self.pin_failures.remove(&ip);
                false
            }
            Some((count, _)) => *count >= PIN_ATTEMPTS,
            None => false,
        }
    }

    /// Checks `given` against the PIN; a wrong one counts against `ip`. `true` when no PIN is
    /// set.
    pub fn check_pin(&mut self, given: Option<&str>, ip: IpAddr, now: Instant) -> PinCheck {
        let Some(pin) = &self.settings.pin else {
            return PinCheck::NotSet;
        };
        if given == Some(pin.as_str()) {
            self.pin_failures.remove(&ip);
            return PinCheck::Right;
        }
        if given.is_some() {
            if !self.pin_failures.contains_key(&ip) && self.pin_failures.len() >= MAX_PIN_ADDRESSES
            {
                let oldest = self
                    .pin_failures
                    .iter()
                    .min_by_key(|(_, (_, since))| *since)
                    .map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    self.pin_failures.remove(&oldest);
                }
            }
            self.pin_failures.entry(ip).or_insert((0, now)).0 += 1;
        }
        PinCheck::Wrong
    }

    /// Whether `fingerprint` is verified for `ip` now.
    pub fn is_bound(&self, fingerprint: &[u8; 32], ip: IpAddr, now: Instant) -> bool {
        self.bindings.get(fingerprint).is_some_and(|(bound, at)| {
            *bound == ip && now.saturating_duration_since(*at) < BINDING_TTL
        })
    }

    /// `fingerprint` was verified at `ip`.
    pub fn bind(&mut self, fingerprint: [u8; 32], ip: IpAddr, now: Instant) {
        if !self.bindings.contains_key(&fingerprint) && self.bindings.len() >= MAX_BINDINGS {
            let oldest = self
                .bindings
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(fp, _)| *fp);
            if let Some(oldest) = oldest {
                self.bindings.remove(&oldest);
            }
        }
        self.bindings.insert(fingerprint, (ip, now));
    }

    /// Whether an announcement from `ip` may be answered now (at most once per
    /// [`ANSWER_INTERVAL`]).
    pub fn may_answer(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.answered
            .retain(|(_, at)| now.saturating_duration_since(*at) < ANSWER_INTERVAL);
        if self.answered.iter().any(|(known, _)| *known == ip)
            || self.answered.len() >= MAX_ANSWERED
        {
            return false;
        }
        self.answered.push_back((ip, now));
        true
    }

    pub fn call(&mut self, purpose: CallFor) -> CallId {
        let call = self.next_call;
        self.next_call += 1;
        self.calls.insert(call, purpose);
        call
    }

    /// The session and file transfer `id` belongs to, if it is received here.
    pub fn receiving(&self, id: &TransferId) -> Option<(&String, &String)> {
        self.sessions.iter().find_map(|(sid, session)| {
            session
                .files
                .iter()
                .find(|(_, f)| f.transfer == *id)
                .map(|(fid, _)| (sid, fid))
        })
    }

    /// The upload request writing transfer `id`.
    pub fn upload_of(&self, id: &TransferId) -> Option<RequestId> {
        self.uploads
            .iter()
            .find(|(_, u)| u.transfer == *id)
            .map(|(req, _)| *req)
    }
}

/// What a PIN check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinCheck {
    NotSet,
    Right,
    Wrong,
}

/// The ids of a new receiving session, derived from the shell's nonce.
pub struct SessionIds {
    pub session: String,
    pub tokens: Vec<String>,
    pub transfers: Vec<TransferId>,
}

impl SessionIds {
    pub fn derive(nonce: &[u8; 32], files: usize) -> Self {
        let hash = |label: &[u8], n: u64| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(nonce);
            h.update(label);
            h.update(n.to_be_bytes());
            h.finalize().into()
        };
        let session = hex::encode(&hash(b"session", 0)[..16]);
        let tokens = (0..files as u64)
            .map(|n| hex::encode(&hash(b"token", n)[..16]))
            .collect();
        let transfers = (0..files as u64)
            .map(|n| {
                let digest = hash(b"transfer", n);
                TransferId(digest[..16].try_into().expect("16 of 32 bytes"))
            })
            .collect();
        Self {
            session,
            tokens,
            transfers,
        }
    }
}

/// The JSON error body fsnode answers with (`{"message": …}`), for people reading logs.
pub fn message(text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "message": text })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)]

    use super::*;

    fn settings(pin: Option<&str>) -> Settings {
        Settings {
            fingerprint: [1; 32],
            port: DEFAULT_PORT,
            pin: pin.map(Into::into),
            device_type: "server",
        }
    }

    #[test]
    fn three_wrong_pins_lock_an_address_out_for_a_minute() {
        let t0 = Instant::now();
        let mut ls = LocalSend::new(settings(Some("1234")), t0);
        let ip: IpAddr = [10, 77, 0, 2].into();
        assert_eq!(ls.check_pin(None, ip, t0), PinCheck::Wrong);
        assert!(!ls.pin_locked(ip, t0), "a missing PIN is not an attempt");
        for _ in 0..PIN_ATTEMPTS {
            assert_eq!(ls.check_pin(Some("0000"), ip, t0), PinCheck::Wrong);
        }
        assert!(ls.pin_locked(ip, t0));
        assert!(!ls.pin_locked([10, 77, 0, 3].into(), t0));
        assert!(!ls.pin_locked(ip, t0 + PIN_LOCKOUT));
        assert_eq!(ls.check_pin(Some("1234"), ip, t0), PinCheck::Right);
        let mut open = LocalSend::new(settings(None), t0);
        assert_eq!(open.check_pin(None, ip, t0), PinCheck::NotSet);
    }

    #[test]
    fn a_binding_holds_for_its_address_and_its_time_only() {
        let t0 = Instant::now();
        let mut ls = LocalSend::new(settings(None), t0);
        let (a, b): (IpAddr, IpAddr) = ([10, 77, 0, 2].into(), [10, 77, 0, 3].into());
        ls.bind([7; 32], a, t0);
        assert!(ls.is_bound(&[7; 32], a, t0));
        assert!(!ls.is_bound(&[7; 32], b, t0));
        assert!(!ls.is_bound(&[8; 32], a, t0));
        assert!(!ls.is_bound(&[7; 32], a, t0 + BINDING_TTL));
        for n in 0..(MAX_BINDINGS as u32 + 10) {
            let mut fp = [0u8; 32];
            fp[..4].copy_from_slice(&n.to_be_bytes());
            ls.bind(fp, a, t0 + Duration::from_millis(u64::from(n)));
        }
        assert_eq!(ls.bindings.len(), MAX_BINDINGS);
    }

    #[test]
    fn session_ids_are_distinct_and_derived_from_the_nonce() {
        let one = SessionIds::derive(&[1; 32], 3);
        let again = SessionIds::derive(&[1; 32], 3);
        let other = SessionIds::derive(&[2; 32], 3);
        assert_eq!(one.session, again.session);
        assert_ne!(one.session, other.session);
        assert_eq!(one.tokens.len(), 3);
        assert_ne!(one.tokens[0], one.tokens[1]);
        assert_ne!(one.transfers[0], one.transfers[1]);
    }

    #[test]
    fn an_address_is_answered_once_per_interval() {
        let t0 = Instant::now();
        let mut ls = LocalSend::new(settings(None), t0);
        let ip: IpAddr = [10, 77, 0, 2].into();
        assert!(ls.may_answer(ip, t0));
        assert!(!ls.may_answer(ip, t0 + Duration::from_secs(1)));
        assert!(ls.may_answer([10, 77, 0, 3].into(), t0));
        assert!(ls.may_answer(ip, t0 + ANSWER_INTERVAL));
    }
}
