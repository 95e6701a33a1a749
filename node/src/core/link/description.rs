//! The session descriptions of fsnode's one data channel, written and read with `rtc-sdp`:
//! one BUNDLEd `m=application … UDP/DTLS/SCTP webrtc-datachannel` section (mid `0` in our
//! offers; an answer echoes the offer's mid), trickle ICE, `a=fingerprint:sha-256`,
//! `a=setup`, `a=sctp-port:5000`, `a=max-message-size` and, between fsnode nodes, spec 5's
//! `a=x-fsnode-max-datagram` and spec 6's `a=x-fsnode-quic:1`. What browsers, aiortc and
//! fsnode all write and accept (stacks that do not know an attribute ignore it).
//!
//! Every remote description came from the network: it is parsed with bounds (size, candidate
//! count) and anything fsnode does not need is ignored.

use std::io::Cursor;

use rtc_sdp::description::common::{Address, Attribute, ConnectionInformation};
use rtc_sdp::description::media::{MediaDescription, MediaName, RangedPort};
use rtc_sdp::description::session::{Origin, SessionDescription, TimeDescription, Timing};

use crate::core::DeviceId;
use crate::core::sdp as sdp_lines;

/// The media id fsnode gives its data section in offers.
pub const MID: &str = "0";
/// The SCTP port of both ends (RFC 8841 default; every WebRTC stack uses it).
pub const SCTP_PORT: u16 = 5000;
/// The attribute of spec 5: the largest UDP payload the sender of the description accepts.
pub const MAX_DATAGRAM_ATTRIBUTE: &str = "x-fsnode-max-datagram";
/// The attribute of spec 6: the sender runs QUIC (version 1 of spec 6) on the ICE path.
pub const QUIC_ATTRIBUTE: &str = "x-fsnode-quic";
/// The only value of [`QUIC_ATTRIBUTE`] this build knows.
pub const QUIC_VERSION: &str = "1";
/// Descriptions larger than this are refused before parsing (signaling lines are 256 KiB).
pub const MAX_DESCRIPTION_BYTES: usize = 256 * 1024;
/// Candidates read from one description; the rest are ignored.
pub const MAX_DESCRIPTION_CANDIDATES: usize = 64;
/// The `a=max-message-size` a peer is assumed to accept when it says nothing (RFC 8841).
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 64 * 1024;

/// RFC 5763 / 8842 `a=setup`: who starts the DTLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// Either; only in offers.
    ActPass,
    /// This side is the DTLS client.
    Active,
    /// This side is the DTLS server.
    Passive,
}

impl Setup {
    fn as_str(self) -> &'static str {
        match self {
            Setup::ActPass => "actpass",
            Setup::Active => "active",
            Setup::Passive => "passive",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "actpass" => Some(Setup::ActPass),
            "active" => Some(Setup::Active),
            "passive" => Some(Setup::Passive),
            _ => None,
        }
    }

    /// What an answer says to an offer's setup: active (DTLS client, what browsers answer)
    /// unless the offerer insists on being the client itself.
    pub fn answering(offer: Setup) -> Setup {
        match offer {
            Setup::Active => Setup::Passive,
            Setup::ActPass | Setup::Passive => Setup::Active,
        }
    }
}

/// Everything fsnode writes into its own description.
#[derive(Clone, Debug)]
pub struct LocalDescription {
    pub session_id: u64,
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// The SHA-256 of our certificate's DER.
    pub fingerprint: [u8; 32],
    pub setup: Setup,
    pub mid: String,
    /// `a=candidate` values (without the `candidate:` key), also trickled.
    pub candidates: Vec<String>,
    pub max_message_size: u64,
    pub max_datagram: Option<u32>,
    /// Spec 6: offer QUIC (`a=x-fsnode-quic:1`).
    pub quic: bool,
}

/// What fsnode needs from the peer's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteDescription {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// The device ids of every `a=fingerprint:sha-256` (all equal to the peer's, checked).
    pub fingerprints: Vec<DeviceId>,
    pub setup: Setup,
    pub mid: String,
    pub sctp_port: u16,
    /// `a=max-message-size`; `DEFAULT_MAX_MESSAGE_SIZE` when absent, 0 = no limit.
    pub max_message_size: u64,
    pub max_datagram: Option<u32>,
    /// Spec 6: the peer runs QUIC (`a=x-fsnode-quic:1`; any other value is not QUIC we know).
    pub quic: bool,
    /// Candidate lines carried in the description (at most `MAX_DESCRIPTION_CANDIDATES`).
    pub candidates: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DescriptionError {
    #[error("the description is larger than {MAX_DESCRIPTION_BYTES} bytes")]
    TooLarge,
    #[error("the description does not parse: {0}")]
    Syntax(String),
    #[error("the description has no UDP/DTLS/SCTP data-channel section")]
    NoDataSection,
    #[error("the description lacks {0}")]
    Missing(&'static str),
    #[error("a=setup:{0} is not valid here")]
    BadSetup(String),
    #[error(transparent)]
    Fingerprint(#[from] sdp_lines::FingerprintError),
}

fn colon_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}

fn attribute(key: &str, value: impl Into<String>) -> Attribute {
    Attribute::new(key.to_owned(), Some(value.into()))
}

fn flag(key: &str) -> Attribute {
    Attribute::new(key.to_owned(), None)
}

impl LocalDescription {
    /// The SDP text (CRLF line endings, as RFC 8866 writes them).
    pub fn to_sdp(&self) -> String {
        let mut media_attributes = Vec::new();
        for candidate in &self.candidates {
            media_attributes.push(attribute("candidate", candidate.clone()));
        }
        media_attributes.push(flag("end-of-candidates"));
        media_attributes.extend([
            attribute("ice-ufrag", self.ice_ufrag.clone()),
            attribute("ice-pwd", self.ice_pwd.clone()),
            attribute("ice-options", "trickle"),
            attribute(
                "fingerprint",
                format!("sha-256 {}", colon_hex(&self.fingerprint)),
            ),
            attribute("setup", self.setup.as_str()),
            attribute("mid", self.mid.clone()),
            attribute("sctp-port", SCTP_PORT.to_string()),
            attribute("max-message-size", self.max_message_size.to_string()),
        ]);
        if let Some(max_datagram) = self.max_datagram {
            media_attributes.push(attribute(MAX_DATAGRAM_ATTRIBUTE, max_datagram.to_string()));
        }
        if self.quic {
            media_attributes.push(attribute(QUIC_ATTRIBUTE, QUIC_VERSION));
        }
        let media = MediaDescription {
            media_name: MediaName {
                media: "application".into(),
                port: RangedPort {
                    value: 9,
                    range: None,
                },
                protos: vec!["UDP".into(), "DTLS".into(), "SCTP".into()],
                formats: vec!["webrtc-datachannel".into()],
            },
            media_title: None,
            connection_information: Some(ConnectionInformation {
                network_type: "IN".into(),
                address_type: "IP4".into(),
                address: Some(Address {
                    address: "0.0.0.0".into(),
                    ttl: None,
                    range: None,
                }),
            }),
            bandwidth: vec![],
            encryption_key: None,
            attributes: media_attributes,
        };
        let session = SessionDescription {
            version: 0,
            origin: Origin {
                username: "-".into(),
                session_id: self.session_id,
                session_version: 2,
                network_type: "IN".into(),
                address_type: "IP4".into(),
                unicast_address: "127.0.0.1".into(),
            },
            session_name: "-".into(),
            session_information: None,
            uri: None,
            email_address: None,
            phone_number: None,
            connection_information: None,
            bandwidth: vec![],
            time_descriptions: vec![TimeDescription {
                timing: Timing {
                    start_time: 0,
                    stop_time: 0,
                },
                repeat_times: vec![],
            }],
            time_zones: vec![],
            encryption_key: None,
            attributes: vec![
                attribute("group", format!("BUNDLE {}", self.mid)),
                attribute("msid-semantic", " WMS"),
            ],
            media_descriptions: vec![media],
        };
        session.marshal()
    }
}

impl RemoteDescription {
    /// Reads a peer's offer or answer. `is_answer` makes `a=setup:actpass` an error (an
    /// answer must choose) and an absent setup `active` (RFC 4145's default for answers).
    pub fn parse(sdp: &str, is_answer: bool) -> Result<Self, DescriptionError> {
        if sdp.len() > MAX_DESCRIPTION_BYTES {
            return Err(DescriptionError::TooLarge);
        }
        let fingerprints = sdp_lines::sha256_fingerprints(sdp)?;
        let session = SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes()))
            .map_err(|e| DescriptionError::Syntax(e.to_string().chars().take(200).collect()))?;
        let media = session
            .media_descriptions
            .iter()
            .find(|m| {
                m.media_name.media == "application"
                    && m.media_name.protos.last().is_some_and(|p| p == "SCTP")
                    && m.media_name.protos.iter().any(|p| p == "DTLS")
            })
            .ok_or(DescriptionError::NoDataSection)?;
        // Media-level attributes win over session-level ones (RFC 8866 5.13).
        let value = |key: &str| -> Option<String> {
            media
                .attributes
                .iter()
                .chain(session.attributes.iter())
                .find(|a| a.key == key)
                .and_then(|a| a.value.as_deref())
                .map(|v| v.trim().to_owned())
        };
        let ice_ufrag = value("ice-ufrag").ok_or(DescriptionError::Missing("a=ice-ufrag"))?;
        let ice_pwd = value("ice-pwd").ok_or(DescriptionError::Missing("a=ice-pwd"))?;
        let setup = match value("setup") {
            None if is_answer => Setup::Active,
            None => Setup::ActPass,
            Some(text) => match Setup::parse(&text) {
                Some(Setup::ActPass) if is_answer => {
                    return Err(DescriptionError::BadSetup(text));
                }
                Some(setup) => setup,
                None => return Err(DescriptionError::BadSetup(text)),
            },
        };
        let mid = value("mid").unwrap_or_else(|| MID.to_owned());
        let sctp_port = value("sctp-port")
            .and_then(|v| v.parse().ok())
            .unwrap_or(SCTP_PORT);
        let max_message_size = value("max-message-size")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE);
        let max_datagram = value(MAX_DATAGRAM_ATTRIBUTE).and_then(|v| v.parse().ok());
        let quic = value(QUIC_ATTRIBUTE).is_some_and(|v| v == QUIC_VERSION);
        let candidates = media
            .attributes
            .iter()
            .filter(|a| a.key == "candidate")
            .filter_map(|a| a.value.clone())
            .take(MAX_DESCRIPTION_CANDIDATES)
            .collect();
        Ok(Self {
            ice_ufrag,
            ice_pwd,
            fingerprints,
            setup,
            mid,
            sctp_port,
            max_message_size,
            max_datagram,
            quic,
            candidates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(setup: Setup) -> LocalDescription {
        LocalDescription {
            session_id: 4242,
            ice_ufrag: "ufragufrag".into(),
            ice_pwd: "passwordpasswordpassword".into(),
            fingerprint: [0xab; 32],
            setup,
            mid: MID.into(),
            candidates: vec!["1 1 udp 2130706431 10.0.0.1 5000 typ host".into()],
            max_message_size: 262144,
            max_datagram: Some(9000),
            quic: true,
        }
    }

    #[test]
    fn our_description_has_every_line_peers_need_and_reads_back() {
        let sdp = local(Setup::ActPass).to_sdp();
        for line in [
            "a=group:BUNDLE 0",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
            "c=IN IP4 0.0.0.0",
            "a=mid:0",
            "a=ice-options:trickle",
            "a=setup:actpass",
            "a=sctp-port:5000",
            "a=max-message-size:262144",
            "a=x-fsnode-max-datagram:9000",
            "a=x-fsnode-quic:1",
            "a=end-of-candidates",
            "a=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host",
        ] {
            assert!(
                sdp.contains(&format!("{line}\r\n")),
                "{line} missing in\n{sdp}"
            );
        }
        assert!(sdp.contains(&format!("a=fingerprint:sha-256 {}", colon_hex(&[0xab; 32]))));
        let remote = RemoteDescription::parse(&sdp, false).unwrap();
        assert_eq!(remote.ice_ufrag, "ufragufrag");
        assert_eq!(remote.ice_pwd, "passwordpasswordpassword");
        assert_eq!(
            remote.fingerprints,
            vec![DeviceId::from_sha256(&[0xab; 32])]
        );
        assert_eq!(remote.setup, Setup::ActPass);
        assert_eq!(remote.mid, "0");
        assert_eq!(remote.max_message_size, 262144);
        assert_eq!(remote.max_datagram, Some(9000));
        assert!(remote.quic);
        assert_eq!(remote.candidates.len(), 1);
        // Without the attribute, or with a value this build does not know: no QUIC.
        let plain = LocalDescription {
            quic: false,
            ..local(Setup::ActPass)
        }
        .to_sdp();
        assert!(!plain.contains("x-fsnode-quic"));
        assert!(!RemoteDescription::parse(&plain, false).unwrap().quic);
        let future = sdp.replace("a=x-fsnode-quic:1", "a=x-fsnode-quic:2");
        assert!(!RemoteDescription::parse(&future, false).unwrap().quic);
    }

    /// A Chrome answer (trimmed to its data section) and an aiortc offer: both read, with
    /// their defaults where they say nothing.
    #[test]
    fn browser_and_aiortc_descriptions_read() {
        let fp = colon_hex(&[0x11; 32]);
        let chrome = format!(
            "v=0\r\no=- 8 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
             a=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n\
             m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
             a=ice-ufrag:Zx3l\r\na=ice-pwd:Pq8xYbEMSsRJXfFnSbpTnT0M\r\na=ice-options:trickle\r\n\
             a=fingerprint:sha-256 {fp}\r\na=setup:active\r\na=mid:0\r\na=sctp-port:5000\r\n\
             a=max-message-size:262144\r\n"
        );
        let remote = RemoteDescription::parse(&chrome, true).unwrap();
        assert_eq!(remote.setup, Setup::Active);
        assert_eq!(remote.max_datagram, None);
        assert!(!remote.quic, "a browser never gets QUIC");
        let aiortc = format!(
            "v=0\r\no=- 3905 3905 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
             a=msid-semantic:WMS *\r\nm=application 51820 DTLS/SCTP 5000\r\n\
             c=IN IP4 10.77.0.2\r\na=mid:0\r\na=sctpmap:5000 webrtc-datachannel 65535\r\n\
             a=candidate:a1 1 udp 2130706431 10.77.0.2 51820 typ host\r\n\
             a=end-of-candidates\r\na=ice-ufrag:dNhW\r\na=ice-pwd:hQjjkC1i8QUDhtxaUaBMse\r\n\
             a=fingerprint:sha-256 {fp}\r\na=setup:actpass\r\n"
        );
        let remote = RemoteDescription::parse(&aiortc, false).unwrap();
        assert_eq!(remote.setup, Setup::ActPass);
        assert_eq!(remote.max_message_size, DEFAULT_MAX_MESSAGE_SIZE);
        assert_eq!(remote.candidates.len(), 1);
    }

    #[test]
    fn bad_descriptions_are_typed_errors() {
        let good = local(Setup::Active).to_sdp();
        assert_eq!(
            RemoteDescription::parse(&good.replace("a=ice-pwd", "a=ice-pw"), true),
            Err(DescriptionError::Missing("a=ice-pwd"))
        );
        assert_eq!(
            RemoteDescription::parse(&good.replace("active", "actpass"), true),
            Err(DescriptionError::BadSetup("actpass".into()))
        );
        assert_eq!(
            RemoteDescription::parse(&good.replace("UDP/DTLS/SCTP", "UDP/TLS/RTP/SAVPF"), true),
            Err(DescriptionError::NoDataSection)
        );
        assert!(matches!(
            RemoteDescription::parse(&good.replace("a=fingerprint", "a=fingerprnt"), true),
            Err(DescriptionError::Fingerprint(_))
        ));
        assert_eq!(
            RemoteDescription::parse(&"v".repeat(MAX_DESCRIPTION_BYTES + 1), true),
            Err(DescriptionError::TooLarge)
        );
        assert!(RemoteDescription::parse("garbage\r\n", true).is_err());
        assert_eq!(Setup::answering(Setup::ActPass), Setup::Active);
        assert_eq!(Setup::answering(Setup::Active), Setup::Passive);
    }
}
