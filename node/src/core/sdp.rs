//! What the core needs from an SDP: the DTLS fingerprints (spec 3.4) and the peer's
//! `a=max-message-size` (spec 4). A line-level reader, not a full SDP parser: these two
//! attributes are all fsnode decides anything on, and every byte here came from the network.

use super::DeviceId;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FingerprintError {
    #[error("the SDP has no a=fingerprint:sha-256 line")]
    Missing,
    #[error("an a=fingerprint:sha-256 value is not 32 colon-separated hex bytes: {0:?}")]
    Malformed(String),
}

/// The device ids named by every `a=fingerprint:sha-256` line of `sdp` (session or media
/// level). Lines for other hash functions are ignored (spec 3.4).
pub fn sha256_fingerprints(sdp: &str) -> Result<Vec<DeviceId>, FingerprintError> {
    let mut ids = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        let Some(rest) = line.strip_prefix("a=fingerprint:") else {
            continue;
        };
        let mut parts = rest.split_ascii_whitespace();
        let (Some(algorithm), Some(value)) = (parts.next(), parts.next()) else {
            return Err(FingerprintError::Malformed(truncate(rest)));
        };
        if !algorithm.eq_ignore_ascii_case("sha-256") {
            continue;
        }
        ids.push(DeviceId::from_sha256(&parse_hex_fingerprint(value)?));
    }
    if ids.is_empty() {
        return Err(FingerprintError::Missing);
    }
    Ok(ids)
}

/// Whether every sha-256 fingerprint of `sdp` is `claimed` (and there is at least one).
pub fn fingerprints_match(sdp: &str, claimed: &DeviceId) -> Result<bool, FingerprintError> {
    Ok(sha256_fingerprints(sdp)?.iter().all(|id| id == claimed))
}

fn parse_hex_fingerprint(value: &str) -> Result<[u8; 32], FingerprintError> {
    let mut digest = [0u8; 32];
    let mut count = 0;
    for part in value.split(':') {
        if count == 32 || part.len() != 2 {
            return Err(FingerprintError::Malformed(truncate(value)));
        }
        digest[count] = u8::from_str_radix(part, 16)
            .map_err(|_| FingerprintError::Malformed(truncate(value)))?;
        count += 1;
    }
    if count != 32 {
        return Err(FingerprintError::Malformed(truncate(value)));
    }
    Ok(digest)
}

fn truncate(text: &str) -> String {
    text.chars().take(120).collect()
}

/// The peer's `a=max-message-size` (RFC 8841): `None` when absent (the spec then assumes
/// 64 KiB), `Some(0)` for "no limit". Values that do not parse count as absent.
pub fn max_message_size(sdp: &str) -> Option<u64> {
    sdp.lines()
        .filter_map(|line| {
            line.trim_end_matches('\r')
                .strip_prefix("a=max-message-size:")
        })
        .find_map(|value| value.trim().parse().ok())
}

/// `sdp` as webrtc-rs should read it: with the `a=max-message-size` of its data-channel section
/// raised to at least `ours` (added after `a=sctp-port` when absent; "0", no limit, is kept).
///
/// Why: webrtc-rs sizes its *receive* buffer at the smaller of the two advertised sizes
/// (rtc-0.21.1 src/peer_connection/transport/sctp/mod.rs `start`), while RFC 8841 and spec 4 let
/// the peer send us messages up to the size *we* advertised. Handing webrtc-rs a remote size no
/// smaller than ours makes its buffer ours. Only webrtc-rs sees the rewritten copy: the core
/// chooses the chunk size from the peer's real value ([`max_message_size`] of the original), and
/// fsnode's other messages are a few hundred bytes, so the peer's limit is still kept.
pub fn with_max_message_size_at_least(sdp: &str, ours: u64) -> String {
    let mut out = String::with_capacity(sdp.len() + 32);
    let mut seen = false;
    let mut sctp_port_line_end = None;
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        let ending = &line[bare.len()..];
        if let Some(value) = bare.strip_prefix("a=max-message-size:") {
            seen = true;
            match value.trim().parse::<u64>() {
                Ok(size) if size == 0 || size >= ours => out.push_str(line),
                _ => {
                    out.push_str("a=max-message-size:");
                    out.push_str(&ours.to_string());
                    out.push_str(ending);
                }
            }
            continue;
        }
        out.push_str(line);
        if bare.starts_with("a=sctp-port:") {
            sctp_port_line_end = Some((out.len(), ending));
        }
    }
    if let (false, Some((at, ending))) = (seen, sctp_port_line_end) {
        let added = if ending.is_empty() {
            // The port line was the last one, without a line ending.
            format!("\r\na=max-message-size:{ours}")
        } else {
            format!("a=max-message-size:{ours}{ending}")
        };
        out.insert_str(at, &added);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn colon_hex(bytes: &[u8; 32]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn reads_session_and_media_level_fingerprints() {
        let digest = [0x5a; 32];
        let sdp = format!(
            "v=0\r\na=fingerprint:sha-256 {fp}\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
             a=fingerprint:SHA-256 {fp}\r\na=fingerprint:sha-1 00:11\r\na=max-message-size:262144\r\n",
            fp = colon_hex(&digest)
        );
        let ids = sha256_fingerprints(&sdp).unwrap();
        assert_eq!(ids, vec![DeviceId::from_sha256(&digest); 2]);
        assert!(fingerprints_match(&sdp, &DeviceId::from_sha256(&digest)).unwrap());
        assert!(!fingerprints_match(&sdp, &DeviceId::from_sha256(&[1; 32])).unwrap());
        assert_eq!(max_message_size(&sdp), Some(262144));
    }

    #[test]
    fn one_foreign_fingerprint_among_good_ones_is_a_mismatch() {
        let good = colon_hex(&[1; 32]);
        let bad = colon_hex(&[2; 32]);
        let sdp = format!("a=fingerprint:sha-256 {good}\na=fingerprint:sha-256 {bad}\n");
        assert!(!fingerprints_match(&sdp, &DeviceId::from_sha256(&[1; 32])).unwrap());
    }

    #[test]
    fn missing_or_malformed_fingerprints_are_errors() {
        assert_eq!(
            sha256_fingerprints("v=0\r\n"),
            Err(FingerprintError::Missing)
        );
        assert_eq!(
            sha256_fingerprints("a=fingerprint:sha-1 00:11\n"),
            Err(FingerprintError::Missing)
        );
        for bad in [
            "a=fingerprint:sha-256 00:11",
            "a=fingerprint:sha-256",
            "a=fingerprint:sha-256 zz:00",
            &format!("a=fingerprint:sha-256 {}:00", colon_hex(&[0; 32])),
            &format!(
                "a=fingerprint:sha-256 {}",
                colon_hex(&[0; 32]).replace(':', "")
            ),
        ] {
            assert!(
                matches!(
                    sha256_fingerprints(bad),
                    Err(FingerprintError::Malformed(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(max_message_size("a=max-message-size:lots\n"), None);
    }

    #[test]
    fn a_smaller_remote_max_message_size_is_raised_for_webrtc_rs_only() {
        let sdp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
                   a=sctp-port:5000\r\na=max-message-size:65536\r\n";
        let raised = with_max_message_size_at_least(sdp, 262144);
        assert_eq!(max_message_size(&raised), Some(262144));
        assert_eq!(raised.replace("262144", "65536"), sdp);
        // Larger, or "no limit", stays as the peer said.
        let larger = sdp.replace("65536", "1048576");
        assert_eq!(with_max_message_size_at_least(&larger, 262144), larger);
        let unlimited = sdp.replace("65536", "0");
        assert_eq!(
            with_max_message_size_at_least(&unlimited, 262144),
            unlimited
        );
        // Garbage is replaced like a small value.
        let garbage = sdp.replace("65536", "lots");
        assert_eq!(
            max_message_size(&with_max_message_size_at_least(&garbage, 262144)),
            Some(262144)
        );
    }

    #[test]
    fn an_absent_max_message_size_is_added_after_the_sctp_port() {
        let sdp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
                   a=sctp-port:5000\r\na=setup:actpass\r\n";
        let raised = with_max_message_size_at_least(sdp, 262144);
        assert_eq!(
            raised,
            "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
             a=sctp-port:5000\r\na=max-message-size:262144\r\na=setup:actpass\r\n"
        );
        let last = "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\na=sctp-port:5000";
        assert_eq!(
            with_max_message_size_at_least(last, 1024),
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\na=sctp-port:5000\r\na=max-message-size:1024"
        );
        // No data-channel section: nothing to raise.
        assert_eq!(with_max_message_size_at_least("v=0\r\n", 1024), "v=0\r\n");
    }
}
