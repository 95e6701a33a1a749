//! The transfer-message CBOR decoder (spec 4): `decode` / `decode_within` over arbitrary bytes
//! never panic, never accept more than the limit, and what they accept re-encodes to a message
//! that decodes to the same thing.
#![no_main]

use fsnode::core::transfer::{MAX_MESSAGE_LEN, decode, decode_within, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick a `max-message-size` this node might have advertised.
    let (limit, bytes) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, data),
    };
    let whole = decode(data);
    if data.len() > MAX_MESSAGE_LEN {
        assert!(whole.is_err());
    }
    let within = decode_within(bytes, limit);
    if limit != 0 && bytes.len() > limit {
        assert!(
            within.is_err(),
            "{} bytes accepted with a limit of {limit}",
            bytes.len()
        );
    }
    for message in [whole, within].into_iter().flatten().flatten() {
        let encoded = encode(&message);
        let again = decode(&encoded)
            .expect("our own encoding decodes")
            .expect("and is a known message");
        assert_eq!(again, message);
        assert_eq!(encode(&again), encoded, "the encoding is canonical");
    }
});
