//! Mesh identities: SPIFFE IDs (`spiffe://<trust-domain>/svc/<service>`) carried as URI SANs in
//! certificates, and the caller identity a server learns from the TLS handshake.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The trust domain used when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "exemesh.local";

/// A workload identity: `spiffe://<trust_domain>/svc/<service>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The trust domain (the mesh).
    pub trust_domain: String,
    /// The service name (a contract such as `shop.v1.OrderService`, or a tool such as `exemesh-cli`).
    pub service: String,
}

impl SpiffeId {
    /// The identity of `service` in `trust_domain`.
    pub fn new(trust_domain: &str, service: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.to_string(),
            service: service.to_string(),
        }
    }

    /// Parses `spiffe://td/svc/name`; `None` for anything else.
    pub fn parse(uri: &str) -> Option<SpiffeId> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (trust_domain, path) = rest.split_once('/')?;
        let service = path.strip_prefix("svc/")?;
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        (valid(trust_domain) && valid(service)).then(|| SpiffeId::new(trust_domain, service))
    }

    /// Checks that `name` can be part of an identity (letters, digits, `-`, `.`, `_`).
    pub fn validate_part(what: &str, name: &str) -> Result<(), String> {
        if !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            Ok(())
        } else {
            Err(format!(
                "{what} {name:?} may only hold letters, digits, '-', '.' and '_'"
            ))
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/svc/{}", self.trust_domain, self.service)
    }
}

/// The SPIFFE IDs in a DER certificate's URI SANs (empty when it has none or cannot be parsed).
pub fn identities_of(der: &[u8]) -> Vec<SpiffeId> {
    uris_of(der)
        .iter()
        .filter_map(|uri| SpiffeId::parse(uri))
        .collect()
}

/// The URI SANs of a DER certificate.
pub fn uris_of(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect()
}

/// The trust domain a CA certificate names in its URI SAN (`spiffe://td`).
pub fn trust_domain_of_ca(der: &[u8]) -> Option<String> {
    uris_of(der).iter().find_map(|uri| {
        let td = uri.strip_prefix("spiffe://")?.trim_end_matches('/');
        (!td.is_empty() && !td.contains('/')).then(|| td.to_string())
    })
}

/// Who is calling, as proven by the client certificate of the connection (a request extension).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerIdentity {
    /// The SPIFFE IDs of the client certificate; empty on a plaintext connection.
    pub ids: Vec<SpiffeId>,
}

impl PeerIdentity {
    /// The first identity, as text (`spiffe://...`), or `""` when unauthenticated.
    pub fn primary(&self) -> String {
        self.ids
            .first()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip_and_reject_other_shapes() {
        let id = SpiffeId::parse("spiffe://exemesh.local/svc/shop.v1.OrderService").expect("id");
        assert_eq!(id.trust_domain, "exemesh.local");
        assert_eq!(id.service, "shop.v1.OrderService");
        assert_eq!(
            id.to_string(),
            "spiffe://exemesh.local/svc/shop.v1.OrderService"
        );
        for bad in [
            "https://exemesh.local/svc/x",
            "spiffe://exemesh.local/ns/x",
            "spiffe:///svc/x",
            "spiffe://td/svc/",
            "spiffe://td/svc/a/b",
            "spiffe://t d/svc/x",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad}");
        }
    }
}
