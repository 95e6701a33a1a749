//! The node's long-lived identity (spec section 1): one self-signed ECDSA P-256 certificate and
//! key, created on first start, reused afterwards, and used as the DTLS certificate of every
//! WebRTC connection. The device id is the SHA-256 of the certificate's DER.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rtc::crypto::{self, SignatureScheme};
use rtc::peer_connection::certificate::RTCCertificate;

use crate::core::DeviceId;
use crate::shell::atomic_file::{self, Replace};

/// How long a certificate is valid (spec section 1: 10 years).
pub const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600 + 3 * 24 * 3600);

pub struct Identity {
    pub certificate: RTCCertificate,
    pub device_id: DeviceId,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "cannot read the identity file {path}: {source}. Fix its permissions, or move it away to \
         create a new identity (peers will have to trust the new device id)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the identity file {path} is damaged ({reason}). It was not replaced: restore it from a \
         backup, or move it away to create a new identity (peers will have to trust the new id)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write the identity file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create a certificate: {0}")]
    Generate(String),
}

/// What `load_or_create` did.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Origin {
    Created,
    Loaded,
}

impl Identity {
    /// Loads the identity at `path`, or creates it if (and only if) the file does not exist.
    /// A file that exists but cannot be read or parsed is an error, never a new identity.
    pub fn load_or_create(path: &Path, now: SystemTime) -> Result<(Self, Origin), IdentityError> {
        match fs::read_to_string(path) {
            Ok(pem) => Ok((Self::from_pem(path, &pem)?, Origin::Loaded)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let identity = Self::create(path, now)?;
                Ok((identity, Origin::Created))
            }
            Err(source) => Err(IdentityError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Loads an existing identity; a missing file is an error (for commands that must not
    /// create one, like `fsnode id`).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let pem = fs::read_to_string(path).map_err(|source| IdentityError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(path, &pem)
    }

    fn from_pem(path: &Path, pem: &str) -> Result<Self, IdentityError> {
        let corrupt = |reason: String| IdentityError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let provider = crypto::default_provider().map_err(|e| corrupt(e.to_string()))?;
        let certificate =
            RTCCertificate::from_pem(pem, provider.crypto()).map_err(|e| corrupt(e.to_string()))?;
        let der = certificate
            .dtls_certificate
            .certificate
            .first()
            .ok_or_else(|| corrupt("no certificate in the file".into()))?;
        let device_id = DeviceId::from_certificate_der(der.as_ref());
        Ok(Self {
            certificate,
            device_id,
            path: path.to_path_buf(),
        })
    }

    fn create(path: &Path, now: SystemTime) -> Result<Self, IdentityError> {
        let generate = |e: String| IdentityError::Generate(e);
        let provider = crypto::default_provider().map_err(|e| generate(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(vec!["fsnode".to_owned()])
            .map_err(|e| generate(e.to_string()))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fsnode");
        params.not_before = time::OffsetDateTime::from(now - Duration::from_secs(24 * 3600));
        params.not_after = time::OffsetDateTime::from(now + VALIDITY);
        let certificate =
            RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)
                .map_err(|e| generate(e.to_string()))?;
        let pem = certificate
            .serialize_pem()
            .map_err(|e| generate(e.to_string()))?;
        write_private_file(path, pem.as_bytes())?;
        // Read back what is on disk: the identity in use is exactly the one that will be
        // loaded next time.
        Self::load(path)
    }
}

fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    atomic_file::write(path, bytes, 0o600, Replace::Never).map_err(|source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000)
    }

    #[test]
    fn created_once_then_reused_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/identity.pem");
        let (first, origin) = Identity::load_or_create(&path, now()).unwrap();
        assert_eq!(origin, Origin::Created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (second, origin) = Identity::load_or_create(&path, now()).unwrap();
        assert_eq!(origin, Origin::Loaded);
        assert_eq!(first.device_id, second.device_id);
        assert_eq!(first.device_id.as_str().len(), 52);
        // No temporary files left beside it.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("identity.pem")]);
    }

    #[test]
    fn valid_for_ten_years() {
        let dir = tempfile::tempdir().unwrap();
        let (identity, _) = Identity::load_or_create(&dir.path().join("id.pem"), now()).unwrap();
        let years = identity
            .certificate
            .expires
            .duration_since(now())
            .unwrap()
            .as_secs()
            / (365 * 24 * 3600);
        assert_eq!(years, 10);
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_naming_it_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.pem");
        fs::write(&path, "-----BEGIN GARBAGE-----\nnope\n").unwrap();
        let err = Identity::load_or_create(&path, now()).err().unwrap();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "-----BEGIN GARBAGE-----\nnope\n"
        );
    }

    #[test]
    fn a_truncated_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.pem");
        Identity::load_or_create(&path, now()).unwrap();
        let pem = fs::read_to_string(&path).unwrap();
        fs::write(&path, &pem[..pem.len() / 2]).unwrap();
        assert!(matches!(
            Identity::load_or_create(&path, now()),
            Err(IdentityError::Corrupt { .. })
        ));
    }

    #[test]
    fn an_unreadable_key_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading fails with something other than
        // NotFound (root can read any mode-000 file, so permissions would not test this).
        let path = dir.path().join("identity.pem");
        fs::create_dir(&path).unwrap();
        let err = Identity::load_or_create(&path, now()).err().unwrap();
        assert!(matches!(err, IdentityError::Read { .. }), "{err}");
    }
}
