//! The link's randomness as an input: webrtc-rs's ICE and DTLS draw every random byte they
//! need from their crypto provider, so a provider whose random source is a seeded CSPRNG makes
//! ICE credentials, tie breakers and DTLS randoms a function of the seed. The shell seeds each
//! link with 32 bytes from the operating system; tests seed with constants and replay exactly.
//! (Two draws stay outside the seed: STUN transaction ids and ring's ephemeral ECDHE keys.)

use std::sync::{Arc, Mutex};

use rand::{RngCore, SeedableRng, rngs::StdRng};
use rtc_crypto::{CryptoError, RTCCrypto, RTCCryptoProvider, RTCRandom};

/// The built-in crypto (ring) with a seeded random source.
pub struct SeededProvider {
    inner: Arc<dyn RTCCryptoProvider>,
    random: SeededRandom,
}

struct SeededRandom(Mutex<StdRng>);

impl RTCRandom for SeededRandom {
    fn fill(&self, output: &mut [u8]) -> Result<(), CryptoError> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .fill_bytes(output);
        Ok(())
    }
}

impl SeededProvider {
    pub fn new(seed: [u8; 32]) -> Result<Arc<Self>, CryptoError> {
        Ok(Arc::new(Self {
            inner: rtc_crypto::default_provider()?,
            random: SeededRandom(Mutex::new(StdRng::from_seed(seed))),
        }))
    }

    /// Draws from the same stream the provider hands to ICE and DTLS.
    pub fn next_u64(&self) -> u64 {
        let mut bytes = [0u8; 8];
        // Infallible for this source.
        let _ = self.random.fill(&mut bytes);
        u64::from_le_bytes(bytes)
    }
}

impl RTCCryptoProvider for SeededProvider {
    fn name(&self) -> &'static str {
        "fsnode-seeded-ring"
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        self.inner.crypto()
    }

    fn random(&self) -> &dyn RTCRandom {
        &self.random
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_stream_and_another_seed_another() {
        let a = SeededProvider::new([7; 32]).unwrap();
        let b = SeededProvider::new([7; 32]).unwrap();
        let c = SeededProvider::new([8; 32]).unwrap();
        let draw = |p: &SeededProvider| {
            let mut out = [0u8; 32];
            p.random().fill(&mut out).unwrap();
            out
        };
        assert_eq!(draw(&a), draw(&b));
        assert_ne!(draw(&a), draw(&c));
    }
}
