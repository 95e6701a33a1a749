//! The link: one peer session's transport as a sans-IO machine. It owns an ICE agent
//! (`rtc-ice`), a DTLS endpoint (`rtc-dtls`) holding the node's identity certificate, an SCTP
//! socket (`dcsctp`) over DTLS application data, and fsnode's one data channel: `fileshare`,
//! pre-negotiated stream 0, ordered, reliable, no DCEP (spec 3.3).
//!
//! Shape (the core's, after str0m): the shell feeds `handle_input(Input, now)` — a datagram
//! that arrived on one of the node's sockets, or a timeout — and drains `poll_output()` until
//! it returns `Output::Timeout`: datagrams to send, events for the node, and when to call back.
//! Signaling is method calls (`offer`, `answer`, `apply_answer`, `add_remote_candidate`),
//! because the negotiation machine already decides *when* each happens.
//!
//! Layering, per RFC 7983's demultiplexing of the first byte: STUN (0–3) goes to ICE; DTLS
//! (20–63) goes to the DTLS endpoint once ICE has a selected pair; DTLS application data is
//! SCTP. Outgoing DTLS records go to ICE's selected pair. The DTLS endpoint holds a single
//! association keyed by a placeholder address: ICE, not the 5-tuple, says where it lives.
//!
//! Roles: the offerer is ICE-controlling; DTLS client/server follow `a=setup` (an answer from
//! fsnode says `active`, as browsers do). Both ends start SCTP once DTLS is up (simultaneous
//! INIT is part of SCTP), and the channel is open when SCTP is.
//!
//! Identity: DTLS aborts unless the peer's certificate hashes to the device id this link was
//! made for (the `hello` id, which negotiation already matched against the SDP fingerprint);
//! a mismatch is `Event::Lost(LinkError::FingerprintMismatch)`.

pub mod description;
pub mod randomness;
pub mod sessions;
#[cfg(test)]
pub mod sim;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use dcsctp::api::{
    DcSctpSocket, Message, Options as SctpOptions, PpId, SendError, SendOptions, SocketEvent,
    SocketTime, StreamId, ZERO_CHECKSUM_ALTERNATE_ERROR_DETECTION_METHOD_LOWER_LAYER_DTLS,
};
use rtc_dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc_dtls::endpoint::{Endpoint as DtlsEndpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_ice::agent::Agent;
use rtc_ice::agent::agent_config::AgentConfig;
use rtc_ice::candidate::candidate_host::CandidateHostConfig;
use rtc_ice::candidate::{CandidateConfig, unmarshal_candidate};
use rtc_ice::mdns::MulticastDnsMode;
use rtc_ice::network_type::NetworkType;
use rtc_ice::state::ConnectionState;
use rtc_shared::{TransportContext, TransportMessage, TransportProtocol};
use sansio::Protocol;
use sha2::{Digest, Sha256};

use self::description::{LocalDescription, RemoteDescription, Setup};
use self::randomness::SeededProvider;
use super::DeviceId;
use super::signal::Candidate;

pub use self::description::DescriptionError;

/// The data channel's SCTP stream (pre-negotiated id 0).
pub const CHANNEL_STREAM: StreamId = StreamId(0);
/// WebRTC PPIDs (RFC 8831 8): binary, empty binary; text (51, 56) and DCEP (50) are ignored.
pub const PPID_BINARY: PpId = PpId(53);
pub const PPID_BINARY_EMPTY: PpId = PpId(57);

/// The largest UDP payload sent without spec 5's agreement: what every WebRTC stack receives.
pub const DEFAULT_MAX_DATAGRAM: usize = 1472;
/// DTLS 1.2 record overhead with AES-GCM: 13 header + 8 explicit nonce + 16 tag.
pub const DTLS_RECORD_OVERHEAD: usize = 37;
/// The largest message fsnode sends or accepts (advertised as `a=max-message-size`): spec 4
/// then gives 128 KiB chunks between fsnode nodes.
pub const MAX_MESSAGE_SIZE: u32 = 256 * 1024;
/// Messages a peer that says "no limit" is still sent at most (what we also accept).
const UNLIMITED_MESSAGE_CAP: usize = 16 * 1024 * 1024;

/// ICE checks every 50 ms (webrtc-rs: 200) with the same 1.4 s budget per pair: on a LAN the
/// round trip is far below either, so the pair is found sooner.
pub const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
pub const ICE_MAX_BINDING_REQUESTS: u16 = 28;
/// No answer to consent checks for this long: disconnected, the session is lost.
pub const ICE_DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(5);
pub const ICE_FAILED_TIMEOUT: Duration = Duration::from_secs(25);
pub const ICE_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// The first DTLS flight is retransmitted after this long (doubling); RFC 6347 says 1 s, a
/// LAN's round trip is under a millisecond.
pub const DTLS_FLIGHT_INTERVAL: Duration = Duration::from_millis(200);
/// Where the one DTLS association lives inside the endpoint (routing is ICE's business).
const DTLS_ASSOCIATION: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 65535);
/// Remote candidates taken per session, trickled and in descriptions together.
pub const MAX_REMOTE_CANDIDATES: usize = 64;

/// SCTP tuning, LAN first. dcsctp's defaults are the Internet's (RTO floor 400 ms, 220 ms of
/// RTT variance assumed, 200 ms delayed acks); on a LAN the round trip is a fraction of a
/// millisecond, so a lost retransmission waited hundreds of times the path's RTT.
#[derive(Clone, Debug)]
pub struct SctpTuning {
    pub rto_initial: Duration,
    pub rto_min: Duration,
    pub rto_max: Duration,
    pub min_rtt_variance: Duration,
    pub delayed_ack_max_timeout: Duration,
    pub max_timer_backoff: Duration,
    /// What the peer may have in flight to us (`a_rwnd`).
    pub receive_window: usize,
    /// What may wait in our SCTP send queue before `send` refuses (back-pressure).
    pub send_buffer: usize,
    pub cwnd_mtus_initial: usize,
    pub max_burst: i32,
    /// RFC 9653, used only when the peer's INIT offers the same method.
    pub zero_checksum: bool,
}

impl Default for SctpTuning {
    fn default() -> Self {
        Self {
            rto_initial: Duration::from_millis(100),
            rto_min: Duration::from_millis(20),
            rto_max: Duration::from_secs(5),
            min_rtt_variance: Duration::from_millis(10),
            delayed_ack_max_timeout: Duration::from_millis(10),
            max_timer_backoff: Duration::from_secs(1),
            receive_window: 8 * 1024 * 1024,
            send_buffer: 4 * 1024 * 1024,
            cwnd_mtus_initial: 10,
            max_burst: 16,
            zero_checksum: true,
        }
    }
}

/// What a link is made from.
#[derive(Clone)]
pub struct LinkConfig {
    /// The node's DTLS certificate (its identity).
    pub certificate: rtc_dtls::crypto::Certificate,
    /// The device the session is for: the peer's certificate must hash to it.
    pub peer: DeviceId,
    /// The socket addresses the shell bound (host candidates; nothing else is offered).
    pub local_addrs: Vec<SocketAddr>,
    /// The largest UDP payload the path carries (interface MTU less IP and UDP headers).
    pub path_max_datagram: usize,
    /// Spec 5: advertise `a=x-fsnode-max-datagram` with this value (our receive limit).
    pub advertise_max_datagram: Option<u32>,
    pub max_message_size: u32,
    pub sctp: SctpTuning,
    /// Seeds ICE credentials, tie breakers, DTLS randoms and SCTP's verification tags.
    pub seed: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("bad remote description: {0}")]
    Description(#[from] DescriptionError),
    #[error("the remote description's fingerprint names {got}, not the expected {expected}")]
    DescriptionFingerprint { expected: DeviceId, got: DeviceId },
    #[error("the peer's DTLS certificate is {got}, not the expected {expected}")]
    FingerprintMismatch { expected: DeviceId, got: DeviceId },
    #[error("the peer sent no DTLS certificate")]
    NoCertificate,
    #[error("ICE: {0}")]
    Ice(String),
    #[error("ICE connection {0}")]
    IceState(&'static str),
    #[error("DTLS: {0}")]
    Dtls(String),
    #[error("the peer closed DTLS")]
    DtlsClosed,
    #[error("SCTP: {0}")]
    Sctp(String),
    #[error("wrong call for the link's state: {0}")]
    State(&'static str),
    #[error("crypto provider: {0}")]
    Crypto(String),
}

/// What arrives from the shell.
pub enum Input<'a> {
    /// A UDP datagram received on `to` (one of `local_addrs`) from `from`.
    Datagram {
        from: SocketAddr,
        to: SocketAddr,
        bytes: &'a [u8],
    },
    /// The time of the last `Output::Timeout` has come (extra calls are harmless).
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A local candidate to trickle (`candidate: ""` = end of candidates).
    LocalCandidate(Candidate),
    /// ICE and DTLS are up, the peer proved it holds the expected key.
    Authenticated,
    /// The `fileshare` channel is open: `send` works.
    ChannelOpen,
    /// A binary message on the channel (text messages are dropped, spec 4).
    Message(Vec<u8>),
    /// The session is over; nothing more comes from this link.
    Lost(LinkError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Transmit(Transmit),
    Event(Event),
    /// Call `handle_input(Input::Timeout, t)` at `t`; nothing else is pending.
    Timeout(Instant),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Local description set, waiting for the remote one.
    AwaitingRemote,
    /// ICE checking (DTLS and SCTP follow on their own).
    Connecting,
    Open,
    Closed,
}

/// `data` as a binary message on the channel's stream. RFC 8831 6.6: an empty message is one
/// byte with the empty-binary PPID.
fn channel_message(data: Vec<u8>) -> Message {
    if data.is_empty() {
        Message::new(CHANNEL_STREAM, PPID_BINARY_EMPTY, vec![0])
    } else {
        Message::new(CHANNEL_STREAM, PPID_BINARY, data)
    }
}

/// Counters for tests, logs and benches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkStats {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Datagrams dropped: unknown kind, DTLS before ICE, or no selected pair to send on.
    pub dropped: u64,
    pub messages_in: u64,
    pub messages_out: u64,
}

struct Dtls {
    endpoint: DtlsEndpoint,
    /// A client's handshake config until ICE selects a pair and it connects.
    pending_client: Option<Arc<HandshakeConfig>>,
    complete: bool,
}

pub struct Link {
    config: LinkConfig,
    provider: Arc<SeededProvider>,
    epoch: Instant,
    controlling: bool,
    agent: Agent,
    local: LocalDescription,
    remote: Option<RemoteDescription>,
    dtls: Option<Dtls>,
    /// The certificate id the DTLS verifier saw when it refused one.
    refused_certificate: Arc<Mutex<Option<DeviceId>>>,
    sctp: Option<Box<dyn DcSctpSocket>>,
    sctp_max_message: usize,
    phase: Phase,
    remote_candidates: usize,
    out: VecDeque<Output>,
    stats: LinkStats,
}

fn dtls_error(e: impl std::fmt::Display) -> LinkError {
    LinkError::Dtls(e.to_string())
}

fn ice_error(e: impl std::fmt::Display) -> LinkError {
    LinkError::Ice(e.to_string())
}

impl Link {
    /// A new session as the offerer: returns the link and its offer (local description set).
    pub fn offer(config: LinkConfig, now: Instant) -> Result<(Self, String), LinkError> {
        let mut link = Self::new(config, true, Setup::ActPass, description::MID.into(), now)?;
        let sdp = link.local.to_sdp();
        link.queue_local_candidates();
        Ok((link, sdp))
    }

    /// A new session answering `offer`: returns the link and its answer.
    pub fn answer(
        config: LinkConfig,
        offer: &str,
        now: Instant,
    ) -> Result<(Self, String), LinkError> {
        let remote = RemoteDescription::parse(offer, false)?;
        let setup = Setup::answering(remote.setup);
        let mut link = Self::new(config, false, setup, remote.mid.clone(), now)?;
        link.set_remote(remote, now)?;
        let sdp = link.local.to_sdp();
        link.queue_local_candidates();
        link.pump(now);
        Ok((link, sdp))
    }

    /// The offerer takes the peer's answer.
    pub fn apply_answer(&mut self, answer: &str, now: Instant) -> Result<(), LinkError> {
        if !self.controlling || self.remote.is_some() {
            return Err(LinkError::State("an answer without an outstanding offer"));
        }
        let remote = RemoteDescription::parse(answer, true)?;
        self.set_remote(remote, now)?;
        self.pump(now);
        Ok(())
    }

    /// A trickled remote candidate. Bad ones are errors for the log, not for the session;
    /// `.local` (mDNS) candidates are refused, as ICE's mDNS is off.
    pub fn add_remote_candidate(
        &mut self,
        candidate: &Candidate,
        now: Instant,
    ) -> Result<(), LinkError> {
        let text = candidate.candidate.trim();
        if text.is_empty() {
            return Ok(()); // end of candidates: ICE works with what it has
        }
        if let Some(mid) = &candidate.sdp_mid
            && let Some(remote) = &self.remote
            && *mid != remote.mid
            && !mid.is_empty()
        {
            return Err(LinkError::Ice(format!(
                "candidate for another m-line: {mid}"
            )));
        }
        self.add_remote_candidate_line(text)?;
        self.pump(now);
        Ok(())
    }

    fn add_remote_candidate_line(&mut self, line: &str) -> Result<(), LinkError> {
        if self.remote_candidates >= MAX_REMOTE_CANDIDATES {
            return Err(LinkError::Ice("too many remote candidates".into()));
        }
        let line = line.strip_prefix("a=").unwrap_or(line);
        let line = line.strip_prefix("candidate:").unwrap_or(line);
        let candidate = unmarshal_candidate(line).map_err(ice_error)?;
        if candidate.address().ends_with(".local") {
            return Err(LinkError::Ice("mDNS candidates are not resolved".into()));
        }
        self.remote_candidates += 1;
        self.agent
            .add_remote_candidate(candidate)
            .map_err(ice_error)?;
        Ok(())
    }

    /// Sends one binary message on the channel. `Err(ResourceExhaustion)` means the send
    /// buffer is full: wait for `buffered_amount` to fall.
    pub fn send(&mut self, data: &[u8], now: Instant) -> Result<(), SendError> {
        let Some(sctp) = self.sctp.as_mut().filter(|_| self.phase == Phase::Open) else {
            return Err(SendError::ShuttingDown);
        };
        sctp.send(channel_message(data.to_vec()), &SendOptions::default())?;
        self.stats.messages_out += 1;
        self.pump(now);
        Ok(())
    }

    /// Sends binary messages on the channel, in order, as one batch: SCTP bundles the small
    /// ones into shared packets (one packet per message costs a datagram, its encryption
    /// and its acknowledgement each). Messages are queued while the send buffer holds less
    /// than `limit` bytes, the earlier ones of the batch counted; returns those not queued,
    /// in order, to send once `buffered_amount` has fallen. A message SCTP refuses for any
    /// other reason (the channel closing) is dropped, as [`Self::send`] would report it.
    pub fn send_batch(
        &mut self,
        mut messages: VecDeque<Vec<u8>>,
        limit: usize,
        now: Instant,
    ) -> VecDeque<Vec<u8>> {
        let Some(sctp) = self.sctp.as_mut().filter(|_| self.phase == Phase::Open) else {
            return messages;
        };
        let mut buffered = sctp.buffered_amount(CHANNEL_STREAM);
        let mut batch = Vec::new();
        while buffered < limit
            && let Some(data) = messages.pop_front()
        {
            buffered += data.len().max(1);
            batch.push(channel_message(data));
        }
        if batch.is_empty() {
            return messages;
        }
        let count = batch.len();
        let refused = match sctp.send_many(batch, &SendOptions::default()) {
            Ok(()) => 0,
            Err(dcsctp::api::BatchSendError(errors)) => {
                for (index, err) in &errors {
                    tracing::debug!("data channel send of message {index} failed: {err}");
                }
                errors.len()
            }
        };
        self.stats.messages_out += (count - refused) as u64;
        self.pump(now);
        messages
    }

    /// Bytes queued in SCTP and not yet acknowledged.
    pub fn buffered_amount(&self) -> usize {
        self.sctp
            .as_ref()
            .map_or(0, |s| s.buffered_amount(CHANNEL_STREAM))
    }

    /// The largest message the peer accepts (its `a=max-message-size`, bounded).
    pub fn max_message_size(&self) -> usize {
        self.sctp_max_message
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Our ICE credentials (what a new offer with new credentials is told apart by).
    pub fn local_ice_ufrag(&self) -> &str {
        &self.local.ice_ufrag
    }

    /// Whether RFC 9653 zero checksum is in use (both ends agreed in SCTP's INIT).
    pub fn uses_zero_checksum(&self) -> bool {
        self.sctp
            .as_ref()
            .and_then(|s| s.get_metrics())
            .is_some_and(|m| m.uses_zero_checksum)
    }

    /// The SCTP packet size in use.
    pub fn sctp_mtu(&self) -> usize {
        self.sctp_mtu_for(self.remote.as_ref())
    }

    /// Ends the session: DTLS `close_notify` so the peer knows at once. No events follow.
    pub fn close(&mut self, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        if let Some(dtls) = self.dtls.as_mut()
            && dtls.complete
        {
            let _ = dtls.endpoint.close(now);
        }
        self.route_dtls_transmits();
        let _ = self.agent.close();
        self.phase = Phase::Closed;
        self.log_sctp_totals();
        self.sctp = None;
    }

    /// What SCTP did over the session's life (for tuning: retransmissions, final cwnd, RTT).
    fn log_sctp_totals(&self) {
        if let Some(m) = self.sctp.as_ref().and_then(|s| s.get_metrics()) {
            tracing::debug!(
                peer = %self.config.peer,
                tx_packets = m.tx_packets_count,
                rtx_packets = m.rtx_packets_count,
                rtx_bytes = m.rtx_bytes_count,
                rx_packets = m.rx_packets_count,
                cwnd = m.cwnd_bytes,
                srtt_ms = m.srtt.as_millis() as u64,
                peer_rwnd = m.peer_rwnd_bytes,
                "SCTP totals"
            );
        }
    }

    pub fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        match input {
            Input::Datagram { from, to, bytes } => {
                self.stats.datagrams_in += 1;
                self.stats.bytes_in += bytes.len() as u64;
                self.handle_datagram(from, to, bytes, now);
            }
            Input::Timeout => self.handle_timeout(now),
        }
        self.pump(now);
    }

    pub fn poll_output(&mut self) -> Output {
        if let Some(output) = self.out.pop_front() {
            return output;
        }
        Output::Timeout(self.next_timeout())
    }

    // ---- construction ----

    fn new(
        config: LinkConfig,
        controlling: bool,
        setup: Setup,
        mid: String,
        now: Instant,
    ) -> Result<Self, LinkError> {
        let provider =
            SeededProvider::new(config.seed).map_err(|e| LinkError::Crypto(e.to_string()))?;
        let agent_config = AgentConfig {
            multicast_dns_mode: MulticastDnsMode::Disabled,
            // A fixed, valid name: with mDNS off it is never announced, and a generated one
            // would draw from the thread's RNG.
            multicast_dns_local_name: "fsnode.local".into(),
            network_types: vec![NetworkType::Udp4, NetworkType::Udp6],
            check_interval: ICE_CHECK_INTERVAL,
            max_binding_requests: Some(ICE_MAX_BINDING_REQUESTS),
            disconnected_timeout: Some(ICE_DISCONNECTED_TIMEOUT),
            failed_timeout: Some(ICE_FAILED_TIMEOUT),
            keepalive_interval: Some(ICE_KEEPALIVE_INTERVAL),
            is_controlling: controlling,
            ..AgentConfig::default()
        };
        let mut agent =
            Agent::new(now, Arc::new(agent_config), provider.clone()).map_err(ice_error)?;
        let mut candidates = Vec::new();
        for (index, addr) in config.local_addrs.iter().enumerate() {
            let host = CandidateHostConfig {
                base_config: CandidateConfig {
                    candidate_id: format!("candidate:fsnode{index}"),
                    network: "udp".into(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    component: 1,
                    foundation: format!("{}", index + 1),
                    ..CandidateConfig::default()
                },
                ..CandidateHostConfig::default()
            }
            .new_candidate_host()
            .map_err(ice_error)?;
            candidates.push(host.marshal());
            agent.add_local_candidate(host).map_err(ice_error)?;
        }
        let credentials = agent.get_local_credentials().clone();
        let der = config
            .certificate
            .certificate
            .first()
            .ok_or(LinkError::NoCertificate)?;
        let fingerprint: [u8; 32] = Sha256::digest(der.as_ref()).into();
        let local = LocalDescription {
            session_id: provider.next_u64() >> 2,
            ice_ufrag: credentials.ufrag,
            ice_pwd: credentials.pwd,
            fingerprint,
            setup,
            mid,
            candidates,
            max_message_size: u64::from(config.max_message_size),
            max_datagram: config.advertise_max_datagram,
        };
        Ok(Self {
            config,
            provider,
            epoch: now,
            controlling,
            agent,
            local,
            remote: None,
            dtls: None,
            refused_certificate: Arc::new(Mutex::new(None)),
            sctp: None,
            sctp_max_message: DEFAULT_MESSAGE_LIMIT,
            phase: Phase::AwaitingRemote,
            remote_candidates: 0,
            out: VecDeque::new(),
            stats: LinkStats::default(),
        })
    }

    fn queue_local_candidates(&mut self) {
        let mid = self.local.mid.clone();
        for line in self.local.candidates.clone() {
            self.out
                .push_back(Output::Event(Event::LocalCandidate(Candidate {
                    candidate: format!("candidate:{line}"),
                    sdp_mid: Some(mid.clone()),
                    sdp_mline_index: Some(0),
                })));
        }
        self.out
            .push_back(Output::Event(Event::LocalCandidate(Candidate {
                candidate: String::new(),
                sdp_mid: Some(mid),
                sdp_mline_index: Some(0),
            })));
    }

    /// Takes the remote description: checks its fingerprints, starts ICE, readies DTLS.
    fn set_remote(&mut self, remote: RemoteDescription, now: Instant) -> Result<(), LinkError> {
        if let Some(got) = remote
            .fingerprints
            .iter()
            .find(|id| **id != self.config.peer)
        {
            return Err(LinkError::DescriptionFingerprint {
                expected: self.config.peer.clone(),
                got: got.clone(),
            });
        }
        self.sctp_max_message = match remote.max_message_size {
            0 => UNLIMITED_MESSAGE_CAP,
            n => usize::try_from(n)
                .unwrap_or(UNLIMITED_MESSAGE_CAP)
                .min(UNLIMITED_MESSAGE_CAP),
        };
        for line in remote.candidates.clone() {
            // A bad candidate in a description is skipped like a bad trickled one.
            let _ = self.add_remote_candidate_line(&line);
        }
        let is_client = match (self.controlling, remote.setup) {
            // We offered actpass: the answer decides.
            (true, Setup::Active) => false,
            (true, _) => true,
            // We answered: our own setup decides.
            (false, _) => self.local.setup == Setup::Active,
        };
        self.agent
            .start_connectivity_checks(
                now,
                self.controlling,
                remote.ice_ufrag.clone(),
                remote.ice_pwd.clone(),
            )
            .map_err(ice_error)?;
        let handshake = Arc::new(self.handshake_config(is_client)?);
        self.dtls = Some(if is_client {
            Dtls {
                endpoint: DtlsEndpoint::new(DTLS_ASSOCIATION, TransportProtocol::UDP, None),
                pending_client: Some(handshake),
                complete: false,
            }
        } else {
            Dtls {
                endpoint: DtlsEndpoint::new(
                    DTLS_ASSOCIATION,
                    TransportProtocol::UDP,
                    Some(handshake),
                ),
                pending_client: None,
                complete: false,
            }
        });
        self.remote = Some(remote);
        self.phase = Phase::Connecting;
        Ok(())
    }

    fn handshake_config(&self, is_client: bool) -> Result<HandshakeConfig, LinkError> {
        let expected = self.config.peer.clone();
        let refused = self.refused_certificate.clone();
        // The only check on the peer's certificate (self-signed, so no chain to verify):
        // it must be the key of the device this session is for.
        let verify = Arc::new(
            move |certificates: &[Vec<u8>],
                  _: &[rustls_pki_types::CertificateDer<'static>]|
                  -> Result<(), rtc_shared::error::Error> {
                let Some(der) = certificates.first() else {
                    return Err(rtc_shared::error::Error::ErrNonCertificate);
                };
                let got = DeviceId::from_certificate_der(der);
                if got == expected {
                    Ok(())
                } else {
                    *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
                    Err(rtc_shared::error::Error::ErrNoMatchingCertificateFingerprint)
                }
            },
        );
        ConfigBuilder::default()
            .with_crypto_provider(self.provider.clone())
            .with_certificates(vec![self.config.certificate.clone()])
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            .with_insecure_skip_verify(true)
            .with_verify_peer_certificate(Some(verify))
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            // fsnode carries no media, but WebRTC stacks expect `use_srtp` in every handshake
            // (aiortc's DTLS fails one without a negotiated profile, either role); the keys
            // are simply never used.
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            .with_flight_interval(DTLS_FLIGHT_INTERVAL)
            .build(is_client, None)
            .map_err(dtls_error)
    }

    fn sctp_mtu_for(&self, remote: Option<&RemoteDescription>) -> usize {
        let agreed = match (
            self.config.advertise_max_datagram,
            remote.and_then(|r| r.max_datagram),
        ) {
            (Some(ours), Some(theirs)) => ours.min(theirs) as usize,
            _ => DEFAULT_MAX_DATAGRAM,
        };
        agreed
            .min(self.config.path_max_datagram)
            .saturating_sub(DTLS_RECORD_OVERHEAD)
            .max(MIN_SCTP_MTU)
    }

    fn start_sctp(&mut self, now: Instant) {
        let tuning = &self.config.sctp;
        let mut options = SctpOptions {
            mtu: self.sctp_mtu(),
            max_message_size: self.sctp_max_message,
            max_receiver_window_buffer_size: tuning
                .receive_window
                .max(2 * self.config.max_message_size as usize),
            max_send_buffer_size: tuning.send_buffer.max(2 * self.sctp_max_message),
            per_stream_send_queue_limit: tuning.send_buffer.max(2 * self.sctp_max_message),
            rto_initial: tuning.rto_initial,
            rto_min: tuning.rto_min,
            rto_max: tuning.rto_max,
            min_rtt_variance: tuning.min_rtt_variance,
            delayed_ack_max_timeout: tuning.delayed_ack_max_timeout,
            max_timer_backoff_duration: Some(tuning.max_timer_backoff),
            cwnd_mtus_initial: tuning.cwnd_mtus_initial,
            max_burst: tuning.max_burst,
            ..SctpOptions::default()
        };
        if let Some(remote) = &self.remote {
            options.remote_port = remote.sctp_port;
        }
        if tuning.zero_checksum {
            options.zero_checksum_alternate_error_detection_method =
                ZERO_CHECKSUM_ALTERNATE_ERROR_DETECTION_METHOD_LOWER_LAYER_DTLS;
        }
        let mut socket = dcsctp::new_socket("fsnode", &options);
        socket.advance_time(self.socket_time(now));
        socket.connect();
        self.sctp = Some(socket);
    }

    // ---- the datagram path ----

    fn handle_datagram(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8], now: Instant) {
        match bytes.first() {
            Some(0..=3) => {
                let message = TransportMessage {
                    now,
                    transport: TransportContext {
                        local_addr: to,
                        peer_addr: from,
                        transport_protocol: TransportProtocol::UDP,
                        ecn: None,
                    },
                    message: BytesMut::from(bytes),
                };
                if self.agent.handle_read(message).is_err() {
                    self.stats.dropped += 1;
                }
            }
            Some(20..=63) => self.handle_dtls(from, to, bytes, now),
            _ => self.stats.dropped += 1,
        }
    }

    fn handle_dtls(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8], now: Instant) {
        let transport = TransportContext {
            local_addr: to,
            peer_addr: from,
            transport_protocol: TransportProtocol::UDP,
            ecn: None,
        };
        // Only from a remote candidate that passed ICE (this also counts as consent).
        if self.agent.get_selected_candidate_pair().is_none()
            || !self.agent.is_valid_non_stun_traffic(now, transport)
        {
            self.stats.dropped += 1;
            return;
        }
        let Some(dtls) = self.dtls.as_mut() else {
            self.stats.dropped += 1;
            return;
        };
        let events = match dtls
            .endpoint
            .read(now, DTLS_ASSOCIATION, None, BytesMut::from(bytes))
        {
            Ok(events) => events,
            Err(err) => {
                // A bad record is dropped; a failed handshake ends the session.
                let fatal = !dtls.complete;
                self.route_dtls_transmits();
                if fatal {
                    let error = self.handshake_error(err);
                    self.lose(error);
                } else {
                    self.stats.dropped += 1;
                }
                return;
            }
        };
        for event in events {
            match event {
                EndpointEvent::HandshakeComplete => self.on_dtls_complete(now),
                EndpointEvent::ApplicationData(data) => {
                    if let Some(sctp) = self.sctp.as_mut() {
                        sctp.handle_input(&data);
                    }
                }
                EndpointEvent::PeerClosed => {
                    self.route_dtls_transmits();
                    self.lose(LinkError::DtlsClosed);
                    return;
                }
                _ => {}
            }
        }
    }

    fn handshake_error(&self, err: impl std::fmt::Display) -> LinkError {
        match self
            .refused_certificate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(got) => LinkError::FingerprintMismatch {
                expected: self.config.peer.clone(),
                got,
            },
            None => dtls_error(err),
        }
    }

    fn on_dtls_complete(&mut self, now: Instant) {
        let Some(dtls) = self.dtls.as_mut() else {
            return;
        };
        dtls.complete = true;
        // The verifier already refused any other key; this re-check also catches a peer that
        // sent no certificate at all.
        let presented = dtls
            .endpoint
            .get_connection_state(DTLS_ASSOCIATION)
            .and_then(|state| state.peer_certificates.first())
            .map(|der| DeviceId::from_certificate_der(der));
        match presented {
            Some(id) if id == self.config.peer => {
                self.out.push_back(Output::Event(Event::Authenticated));
                self.start_sctp(now);
            }
            Some(got) => self.lose(LinkError::FingerprintMismatch {
                expected: self.config.peer.clone(),
                got,
            }),
            None => self.lose(LinkError::NoCertificate),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Err(err) = self.agent.handle_timeout(now) {
            tracing::debug!("ICE timeout handling: {err}");
        }
        if let Some(dtls) = self.dtls.as_mut()
            && dtls
                .endpoint
                .poll_timeout(&DTLS_ASSOCIATION)
                .is_some_and(|t| t <= now)
            && let Err(err) = dtls.endpoint.handle_timeout(DTLS_ASSOCIATION, now)
        {
            let error = self.handshake_error(err);
            self.lose(error);
            return;
        }
        let time = self.socket_time(now);
        if let Some(sctp) = self.sctp.as_mut() {
            sctp.advance_time(time);
        }
    }

    /// Moves everything the layers produced into `out`, until nothing changes.
    fn pump(&mut self, now: Instant) {
        loop {
            if self.phase == Phase::Closed {
                return;
            }
            let mut progressed = false;
            while let Some(transmit) = self.agent.poll_write() {
                progressed = true;
                self.push_transmit(
                    transmit.transport.local_addr,
                    transmit.transport.peer_addr,
                    transmit.message.to_vec(),
                );
            }
            while let Some(event) = self.agent.poll_event() {
                progressed = true;
                match event.event {
                    rtc_ice::agent::Event::ConnectionStateChange(state) => match state {
                        ConnectionState::Disconnected => {
                            self.lose(LinkError::IceState("disconnected"));
                            return;
                        }
                        ConnectionState::Failed => {
                            self.lose(LinkError::IceState("failed"));
                            return;
                        }
                        _ => {}
                    },
                    rtc_ice::agent::Event::SelectedCandidatePairChange(..) => {
                        self.on_pair_selected(now);
                    }
                    _ => {}
                }
            }
            if self.route_dtls_transmits() {
                progressed = true;
            }
            if self.pump_sctp(now) {
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
    }

    fn on_pair_selected(&mut self, now: Instant) {
        let Some(dtls) = self.dtls.as_mut() else {
            return;
        };
        if let Some(handshake) = dtls.pending_client.take()
            && let Err(err) = dtls
                .endpoint
                .connect(now, DTLS_ASSOCIATION, handshake, None)
        {
            self.lose(dtls_error(err));
        }
    }

    /// SCTP's events and messages; returns whether anything happened.
    fn pump_sctp(&mut self, now: Instant) -> bool {
        let mut progressed = false;
        loop {
            let Some(sctp) = self.sctp.as_mut() else {
                return progressed;
            };
            let Some(event) = sctp.poll_event() else {
                break;
            };
            progressed = true;
            match event {
                SocketEvent::SendPacket(packet) => {
                    if let Some(dtls) = self.dtls.as_mut()
                        && let Err(err) = dtls.endpoint.write(now, DTLS_ASSOCIATION, &packet)
                    {
                        tracing::debug!("DTLS write: {err}");
                    }
                    self.route_dtls_transmits();
                }
                SocketEvent::OnConnected() if self.phase == Phase::Connecting => {
                    self.phase = Phase::Open;
                    self.out.push_back(Output::Event(Event::ChannelOpen));
                }
                SocketEvent::OnClosed() => {
                    self.lose(LinkError::Sctp("closed by the peer".into()));
                    return true;
                }
                SocketEvent::OnAborted(kind, reason) => {
                    self.lose(LinkError::Sctp(format!("aborted ({kind:?}): {reason}")));
                    return true;
                }
                _ => {}
            }
        }
        while let Some(message) = self.sctp.as_mut().and_then(|s| s.get_next_message()) {
            progressed = true;
            if message.stream_id != CHANNEL_STREAM {
                continue;
            }
            let data = match message.ppid {
                PPID_BINARY => message.payload,
                PPID_BINARY_EMPTY => Vec::new(),
                // Text, DCEP and anything else: not fsnode's (spec 4 ignores text).
                _ => continue,
            };
            self.stats.messages_in += 1;
            self.out.push_back(Output::Event(Event::Message(data)));
        }
        progressed
    }

    /// DTLS records to ICE's selected pair; returns whether there were any.
    fn route_dtls_transmits(&mut self) -> bool {
        let Some(dtls) = self.dtls.as_mut() else {
            return false;
        };
        let mut any = false;
        let route = self
            .agent
            .get_selected_candidate_pair()
            .map(|(local, remote)| (local.base_addr(), remote.addr()));
        while let Some(transmit) = dtls.endpoint.poll_transmit() {
            any = true;
            match route {
                Some((from, to)) => {
                    self.stats.datagrams_out += 1;
                    self.stats.bytes_out += transmit.message.len() as u64;
                    self.out.push_back(Output::Transmit(Transmit {
                        from,
                        to,
                        bytes: transmit.message.to_vec(),
                    }));
                }
                None => self.stats.dropped += 1,
            }
        }
        any
    }

    fn push_transmit(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        self.out
            .push_back(Output::Transmit(Transmit { from, to, bytes }));
    }

    fn lose(&mut self, error: LinkError) {
        if self.phase == Phase::Closed {
            return;
        }
        tracing::debug!(peer = %self.config.peer, "link lost: {error}");
        self.log_sctp_totals();
        self.out.push_back(Output::Event(Event::Lost(error)));
        let _ = self.agent.close();
        self.phase = Phase::Closed;
        self.sctp = None;
    }

    fn socket_time(&self, now: Instant) -> SocketTime {
        SocketTime::zero() + now.saturating_duration_since(self.epoch)
    }

    fn next_timeout(&mut self) -> Instant {
        // Far enough to mean "nothing scheduled" without overflowing `Instant`.
        let idle = self.epoch + Duration::from_secs(24 * 3600 * 365);
        if self.phase == Phase::Closed {
            return idle;
        }
        let mut next = idle;
        if let Some(t) = self.agent.poll_timeout() {
            next = next.min(t);
        }
        if let Some(t) = self
            .dtls
            .as_ref()
            .and_then(|d| d.endpoint.poll_timeout(&DTLS_ASSOCIATION))
        {
            next = next.min(t);
        }
        if let Some(sctp) = self.sctp.as_ref() {
            let t = sctp.poll_timeout();
            if t != SocketTime::infinite_future() {
                next = next.min(self.epoch + (t - SocketTime::zero()));
            }
        }
        next
    }
}

/// What a peer that says nothing accepts (RFC 8841's 64 KiB).
const DEFAULT_MESSAGE_LIMIT: usize = 64 * 1024;
/// Below this an SCTP packet cannot carry its own headers and a useful chunk.
const MIN_SCTP_MTU: usize = 1024;
