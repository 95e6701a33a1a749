//! QUIC stream 0's framing (spec 6): a byte stream of 4-byte big-endian lengths and bodies, cut
//! at arbitrary points, through `FrameReader`. Whatever the cuts, the reader returns exactly the
//! messages a one-pass reading of the whole stream finds, refuses exactly the first length over
//! its limit (and nothing after it), never returns a message over the limit and never holds
//! more than one frame of it.
//!
//! Input: two bytes of limit (little-endian, at most 64 KiB here), one byte of cut seed, then
//! the stream.
#![no_main]

use fsnode::core::link::framing::{FrameError, FrameReader, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

/// The messages of `stream` read in one pass, and the error a length over `max` gives.
fn reference(stream: &[u8], max: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut messages = Vec::new();
    let mut rest = stream;
    while rest.len() >= HEADER_LEN {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if u64::from(len) > max as u64 {
            return (
                messages,
                Some(FrameError::TooLarge {
                    len: u64::from(len),
                    max,
                }),
            );
        }
        let len = len as usize;
        if rest.len() < HEADER_LEN + len {
            break;
        }
        messages.push(rest[HEADER_LEN..HEADER_LEN + len].to_vec());
        rest = &rest[HEADER_LEN + len..];
    }
    (messages, None)
}

fuzz_target!(|data: &[u8]| {
    let [a, b, seed, stream @ ..] = data else {
        return;
    };
    let max = usize::from(u16::from_le_bytes([*a, *b]));
    let (want, want_error) = reference(stream, max);
    let mut reader = FrameReader::new(max);
    let mut got = Vec::new();
    let mut error = None;
    // Cut the stream into pieces of 1..=seed+1 bytes, varying by position.
    let mut rest = stream;
    let mut step = usize::from(*seed);
    while !rest.is_empty() {
        step = step.wrapping_mul(31).wrapping_add(7);
        let take = 1 + step % (usize::from(*seed) + 1);
        let (piece, tail) = rest.split_at(take.min(rest.len()));
        rest = tail;
        match reader.push(piece, &mut |m| {
            assert!(m.len() <= max, "a {}-byte message over {max}", m.len());
            got.push(m);
        }) {
            Ok(()) => assert!(reader.held() <= max + HEADER_LEN),
            Err(e) => {
                error = Some(e);
                // Refused for good: nothing more is read.
                assert!(
                    reader
                        .push(rest, &mut |_| panic!("read after an error"))
                        .is_err()
                );
                break;
            }
        }
    }
    assert_eq!(got, want);
    assert_eq!(error, want_error);
});
