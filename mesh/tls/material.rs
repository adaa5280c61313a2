//! An identity directory (`ca.pem`, `cert.pem`, `key.pem`) loaded into rustls form, and reloaded
//! when its files change: certificate rotation without restarts or dropped connections (existing
//! connections keep their session; new handshakes use the new files).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;

use super::authority::{CA_CERT, CERT, KEY};
use super::identity::{SpiffeId, identities_of, trust_domain_of_ca};
use super::{TlsError, load_key, load_roots, pem_certs, provider, read};

/// How often, at most, the files are checked for changes (on the next handshake after that).
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The loaded contents of an identity directory.
pub struct Material {
    /// The mesh CA(s).
    pub roots: Arc<RootCertStore>,
    /// This workload's certificate chain and key.
    pub certified: Arc<CertifiedKey>,
    /// This workload's identities.
    pub own: Vec<SpiffeId>,
    /// The mesh's trust domain (from the CA).
    pub trust_domain: String,
    /// Verifies client certificates against `roots`.
    pub client_verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("own", &self.own)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

/// An identity directory, reloaded on change.
#[derive(Debug)]
pub struct IdentityDir {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    material: Arc<Material>,
    stamp: Stamp,
    checked: Instant,
}

fn stamp(dir: &Path) -> Stamp {
    [CA_CERT, CERT, KEY]
        .iter()
        .map(|name| {
            let meta = std::fs::metadata(dir.join(name)).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

impl IdentityDir {
    /// Loads `dir`; the error names the file at fault.
    pub fn load(dir: &Path) -> Result<Arc<IdentityDir>, TlsError> {
        let stamp = stamp(dir);
        let material = Arc::new(load_material(dir)?);
        Ok(Arc::new(IdentityDir {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                material,
                stamp,
                checked: Instant::now(),
            }),
        }))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current material, reloaded first if the files changed. A reload that fails (a rotation
    /// caught half-written, a bad file) keeps the previous material and is retried later.
    pub fn current(&self) -> Arc<Material> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            let now = stamp(&self.dir);
            if now != state.stamp {
                match load_material(&self.dir) {
                    Ok(material) => {
                        tracing::info!(dir = %self.dir.display(), "reloaded TLS certificates");
                        state.material = Arc::new(material);
                        state.stamp = now;
                    }
                    Err(e) => tracing::warn!("keeping the previous TLS certificates: {e}"),
                }
            }
        }
        state.material.clone()
    }
}

/// Loads the three files of an identity directory.
pub fn load_material(dir: &Path) -> Result<Material, TlsError> {
    let ca_path = dir.join(CA_CERT);
    let cert_path = dir.join(CERT);
    let key_path = dir.join(KEY);
    let ca = pem_certs(&ca_path, &read(&ca_path)?)?;
    let trust_domain = ca
        .iter()
        .find_map(|c| trust_domain_of_ca(c))
        .ok_or_else(|| TlsError::File {
            path: ca_path.clone(),
            detail: "not an exemesh CA (no spiffe://<trust-domain> URI SAN)".into(),
        })?;
    let roots = Arc::new(load_roots(&ca_path)?);
    let chain = pem_certs(&cert_path, &read(&cert_path)?)?;
    let key = load_key(&key_path)?;
    let provider = provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::File {
        path: key_path.clone(),
        detail: format!("does not match {}: {e}", cert_path.display()),
    })?;
    let own = certified
        .end_entity_cert()
        .map(|c| identities_of(c))
        .unwrap_or_default();
    if own.is_empty() {
        return Err(TlsError::File {
            path: cert_path,
            detail: "has no spiffe://<trust-domain>/svc/<service> identity (issue it with `exemesh certs issue`)".into(),
        });
    }
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
        .build()
        .map_err(|e| TlsError::File {
            path: ca_path,
            detail: format!("cannot verify clients with it: {e}"),
        })?;
    Ok(Material {
        roots,
        certified: Arc::new(certified),
        own,
        trust_domain,
        client_verifier,
    })
}
