//! Device identity as the protocol names it (spec section 1): the SHA-256 of the node's
//! certificate in DER, written as lowercase RFC 4648 base32 without padding.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Length of a device id: 32 bytes of SHA-256 in base32 without padding.
pub const DEVICE_ID_LEN: usize = 52;
/// The shortest prefix an operator may type to name a device.
pub const MIN_PREFIX_LEN: usize = 8;
/// How a LocalSend device's id starts: `ls:` and the SHA-256 of its HTTPS certificate in
/// lowercase hex (the fingerprint LocalSend apps announce), 67 characters in all. A separate
/// kind, so that a LocalSend device can never pass for an fsnode device or the reverse.
pub const LOCALSEND_PREFIX: &str = "ls:";
/// Length of a LocalSend device id: `ls:` and 64 hex digits.
pub const LOCALSEND_ID_LEN: usize = LOCALSEND_PREFIX.len() + 64;

/// A validated device id: 52 characters (`a-z2-7`) for an fsnode device, or `ls:` and 64
/// lowercase hex digits for a LocalSend device. Shared, not copied, when cloned: every
/// queued transfer names its peer, and a send of 100,000 files to one device holds one id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceIdError {
    #[error("a device id has {DEVICE_ID_LEN} characters, this one has {0}")]
    Length(usize),
    #[error("a device id uses only the characters a-z and 2-7; found {0:?}")]
    Character(char),
    #[error("a device id prefix needs at least {MIN_PREFIX_LEN} characters; {0:?} is too short")]
    PrefixTooShort(String),
}

impl DeviceId {
    /// The device id of a certificate, from its DER encoding.
    pub fn from_certificate_der(der: &[u8]) -> Self {
        Self::from_sha256(&Sha256::digest(der).into())
    }

    /// The device id for a SHA-256 digest (e.g. from an SDP `a=fingerprint:sha-256` line).
    pub fn from_sha256(digest: &[u8; 32]) -> Self {
        let encoded = data_encoding::BASE32_NOPAD
            .encode(digest)
            .to_ascii_lowercase();
        debug_assert_eq!(encoded.len(), DEVICE_ID_LEN);
        Self(encoded.into())
    }

    /// The id of the LocalSend device whose HTTPS certificate has this SHA-256.
    pub fn from_localsend_fingerprint(digest: &[u8; 32]) -> Self {
        Self(format!("{LOCALSEND_PREFIX}{}", hex::encode(digest)).into())
    }

    /// Whether this is a LocalSend device (`ls:` + its certificate's SHA-256).
    pub fn is_localsend(&self) -> bool {
        self.0.starts_with(LOCALSEND_PREFIX)
    }

    /// A LocalSend device's certificate fingerprint (SHA-256), `None` for an fsnode device.
    pub fn localsend_fingerprint(&self) -> Option<[u8; 32]> {
        let digits = self.0.strip_prefix(LOCALSEND_PREFIX)?;
        let mut digest = [0u8; 32];
        hex::decode_to_slice(digits, &mut digest).ok()?;
        Some(digest)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first characters, for tables; long enough to be unique on any real LAN.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }

    /// Perfect negotiation's role (spec 3.3): polite when our id sorts before the peer's.
    pub fn is_polite_towards(&self, peer: &DeviceId) -> bool {
        self.0.as_bytes() < peer.0.as_bytes()
    }

    /// Checks that `text` could be a prefix an operator typed (≥ 8 base32 characters, or `ls:`
    /// and ≥ 8 hex digits).
    pub fn validate_prefix(text: &str) -> Result<String, DeviceIdError> {
        let lower = text.trim().to_ascii_lowercase();
        if let Some(digits) = lower.strip_prefix(LOCALSEND_PREFIX) {
            if let Some(bad) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
                return Err(DeviceIdError::Character(bad));
            }
            if digits.len() < MIN_PREFIX_LEN {
                return Err(DeviceIdError::PrefixTooShort(lower));
            }
            if lower.len() > LOCALSEND_ID_LEN {
                return Err(DeviceIdError::Length(lower.len()));
            }
            return Ok(lower);
        }
        if let Some(bad) = lower.chars().find(|c| !is_base32_char(*c)) {
            return Err(DeviceIdError::Character(bad));
        }
        if lower.len() < MIN_PREFIX_LEN {
            return Err(DeviceIdError::PrefixTooShort(lower));
        }
        if lower.len() > DEVICE_ID_LEN {
            return Err(DeviceIdError::Length(lower.len()));
        }
        Ok(lower)
    }
}

fn is_base32_char(c: char) -> bool {
    c.is_ascii_lowercase() || ('2'..='7').contains(&c)
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(digits) = text.strip_prefix(LOCALSEND_PREFIX) {
            if let Some(bad) = digits
                .chars()
                .find(|c| !c.is_ascii_digit() && !('a'..='f').contains(c))
            {
                return Err(DeviceIdError::Character(bad));
            }
            if text.len() != LOCALSEND_ID_LEN {
                return Err(DeviceIdError::Length(text.len()));
            }
            return Ok(Self(text.into()));
        }
        if let Some(bad) = text.chars().find(|c| !is_base32_char(*c)) {
            return Err(DeviceIdError::Character(bad));
        }
        if text.len() != DEVICE_ID_LEN {
            return Err(DeviceIdError::Length(text.len()));
        }
        Ok(Self(text.into()))
    }
}

impl TryFrom<String> for DeviceId {
    type Error = DeviceIdError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0.to_string()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

/// The `type` TXT value of spec section 2. Values this build does not know are kept as
/// `Unknown` rather than refused, so newer peers still show up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceType {
    #[default]
    Desktop,
    Mobile,
    Server,
    #[serde(other)]
    Unknown,
}

impl DeviceType {
    /// Parses a TXT or flag value; anything unrecognised is `Unknown`.
    pub fn from_wire(text: &str) -> Self {
        match text {
            "desktop" => Self::Desktop,
            "mobile" => Self::Mobile,
            "server" => Self::Server,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Desktop => "desktop",
            Self::Mobile => "mobile",
            Self::Server => "server",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_52_lowercase_base32_characters_of_the_der_hash() {
        let id = DeviceId::from_certificate_der(b"not really DER, any bytes hash");
        assert_eq!(id.as_str().len(), DEVICE_ID_LEN);
        assert!(id.as_str().chars().all(is_base32_char));
        // Decoding the id gives back the SHA-256 of the input.
        let decoded = data_encoding::BASE32_NOPAD
            .decode(id.as_str().to_ascii_uppercase().as_bytes())
            .unwrap();
        assert_eq!(
            decoded,
            Sha256::digest(b"not really DER, any bytes hash").to_vec()
        );
    }

    #[test]
    fn parse_rejects_wrong_length_and_alphabet() {
        let good = DeviceId::from_sha256(&[7; 32]);
        assert_eq!(good.as_str().parse::<DeviceId>().unwrap(), good);
        assert_eq!("abc".parse::<DeviceId>(), Err(DeviceIdError::Length(3)));
        let upper = good.as_str().to_ascii_uppercase();
        assert!(matches!(
            upper.parse::<DeviceId>(),
            Err(DeviceIdError::Character(_))
        ));
        let with_one = format!("1{}", &good.as_str()[1..]);
        assert_eq!(
            with_one.parse::<DeviceId>(),
            Err(DeviceIdError::Character('1'))
        );
    }

    #[test]
    fn politeness_is_antisymmetric() {
        let a = DeviceId::from_sha256(&[1; 32]);
        let b = DeviceId::from_sha256(&[2; 32]);
        assert_ne!(a.is_polite_towards(&b), b.is_polite_towards(&a));
        assert!(!a.is_polite_towards(&a));
    }

    #[test]
    fn prefixes_need_eight_characters() {
        assert!(DeviceId::validate_prefix("abcdefg").is_err());
        assert_eq!(DeviceId::validate_prefix(" ABCDEFGH ").unwrap(), "abcdefgh");
        assert!(DeviceId::validate_prefix("abcdefg1").is_err());
    }

    #[test]
    fn localsend_ids_are_their_own_kind() {
        let digest = [0xab; 32];
        let id = DeviceId::from_localsend_fingerprint(&digest);
        assert_eq!(id.as_str().len(), LOCALSEND_ID_LEN);
        assert!(id.as_str().starts_with("ls:abab"));
        assert!(id.is_localsend());
        assert_eq!(id.localsend_fingerprint(), Some(digest));
        assert_eq!(id.as_str().parse::<DeviceId>().unwrap(), id);
        // The same digest as an fsnode device is another device.
        let fsnode = DeviceId::from_sha256(&digest);
        assert_ne!(fsnode, id);
        assert!(!fsnode.is_localsend() && fsnode.localsend_fingerprint().is_none());
        // Upper-case hex, short, long or non-hex ids are refused.
        assert!(
            id.as_str()
                .to_ascii_uppercase()
                .parse::<DeviceId>()
                .is_err()
        );
        assert!("ls:abcd".parse::<DeviceId>().is_err());
        assert!(format!("{id}0").parse::<DeviceId>().is_err());
        assert!(
            format!("ls:{}", "g".repeat(64))
                .parse::<DeviceId>()
                .is_err()
        );
        // Prefixes: `ls:` and at least 8 hex digits, any case.
        assert_eq!(
            DeviceId::validate_prefix("LS:ABABABAB").unwrap(),
            "ls:abababab"
        );
        assert!(DeviceId::validate_prefix("ls:abababa").is_err());
        assert!(DeviceId::validate_prefix("ls:abababaz").is_err());
    }

    #[test]
    fn unknown_device_types_are_kept_as_unknown() {
        assert_eq!(DeviceType::from_wire("server"), DeviceType::Server);
        assert_eq!(DeviceType::from_wire("toaster"), DeviceType::Unknown);
        let t: DeviceType = serde_json::from_str("\"toaster\"").unwrap();
        assert_eq!(t, DeviceType::Unknown);
    }
}
