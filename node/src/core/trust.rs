//! Naming devices the way operators type them, and the verification code both screens show.

use sha2::{Digest, Sha256};

use super::{DeviceId, DeviceIdError};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error(transparent)]
    Invalid(#[from] DeviceIdError),
    #[error(
        "no known device matches {0:?}; `fsnode peers` lists the devices this node has seen, and a full 52-character id is accepted for any device"
    )]
    NoMatch(String),
    #[error("{prefix:?} matches {} devices; type more characters", candidates.len())]
    Ambiguous {
        prefix: String,
        candidates: Vec<DeviceId>,
    },
}

/// Resolves what an operator typed (a full id, or a prefix of at least 8 characters) among
/// `known` devices. A full, valid id resolves even when the device was never seen, so an
/// operator can trust a device before it comes online.
pub fn resolve<'a>(
    typed: &str,
    known: impl IntoIterator<Item = &'a DeviceId>,
) -> Result<DeviceId, ResolveError> {
    let prefix = DeviceId::validate_prefix(typed)?;
    if let Ok(full) = prefix.parse::<DeviceId>() {
        return Ok(full);
    }
    let candidates: Vec<DeviceId> = known
        .into_iter()
        .filter(|id| id.as_str().starts_with(&prefix))
        .cloned()
        .collect();
    match candidates.len() {
        0 => Err(ResolveError::NoMatch(prefix)),
        1 => Ok(candidates.into_iter().next().expect("one candidate")),
        _ => Err(ResolveError::Ambiguous { prefix, candidates }),
    }
}

/// An 8-digit code derived from the two device ids, the same on both sides (the ids are
/// sorted first), for operators to compare before trusting: `1234 5678`.
pub fn verification_code(a: &DeviceId, b: &DeviceId) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let mut hasher = Sha256::new();
    hasher.update(b"fsnode verification code v1\n");
    hasher.update(first.as_str());
    hasher.update(b"\n");
    hasher.update(second.as_str());
    let digest = hasher.finalize();
    let number = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % 100_000_000;
    format!("{:04} {:04}", number / 10_000, number % 10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<DeviceId> {
        // Two ids sharing a long prefix, one different.
        let mut a = DeviceId::from_sha256(&[0; 32]).to_string();
        let mut b = a.clone();
        a.replace_range(51..52, "a");
        b.replace_range(51..52, "q");
        vec![
            a.parse().unwrap(),
            b.parse().unwrap(),
            DeviceId::from_sha256(&[200; 32]),
        ]
    }

    #[test]
    fn a_unique_prefix_resolves() {
        let known = ids();
        let unique = &known[2].as_str()[..10];
        assert_eq!(resolve(unique, &known).unwrap(), known[2]);
        assert_eq!(resolve(&unique.to_uppercase(), &known).unwrap(), known[2]);
    }

    #[test]
    fn an_ambiguous_prefix_lists_the_candidates() {
        let known = ids();
        match resolve(&known[0].as_str()[..20], &known) {
            Err(ResolveError::Ambiguous { candidates, .. }) => {
                assert_eq!(candidates, known[..2].to_vec())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_unknown_and_full_ids() {
        let known = ids();
        assert!(matches!(
            resolve("abc", &known),
            Err(ResolveError::Invalid(_))
        ));
        assert!(matches!(
            resolve("zzzzzzzz", &known),
            Err(ResolveError::NoMatch(_))
        ));
        let stranger = DeviceId::from_sha256(&[77; 32]);
        assert_eq!(resolve(stranger.as_str(), &known).unwrap(), stranger);
    }

    #[test]
    fn both_sides_compute_the_same_code() {
        let known = ids();
        let code = verification_code(&known[0], &known[2]);
        assert_eq!(code, verification_code(&known[2], &known[0]));
        assert_eq!(code.len(), 9);
        assert!(code.chars().all(|c| c.is_ascii_digit() || c == ' '));
        assert_ne!(code, verification_code(&known[1], &known[2]));
    }
}
