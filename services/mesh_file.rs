//! The mesh file of `exemesh up`: which manifests make up a local mesh and how many replicas each
//! runs. Documented in docs/mesh-file.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::manifest::{ManifestError, ManifestIssue};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeshFileRaw {
    #[serde(default)]
    registry: RegistrySection,
    #[serde(default)]
    services: BTreeMap<String, ServiceSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistrySection {
    listen: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    manifest: PathBuf,
    replicas: Option<usize>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// A validated mesh file.
#[derive(Debug, Clone)]
pub struct MeshFile {
    /// The file.
    pub file: PathBuf,
    /// Where the embedded registry listens.
    pub registry: SocketAddr,
    /// The services, by name (the table key).
    pub services: Vec<MeshService>,
}

/// One service of the mesh.
#[derive(Debug, Clone)]
pub struct MeshService {
    /// Its name in the mesh file (used to prefix logs and name instances).
    pub name: String,
    /// Its manifest, absolute.
    pub manifest: PathBuf,
    /// How many `exemesh serve` processes to run.
    pub replicas: usize,
    /// Variables added to those processes' environment.
    pub env: Vec<(String, String)>,
}

/// The registry's default address.
pub const DEFAULT_REGISTRY: &str = "127.0.0.1:7700";

impl MeshFile {
    /// Reads and validates a mesh file; every manifest must exist (it is checked fully by `serve`).
    pub fn load(path: &Path) -> Result<MeshFile, ManifestError> {
        let issue = |key: &str, message: String| ManifestIssue {
            file: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ManifestError(vec![issue("", format!("cannot read: {e}"))]))?;
        let raw: MeshFileRaw = toml::from_str(&text)
            .map_err(|e| ManifestError(vec![issue("", e.to_string().trim_end().to_string())]))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut issues = Vec::new();
        if raw.services.is_empty() {
            issues.push(issue(
                "services",
                "no services: add a [services.NAME] table with manifest = \"...\"".into(),
            ));
        }
        let mut services = Vec::new();
        for (name, svc) in raw.services {
            let key = format!("services.{name}");
            let manifest = dir.join(&svc.manifest);
            if !manifest.is_file() {
                issues.push(issue(
                    &format!("{key}.manifest"),
                    format!("{} does not exist", manifest.display()),
                ));
            }
            let replicas = svc.replicas.unwrap_or(1);
            if replicas == 0 || replicas > 64 {
                issues.push(issue(
                    &format!("{key}.replicas"),
                    "must be between 1 and 64".into(),
                ));
            }
            services.push(MeshService {
                name,
                manifest,
                replicas,
                env: svc.env.into_iter().collect(),
            });
        }
        if !issues.is_empty() {
            return Err(ManifestError(issues));
        }
        let registry = raw.registry.listen.unwrap_or_else(|| {
            DEFAULT_REGISTRY
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7700)))
        });
        Ok(MeshFile {
            file: path.to_path_buf(),
            registry,
            services,
        })
    }
}
