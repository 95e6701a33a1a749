//! Sample facts for asking a plugin every question outside a running node: what
//! `fsnode plugins check` shows and what the policy benchmark measures.

use crate::core::policy::{FileFacts, NodeFacts, PeerFacts, Platform, QueuedFacts};
use crate::core::{DeviceId, DeviceType, TransferId};

/// One of everything a plugin may be asked about.
pub struct Samples {
    pub node: NodeFacts,
    pub peer: PeerFacts,
    /// A file with setuid set, so a mode answer shows the host's masking.
    pub file: FileFacts,
    /// Three queued sends over two peers, of different sizes.
    pub queue: Vec<QueuedFacts>,
    pub connected: Vec<DeviceId>,
}

impl Samples {
    pub fn new() -> Self {
        let node = NodeFacts {
            id: DeviceId::from_sha256(&[1; 32]),
            name: "this-node".into(),
            platform: Platform::current(),
            os: std::env::consts::OS,
            now_ms: 1_700_000_000_000,
        };
        let peer = PeerFacts {
            id: DeviceId::from_sha256(&[2; 32]),
            name: "sample-phone".into(),
            device_type: DeviceType::Mobile,
            addresses: vec![std::net::IpAddr::from([192, 0, 2, 7])],
            port: 7000,
        };
        let file = FileFacts {
            id: TransferId([7; 16]),
            name: "photos/holiday.jpg".into(),
            size: 3_500_000,
            mime: "image/jpeg".into(),
            mode: Some(0o4755),
            mtime: Some(1_700_000_000),
        };
        let queue = [(1u8, 2u8, 900_000u64), (2, 2, 10), (3, 3, 5_000)]
            .into_iter()
            .map(|(n, peer, size)| QueuedFacts {
                id: TransferId([n; 16]),
                peer: DeviceId::from_sha256(&[peer; 32]),
                name: format!("file-{n}"),
                size,
                mime: "application/octet-stream".into(),
                done_bytes: 0,
                queued_at_ms: i64::from(n),
            })
            .collect();
        let connected = vec![
            DeviceId::from_sha256(&[2; 32]),
            DeviceId::from_sha256(&[3; 32]),
        ];
        Self {
            node,
            peer,
            file,
            queue,
            connected,
        }
    }
}

impl Default for Samples {
    fn default() -> Self {
        Self::new()
    }
}
