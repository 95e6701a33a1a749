//! The WebRTC adapter (webrtc-rs on its smol runtime): builds peer connections with the node's
//! identity certificate as the DTLS certificate, ICE confined to the addresses fsnode chose,
//! and webrtc-rs's own mDNS candidate mode off (fsnode's discovery already knows addresses, and
//! that mode would bind port 5353 and multicast on every interface).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{debug, warn};
use webrtc::peer_connection::{
    RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
};

use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::setting_engine::SctpMaxMessageSize;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    SettingEngineBuilder,
};

use crate::core::DeviceId;
use crate::core::negotiation::{Action, Input as NegotiationInput};
use crate::core::node::Input;
use crate::core::sdp;
use crate::core::signal::Candidate;
use crate::identity::Identity;
use crate::shell::runtime;

/// The pre-negotiated data channel of spec 3.3: label `fileshare`, negotiated, id 0, ordered,
/// reliable.
pub const CHANNEL_LABEL: &str = "fileshare";

/// Bytes a channel may have queued in SCTP before sends wait (32 chunks of 128 KiB). Half the
/// largest SCTP window fsnode grants, which on a LAN is still far more than a round trip's
/// worth: 8 MiB measured no faster (gigabit 99 vs 101 MB/s, one to three 130 vs 142 MB/s) and
/// cost the sender 15 MiB more peak RSS (88 vs 76 MiB sending to three peers).
pub const SEND_BUFFER_LIMIT: usize = 4 * 1024 * 1024;

/// Threads that run the peer connections' drivers (webrtc-rs's dedicated reactor pool, shared
/// round-robin by all connections of the process): one per core, at most 4, so one transfer's
/// per-packet work runs beside the node's own and several peers spread over the cores.
pub fn reactor_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// The writers of open channels, by peer: where the node's transfer messages go.
type Outgoing = Arc<std::sync::Mutex<HashMap<DeviceId, async_channel::Sender<Vec<u8>>>>>;

/// Time between ICE connectivity checks (webrtc-rs: 200 ms).
pub const ICE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
/// Checks per candidate pair (webrtc-rs: 7 at 200 ms); 28 at 50 ms keeps its 1.4 s budget.
pub const ICE_MAX_BINDING_REQUESTS: u16 = 28;

/// The largest message webrtc-rs can take, and what fsnode advertises in offers and answers:
/// spec 4 then gives 128 KiB chunks between fsnode nodes (64 KiB would give 32 KiB ones, with
/// four times the messages, store operations and progress round trips per byte).
pub const MAX_MESSAGE_SIZE: u32 = crate::core::transfers::MAX_MESSAGE_BYTES as u32;

/// The remote description as webrtc-rs is given it: its `a=max-message-size` raised to ours
/// ([`sdp::with_max_message_size_at_least`] says why), so webrtc-rs receives every message a
/// peer may send us, whatever that peer advertised for itself. The core reads the original.
fn remote_sdp_for_webrtc_rs(sdp: &str) -> String {
    sdp::with_max_message_size_at_least(sdp, u64::from(MAX_MESSAGE_SIZE))
}

/// The smallest MTU among the interfaces of `udp_addrs` (every non-loopback interface for an
/// unspecified address); `None` when none can be read.
pub fn interface_mtu(udp_addrs: &[SocketAddr]) -> Option<u32> {
    let interfaces = if_addrs::get_if_addrs().ok()?;
    interfaces
        .iter()
        .filter(|i| {
            udp_addrs.iter().any(|a| {
                if a.ip().is_unspecified() {
                    !i.is_loopback() && a.is_ipv4() == i.ip().is_ipv4()
                } else {
                    a.ip() == i.ip()
                }
            })
        })
        .filter_map(|i| {
            std::fs::read_to_string(format!("/sys/class/net/{}/mtu", i.name))
                .ok()?
                .trim()
                .parse::<u32>()
                .ok()
        })
        .min()
}

/// webrtc-rs's SCTP packet budget (1191 bytes) fits a TURN-relayed IPv6 path with a 1280-byte
/// MTU. fsnode only talks on its own LAN interfaces, so it fills what they carry: the
/// interface MTU less 48 bytes of IPv6 + UDP headers and 37 of DTLS record (AES-GCM), and no
/// more than a 1500-byte datagram, the largest webrtc-rs receives (its GRO buffers hold
/// 1500-byte segments, webrtc-0.21.1 src/peer_connection/transport/mod.rs
/// `GRO_RECV_SEGMENT_LEN`). On Ethernet: 1415 instead of 1191, 19 % more data per packet,
/// so 16 % fewer packets to encrypt, send, receive and acknowledge.
pub fn sctp_mtu(interface_mtu: Option<u32>) -> u32 {
    const DEFAULT: u32 = 1191;
    const HEADERS: u32 = 48 + 37;
    const MAX_DATAGRAM: u32 = 1500;
    match interface_mtu {
        Some(mtu) => (mtu.min(MAX_DATAGRAM).saturating_sub(HEADERS)).max(DEFAULT),
        None => DEFAULT,
    }
}

/// The SCTP receive window (`a_rwnd`, what the peer may have in flight to us) for a UDP socket
/// receive buffer of `socket_buffer` bytes as the kernel reports it: a quarter of it, within
/// 1 MiB (webrtc-rs's default) and 8 MiB. A window as large as the socket buffer overflows it
/// when the node is slow to read for a moment (each datagram costs the kernel about twice its
/// size); at a quarter, no drops were seen. The window also bounds what the receiver holds
/// in SCTP's reassembly queue, whatever the sender does.
pub fn sctp_receive_window(socket_buffer: usize) -> u32 {
    const MIN: usize = 1024 * 1024;
    const MAX: usize = 8 * 1024 * 1024;
    u32::try_from((socket_buffer / 4).clamp(MIN, MAX)).unwrap_or(u32::MAX)
}

pub fn channel_init() -> RTCDataChannelInit {
    RTCDataChannelInit {
        ordered: true,
        max_packet_life_time: None,
        max_retransmits: None,
        protocol: String::new(),
        negotiated: Some(0),
    }
}

/// A peer connection for one remote device, bound to `udp_addrs` only, plus its `fileshare`
/// channel (created before any offer or answer, as the spec requires).
pub async fn build_peer_connection(
    identity: &Identity,
    udp_addrs: Vec<SocketAddr>,
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> webrtc::error::Result<(Arc<dyn PeerConnection>, Arc<dyn DataChannel>)> {
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_sctp_max_message_size(SctpMaxMessageSize::Bounded(MAX_MESSAGE_SIZE))
        .with_sctp_max_receive_buffer_size(sctp_receive_window(runtime::udp_buffer_bytes()))
        .with_sctp_mtu(sctp_mtu(interface_mtu(&udp_addrs)))
        // ICE checks every 50 ms instead of 200 (same 1.4 s budget per pair): on a LAN the
        // round trip is far below either, so the pair is found sooner.
        .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
        .build();
    let configuration = RTCConfigurationBuilder::new()
        .with_certificates(vec![identity.certificate.clone()])
        .build();
    let pc: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_runtime(runtime::webrtc())
            .with_configuration(configuration)
            .with_setting_engine(settings)
            .with_handler(handler)
            .with_udp_addrs(udp_addrs)
            // Back-pressure: a send waits while this much is queued in SCTP for the channel.
            .with_data_channel_send_buffer_limit(SEND_BUFFER_LIMIT)
            // Each connection's driver (ICE, DTLS, SCTP, UDP) on a thread of its own instead of
            // sharing smol's executor thread with the channel reader and writer: loopback 174 ->
            // 212-232 MB/s (BENCHMARKS.md).
            .with_dedicated_reactor_pool_size(reactor_threads())
            .build()
            .await?,
    );
    let channel = pc
        .create_data_channel(CHANNEL_LABEL, Some(channel_init()))
        .await?;
    Ok((pc, channel))
}

/// Carries out the negotiation machines' actions: one task per peer owns its peer connection
/// and performs that peer's actions strictly in order, reporting back as core inputs.
pub struct RtcAdapter {
    identity: Arc<Identity>,
    udp_addrs: Vec<SocketAddr>,
    inputs: async_channel::Sender<Input>,
    peers: HashMap<DeviceId, async_channel::Sender<Action>>,
    outgoing: Outgoing,
}

impl RtcAdapter {
    pub fn new(
        identity: Arc<Identity>,
        udp_addrs: Vec<SocketAddr>,
        inputs: async_channel::Sender<Input>,
    ) -> Self {
        Self {
            identity,
            udp_addrs,
            inputs,
            peers: HashMap::new(),
            outgoing: Outgoing::default(),
        }
    }

    /// Queues one binary message on `peer`'s `fileshare` channel; false if no channel is open.
    /// (Bounded by the transfer windows: the core never has more than a window in flight.)
    pub fn send(&self, peer: &DeviceId, data: Vec<u8>) -> bool {
        let outgoing = self.outgoing.lock().unwrap_or_else(|e| e.into_inner());
        outgoing
            .get(peer)
            .is_some_and(|tx| tx.try_send(data).is_ok())
    }

    pub fn act(&mut self, peer: &DeviceId, action: Action) {
        let closing = action == Action::Close;
        if closing && !self.peers.contains_key(peer) {
            return;
        }
        let tx = self.peers.entry(peer.clone()).or_insert_with(|| {
            let (tx, rx) = async_channel::unbounded();
            let task = PeerTask {
                peer: peer.clone(),
                identity: self.identity.clone(),
                udp_addrs: self.udp_addrs.clone(),
                inputs: self.inputs.clone(),
                outgoing: self.outgoing.clone(),
                connection: None,
            };
            runtime::spawn(task.run(rx)).detach();
            tx
        });
        // The channel is unbounded and the task only stops after `Close`, which removes it.
        let _ = tx.try_send(action);
        if closing {
            self.peers.remove(peer);
        }
    }
}

struct PeerTask {
    peer: DeviceId,
    identity: Arc<Identity>,
    udp_addrs: Vec<SocketAddr>,
    inputs: async_channel::Sender<Input>,
    outgoing: Outgoing,
    connection: Option<(Arc<dyn PeerConnection>, Arc<dyn DataChannel>)>,
}

impl PeerTask {
    async fn run(mut self, actions: async_channel::Receiver<Action>) {
        while let Ok(action) = actions.recv().await {
            let closing = action == Action::Close;
            if let Err(err) = self.perform(action).await {
                warn!(peer = %self.peer, "WebRTC: {err}");
                self.close().await;
                self.report(NegotiationInput::Lost {
                    reason: format!("WebRTC error: {err}"),
                })
                .await;
            }
            if closing {
                self.close().await;
                return;
            }
        }
        self.close().await;
    }

    async fn perform(&mut self, action: Action) -> webrtc::error::Result<()> {
        match action {
            Action::CreateOffer => {
                let pc = self.connection().await?;
                let offer = pc.create_offer(None).await?;
                pc.set_local_description(offer.clone()).await?;
                self.report(NegotiationInput::LocalOffer { sdp: offer.sdp })
                    .await;
            }
            Action::Rollback => {
                if let Some((pc, _)) = &self.connection {
                    pc.set_local_description(RTCSessionDescription::rollback(None)?)
                        .await?;
                }
            }
            Action::AnswerOffer { sdp } => {
                let pc = self.connection().await?;
                pc.set_remote_description(RTCSessionDescription::offer(remote_sdp_for_webrtc_rs(
                    &sdp,
                ))?)
                .await?;
                self.report(NegotiationInput::RemoteApplied).await;
                let answer = pc.create_answer(None).await?;
                pc.set_local_description(answer.clone()).await?;
                self.report(NegotiationInput::LocalAnswer { sdp: answer.sdp })
                    .await;
            }
            Action::ApplyAnswer { sdp } => {
                if let Some((pc, _)) = &self.connection {
                    pc.set_remote_description(RTCSessionDescription::answer(
                        remote_sdp_for_webrtc_rs(&sdp),
                    )?)
                    .await?;
                    self.report(NegotiationInput::RemoteApplied).await;
                }
            }
            Action::AddCandidate(candidate) => {
                // End-of-candidates needs no action: ICE works with what it has.
                if let Some((pc, _)) = &self.connection
                    && !candidate.candidate.is_empty()
                {
                    let init = webrtc::peer_connection::RTCIceCandidateInit {
                        candidate: candidate.candidate,
                        sdp_mid: candidate.sdp_mid,
                        sdp_mline_index: candidate.sdp_mline_index,
                        username_fragment: None,
                        url: None,
                    };
                    if let Err(err) = pc.add_ice_candidate(init).await {
                        // A bad candidate from the peer is not fatal to the connection.
                        debug!(peer = %self.peer, "ignored a remote candidate: {err}");
                    }
                }
            }
            Action::Close => {}
        }
        Ok(())
    }

    /// The peer connection, built on first use with its `fileshare` channel.
    async fn connection(&mut self) -> webrtc::error::Result<Arc<dyn PeerConnection>> {
        if let Some((pc, _)) = &self.connection {
            return Ok(pc.clone());
        }
        let handler = Arc::new(Events {
            peer: self.peer.clone(),
            inputs: self.inputs.clone(),
        });
        let (pc, channel) =
            build_peer_connection(&self.identity, self.udp_addrs.clone(), handler).await?;
        runtime::spawn(watch_channel(
            self.peer.clone(),
            channel.clone(),
            self.inputs.clone(),
        ))
        .detach();
        let (tx, rx) = async_channel::unbounded::<Vec<u8>>();
        runtime::spawn(write_channel(self.peer.clone(), channel.clone(), rx)).detach();
        self.outgoing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.peer.clone(), tx);
        self.connection = Some((pc.clone(), channel));
        Ok(pc)
    }

    async fn close(&mut self) {
        // Dropping the writer's sender ends the writer task.
        self.outgoing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.peer);
        if let Some((pc, channel)) = self.connection.take() {
            let _ = channel.close().await;
            if let Err(err) = pc.close().await {
                debug!(peer = %self.peer, "closing the peer connection: {err}");
            }
        }
    }

    async fn report(&self, event: NegotiationInput) {
        let _ = self
            .inputs
            .send(Input::Rtc {
                peer: self.peer.clone(),
                event,
            })
            .await;
    }
}

/// Sends queued messages on the channel, waiting for SCTP buffer space (back-pressure).
async fn write_channel(
    peer: DeviceId,
    channel: Arc<dyn DataChannel>,
    messages: async_channel::Receiver<Vec<u8>>,
) {
    while let Ok(data) = messages.recv().await {
        // `Bytes` from a `Vec` and then `BytesMut` from the unique `Bytes`: no copy.
        let data = bytes::BytesMut::from(bytes::Bytes::from(data));
        if let Err(err) = channel.send(data).await {
            debug!(%peer, "data channel send failed: {err}");
            return;
        }
    }
}

/// Forwards the channel's open, close and binary messages.
async fn watch_channel(
    peer: DeviceId,
    channel: Arc<dyn DataChannel>,
    inputs: async_channel::Sender<Input>,
) {
    while let Some(event) = channel.poll().await {
        let report = match event {
            DataChannelEvent::OnOpen => NegotiationInput::ChannelOpen,
            DataChannelEvent::OnClose => NegotiationInput::Lost {
                reason: "data channel closed".into(),
            },
            // Text messages are ignored (spec 4); binary ones are transfer messages.
            DataChannelEvent::OnMessage(message) if !message.is_string => {
                let _ = inputs
                    .send(Input::Channel {
                        peer: peer.clone(),
                        data: Vec::from(message.data),
                    })
                    .await;
                continue;
            }
            _ => continue,
        };
        let closed = matches!(report, NegotiationInput::Lost { .. });
        let _ = inputs
            .send(Input::Rtc {
                peer: peer.clone(),
                event: report,
            })
            .await;
        if closed {
            return;
        }
    }
}

/// webrtc-rs's callbacks for one peer connection, turned into core inputs.
struct Events {
    peer: DeviceId,
    inputs: async_channel::Sender<Input>,
}

impl Events {
    async fn report(&self, event: NegotiationInput) {
        let _ = self
            .inputs
            .send(Input::Rtc {
                peer: self.peer.clone(),
                event,
            })
            .await;
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                // webrtc-rs leaves sdpMid empty; browsers need the data m-line's mid, "0".
                let sdp_mid = init
                    .sdp_mid
                    .filter(|mid| !mid.is_empty())
                    .or(Some("0".into()));
                self.report(NegotiationInput::LocalCandidate(Candidate {
                    candidate: init.candidate,
                    sdp_mid,
                    sdp_mline_index: init.sdp_mline_index.or(Some(0)),
                }))
                .await
            }
            Err(err) => debug!(peer = %self.peer, "local candidate not serialisable: {err}"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            // End of candidates, with the data m-line's mid and index like every candidate
            // (spec 3.2: browsers reject a candidate that has neither).
            self.report(NegotiationInput::LocalCandidate(Candidate {
                candidate: String::new(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
            }))
            .await;
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        debug!(peer = %self.peer, ?state, "connection state");
        if matches!(
            state,
            RTCPeerConnectionState::Disconnected | RTCPeerConnectionState::Failed
        ) {
            self.report(NegotiationInput::Lost {
                reason: format!("connection {state}"),
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::sdp;
    use std::time::SystemTime;

    /// A fresh identity in a temporary directory (kept alive by the returned guard).
    fn test_identity() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let (identity, _) = Identity::load_or_create(
            &dir.path().join("id.pem"),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_790_000_000),
        )
        .unwrap();
        (dir, identity)
    }

    #[test]
    fn transport_settings_follow_the_sockets() {
        // SCTP packets: Ethernet and loopback fill a 1500-byte datagram, a tunnel less, and
        // never below webrtc-rs's own budget.
        assert_eq!(sctp_mtu(Some(1500)), 1415);
        assert_eq!(sctp_mtu(Some(65536)), 1415);
        assert_eq!(sctp_mtu(Some(1420)), 1335);
        assert_eq!(sctp_mtu(Some(1280)), 1195);
        assert_eq!(sctp_mtu(Some(1200)), 1191);
        assert_eq!(sctp_mtu(None), 1191);
        // Receive window: a quarter of the socket buffer, 1 to 8 MiB.
        assert_eq!(sctp_receive_window(425_984), 1 << 20);
        assert_eq!(sctp_receive_window(8 << 20), 2 << 20);
        assert_eq!(sctp_receive_window(32 << 20), 8 << 20);
    }

    struct Quiet;
    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Quiet {}

    /// Spec 1 and 3.4 rest on this: the SDP fingerprint of a connection built with the node's
    /// certificate is the node's device id.
    #[test]
    fn sdp_fingerprint_of_a_peer_connection_is_the_device_id() {
        let (_dir, identity) = test_identity();
        runtime::block_on(async {
            let (pc, _channel) = build_peer_connection(
                &identity,
                vec!["127.0.0.1:0".parse().unwrap()],
                Arc::new(Quiet),
            )
            .await
            .unwrap();
            let offer = pc.create_offer(None).await.unwrap();
            let ids = sdp::sha256_fingerprints(&offer.sdp).unwrap();
            assert!(!ids.is_empty());
            assert!(
                ids.iter().all(|id| *id == identity.device_id),
                "{ids:?} vs {}",
                identity.device_id
            );
            pc.close().await.unwrap();
        });
    }

    struct Gathered(async_channel::Sender<String>);
    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Gathered {
        async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
            if let Ok(init) = event.candidate.to_json() {
                let _ = self.0.send(init.candidate).await;
            }
        }
        async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
            if state == RTCIceGatheringState::Complete {
                self.0.close();
            }
        }
    }

    /// ICE gathers only on the addresses fsnode hands it, with no mDNS (`.local`) candidates.
    #[test]
    fn ice_candidates_come_only_from_the_allowed_addresses() {
        let (_dir, identity) = test_identity();
        runtime::block_on(async {
            let (tx, rx) = async_channel::unbounded();
            let (pc, _channel) = build_peer_connection(
                &identity,
                vec!["127.0.0.1:0".parse().unwrap()],
                Arc::new(Gathered(tx)),
            )
            .await
            .unwrap();
            let offer = pc.create_offer(None).await.unwrap();
            pc.set_local_description(offer).await.unwrap();
            let mut candidates = Vec::new();
            let deadline = runtime::sleep(std::time::Duration::from_secs(10));
            futures_lite::future::or(
                async {
                    while let Ok(c) = rx.recv().await {
                        candidates.push(c);
                    }
                },
                async {
                    deadline.await;
                },
            )
            .await;
            assert!(!candidates.is_empty(), "no candidate gathered");
            for candidate in &candidates {
                assert!(
                    candidate.contains(" 127.0.0.1 ") && candidate.contains("typ host"),
                    "{candidate}"
                );
                assert!(!candidate.contains(".local"), "{candidate}");
            }
            pc.close().await.unwrap();
        });
    }

    /// Forwards every gathered candidate to the other side's channel.
    struct Candidates(async_channel::Sender<webrtc::peer_connection::RTCIceCandidateInit>);
    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Candidates {
        async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
            if let Ok(init) = event.candidate.to_json() {
                let _ = self.0.send(init).await;
            }
        }
    }

    /// Spec 4 lets a peer send us chunk messages up to the max-message-size *we* advertise,
    /// whatever it advertised for itself. A webrtc-rs peer stands in for an independent
    /// implementation that advertises the 64 KiB default but sends 128 KiB chunks to our
    /// 256 KiB: without [`remote_sdp_for_webrtc_rs`], webrtc-rs would size fsnode's receive
    /// buffer at 64 KiB and never deliver the message.
    #[test]
    fn a_peer_advertising_less_than_us_may_still_send_up_to_our_size() {
        let (_dir_a, fsnode_identity) = test_identity();
        let (_dir_b, other_identity) = test_identity();
        runtime::block_on(async {
            let (to_fsnode, fsnode_candidates) = async_channel::unbounded();
            let (to_other, other_candidates) = async_channel::unbounded();
            let addrs = || vec!["127.0.0.1:0".parse().unwrap()];
            let (fsnode, fsnode_channel) =
                build_peer_connection(&fsnode_identity, addrs(), Arc::new(Candidates(to_other)))
                    .await
                    .unwrap();
            let (other, other_channel) =
                build_peer_connection(&other_identity, addrs(), Arc::new(Candidates(to_fsnode)))
                    .await
                    .unwrap();
            // The other side offers, telling us it takes only 64 KiB messages.
            let offer = other.create_offer(None).await.unwrap();
            other.set_local_description(offer.clone()).await.unwrap();
            let advertised = offer
                .sdp
                .replace("a=max-message-size:262144", "a=max-message-size:65536");
            assert_eq!(sdp::max_message_size(&advertised), Some(65536));
            fsnode
                .set_remote_description(
                    RTCSessionDescription::offer(remote_sdp_for_webrtc_rs(&advertised)).unwrap(),
                )
                .await
                .unwrap();
            let answer = fsnode.create_answer(None).await.unwrap();
            assert_eq!(sdp::max_message_size(&answer.sdp), Some(262144));
            fsnode.set_local_description(answer.clone()).await.unwrap();
            other.set_remote_description(answer).await.unwrap();

            let trickle = |pc: Arc<dyn PeerConnection>, rx: async_channel::Receiver<_>| async move {
                while let Ok(candidate) = rx.recv().await {
                    let _ = pc.add_ice_candidate(candidate).await;
                }
            };
            let _to_fsnode = runtime::spawn(trickle(fsnode.clone(), fsnode_candidates));
            let _to_other = runtime::spawn(trickle(other.clone(), other_candidates));

            let message = vec![0x5a; 128 * 1024];
            let delivered = runtime::timeout(std::time::Duration::from_secs(20), async {
                while let Some(event) = other_channel.poll().await {
                    if matches!(event, DataChannelEvent::OnOpen) {
                        other_channel
                            .send(bytes::BytesMut::from(&message[..]))
                            .await
                            .map_err(|e| anyhow::anyhow!("send: {e}"))?;
                        break;
                    }
                }
                while let Some(event) = fsnode_channel.poll().await {
                    if let DataChannelEvent::OnMessage(received) = event {
                        return Ok(received.data.len());
                    }
                }
                anyhow::bail!("the channel closed")
            })
            .await;
            assert_eq!(delivered.unwrap(), message.len());
            fsnode.close().await.unwrap();
            other.close().await.unwrap();
        });
    }
}
