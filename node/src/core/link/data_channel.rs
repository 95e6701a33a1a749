//! The WebRTC data channel over ICE's selected pair: a DTLS endpoint (`rtc-dtls`) holding the
//! node's identity certificate, an SCTP socket (`dcsctp`) over DTLS application data, and
//! fsnode's one channel: `fileshare`, pre-negotiated stream 0, ordered, reliable, no DCEP
//! (spec 3.3). What every WebRTC peer speaks: browsers, aiortc, fsnode builds before QUIC.
//!
//! Roles: DTLS client/server follow `a=setup` (an answer from fsnode says `active`, as
//! browsers do). Both ends start SCTP once DTLS is up (simultaneous INIT is part of SCTP), and
//! the channel is open when SCTP is. The DTLS endpoint holds a single association keyed by a
//! placeholder address: ICE, not the 5-tuple, says where it lives.
//!
//! Identity: DTLS aborts unless the peer's certificate hashes to the device id this link was
//! made for; a mismatch is `LinkError::FingerprintMismatch`.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use dcsctp::api::{
    DcSctpSocket, Message, Options as SctpOptions, PpId, SendOptions, SocketEvent, SocketTime,
    StreamId, ZERO_CHECKSUM_ALTERNATE_ERROR_DETECTION_METHOD_LOWER_LAYER_DTLS,
};
use rtc_dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc_dtls::endpoint::{Endpoint as DtlsEndpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_shared::TransportProtocol;

use super::randomness::SeededProvider;
use super::{Event, LinkConfig, LinkError, SendError, Sink};
use crate::core::DeviceId;

/// The data channel's SCTP stream (pre-negotiated id 0).
pub const CHANNEL_STREAM: StreamId = StreamId(0);
/// WebRTC PPIDs (RFC 8831 8): binary, empty binary; text (51, 56) and DCEP (50) are ignored.
pub const PPID_BINARY: PpId = PpId(53);
pub const PPID_BINARY_EMPTY: PpId = PpId(57);

/// DTLS 1.2 record overhead with AES-GCM: 13 header + 8 explicit nonce + 16 tag.
pub const DTLS_RECORD_OVERHEAD: usize = 37;
/// The first DTLS flight is retransmitted after this long (doubling); RFC 6347 says 1 s, a
/// LAN's round trip is under a millisecond.
pub const DTLS_FLIGHT_INTERVAL: Duration = Duration::from_millis(200);
/// Where the one DTLS association lives inside the endpoint (routing is ICE's business).
const DTLS_ASSOCIATION: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 65535);
/// Below this an SCTP packet cannot carry its own headers and a useful chunk.
pub const MIN_SCTP_MTU: usize = 1024;

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

/// `data` as a binary message on the channel's stream. RFC 8831 6.6: an empty message is one
/// byte with the empty-binary PPID.
fn channel_message(data: Vec<u8>) -> Message {
    if data.is_empty() {
        Message::new(CHANNEL_STREAM, PPID_BINARY_EMPTY, vec![0])
    } else {
        Message::new(CHANNEL_STREAM, PPID_BINARY, data)
    }
}

fn dtls_error(e: impl std::fmt::Display) -> LinkError {
    LinkError::Dtls(e.to_string())
}

pub struct DataChannel {
    peer: DeviceId,
    epoch: Instant,
    endpoint: DtlsEndpoint,
    /// A client's handshake config until ICE selects a pair and it connects.
    pending_client: Option<Arc<HandshakeConfig>>,
    complete: bool,
    /// The certificate id the DTLS verifier saw when it refused one.
    refused_certificate: Arc<Mutex<Option<DeviceId>>>,
    sctp: Option<Box<dyn DcSctpSocket>>,
    options: SctpOptions,
    open: bool,
}

impl DataChannel {
    /// A DTLS endpoint ready for its handshake; SCTP follows once it completes.
    /// `max_outgoing`: the peer's max-message-size; `remote_port`: its SCTP port.
    pub fn new(
        config: &LinkConfig,
        provider: Arc<SeededProvider>,
        is_client: bool,
        sctp_mtu: usize,
        max_outgoing: usize,
        remote_port: u16,
        epoch: Instant,
    ) -> Result<Self, LinkError> {
        let refused = Arc::new(Mutex::new(None));
        let handshake = Arc::new(handshake_config(
            config,
            provider,
            refused.clone(),
            is_client,
        )?);
        let (endpoint, pending_client) = if is_client {
            (
                DtlsEndpoint::new(DTLS_ASSOCIATION, TransportProtocol::UDP, None),
                Some(handshake),
            )
        } else {
            (
                DtlsEndpoint::new(DTLS_ASSOCIATION, TransportProtocol::UDP, Some(handshake)),
                None,
            )
        };
        let tuning = &config.sctp;
        let mut options = SctpOptions {
            mtu: sctp_mtu,
            max_message_size: max_outgoing,
            max_receiver_window_buffer_size: tuning
                .receive_window
                .max(2 * config.max_message_size as usize),
            max_send_buffer_size: tuning.send_buffer.max(2 * max_outgoing),
            per_stream_send_queue_limit: tuning.send_buffer.max(2 * max_outgoing),
            rto_initial: tuning.rto_initial,
            rto_min: tuning.rto_min,
            rto_max: tuning.rto_max,
            min_rtt_variance: tuning.min_rtt_variance,
            delayed_ack_max_timeout: tuning.delayed_ack_max_timeout,
            max_timer_backoff_duration: Some(tuning.max_timer_backoff),
            cwnd_mtus_initial: tuning.cwnd_mtus_initial,
            max_burst: tuning.max_burst,
            remote_port,
            ..SctpOptions::default()
        };
        if tuning.zero_checksum {
            options.zero_checksum_alternate_error_detection_method =
                ZERO_CHECKSUM_ALTERNATE_ERROR_DETECTION_METHOD_LOWER_LAYER_DTLS;
        }
        Ok(Self {
            peer: config.peer.clone(),
            epoch,
            endpoint,
            pending_client,
            complete: false,
            refused_certificate: refused,
            sctp: None,
            options,
            open: false,
        })
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn max_message_size(&self) -> usize {
        self.options.max_message_size
    }

    pub fn sctp_mtu(&self) -> usize {
        self.options.mtu
    }

    /// Whether RFC 9653 zero checksum is in use (both ends agreed in SCTP's INIT).
    pub fn uses_zero_checksum(&self) -> bool {
        self.sctp
            .as_ref()
            .and_then(|s| s.get_metrics())
            .is_some_and(|m| m.uses_zero_checksum)
    }

    /// ICE selected a pair: a DTLS client starts its handshake.
    pub fn on_pair_selected(&mut self, now: Instant, sink: &mut Sink<'_>) {
        if let Some(handshake) = self.pending_client.take()
            && let Err(err) = self
                .endpoint
                .connect(now, DTLS_ASSOCIATION, handshake, None)
        {
            sink.lose(dtls_error(err));
        }
    }

    /// A DTLS record from the selected pair's remote candidate.
    pub fn handle_datagram(&mut self, bytes: &[u8], now: Instant, sink: &mut Sink<'_>) {
        let events = match self
            .endpoint
            .read(now, DTLS_ASSOCIATION, None, BytesMut::from(bytes))
        {
            Ok(events) => events,
            Err(err) => {
                // A bad record is dropped; a failed handshake ends the session.
                self.route_transmits(sink);
                if self.complete {
                    sink.dropped();
                } else {
                    sink.lose(self.handshake_error(err));
                }
                return;
            }
        };
        for event in events {
            match event {
                EndpointEvent::HandshakeComplete => self.on_complete(now, sink),
                EndpointEvent::ApplicationData(data) => {
                    if let Some(sctp) = self.sctp.as_mut() {
                        sctp.handle_input(&data);
                    }
                }
                EndpointEvent::PeerClosed => {
                    self.route_transmits(sink);
                    sink.lose(LinkError::DtlsClosed);
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
                expected: self.peer.clone(),
                got,
            },
            None => dtls_error(err),
        }
    }

    fn on_complete(&mut self, now: Instant, sink: &mut Sink<'_>) {
        self.complete = true;
        // The verifier already refused any other key; this re-check also catches a peer that
        // sent no certificate at all.
        let presented = self
            .endpoint
            .get_connection_state(DTLS_ASSOCIATION)
            .and_then(|state| state.peer_certificates.first())
            .map(|der| DeviceId::from_certificate_der(der));
        match presented {
            Some(id) if id == self.peer => {
                sink.event(Event::Authenticated);
                self.start_sctp(now);
            }
            Some(got) => sink.lose(LinkError::FingerprintMismatch {
                expected: self.peer.clone(),
                got,
            }),
            None => sink.lose(LinkError::NoCertificate),
        }
    }

    fn start_sctp(&mut self, now: Instant) {
        let mut socket = dcsctp::new_socket("fsnode", &self.options);
        socket.advance_time(self.socket_time(now));
        socket.connect();
        self.sctp = Some(socket);
    }

    pub fn handle_timeout(&mut self, now: Instant, sink: &mut Sink<'_>) {
        if self
            .endpoint
            .poll_timeout(&DTLS_ASSOCIATION)
            .is_some_and(|t| t <= now)
            && let Err(err) = self.endpoint.handle_timeout(DTLS_ASSOCIATION, now)
        {
            sink.lose(self.handshake_error(err));
            return;
        }
        let time = self.socket_time(now);
        if let Some(sctp) = self.sctp.as_mut() {
            sctp.advance_time(time);
        }
    }

    /// SCTP's events and messages and DTLS's records into `sink`; returns whether anything
    /// happened.
    pub fn pump(&mut self, now: Instant, sink: &mut Sink<'_>) -> bool {
        let mut progressed = self.route_transmits(sink);
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
                    if let Err(err) = self.endpoint.write(now, DTLS_ASSOCIATION, &packet) {
                        tracing::debug!("DTLS write: {err}");
                    }
                    self.route_transmits(sink);
                }
                SocketEvent::OnConnected() if !self.open => {
                    self.open = true;
                    sink.event(Event::ChannelOpen);
                }
                SocketEvent::OnClosed() => {
                    sink.lose(LinkError::Sctp("closed by the peer".into()));
                    return true;
                }
                SocketEvent::OnAborted(kind, reason) => {
                    sink.lose(LinkError::Sctp(format!("aborted ({kind:?}): {reason}")));
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
            sink.message(data);
        }
        progressed
    }

    /// DTLS records to the selected pair; returns whether there were any.
    fn route_transmits(&mut self, sink: &mut Sink<'_>) -> bool {
        let mut any = false;
        while let Some(transmit) = self.endpoint.poll_transmit() {
            any = true;
            sink.datagram(transmit.message.to_vec(), None, None);
        }
        any
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let dtls = self.endpoint.poll_timeout(&DTLS_ASSOCIATION);
        let sctp = self.sctp.as_ref().and_then(|sctp| {
            let t = sctp.poll_timeout();
            (t != SocketTime::infinite_future()).then(|| self.epoch + (t - SocketTime::zero()))
        });
        [dtls, sctp].into_iter().flatten().min()
    }

    fn socket_time(&self, now: Instant) -> SocketTime {
        SocketTime::zero() + now.saturating_duration_since(self.epoch)
    }

    /// Sends one binary message on the channel.
    pub fn send(&mut self, data: &[u8]) -> Result<(), SendError> {
        let Some(sctp) = self.sctp.as_mut().filter(|_| self.open) else {
            return Err(SendError::NotOpen);
        };
        let max = self.options.max_message_size;
        sctp.send(channel_message(data.to_vec()), &SendOptions::default())
            .map_err(|err| match err {
                dcsctp::api::SendError::MessageTooLarge { .. } => SendError::TooLarge {
                    len: data.len(),
                    max,
                },
                dcsctp::api::SendError::ResourceExhaustion => SendError::BufferFull,
                _ => SendError::NotOpen,
            })
    }

    /// Sends binary messages on the channel, in order, as one batch: SCTP bundles the small
    /// ones into shared packets (one packet per message costs a datagram, its encryption
    /// and its acknowledgement each). Messages are queued while the send buffer holds less
    /// than `limit` bytes, the earlier ones of the batch counted; returns those not queued,
    /// in order, to send once `buffered_amount` has fallen, and how many were queued. A
    /// message SCTP refuses for any other reason (the channel closing) is dropped, as
    /// [`Self::send`] would report it.
    pub fn send_batch(
        &mut self,
        mut messages: VecDeque<Vec<u8>>,
        limit: usize,
    ) -> (VecDeque<Vec<u8>>, u64) {
        let Some(sctp) = self.sctp.as_mut().filter(|_| self.open) else {
            return (messages, 0);
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
            return (messages, 0);
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
        (messages, (count - refused) as u64)
    }

    /// Bytes queued in SCTP and not yet acknowledged.
    pub fn buffered_amount(&self) -> usize {
        self.sctp
            .as_ref()
            .map_or(0, |s| s.buffered_amount(CHANNEL_STREAM))
    }

    /// DTLS `close_notify` so the peer knows at once.
    pub fn close(&mut self, now: Instant, sink: &mut Sink<'_>) {
        if self.complete {
            let _ = self.endpoint.close(now);
        }
        self.route_transmits(sink);
        self.sctp = None;
        self.open = false;
    }
}

fn handshake_config(
    config: &LinkConfig,
    provider: Arc<SeededProvider>,
    refused: Arc<Mutex<Option<DeviceId>>>,
    is_client: bool,
) -> Result<HandshakeConfig, LinkError> {
    let expected = config.peer.clone();
    // The only check on the peer's certificate (self-signed, so no chain to verify): it must
    // be the key of the device this session is for.
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
        .with_crypto_provider(provider)
        .with_certificates(vec![config.certificate.clone()])
        .with_client_auth(ClientAuthType::RequireAnyClientCert)
        .with_insecure_skip_verify(true)
        .with_verify_peer_certificate(Some(verify))
        .with_extended_master_secret(ExtendedMasterSecretType::Require)
        // fsnode carries no media, but WebRTC stacks expect `use_srtp` in every handshake
        // (aiortc's DTLS fails one without a negotiated profile, either role); the keys are
        // simply never used.
        .with_srtp_protection_profiles(vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ])
        .with_flight_interval(DTLS_FLIGHT_INTERVAL)
        .build(is_client, None)
        .map_err(dtls_error)
}
