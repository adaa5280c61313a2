//! The server side of mutual TLS: a client certificate from the mesh CA is required, the server
//! presents its own, and both follow rotations of the identity directory.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use super::identity::{PeerIdentity, identities_of};
use super::material::IdentityDir;
use super::{TlsError, provider};

/// The rustls configuration of an exemesh server (ALPN `h2`).
pub fn server_config(identity: Arc<IdentityDir>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Certificate(e.to_string()))?
        .with_client_cert_verifier(Arc::new(CurrentClientVerifier(identity.clone())))
        .with_cert_resolver(Arc::new(CurrentServerCert(identity)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The caller identity of an established TLS connection.
pub fn peer_identity(connection: &rustls::ServerConnection) -> PeerIdentity {
    PeerIdentity {
        ids: connection
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| identities_of(cert))
            .unwrap_or_default(),
    }
}

#[derive(Debug)]
struct CurrentServerCert(Arc<IdentityDir>);

impl ResolvesServerCert for CurrentServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }
}

/// Verifies client certificates with the current CA (root hints are not sent: they would have to
/// outlive a reload).
#[derive(Debug)]
struct CurrentClientVerifier(Arc<IdentityDir>);

impl ClientCertVerifier for CurrentClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().client_verifier.supported_verify_schemes()
    }
}
