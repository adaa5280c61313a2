//! A mesh certificate authority on disk (`exemesh certs init`) and the leaf certificates it issues
//! (`exemesh certs issue`): ECDSA P-256 keys, a SPIFFE ID per service as URI SAN, usable both as
//! server and as client certificate.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use super::TlsError;
use super::identity::{SpiffeId, trust_domain_of_ca};

/// The CA certificate's file name in a CA directory (and in an identity directory).
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name in a CA directory.
pub const CA_KEY: &str = "ca.key";
/// A leaf certificate's file name in an identity directory.
pub const CERT: &str = "cert.pem";
/// A leaf key's file name in an identity directory.
pub const KEY: &str = "key.pem";

/// Tolerated clock skew between machines: certificates are valid from this long before issuance.
const BACKDATE: Duration = Duration::from_secs(300);

/// What a leaf certificate says.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// The services it may act as (one SPIFFE ID each); the first is also its common name.
    pub services: Vec<String>,
    /// How long it is valid.
    pub lifetime: Duration,
    /// DNS names for clients that check host names (grpcurl, grpcio); `localhost` is always added.
    pub dns: Vec<String>,
    /// IP addresses for the same; 127.0.0.1 and ::1 are always added.
    pub ips: Vec<IpAddr>,
    /// Start of validity; `None` = now (minus a little for clock skew). Tests set it in the past.
    pub not_before: Option<OffsetDateTime>,
}

/// A loaded CA: its certificate, key and trust domain.
pub struct Authority {
    cert_pem: String,
    key: KeyPair,
    trust_domain: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Certificate(format!("{what}: {e}"))
}

fn offset(d: Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

impl Authority {
    /// Creates a new CA for `trust_domain`, valid for `lifetime`.
    pub fn create(trust_domain: &str, lifetime: Duration) -> Result<Authority, TlsError> {
        SpiffeId::validate_part("trust domain", trust_domain).map_err(TlsError::Certificate)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            format!("exemesh mesh CA {trust_domain}"),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .map_err(rcgen_error("trust domain"))?,
        )];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - offset(BACKDATE);
        params.not_after = now + offset(lifetime);
        let key = KeyPair::generate().map_err(rcgen_error("CA key"))?;
        let cert = params.self_signed(&key).map_err(rcgen_error("CA"))?;
        Ok(Authority {
            cert_pem: cert.pem(),
            key,
            trust_domain: trust_domain.to_string(),
        })
    }

    /// Loads the CA in `dir` (`ca.pem`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Authority, TlsError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let cert_pem = super::read(&cert_path)?;
        let key_pem = super::read(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::File {
            path: key_path.clone(),
            detail: format!("not a PEM private key: {e}"),
        })?;
        let der = super::pem_certs(&cert_path, &cert_pem)?;
        let trust_domain = der
            .first()
            .and_then(|c| trust_domain_of_ca(c))
            .ok_or_else(|| TlsError::File {
                path: cert_path.clone(),
                detail: "not an exemesh CA (no spiffe://<trust-domain> URI SAN)".into(),
            })?;
        Ok(Authority {
            cert_pem,
            key,
            trust_domain,
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`, creating it.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        super::write(&dir.join(CA_CERT), &self.cert_pem, 0o644)?;
        super::write(&dir.join(CA_KEY), &self.key.serialize_pem(), 0o600)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a leaf certificate; returns `(certificate PEM, key PEM)`.
    pub fn issue(&self, request: &LeafRequest) -> Result<(String, String), TlsError> {
        let Some(first) = request.services.first() else {
            return Err(TlsError::Certificate(
                "a certificate needs at least one service".into(),
            ));
        };
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, first.clone());
        params.distinguished_name = name;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        for service in &request.services {
            SpiffeId::validate_part("service", service).map_err(TlsError::Certificate)?;
            let id = SpiffeId::new(&self.trust_domain, service).to_string();
            params
                .subject_alt_names
                .push(SanType::URI(id.try_into().map_err(rcgen_error("service"))?));
        }
        let mut dns = vec!["localhost".to_string()];
        dns.extend(request.dns.iter().cloned());
        for name in dns {
            params.subject_alt_names.push(SanType::DnsName(
                name.as_str().try_into().map_err(rcgen_error("DNS name"))?,
            ));
        }
        let mut ips: Vec<IpAddr> =
            vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
        ips.extend(request.ips.iter().copied());
        params
            .subject_alt_names
            .extend(ips.into_iter().map(SanType::IpAddress));
        let start = request
            .not_before
            .unwrap_or_else(|| OffsetDateTime::now_utc() - offset(BACKDATE));
        params.not_before = start;
        params.not_after = start + offset(request.lifetime);
        let key = KeyPair::generate().map_err(rcgen_error("key"))?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(rcgen_error("CA certificate"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(rcgen_error("certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a leaf and writes an identity directory: `ca.pem`, `cert.pem`, `key.pem` (0600).
    pub fn write_identity(&self, out: &Path, request: &LeafRequest) -> Result<PathBuf, TlsError> {
        let (cert, key) = self.issue(request)?;
        super::write(&out.join(CA_CERT), &self.cert_pem, 0o644)?;
        // Key first: a reader seeing the new certificate must find its key.
        super::write(&out.join(KEY), &key, 0o600)?;
        super::write(&out.join(CERT), &cert, 0o644)?;
        Ok(out.to_path_buf())
    }
}
