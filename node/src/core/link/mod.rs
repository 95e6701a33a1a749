//! The link: one peer session's transport as a sans-IO machine. It owns an ICE agent
//! (`rtc-ice`) and, above it, one of two transports chosen when the remote description is
//! applied:
//!
//! - **QUIC** (spec 6, [`quic`]) when both descriptions carry `a=x-fsnode-quic:1`: quinn-proto
//!   with TLS 1.3, both identity certificates pinned, stream 0 as the channel. What two fsnode
//!   nodes use.
//! - **The WebRTC data channel** ([`data_channel`]) otherwise: DTLS (`rtc-dtls`) with the
//!   identity certificate and SCTP (`dcsctp`) with the one pre-negotiated `fileshare` channel.
//!   What browsers, aiortc and older fsnode builds get.
//!
//! Above the link nothing asks which one carries a session: both give the same events
//! (`Authenticated`, `ChannelOpen`, `Message`, `Lost`) and take the same `send`.
//!
//! Shape (the core's, after str0m): the shell feeds `handle_input(Input, now)` — a datagram
//! that arrived on one of the node's sockets, or a timeout — and drains `poll_output()` until
//! it returns `Output::Timeout`: datagrams to send, events for the node, and when to call back.
//! Signaling is method calls (`offer`, `answer`, `apply_answer`, `add_remote_candidate`),
//! because the negotiation machine already decides *when* each happens.
//!
//! Demultiplexing by the first byte (RFC 9443): STUN (0–3) goes to ICE; DTLS (20–63) and QUIC
//! (64–127, 192–255) go to the session's transport, and only once ICE has a selected pair and
//! only from a remote candidate that passed ICE's checks. Everything else is dropped. The
//! transports' datagrams go to ICE's selected pair.
//!
//! Roles: the offerer is ICE-controlling, and the QUIC client; DTLS client/server follow
//! `a=setup`.
//!
//! Identity: both transports refuse a peer whose certificate does not hash to the device id
//! this link was made for (the `hello` id, which negotiation already matched against the SDP
//! fingerprint); a mismatch is `Event::Lost(LinkError::FingerprintMismatch)`.

pub mod data_channel;
pub mod description;
pub mod framing;
pub mod pinned;
pub mod quic;
pub mod randomness;
pub mod sessions;
#[cfg(test)]
pub mod sim;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc_ice::agent::Agent;
use rtc_ice::agent::agent_config::AgentConfig;
use rtc_ice::candidate::candidate_host::CandidateHostConfig;
use rtc_ice::candidate::{CandidateConfig, unmarshal_candidate};
use rtc_ice::mdns::MulticastDnsMode;
use rtc_ice::network_type::NetworkType;
use rtc_ice::state::ConnectionState;
use rtc_shared::{TransportContext, TransportMessage, TransportProtocol};
use sansio::Protocol;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use self::data_channel::DataChannel;
use self::description::{LocalDescription, RemoteDescription, Setup};
use self::quic::{Quic, QuicParams, QuicSettings};
use self::randomness::SeededProvider;
use super::DeviceId;
use super::signal::Candidate;

pub use self::data_channel::{DTLS_RECORD_OVERHEAD, SctpTuning};
pub use self::description::DescriptionError;
pub use self::quic::Congestion;

/// The largest UDP payload sent without spec 5's agreement: what every WebRTC stack receives.
pub const DEFAULT_MAX_DATAGRAM: usize = 1472;
/// The largest message fsnode sends or accepts (advertised as `a=max-message-size`): spec 4
/// then gives 128 KiB chunks between fsnode nodes.
pub const MAX_MESSAGE_SIZE: u32 = 256 * 1024;
/// Messages a peer that says "no limit" is still sent at most (what we also accept).
const UNLIMITED_MESSAGE_CAP: usize = 16 * 1024 * 1024;
/// What a peer that says nothing accepts (RFC 8841's 64 KiB).
const DEFAULT_MESSAGE_LIMIT: usize = 64 * 1024;

/// ICE checks every 50 ms (webrtc-rs: 200) with the same 1.4 s budget per pair: on a LAN the
/// round trip is far below either, so the pair is found sooner.
pub const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
pub const ICE_MAX_BINDING_REQUESTS: u16 = 28;
/// No answer to consent checks for this long: disconnected, the session is lost.
pub const ICE_DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(5);
pub const ICE_FAILED_TIMEOUT: Duration = Duration::from_secs(25);
pub const ICE_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// QUIC's own idle timeout: a keep-alive interval past ICE's disconnected timeout, so that
/// ICE's consent checks, not QUIC, end a silent session (spec 6: section 3.3's timing).
pub const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(7);
/// Remote candidates taken per session, trickled and in descriptions together.
pub const MAX_REMOTE_CANDIDATES: usize = 64;

/// Which transport carries a session (journaled in `Connected`, shown by `fsnode peers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// DTLS + SCTP: every session before QUIC existed.
    #[default]
    DataChannel,
    Quic,
}

impl TransportKind {
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::DataChannel => "data-channel",
            TransportKind::Quic => "quic",
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a link is made from.
#[derive(Clone)]
pub struct LinkConfig {
    /// The node's certificate (its identity), for DTLS and for QUIC's TLS.
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
    /// Spec 6: whether to offer QUIC, and how to run it.
    pub quic: QuicSettings,
    /// Seeds ICE credentials, tie breakers, DTLS randoms, SCTP's verification tags and QUIC's
    /// endpoint.
    pub seed: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("bad remote description: {0}")]
    Description(#[from] DescriptionError),
    #[error("the remote description's fingerprint names {got}, not the expected {expected}")]
    DescriptionFingerprint { expected: DeviceId, got: DeviceId },
    #[error("the peer's certificate is {got}, not the expected {expected}")]
    FingerprintMismatch { expected: DeviceId, got: DeviceId },
    #[error("the peer sent no certificate")]
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
    /// QUIC failed before its channel opened (a fallback to the data channel follows).
    #[error("QUIC setup failed: {0}")]
    QuicSetup(String),
    #[error("QUIC: {0} within 5 s of ICE selecting a pair")]
    QuicTimeout(&'static str),
    #[error("QUIC: {0}")]
    Quic(String),
    #[error("QUIC: the peer ended stream 0")]
    QuicChannelClosed,
    #[error("QUIC: {0}")]
    Frame(#[from] framing::FrameError),
    #[error("wrong call for the link's state: {0}")]
    State(&'static str),
    #[error("crypto provider: {0}")]
    Crypto(String),
}

impl LinkError {
    /// QUIC did not get as far as an open channel for a reason other than the peer's key: the
    /// next session with this peer uses the data channel for a while (spec 6).
    pub fn is_quic_setup_failure(&self) -> bool {
        matches!(self, LinkError::QuicSetup(_) | LinkError::QuicTimeout(_))
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the channel is not open")]
    NotOpen,
    #[error("a {len}-byte message is over the peer's limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the send buffer is full: wait for buffered_amount to fall")]
    BufferFull,
}

/// What arrives from the shell.
pub enum Input<'a> {
    /// A UDP datagram received on `to` (one of `local_addrs`) from `from`, with the ECN bits
    /// of its IP header when the socket reports them.
    Datagram {
        from: SocketAddr,
        to: SocketAddr,
        ecn: Option<u8>,
        bytes: &'a [u8],
    },
    /// The time of the last `Output::Timeout` has come (extra calls are harmless).
    Timeout,
}

/// Datagrams to send from the socket `from` to `to`: `bytes` is one datagram, or with
/// `segment_size` several of that size (the last may be shorter), for GSO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
    pub segment_size: Option<usize>,
    /// ECN bits for the IP header (QUIC's; None for STUN and DTLS).
    pub ecn: Option<u8>,
}

impl Transmit {
    /// The datagrams it carries, one by one.
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        let size = self.segment_size.unwrap_or(self.bytes.len()).max(1);
        self.bytes.chunks(size)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A local candidate to trickle (`candidate: ""` = end of candidates).
    LocalCandidate(Candidate),
    /// ICE and the transport's handshake are up, the peer proved it holds the expected key.
    Authenticated,
    /// The channel is open: `send` works.
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
    /// ICE checking (the transport follows on its own).
    Connecting,
    Open,
    Closed,
}

/// Counters for tests, logs and benches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkStats {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Datagrams dropped: unknown kind, not for this session's transport, before ICE selected
    /// a pair or from an address ICE did not validate, or nothing to send them on.
    pub dropped: u64,
    pub messages_in: u64,
    pub messages_out: u64,
}

/// Where a transport puts what it produces: datagrams routed to ICE's selected pair, events
/// for the node, and the error that ends the session (the first one wins).
pub struct Sink<'a> {
    route: Option<(SocketAddr, SocketAddr)>,
    out: &'a mut VecDeque<Output>,
    stats: &'a mut LinkStats,
    lost: Option<LinkError>,
}

impl Sink<'_> {
    fn datagram(&mut self, bytes: Vec<u8>, segment_size: Option<usize>, ecn: Option<u8>) {
        let count = segment_size.map_or(1, |s| bytes.len().div_ceil(s.max(1))) as u64;
        match self.route {
            Some((from, to)) => {
                self.stats.datagrams_out += count;
                self.stats.bytes_out += bytes.len() as u64;
                self.out.push_back(Output::Transmit(Transmit {
                    from,
                    to,
                    bytes,
                    segment_size,
                    ecn,
                }));
            }
            None => self.stats.dropped += count,
        }
    }

    fn event(&mut self, event: Event) {
        self.out.push_back(Output::Event(event));
    }

    fn message(&mut self, data: Vec<u8>) {
        self.stats.messages_in += 1;
        self.out.push_back(Output::Event(Event::Message(data)));
    }

    fn dropped(&mut self) {
        self.stats.dropped += 1;
    }

    fn lose(&mut self, error: LinkError) {
        if self.lost.is_none() {
            self.lost = Some(error);
        }
    }
}

/// What carries the channel above ICE.
enum Transport {
    DataChannel(Box<DataChannel>),
    Quic(Box<Quic>),
}

impl Transport {
    fn kind(&self) -> TransportKind {
        match self {
            Transport::DataChannel(_) => TransportKind::DataChannel,
            Transport::Quic(_) => TransportKind::Quic,
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Transport::DataChannel(dc) => dc.is_open(),
            Transport::Quic(quic) => quic.is_open(),
        }
    }

    fn on_pair_selected(&mut self, now: Instant, sink: &mut Sink<'_>) {
        match self {
            Transport::DataChannel(dc) => dc.on_pair_selected(now, sink),
            Transport::Quic(quic) => quic.on_pair_selected(now, sink),
        }
    }

    fn handle_timeout(&mut self, now: Instant, sink: &mut Sink<'_>) {
        match self {
            Transport::DataChannel(dc) => dc.handle_timeout(now, sink),
            Transport::Quic(quic) => quic.handle_timeout(now, sink),
        }
    }

    fn pump(&mut self, now: Instant, sink: &mut Sink<'_>) -> bool {
        match self {
            Transport::DataChannel(dc) => dc.pump(now, sink),
            Transport::Quic(quic) => quic.pump(now, sink),
        }
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        match self {
            Transport::DataChannel(dc) => dc.poll_timeout(),
            Transport::Quic(quic) => quic.poll_timeout(),
        }
    }

    fn close(&mut self, now: Instant, sink: &mut Sink<'_>) {
        match self {
            Transport::DataChannel(dc) => dc.close(now, sink),
            Transport::Quic(quic) => quic.close(now, sink),
        }
    }
}

pub struct Link {
    config: LinkConfig,
    provider: Arc<SeededProvider>,
    epoch: Instant,
    controlling: bool,
    agent: Agent,
    local: LocalDescription,
    remote: Option<RemoteDescription>,
    transport: Option<Transport>,
    /// The transport chosen for this session (kept after it is gone).
    kind: Option<TransportKind>,
    /// The largest message the peer accepts (its `a=max-message-size`, bounded).
    max_outgoing: usize,
    phase: Phase,
    remote_candidates: usize,
    out: VecDeque<Output>,
    stats: LinkStats,
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

    /// Sends one binary message on the channel. `Err(BufferFull)` means the send buffer is
    /// full: wait for `buffered_amount` to fall.
    pub fn send(&mut self, data: &[u8], now: Instant) -> Result<(), SendError> {
        if self.phase != Phase::Open {
            return Err(SendError::NotOpen);
        }
        match self.transport.as_mut() {
            Some(Transport::DataChannel(dc)) => dc.send(data)?,
            Some(Transport::Quic(quic)) => quic.send(data)?,
            None => return Err(SendError::NotOpen),
        }
        self.stats.messages_out += 1;
        self.pump(now);
        Ok(())
    }

    /// Sends binary messages on the channel, in order, as one batch: small ones share packets
    /// (SCTP bundles them; QUIC frames them back to back on stream 0). Messages are queued
    /// while less than `limit` bytes wait in the transport's send buffer, the earlier ones of
    /// the batch counted; returns those not queued, in order, to send once `buffered_amount`
    /// has fallen.
    pub fn send_batch(
        &mut self,
        messages: VecDeque<Vec<u8>>,
        limit: usize,
        now: Instant,
    ) -> VecDeque<Vec<u8>> {
        if self.phase != Phase::Open {
            return messages;
        }
        let (left, sent) = match self.transport.as_mut() {
            Some(Transport::DataChannel(dc)) => dc.send_batch(messages, limit),
            Some(Transport::Quic(quic)) => quic.send_batch(messages, limit),
            None => return messages,
        };
        self.stats.messages_out += sent;
        if sent > 0 {
            self.pump(now);
        }
        left
    }

    /// Bytes handed to the link and not yet on their way: SCTP's queued and unacknowledged
    /// bytes; for QUIC, the frames its send window (16 MiB unacknowledged) did not take yet.
    pub fn buffered_amount(&self) -> usize {
        match self.transport.as_ref() {
            Some(Transport::DataChannel(dc)) => dc.buffered_amount(),
            Some(Transport::Quic(quic)) => quic.buffered_amount(),
            None => 0,
        }
    }

    /// The largest message the peer accepts (its `a=max-message-size`, bounded).
    pub fn max_message_size(&self) -> usize {
        self.max_outgoing
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The transport chosen when the remote description was applied.
    pub fn transport(&self) -> Option<TransportKind> {
        self.kind
    }

    /// Whether our description offers QUIC (spec 6).
    pub fn offers_quic(&self) -> bool {
        self.local.quic
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
        match &self.transport {
            Some(Transport::DataChannel(dc)) => dc.uses_zero_checksum(),
            _ => false,
        }
    }

    /// The SCTP packet size a data channel with this remote description uses.
    pub fn sctp_mtu(&self) -> usize {
        self.sctp_mtu_for(self.remote.as_ref())
    }

    /// Tests: as the QUIC client, do not send the opening frame on stream 0 (what an
    /// independent client might do); call before ICE selects a pair.
    #[cfg(test)]
    pub fn skip_opening_frame(&mut self) {
        if let Some(Transport::Quic(quic)) = self.transport.as_mut() {
            quic.skip_opening_frame();
        }
    }

    /// Ends the session: the peer is told at once (DTLS `close_notify`, QUIC's
    /// CONNECTION_CLOSE), whose datagrams are the last outputs. No events follow.
    pub fn close(&mut self, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        if let Some(transport) = self.transport.as_mut() {
            let route = selected_route(&self.agent);
            let mut sink = Sink {
                route,
                out: &mut self.out,
                stats: &mut self.stats,
                lost: None,
            };
            transport.close(now, &mut sink);
        }
        let _ = self.agent.close();
        self.phase = Phase::Closed;
        self.transport = None;
    }

    pub fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        match input {
            Input::Datagram {
                from,
                to,
                ecn,
                bytes,
            } => {
                self.stats.datagrams_in += 1;
                self.stats.bytes_in += bytes.len() as u64;
                self.handle_datagram(from, to, ecn, bytes, now);
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
            quic: config.quic.enabled,
        };
        Ok(Self {
            config,
            provider,
            epoch: now,
            controlling,
            agent,
            local,
            remote: None,
            transport: None,
            kind: None,
            max_outgoing: DEFAULT_MESSAGE_LIMIT,
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

    /// Takes the remote description: checks its fingerprints, starts ICE, and readies the
    /// transport both descriptions agree on.
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
        self.max_outgoing = match remote.max_message_size {
            0 => UNLIMITED_MESSAGE_CAP,
            n => usize::try_from(n)
                .unwrap_or(UNLIMITED_MESSAGE_CAP)
                .min(UNLIMITED_MESSAGE_CAP),
        };
        for line in remote.candidates.clone() {
            // A bad candidate in a description is skipped like a bad trickled one.
            let _ = self.add_remote_candidate_line(&line);
        }
        self.agent
            .start_connectivity_checks(
                now,
                self.controlling,
                remote.ice_ufrag.clone(),
                remote.ice_pwd.clone(),
            )
            .map_err(ice_error)?;
        let transport = if self.local.quic && remote.quic {
            Transport::Quic(Box::new(self.quic_transport()?))
        } else {
            let is_client = match (self.controlling, remote.setup) {
                // We offered actpass: the answer decides.
                (true, Setup::Active) => false,
                (true, _) => true,
                // We answered: our own setup decides.
                (false, _) => self.local.setup == Setup::Active,
            };
            Transport::DataChannel(Box::new(DataChannel::new(
                &self.config,
                self.provider.clone(),
                is_client,
                self.sctp_mtu_for(Some(&remote)),
                self.max_outgoing,
                remote.sctp_port,
                self.epoch,
            )?))
        };
        self.kind = Some(transport.kind());
        self.transport = Some(transport);
        self.remote = Some(remote);
        self.phase = Phase::Connecting;
        Ok(())
    }

    fn quic_transport(&self) -> Result<Quic, LinkError> {
        let der = self
            .config
            .certificate
            .certificate
            .first()
            .ok_or(LinkError::NoCertificate)?;
        let key = self
            .config
            .certificate
            .private_key
            .signing_key
            .to_pkcs8_der()
            .map_err(|e| LinkError::Crypto(e.to_string()))?
            .ok_or_else(|| LinkError::Crypto("the identity key cannot be exported".into()))?;
        let credentials = pinned::Credentials {
            certificate: der.clone(),
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.as_ref().to_vec().into()),
        };
        // The endpoint's seed: the next draws of the link's seeded stream.
        let mut seed = [0u8; 32];
        for chunk in seed.chunks_mut(8) {
            chunk.copy_from_slice(&self.provider.next_u64().to_le_bytes());
        }
        Quic::new(QuicParams {
            credentials: &credentials,
            peer: self.config.peer.clone(),
            is_client: self.controlling,
            settings: &self.config.quic,
            path_max_datagram: self.config.path_max_datagram,
            max_incoming: self.config.max_message_size as usize,
            max_outgoing: self.max_outgoing,
            seed,
        })
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
            .max(data_channel::MIN_SCTP_MTU)
    }

    // ---- the datagram path ----

    fn handle_datagram(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        ecn: Option<u8>,
        bytes: &[u8],
        now: Instant,
    ) {
        let transport = match (bytes.first(), &self.transport) {
            (Some(0..=3), _) => {
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
                return;
            }
            (Some(20..=63), Some(Transport::DataChannel(_)))
            | (Some(64..=127 | 192..=255), Some(Transport::Quic(_))) => self.transport.as_mut(),
            _ => None,
        };
        let Some(transport) = transport else {
            self.stats.dropped += 1;
            return;
        };
        let context = TransportContext {
            local_addr: to,
            peer_addr: from,
            transport_protocol: TransportProtocol::UDP,
            ecn: None,
        };
        // Only from a remote candidate that passed ICE (this also counts as consent).
        if self.agent.get_selected_candidate_pair().is_none()
            || !self.agent.is_valid_non_stun_traffic(now, context)
        {
            self.stats.dropped += 1;
            return;
        }
        let mut sink = Sink {
            route: selected_route(&self.agent),
            out: &mut self.out,
            stats: &mut self.stats,
            lost: None,
        };
        match transport {
            Transport::DataChannel(dc) => dc.handle_datagram(bytes, now, &mut sink),
            Transport::Quic(quic) => quic.handle_datagram(bytes, ecn, now, &mut sink),
        }
        if let Some(error) = sink.lost {
            self.lose(error);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Err(err) = self.agent.handle_timeout(now) {
            tracing::debug!("ICE timeout handling: {err}");
        }
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        let mut sink = Sink {
            route: selected_route(&self.agent),
            out: &mut self.out,
            stats: &mut self.stats,
            lost: None,
        };
        transport.handle_timeout(now, &mut sink);
        if let Some(error) = sink.lost {
            self.lose(error);
        }
    }

    /// Moves everything the layers produced into `out`, until nothing changes.
    fn pump(&mut self, now: Instant) {
        loop {
            if self.phase == Phase::Closed {
                return;
            }
            let mut progressed = false;
            let mut selected = false;
            while let Some(transmit) = self.agent.poll_write() {
                progressed = true;
                let bytes = transmit.message.to_vec();
                self.stats.datagrams_out += 1;
                self.stats.bytes_out += bytes.len() as u64;
                self.out.push_back(Output::Transmit(Transmit {
                    from: transmit.transport.local_addr,
                    to: transmit.transport.peer_addr,
                    bytes,
                    segment_size: None,
                    ecn: None,
                }));
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
                    rtc_ice::agent::Event::SelectedCandidatePairChange(..) => selected = true,
                    _ => {}
                }
            }
            let Some(transport) = self.transport.as_mut() else {
                if !progressed {
                    return;
                }
                continue;
            };
            let mut sink = Sink {
                route: selected_route(&self.agent),
                out: &mut self.out,
                stats: &mut self.stats,
                lost: None,
            };
            if selected {
                transport.on_pair_selected(now, &mut sink);
            }
            if transport.pump(now, &mut sink) {
                progressed = true;
            }
            let opened = transport.is_open();
            if let Some(error) = sink.lost {
                self.lose(error);
                return;
            }
            if opened && self.phase == Phase::Connecting {
                self.phase = Phase::Open;
            }
            if !progressed {
                return;
            }
        }
    }

    fn lose(&mut self, error: LinkError) {
        if self.phase == Phase::Closed {
            return;
        }
        tracing::debug!(peer = %self.config.peer, "link lost: {error}");
        self.out.push_back(Output::Event(Event::Lost(error)));
        let _ = self.agent.close();
        self.phase = Phase::Closed;
        self.transport = None;
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
        if let Some(t) = self.transport.as_mut().and_then(Transport::poll_timeout) {
            next = next.min(t);
        }
        next
    }
}

/// ICE's selected pair as (our socket, the peer's address).
fn selected_route(agent: &Agent) -> Option<(SocketAddr, SocketAddr)> {
    agent
        .get_selected_candidate_pair()
        .map(|(local, remote)| (local.base_addr(), remote.addr()))
}
