//! The client side of mutual TLS and the one place where exemesh opens channels.
//!
//! A server is trusted when its certificate chains to the mesh CA and carries a SPIFFE ID of the
//! mesh's trust domain, and, when the caller knows which service it wants, that service's ID. Host
//! names are not checked: mesh endpoints are addresses from discovery, identities are what count
//! (as in Linkerd and Istio). The process's identity is installed once at start-up
//! ([`install`](super::install));
//! without one, channels are plaintext h2c.

use std::sync::Arc;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Channel, Endpoint};

use super::identity::identities_of;
use super::material::IdentityDir;
use super::{installed, provider};

/// A lazily connecting channel to `endpoint`, over mTLS when an identity is installed. `service`
/// is the service the server must prove to be, when known.
pub fn lazy(endpoint: Endpoint, service: Option<&str>) -> Channel {
    lazy_with(installed(), endpoint, service)
}

/// Like [`lazy`] with an explicit identity (`None`: plaintext h2c).
pub fn lazy_with(
    identity: Option<Arc<IdentityDir>>,
    endpoint: Endpoint,
    service: Option<&str>,
) -> Channel {
    match identity {
        Some(identity) => endpoint.connect_with_connector_lazy(connector(identity, service)),
        None => endpoint.connect_lazy(),
    }
}

/// Connects a channel to `endpoint` now (see [`lazy`]).
pub async fn connect(
    endpoint: Endpoint,
    service: Option<&str>,
) -> Result<Channel, tonic::transport::Error> {
    connect_with(installed(), endpoint, service).await
}

/// Like [`connect`] with an explicit identity (`None`: plaintext h2c).
pub async fn connect_with(
    identity: Option<Arc<IdentityDir>>,
    endpoint: Endpoint,
    service: Option<&str>,
) -> Result<Channel, tonic::transport::Error> {
    match identity {
        Some(identity) => {
            endpoint
                .connect_with_connector(connector(identity, service))
                .await
        }
        None => endpoint.connect().await,
    }
}

/// A lazily connecting channel over TLS with `config` (for servers outside the mesh, such as etcd).
pub fn lazy_with_config(config: Arc<ClientConfig>, endpoint: Endpoint) -> Channel {
    endpoint.connect_with_connector_lazy(connector_with(config))
}

/// A TLS client configuration for a server outside the mesh (etcd): `dir/ca.pem` verifies the
/// server the standard way (chain and host name), `dir/cert.pem` and `dir/key.pem` are this
/// client's certificate. No SPIFFE identity is required of either.
pub fn standard_config(dir: &std::path::Path) -> Result<Arc<ClientConfig>, super::TlsError> {
    let ca_path = dir.join(super::authority::CA_CERT);
    let cert_path = dir.join(super::authority::CERT);
    let key_path = dir.join(super::authority::KEY);
    let roots = super::load_roots(&ca_path)?;
    let chain = super::pem_certs(&cert_path, &super::read(&cert_path)?)?;
    let key = super::load_key(&key_path)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable_versions())
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| super::TlsError::File {
            path: key_path,
            detail: format!("does not match {}: {e}", cert_path.display()),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A hint for an error that looks like the two sides disagree about TLS: a plaintext client
/// talking to an mTLS server (HTTP/2 sees the TLS alert as garbage), or the reverse.
pub fn mismatch_hint(detail: &str) -> Option<&'static str> {
    let plaintext_to_tls = [
        "http2 error",
        "protocol error",
        "frame with invalid size",
        "broken pipe",
        "connection reset",
        "connection closed",
        // hyper, when the server drops the connection under a request in flight (a TLS server
        // closing on a plaintext preface, depending on timing).
        "operation was canceled",
    ];
    let tls_to_plaintext = ["InvalidContentType", "corrupt message", "received corrupt"];
    if installed().is_none() && plaintext_to_tls.iter().any(|p| detail.contains(p)) {
        Some(
            "the server may require mTLS: pass --tls-dir DIR or set EXEMESH_TLS_DIR (`exemesh up` prints the directory to use)",
        )
    } else if installed().is_some() && tls_to_plaintext.iter().any(|p| detail.contains(p)) {
        Some(
            "the server may speak plaintext: drop --tls-dir / EXEMESH_TLS_DIR, or serve it with one",
        )
    } else {
        None
    }
}

type Io = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A tower connector: TCP, then a TLS handshake that proves both sides.
fn connector(
    identity: Arc<IdentityDir>,
    service: Option<&str>,
) -> impl tower::Service<
    Uri,
    Response = Io,
    Error = BoxError,
    Future = impl Future<Output = Result<Io, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    connector_with(client_config(identity, service.map(str::to_string)))
}

/// A tower connector: TCP, then a TLS handshake with `config`.
fn connector_with(
    config: Arc<ClientConfig>,
) -> impl tower::Service<
    Uri,
    Response = Io,
    Error = BoxError,
    Future = impl Future<Output = Result<Io, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: Uri| {
        let tls = tokio_rustls::TlsConnector::from(config.clone());
        async move {
            let host = uri.host().ok_or("the address has no host")?;
            let port = uri.port_u16().ok_or("the address has no port")?;
            let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())?;
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, BoxError>(TokioIo::new(stream))
        }
    })
}

/// The rustls client configuration: the installed identity as client certificate, servers verified
/// by CA and SPIFFE ID (ALPN `h2`).
pub fn client_config(identity: Arc<IdentityDir>, service: Option<String>) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable_versions())
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier {
            identity: identity.clone(),
            service,
        }))
        .with_client_cert_resolver(Arc::new(CurrentClientCert(identity)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// ring supports TLS 1.2 and 1.3, so the safe defaults cannot be refused; were they, the process
/// default (ring, installed by [`provider`]) gives the same builder.
fn unreachable_versions() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    let _ = provider();
    ClientConfig::builder()
}

#[derive(Debug)]
struct CurrentClientCert(Arc<IdentityDir>);

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct MeshServerVerifier {
    identity: Arc<IdentityDir>,
    service: Option<String>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let material = self.identity.current();
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &material.roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        let ids = identities_of(end_entity);
        let acceptable = ids.iter().any(|id| {
            id.trust_domain == material.trust_domain
                && self.service.as_ref().is_none_or(|s| *s == id.service)
        });
        if acceptable {
            Ok(ServerCertVerified::assertion())
        } else {
            let shown: Vec<String> = ids.iter().map(ToString::to_string).collect();
            Err(rustls::Error::General(format!(
                "the server's identity [{}] is not {}",
                shown.join(", "),
                self.service.as_ref().map_or_else(
                    || format!("in trust domain {}", material.trust_domain),
                    |s| format!("spiffe://{}/svc/{s}", material.trust_domain)
                )
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
