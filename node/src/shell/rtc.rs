//! The WebRTC adapter (webrtc-rs on its smol runtime): builds peer connections with the node's
//! identity certificate as the DTLS certificate, ICE confined to the addresses fsnode chose,
//! and webrtc-rs's own mDNS candidate mode off (fsnode's discovery already knows addresses, and
//! that mode would bind port 5353 and multicast on every interface).

use std::net::SocketAddr;
use std::sync::Arc;

use rtc::ice::mdns::MulticastDnsMode;
use webrtc::data_channel::{DataChannel, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    SettingEngineBuilder,
};
use webrtc::runtime::{Runtime, SmolRuntime};

use crate::identity::Identity;

/// The pre-negotiated data channel of spec 3.3: label `fileshare`, negotiated, id 0, ordered,
/// reliable.
pub const CHANNEL_LABEL: &str = "fileshare";

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
        .build();
    let configuration = RTCConfigurationBuilder::new()
        .with_certificates(vec![identity.certificate.clone()])
        .build();
    let pc: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_runtime(Arc::new(SmolRuntime) as Arc<dyn Runtime>)
            .with_configuration(configuration)
            .with_setting_engine(settings)
            .with_handler(handler)
            .with_udp_addrs(udp_addrs)
            .build()
            .await?,
    );
    let channel = pc
        .create_data_channel(CHANNEL_LABEL, Some(channel_init()))
        .await?;
    Ok((pc, channel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::sdp;
    use std::time::SystemTime;

    struct Quiet;
    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Quiet {}

    /// Spec 1 and 3.4 rest on this: the SDP fingerprint of a connection built with the node's
    /// certificate is the node's device id.
    #[test]
    fn sdp_fingerprint_of_a_peer_connection_is_the_device_id() {
        let dir = tempfile::tempdir().unwrap();
        let (identity, _) = Identity::load_or_create(
            &dir.path().join("id.pem"),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_790_000_000),
        )
        .unwrap();
        smol::block_on(async {
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
}
