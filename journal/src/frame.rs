//! Frames: the unit of a segment after its header.
//!
//! | bytes   | field                                                       |
//! |---------|-------------------------------------------------------------|
//! | 0..4    | payload length, u32 little-endian (at least 1)              |
//! | 4..8    | CRC-32C of (seq bytes ‖ kind byte ‖ payload), u32 LE        |
//! | 8..16   | sequence number, u64 LE                                     |
//! | 16      | kind: 1 = event, 2 = snapshot (last part), 3 = snapshot part |
//! | 17..    | payload: one CBOR item                                      |
//!
//! A frame header of 17 zero bytes marks the end of the segment's data.

use crate::{RecordKind, Seq};

/// Length of a frame header in bytes.
pub const FRAME_HEADER_LEN: usize = 17;

/// Payloads at least this long get their CRC computed before the sequence number is known and
/// combined with the header's afterwards, so that the append lock is not held while a large
/// payload is checksummed. Below it, checksumming in place is cheaper than combining.
const COMBINE_THRESHOLD: usize = 16 * 1024;

impl RecordKind {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            RecordKind::Event => 1,
            RecordKind::Snapshot => 2,
            RecordKind::SnapshotPart => 3,
        }
    }

    /// How a message names a frame of this kind.
    pub(crate) fn noun(self) -> &'static str {
        match self {
            RecordKind::Event => "event",
            RecordKind::Snapshot => "snapshot",
            RecordKind::SnapshotPart => "snapshot part",
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(RecordKind::Event),
            2 => Some(RecordKind::Snapshot),
            3 => Some(RecordKind::SnapshotPart),
            _ => None,
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub len: u32,
    pub crc: u32,
    pub seq: Seq,
    pub kind: u8,
}

impl FrameHeader {
    /// Decodes a header; `None` if it is all zero (the end-of-segment marker).
    pub(crate) fn decode(b: &[u8; FRAME_HEADER_LEN]) -> Option<Self> {
        if b.iter().all(|&x| x == 0) {
            return None;
        }
        let [
            l0,
            l1,
            l2,
            l3,
            c0,
            c1,
            c2,
            c3,
            s0,
            s1,
            s2,
            s3,
            s4,
            s5,
            s6,
            s7,
            kind,
        ] = *b;
        Some(FrameHeader {
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
            seq: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            kind,
        })
    }

    pub(crate) fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0..4].copy_from_slice(&self.len.to_le_bytes());
        b[4..8].copy_from_slice(&self.crc.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16] = self.kind;
        b
    }
}

/// The CRC-32C of the checksummed prefix (sequence number and kind).
fn prefix_checksum(seq: Seq, kind: u8) -> u32 {
    let s = seq.to_le_bytes();
    crc32c::crc32c(&[s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], kind])
}

/// The frame checksum: CRC-32C over (seq bytes ‖ kind byte ‖ payload).
pub(crate) fn checksum(seq: Seq, kind: u8, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(prefix_checksum(seq, kind), payload)
}

/// Checksum state for a payload encoded before its sequence number is assigned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PayloadChecksum(Option<u32>);

impl PayloadChecksum {
    /// Precomputes what can be precomputed without the sequence number.
    pub(crate) fn precompute(payload: &[u8]) -> Self {
        if payload.len() >= COMBINE_THRESHOLD {
            PayloadChecksum(Some(crc32c::crc32c(payload)))
        } else {
            PayloadChecksum(None)
        }
    }

    /// The frame checksum once the sequence number is known.
    pub(crate) fn finish(self, seq: Seq, kind: u8, payload: &[u8]) -> u32 {
        match self.0 {
            Some(crc) => crc32c::crc32c_combine(prefix_checksum(seq, kind), crc, payload.len()),
            None => checksum(seq, kind, payload),
        }
    }
}

/// Appends a complete frame (header and payload) to `out`.
pub(crate) fn encode_into(out: &mut Vec<u8>, seq: Seq, kind: RecordKind, payload: &[u8], crc: u32) {
    let header = FrameHeader {
        // The caller has checked the payload against max_record_bytes, a u32.
        len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        crc,
        seq,
        kind: kind.to_byte(),
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_zero_is_end() {
        let h = FrameHeader {
            len: 5,
            crc: 0xdead_beef,
            seq: 9,
            kind: 1,
        };
        assert_eq!(FrameHeader::decode(&h.encode()), Some(h));
        assert_eq!(FrameHeader::decode(&[0; FRAME_HEADER_LEN]), None);
    }

    #[test]
    fn combined_checksum_equals_direct_checksum() {
        for len in [
            0usize,
            1,
            100,
            COMBINE_THRESHOLD - 1,
            COMBINE_THRESHOLD,
            100_000,
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let pre = PayloadChecksum::precompute(&payload);
            assert_eq!(
                pre.finish(12345, 2, &payload),
                checksum(12345, 2, &payload),
                "len {len}"
            );
        }
    }

    #[test]
    fn checksum_covers_seq_and_kind() {
        let p = b"payload";
        assert_ne!(checksum(1, 1, p), checksum(2, 1, p));
        assert_ne!(checksum(1, 1, p), checksum(1, 2, p));
    }
}
