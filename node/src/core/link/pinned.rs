//! TLS 1.3 inside QUIC with both identity certificates pinned (spec 6). fsnode's certificates
//! are self-signed, so there is no chain to build: the one check is that the SHA-256 of the
//! peer's certificate DER is the device id this session is for (the `hello` id, which
//! negotiation already matched against the SDP fingerprint), and that the peer signed the
//! handshake with that certificate's key (`rustls::crypto::verify_tls13_signature`). The same
//! verifier serves both roles: the client checks the server, the server requires and checks
//! the client.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::core::DeviceId;

/// Spec 6's ALPN.
pub const ALPN: &[u8] = b"fsnode/1";
/// The name the client gives (TLS needs one; the verifier never looks at it).
pub const SERVER_NAME: &str = "fsnode";

/// Accepts exactly the certificate of `expected`; remembers what else it was shown.
#[derive(Debug)]
pub struct PinnedCertificate {
    expected: DeviceId,
    algorithms: WebPkiSupportedAlgorithms,
    /// The id of a certificate it refused, for `LinkError::FingerprintMismatch`.
    refused: Arc<Mutex<Option<DeviceId>>>,
}

impl PinnedCertificate {
    pub fn new(
        expected: DeviceId,
        provider: &CryptoProvider,
        refused: Arc<Mutex<Option<DeviceId>>>,
    ) -> Self {
        Self {
            expected,
            algorithms: provider.signature_verification_algorithms,
            refused,
        }
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let got = DeviceId::from_certificate_der(end_entity.as_ref());
        if got == self.expected {
            return Ok(());
        }
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PinnedCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// ring's TLS 1.3 suites with AES-128-GCM first (the suite QUIC's Initial packets use anyway,
/// and the cheapest per byte on hardware with AES instructions).
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Our certificate and key as rustls takes them.
pub struct Credentials {
    pub certificate: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Self {
            certificate: self.certificate.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The rustls client configuration of a session with `peer` (spec 6: TLS 1.3 only, ALPN
/// `fsnode/1`, our certificate for client authentication, no resumption, no early data).
pub fn client_config(
    credentials: &Credentials,
    peer: DeviceId,
    refused: Arc<Mutex<Option<DeviceId>>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(PinnedCertificate::new(peer, &provider, refused));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            vec![credentials.certificate.clone()],
            credentials.key.clone_key(),
        )?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(config)
}

/// The rustls server configuration of a session with `peer`: client certificates required.
pub fn server_config(
    credentials: &Credentials,
    peer: DeviceId,
    refused: Arc<Mutex<Option<DeviceId>>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(PinnedCertificate::new(peer, &provider, refused));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![credentials.certificate.clone()],
            credentials.key.clone_key(),
        )?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    config.send_tls13_tickets = 0;
    Ok(config)
}
