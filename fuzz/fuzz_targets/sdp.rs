//! SDP fingerprint extraction (spec 3.4) and `a=max-message-size` (spec 4): every byte of an
//! SDP comes from the network.
#![no_main]

use fsnode::core::DeviceId;
use fsnode::core::sdp::{
    FingerprintError, fingerprints_match, max_message_size, sha256_fingerprints,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let _ = max_message_size(sdp);
    match sha256_fingerprints(sdp) {
        Ok(ids) => {
            assert!(!ids.is_empty());
            // Every id found must match itself when it is the only one, and the SDP matches
            // a claimed id exactly when all of its fingerprints are that id.
            let first = &ids[0];
            let all_same = ids.iter().all(|id| id == first);
            assert_eq!(fingerprints_match(sdp, first), Ok(all_same));
            // An id round-trips through its text form.
            let parsed: DeviceId = first.as_str().parse().expect("own id parses");
            assert_eq!(&parsed, first);
        }
        Err(FingerprintError::Missing) => {
            assert_eq!(
                fingerprints_match(sdp, &DeviceId::from_sha256(&[0; 32])),
                Err(FingerprintError::Missing)
            );
        }
        Err(FingerprintError::Malformed(text)) => {
            // The reason quotes at most 120 characters of the line.
            assert!(text.chars().count() <= 120);
        }
    }
});
