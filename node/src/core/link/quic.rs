//! The QUIC transport of spec 6, sans-IO: one `quinn_proto::Endpoint` with one `Connection`,
//! driven with the time the link is given, on the pair ICE selected.
//!
//! - **Roles.** The offerer (ICE-controlling) is the client; it connects once ICE selects a
//!   pair. quinn sees the peer at one stable synthetic address ([`PEER_ADDRESS`]); where the
//!   peer really is, and which datagrams count as the peer's, is ICE's business (the link
//!   routes transmits to the selected pair and hands in only datagrams from a validated remote
//!   candidate).
//! - **Identity.** TLS 1.3 with both identity certificates pinned to device ids
//!   (`link::pinned`); ALPN `fsnode/1`.
//! - **The channel.** Stream 0, bidirectional, opened by the client: section 4's messages as
//!   length-prefixed frames (`link::framing`). The client opens it as soon as the handshake
//!   completes and at once sends an *opening frame*, a `progress` naming the all-zero transfer
//!   id, which every receiver ignores (spec 4: a message naming an unknown id is ignored):
//!   QUIC announces a stream to the peer only with its first frame, and the server may not
//!   send on stream 0 before it has seen it, so without it a server with something to send
//!   and a client with nothing would wait for each other forever. The channel is open for the
//!   client once it opened the stream, for the server once the stream's first frame arrived.
//! - **Failure.** The channel must be open within [`OPEN_TIMEOUT`] of ICE selecting a pair;
//!   otherwise (or if the connection fails before its channel opened) the session is lost
//!   with an error that makes `Sessions` fall back to the data channel for a while.
//!
//! Randomness: the endpoint's seed drives quinn's packet numbers and keys for tokens and
//! resets; connection ids are empty (one connection per endpoint, routed by ICE), and the
//! client's first destination id comes from the seed. TLS randoms and key shares come from
//! ring, outside the seed (as DTLS's ECDHE does), and BBR draws its gain cycle from the thread
//! RNG (see ARCHITECTURE.md for what that means for the simulation).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{
    ClientConfig, Connection, ConnectionError, ConnectionHandle, ConnectionId, DatagramEvent, Dir,
    EcnCodepoint, Endpoint, EndpointConfig, Event as QuicEvent, IdleTimeout, MtuDiscoveryConfig,
    RandomConnectionIdGenerator, ReadError, ServerConfig, StreamEvent, StreamId, TransportConfig,
    ValidationTokenConfig, VarInt,
};
use rand::{RngCore, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::framing::{self, FrameReader};
use super::pinned::{self, Credentials};
use super::{Event, LinkError, SendError, Sink};
use crate::core::DeviceId;
use crate::core::TransferId;
use crate::core::transfer;

/// The channel must be open this long after ICE selected a pair (spec 6: 5 s).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Where quinn believes the peer is (ICE, not the 5-tuple, says where it lives).
const PEER_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 65535);
/// The transfer id of the opening frame: no transfer ever has it.
pub const OPENING_ID: TransferId = TransferId([0; 16]);

/// Stream 0 is client-initiated bidirectional stream 0.
const CHANNEL_STREAM: u64 = 0;

/// First guess of the round trip before any sample: a LAN's (quinn's default is the Internet's
/// 333 ms, which makes a lost handshake packet cost a second or two).
pub const INITIAL_RTT: Duration = Duration::from_millis(2);
/// What the peer may have in flight to us on stream 0 and on the connection: enough for
/// ~1 GB/s at 10 ms of round trip. Memory is bounded before that by what the transfer windows
/// let a sender put in flight.
pub const RECEIVE_WINDOW: u32 = 16 * 1024 * 1024;
/// What quinn keeps unacknowledged or unsent per connection before writes block.
pub const SEND_WINDOW: u64 = 16 * 1024 * 1024;
/// The smallest datagram QUIC allows on a path (RFC 9000 14).
pub const MIN_QUIC_DATAGRAM: u16 = 1200;
/// The first packet size tried (then path-MTU discovery, up to what the interface carries).
pub const INITIAL_DATAGRAM: u16 = 1452;
/// UDP GSO sends at most this many bytes in one call.
const MAX_GSO_BYTES: usize = 64_000;
/// Frames a link holds beyond quinn's send window before `send` refuses (as SCTP's send
/// buffer does on the data channel).
pub const SEND_BUFFER: usize = 4 * 1024 * 1024;
/// Unauthenticated Initial packets buffered before a connection exists.
const INCOMING_BUFFER: u64 = 64 * 1024;

/// Application close codes (spec 6 leaves them to the application).
const CLOSE_NORMAL: u32 = 0;
const CLOSE_FRAME_TOO_LARGE: u32 = 1;
const CLOSE_CHANNEL_CLOSED: u32 = 2;
const CLOSE_CERTIFICATE: u32 = 3;

/// The congestion controller of QUIC sessions (`[link] congestion`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    #[default]
    Bbr,
    Cubic,
    NewReno,
}

impl Congestion {
    pub fn name(self) -> &'static str {
        match self {
            Congestion::Bbr => "bbr",
            Congestion::Cubic => "cubic",
            Congestion::NewReno => "newreno",
        }
    }
}

/// How this node runs QUIC towards other fsnode nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicSettings {
    /// Offer spec 6 (`a=x-fsnode-quic:1`) in offers and answers.
    pub enabled: bool,
    pub congestion: Congestion,
    /// Datagrams handed out in one transmit (the shell's GSO batch; 1 = no batching).
    pub max_segments: usize,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            congestion: Congestion::default(),
            max_segments: 10,
        }
    }
}

/// quinn's transport settings for a LAN path carrying at most `path_max_datagram` bytes.
pub fn transport_config(settings: &QuicSettings, path_max_datagram: usize) -> TransportConfig {
    let path = u16::try_from(path_max_datagram).unwrap_or(u16::MAX);
    let initial = INITIAL_DATAGRAM.min(path).max(MIN_QUIC_DATAGRAM);
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(path.max(initial));
    let mut config = TransportConfig::default();
    config
        // One stream, stream 0, opened by the client; nothing else may be opened.
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .stream_receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .initial_rtt(INITIAL_RTT)
        .initial_mtu(initial)
        .min_mtu(MIN_QUIC_DATAGRAM.min(initial))
        .mtu_discovery_config(Some(mtu))
        // ICE's consent checks end a silent session (disconnected after 5 s); QUIC's idle
        // timeout is only a backstop behind them, and keep-alives keep it from firing on a
        // quiet but healthy session.
        .max_idle_timeout(IdleTimeout::try_from(super::QUIC_IDLE_TIMEOUT).ok())
        .keep_alive_interval(Some(super::ICE_KEEPALIVE_INTERVAL))
        .enable_segmentation_offload(settings.max_segments > 1)
        .allow_spin(false);
    match settings.congestion {
        Congestion::Bbr => config.congestion_controller_factory(Arc::new(BbrConfig::default())),
        Congestion::Cubic => config.congestion_controller_factory(Arc::new(CubicConfig::default())),
        Congestion::NewReno => {
            config.congestion_controller_factory(Arc::new(NewRenoConfig::default()))
        }
    };
    config
}

/// What the QUIC transport is made from.
pub struct QuicParams<'a> {
    pub credentials: &'a Credentials,
    pub peer: DeviceId,
    pub is_client: bool,
    pub settings: &'a QuicSettings,
    pub path_max_datagram: usize,
    /// The largest frame we accept (our `a=max-message-size`).
    pub max_incoming: usize,
    /// The largest frame the peer accepts (its `a=max-message-size`).
    pub max_outgoing: usize,
    pub seed: [u8; 32],
}

pub struct Quic {
    peer: DeviceId,
    is_client: bool,
    endpoint: Endpoint,
    handle: Option<ConnectionHandle>,
    connection: Option<Box<Connection>>,
    /// The client's configuration until ICE selects a pair and it connects.
    client_config: Option<ClientConfig>,
    /// The id of a certificate our verifier refused.
    refused: Arc<Mutex<Option<DeviceId>>>,
    /// When the channel must be open (set when ICE selects a pair).
    deadline: Option<Instant>,
    authenticated: bool,
    stream: Option<StreamId>,
    open: bool,
    /// Send the opening frame (tests of a client that does not turn it off).
    send_opening_frame: bool,
    reader: FrameReader,
    max_outgoing: usize,
    /// Frames (header and body as separate pieces) quinn's send window did not take yet.
    unsent: VecDeque<Bytes>,
    unsent_bytes: usize,
    max_segments: usize,
    buffer: Vec<u8>,
    closed: bool,
}

fn crypto_error(e: impl std::fmt::Display) -> LinkError {
    LinkError::Crypto(e.to_string())
}

impl Quic {
    pub fn new(params: QuicParams<'_>) -> Result<Self, LinkError> {
        let QuicParams {
            credentials,
            peer,
            is_client,
            settings,
            path_max_datagram,
            max_incoming,
            max_outgoing,
            seed,
        } = params;
        let mut rng = StdRng::from_seed(seed);
        let mut key = [0u8; 64];
        rng.fill_bytes(&mut key);
        let mut endpoint_config = EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &key,
        )));
        // RFC 9443 demultiplexing: every QUIC packet must start with 64-127 or 192-255.
        endpoint_config.grease_quic_bit(false);
        // One connection per endpoint, routed by ICE: connection ids would only cost bytes.
        endpoint_config.cid_generator(|| Box::new(RandomConnectionIdGenerator::new(0)));
        let max_payload = u16::try_from(path_max_datagram)
            .unwrap_or(u16::MAX)
            .max(MIN_QUIC_DATAGRAM);
        endpoint_config
            .max_udp_payload_size(max_payload)
            .map_err(|e| LinkError::Quic(e.to_string()))?;
        let transport = Arc::new(transport_config(settings, path_max_datagram));
        let refused = Arc::new(Mutex::new(None));
        let mut endpoint_seed = [0u8; 32];
        rng.fill_bytes(&mut endpoint_seed);
        let (server, client_config) = if is_client {
            let tls = pinned::client_config(credentials, peer.clone(), refused.clone())
                .map_err(crypto_error)?;
            let crypto = QuicClientConfig::try_from(tls).map_err(crypto_error)?;
            let mut config = ClientConfig::new(Arc::new(crypto));
            config.transport_config(transport);
            let mut first_id = [0u8; 16];
            rng.fill_bytes(&mut first_id);
            config.initial_dst_cid_provider(Arc::new(move || ConnectionId::new(&first_id)));
            (None, Some(config))
        } else {
            let tls = pinned::server_config(credentials, peer.clone(), refused.clone())
                .map_err(crypto_error)?;
            let crypto = QuicServerConfig::try_from(tls).map_err(crypto_error)?;
            let mut token_secret = [0u8; 64];
            rng.fill_bytes(&mut token_secret);
            let token_key =
                ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&token_secret);
            let mut config = ServerConfig::new(Arc::new(crypto), Arc::new(token_key));
            let mut tokens = ValidationTokenConfig::default();
            tokens.sent(0);
            config
                .transport_config(transport)
                .validation_token_config(tokens)
                .migration(false)
                .max_incoming(1)
                .incoming_buffer_size(INCOMING_BUFFER)
                .incoming_buffer_size_total(INCOMING_BUFFER);
            (Some(Arc::new(config)), None)
        };
        let endpoint = Endpoint::new(Arc::new(endpoint_config), server, true, Some(endpoint_seed));
        Ok(Self {
            peer,
            is_client,
            endpoint,
            handle: None,
            connection: None,
            client_config,
            refused,
            deadline: None,
            authenticated: false,
            stream: None,
            open: false,
            send_opening_frame: true,
            reader: FrameReader::new(max_incoming),
            max_outgoing,
            unsent: VecDeque::new(),
            unsent_bytes: 0,
            max_segments: settings.max_segments.max(1),
            buffer: Vec::new(),
            closed: false,
        })
    }

    pub fn is_open(&self) -> bool {
        self.open && !self.closed
    }

    pub fn max_message_size(&self) -> usize {
        self.max_outgoing
    }

    /// Tests: a client that does not send the opening frame (an independent peer may not).
    #[cfg(test)]
    pub fn skip_opening_frame(&mut self) {
        self.send_opening_frame = false;
    }

    /// ICE selected a pair: the clock for the channel starts, and the client connects.
    pub fn on_pair_selected(&mut self, now: Instant, sink: &mut Sink<'_>) {
        if self.deadline.is_none() {
            self.deadline = Some(now + OPEN_TIMEOUT);
        }
        let Some(config) = self.client_config.take() else {
            return;
        };
        match self
            .endpoint
            .connect(now, config, PEER_ADDRESS, pinned::SERVER_NAME)
        {
            Ok((handle, connection)) => {
                self.handle = Some(handle);
                self.connection = Some(Box::new(connection));
            }
            Err(err) => sink.lose(LinkError::QuicSetup(format!("connecting: {err}"))),
        }
    }

    /// A QUIC datagram from the selected pair's remote candidate.
    pub fn handle_datagram(
        &mut self,
        bytes: &[u8],
        ecn: Option<u8>,
        now: Instant,
        sink: &mut Sink<'_>,
    ) {
        let ecn = ecn.and_then(EcnCodepoint::from_bits);
        let mut response = Vec::new();
        match self.endpoint.handle(
            now,
            PEER_ADDRESS,
            None,
            ecn,
            BytesMut::from(bytes),
            &mut response,
        ) {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(connection) = self
                    .connection
                    .as_mut()
                    .filter(|_| self.handle == Some(handle))
                {
                    connection.handle_event(event);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.is_client || self.connection.is_some() {
                    // One connection per session: a second handshake is not served.
                    self.endpoint.ignore(incoming);
                    return;
                }
                match self.endpoint.accept(incoming, now, &mut response, None) {
                    Ok((handle, connection)) => {
                        self.handle = Some(handle);
                        self.connection = Some(Box::new(connection));
                    }
                    Err(err) => {
                        if let Some(transmit) = err.response {
                            response.truncate(transmit.size);
                            sink.datagram(response, transmit.segment_size, None);
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => {
                // Stateless answers (version negotiation, a reset): quinn's own.
                response.truncate(transmit.size);
                sink.datagram(response, transmit.segment_size, None);
            }
            None => sink.dropped(),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant, sink: &mut Sink<'_>) {
        if !self.open && self.deadline.is_some_and(|at| at <= now) {
            let what = if self.authenticated {
                "stream 0 was not opened"
            } else {
                "the handshake did not complete"
            };
            self.close_with(now, CLOSE_NORMAL, b"timeout", sink);
            sink.lose(LinkError::QuicTimeout(what));
            return;
        }
        if let Some(connection) = self.connection.as_mut()
            && connection.poll_timeout().is_some_and(|t| t <= now)
        {
            connection.handle_timeout(now);
        }
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let connection = self.connection.as_mut().and_then(|c| c.poll_timeout());
        let deadline = self.deadline.filter(|_| !self.open);
        [connection, deadline].into_iter().flatten().min()
    }

    /// Moves quinn's events, stream 0's messages and its transmits into `sink`; returns whether
    /// anything happened.
    pub fn pump(&mut self, now: Instant, sink: &mut Sink<'_>) -> bool {
        if self.closed {
            return false;
        }
        let mut progressed = false;
        let (Some(handle), Some(connection)) = (self.handle, self.connection.as_mut()) else {
            return false;
        };
        while let Some(event) = connection.poll_endpoint_events() {
            if let Some(event) = self.endpoint.handle_event(handle, event) {
                connection.handle_event(event);
            }
        }
        while let Some(event) = self.connection.as_mut().and_then(|c| c.poll()) {
            progressed = true;
            match event {
                QuicEvent::Connected => self.on_connected(now, sink),
                QuicEvent::ConnectionLost { reason } => {
                    let error = self.lost_error(reason);
                    // A failure found here (our verifier refused the peer's certificate, a
                    // protocol violation) has a CONNECTION_CLOSE queued: the peer learns of it
                    // at once instead of from its idle timer.
                    self.send_pending(now, sink);
                    self.closed = true;
                    sink.lose(error);
                    return true;
                }
                QuicEvent::Stream(StreamEvent::Opened { dir: Dir::Bi }) if !self.is_client => {
                    self.accept_stream(sink);
                }
                QuicEvent::Stream(StreamEvent::Stopped { id, .. })
                | QuicEvent::Stream(StreamEvent::Finished { id })
                    if Some(id) == self.stream =>
                {
                    self.close_with(now, CLOSE_CHANNEL_CLOSED, b"stream 0 ended", sink);
                    sink.lose(LinkError::QuicChannelClosed);
                    return true;
                }
                _ => {}
            }
        }
        if self.read_stream(now, sink) {
            progressed = true;
        }
        if self.closed {
            return true;
        }
        self.flush_unsent();
        if self.transmit(now, sink) {
            progressed = true;
        }
        progressed
    }

    fn on_connected(&mut self, now: Instant, sink: &mut Sink<'_>) {
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        // The verifier already refused any other key; this also covers a handshake that
        // somehow finished without one.
        let presented = connection
            .crypto_session()
            .peer_identity()
            .and_then(|identity| {
                identity
                    .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|chain| {
                chain
                    .first()
                    .map(|der| DeviceId::from_certificate_der(der.as_ref()))
            });
        match presented {
            Some(id) if id == self.peer => {}
            Some(got) => {
                self.close_with(now, CLOSE_CERTIFICATE, b"certificate refused", sink);
                sink.lose(LinkError::FingerprintMismatch {
                    expected: self.peer.clone(),
                    got,
                });
                return;
            }
            None => {
                self.close_with(now, CLOSE_CERTIFICATE, b"no certificate", sink);
                sink.lose(LinkError::NoCertificate);
                return;
            }
        }
        self.authenticated = true;
        sink.event(Event::Authenticated);
        if !self.is_client {
            return;
        }
        let Some(id) = connection.streams().open(Dir::Bi) else {
            self.closed = true;
            sink.lose(LinkError::QuicSetup("the peer allows no stream".into()));
            return;
        };
        if id.index() != CHANNEL_STREAM {
            self.closed = true;
            sink.lose(LinkError::QuicSetup(format!("opened {id}, not stream 0")));
            return;
        }
        self.stream = Some(id);
        if self.send_opening_frame {
            self.queue_frame(opening_frame());
        }
        self.open = true;
        sink.event(Event::ChannelOpen);
    }

    /// The server takes the client's stream 0; any other stream is never accepted (the
    /// transport parameters allow the client one).
    fn accept_stream(&mut self, sink: &mut Sink<'_>) {
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        while let Some(id) = connection.streams().accept(Dir::Bi) {
            if self.stream.is_none() && id.index() == CHANNEL_STREAM {
                self.stream = Some(id);
                self.open = true;
                sink.event(Event::ChannelOpen);
            }
        }
    }

    /// Reads stream 0 into messages; returns whether anything was read.
    fn read_stream(&mut self, now: Instant, sink: &mut Sink<'_>) -> bool {
        let (Some(id), Some(connection)) = (self.stream, self.connection.as_mut()) else {
            return false;
        };
        let mut stream = connection.recv_stream(id);
        let Ok(mut chunks) = stream.read(true) else {
            return false;
        };
        let mut progressed = false;
        let mut ended = None;
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => {
                    progressed = true;
                    if let Err(error) = self.reader.push(&chunk.bytes, &mut |message| {
                        sink.message(message);
                    }) {
                        ended = Some((CLOSE_FRAME_TOO_LARGE, LinkError::from(error)));
                        break;
                    }
                }
                // The peer finished stream 0: the channel is over.
                Ok(None) => {
                    ended = Some((CLOSE_CHANNEL_CLOSED, LinkError::QuicChannelClosed));
                    break;
                }
                Err(ReadError::Blocked) => break,
                Err(ReadError::Reset(_)) => {
                    ended = Some((CLOSE_CHANNEL_CLOSED, LinkError::QuicChannelClosed));
                    break;
                }
            }
        }
        // Hands the read bytes back to flow control (credit for the peer).
        let _ = chunks.finalize();
        if let Some((code, error)) = ended {
            let reason: &[u8] = if code == CLOSE_FRAME_TOO_LARGE {
                b"frame too large"
            } else {
                b"stream 0 ended"
            };
            self.close_with(now, code, reason, sink);
            sink.lose(error);
        }
        progressed
    }

    /// Sends quinn's packets, `max_segments` per transmit.
    fn transmit(&mut self, now: Instant, sink: &mut Sink<'_>) -> bool {
        let Some(connection) = self.connection.as_mut() else {
            return false;
        };
        let mut any = false;
        loop {
            let mtu = usize::from(connection.current_mtu()).max(1);
            let segments = self.max_segments.min((MAX_GSO_BYTES / mtu).max(1));
            self.buffer.clear();
            let Some(transmit) = connection.poll_transmit(now, segments, &mut self.buffer) else {
                return any;
            };
            any = true;
            let mut bytes = std::mem::take(&mut self.buffer);
            bytes.truncate(transmit.size);
            sink.datagram(bytes, transmit.segment_size, transmit.ecn.map(|e| e as u8));
        }
    }

    fn queue_frame(&mut self, message: Vec<u8>) {
        let len = message.len();
        self.unsent
            .push_back(Bytes::copy_from_slice(&framing::header(len)));
        if len > 0 {
            self.unsent.push_back(Bytes::from(message));
        }
        self.unsent_bytes += framing::HEADER_LEN + len;
    }

    /// Hands queued frames to quinn as far as its send window takes them.
    fn flush_unsent(&mut self) {
        let (Some(id), Some(connection)) = (self.stream, self.connection.as_mut()) else {
            return;
        };
        while !self.unsent.is_empty() {
            let (front, _) = self.unsent.as_mut_slices();
            let front_len = front.len();
            let written = match connection.send_stream(id).write_chunks(front) {
                Ok(written) => written,
                // Blocked: the window is full (a `Writable` event follows); anything else:
                // the stream is gone, and its loss is reported by the events.
                Err(_) => return,
            };
            self.unsent_bytes -= written.bytes;
            self.unsent.drain(..written.chunks);
            // A chunk written in part stays at the front, advanced in place: the window is full.
            if written.chunks < front_len {
                return;
            }
        }
    }

    /// Queues one message on stream 0.
    pub fn send(&mut self, data: &[u8]) -> Result<(), SendError> {
        if !self.is_open() || self.stream.is_none() {
            return Err(SendError::NotOpen);
        }
        if data.len() > self.max_outgoing {
            return Err(SendError::TooLarge {
                len: data.len(),
                max: self.max_outgoing,
            });
        }
        self.flush_unsent();
        if self.unsent_bytes > 0 && self.unsent_bytes + data.len() > SEND_BUFFER {
            return Err(SendError::BufferFull);
        }
        self.queue_frame(data.to_vec());
        self.flush_unsent();
        Ok(())
    }

    /// Queues messages while fewer than `limit` bytes wait for quinn's send window; returns the
    /// rest in order. A message over the peer's limit is dropped, as [`Self::send`] refuses it.
    pub fn send_batch(
        &mut self,
        mut messages: VecDeque<Vec<u8>>,
        limit: usize,
    ) -> (VecDeque<Vec<u8>>, u64) {
        if !self.is_open() || self.stream.is_none() {
            return (messages, 0);
        }
        let mut sent = 0;
        loop {
            self.flush_unsent();
            if self.unsent_bytes >= limit {
                break;
            }
            let Some(data) = messages.pop_front() else {
                break;
            };
            if data.len() > self.max_outgoing {
                tracing::debug!(
                    "a {}-byte message exceeds the peer's {}: dropped",
                    data.len(),
                    self.max_outgoing
                );
                continue;
            }
            self.queue_frame(data);
            sent += 1;
        }
        self.flush_unsent();
        (messages, sent)
    }

    /// Bytes queued here that quinn's send window has not taken yet.
    pub fn buffered_amount(&self) -> usize {
        self.unsent_bytes
    }

    /// Ends the connection now (CONNECTION_CLOSE goes out with the next transmits).
    pub fn close(&mut self, now: Instant, sink: &mut Sink<'_>) {
        self.close_with(now, CLOSE_NORMAL, b"bye", sink);
    }

    fn close_with(&mut self, now: Instant, code: u32, reason: &[u8], sink: &mut Sink<'_>) {
        if self.closed {
            return;
        }
        if let Some(connection) = self.connection.as_mut() {
            connection.close(now, VarInt::from_u32(code), Bytes::copy_from_slice(reason));
        }
        self.send_pending(now, sink);
        self.closed = true;
    }

    /// Hands whatever quinn has to send now (a CONNECTION_CLOSE at the end) to `sink`, one
    /// datagram at a time.
    fn send_pending(&mut self, now: Instant, sink: &mut Sink<'_>) {
        if let Some(connection) = self.connection.as_mut() {
            let mut buffer = Vec::new();
            while let Some(transmit) = connection.poll_transmit(now, 1, &mut buffer) {
                buffer.truncate(transmit.size);
                sink.datagram(std::mem::take(&mut buffer), None, None);
            }
        }
    }

    fn lost_error(&mut self, reason: ConnectionError) -> LinkError {
        if let Some(got) = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return LinkError::FingerprintMismatch {
                expected: self.peer.clone(),
                got,
            };
        }
        let text = match &reason {
            ConnectionError::ApplicationClosed(close)
                if close.error_code == VarInt::from_u32(CLOSE_FRAME_TOO_LARGE) =>
            {
                "the peer refused a frame as too large".to_owned()
            }
            other => other.to_string(),
        };
        if self.open {
            LinkError::Quic(text)
        } else {
            LinkError::QuicSetup(text)
        }
    }
}

/// The opening frame's message: a `progress` for a transfer no one has.
pub fn opening_frame() -> Vec<u8> {
    transfer::encode(&transfer::Message::Progress {
        id: OPENING_ID,
        next: 0,
    })
}
