//! Mutual TLS for every exemesh connection: a mesh CA, SPIFFE identities, rustls configurations
//! for servers and clients that reload their files when they change, and authorization of callers.
//!
//! * [`identity`]: SPIFFE IDs in certificates, and the caller identity of a request;
//! * [`authority`]: the CA on disk and the certificates it issues (`exemesh certs`);
//! * [`material`]: an identity directory loaded from disk and reloaded on change (rotation);
//! * [`server`]: the rustls server side (client certificates required);
//! * [`client`]: the rustls client side and the connector every channel uses;
//! * [`policy`]: who may call which method.
//!
//! An *identity directory* holds `ca.pem` (the mesh CA), `cert.pem` and `key.pem` (this workload).

pub mod authority;
pub mod client;
pub mod identity;
pub mod material;
pub mod policy;
pub mod server;

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why TLS material could not be created, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing, unreadable or malformed.
    #[error("{}: {detail}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A certificate could not be made or used.
    #[error("{0}")]
    Certificate(String),
}

static INSTALLED: std::sync::OnceLock<(
    std::sync::Arc<material::IdentityDir>,
    std::sync::Arc<rustls::ServerConfig>,
)> = std::sync::OnceLock::new();

/// Makes `identity` this process's identity: every channel it opens and every server it runs use
/// mTLS from now on. Once per process (the CLI calls it at start-up).
pub fn install(identity: std::sync::Arc<material::IdentityDir>) -> Result<(), TlsError> {
    let config = server::server_config(identity.clone())?;
    let _ = INSTALLED.set((identity, config));
    Ok(())
}

/// The installed identity, if any.
pub fn installed() -> Option<std::sync::Arc<material::IdentityDir>> {
    INSTALLED.get().map(|(identity, _)| identity.clone())
}

/// The server configuration of the installed identity (`None`: plaintext h2c).
pub fn installed_server_config() -> Option<std::sync::Arc<rustls::ServerConfig>> {
    INSTALLED.get().map(|(_, config)| config.clone())
}

/// Reads a text file, naming it in the error.
fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        detail: format!("cannot read: {e}"),
    })
}

/// Writes `text` atomically (a temporary file renamed over `path`) with `mode`, creating the
/// directory (0700) if needed.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let error = |e: std::io::Error| TlsError::File {
        path: path.to_path_buf(),
        detail: format!("cannot write: {e}"),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(error)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(error)?;
    file.write_all(text.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&tmp, path).map_err(error)
}

/// The certificates of a PEM text (at least one).
fn pem_certs(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            detail: format!("not a PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.to_path_buf(),
            detail: "holds no PEM certificate".into(),
        });
    }
    Ok(certs)
}

/// A root store of every certificate in a PEM file.
fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs(path, &read(path)?)? {
        roots.add(cert).map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            detail: format!("unusable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The private key of a PEM file.
fn load_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    rustls::pki_types::PrivateKeyDer::from_pem_slice(read(path)?.as_bytes()).map_err(|e| {
        TlsError::File {
            path: path.to_path_buf(),
            detail: format!("not a PEM private key: {e}"),
        }
    })
}

/// The crypto provider of every exemesh TLS configuration (ring).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            // Also the process default, for any rustls configuration built without a provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
            std::sync::Arc::new(rustls::crypto::ring::default_provider())
        })
        .clone()
}
