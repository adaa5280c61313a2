//! Contracts loaded at run time: the user's `.proto` files compiled by protox (no `protoc`) into
//! prost-reflect descriptors.

use std::path::{Path, PathBuf};

use prost_reflect::{DescriptorPool, ServiceDescriptor};
use prost_types::FileDescriptorSet;

/// Why a contract could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// protox rejected a file (syntax, missing import, ...).
    #[error("{file}: {message}")]
    Compile {
        /// The file being opened.
        file: PathBuf,
        /// protox's diagnostic.
        message: String,
    },
    /// The service is not defined by the files.
    #[error("service {name:?} is not defined in {files} (services found: {found})")]
    NoService {
        /// The service asked for.
        name: String,
        /// The files searched.
        files: String,
        /// The services that do exist.
        found: String,
    },
}

/// A compiled contract and the service to serve from it.
#[derive(Debug, Clone)]
pub struct Contract {
    /// Every message, enum and service of the files and their imports.
    pub pool: DescriptorPool,
    /// The same files as a descriptor set, for server reflection.
    pub files: FileDescriptorSet,
    /// The service.
    pub service: ServiceDescriptor,
}

impl Contract {
    /// Compiles `protos` with `include` as import paths and finds `service` in them.
    pub fn load(
        protos: &[PathBuf],
        include: &[PathBuf],
        service: &str,
    ) -> Result<Contract, ContractError> {
        let (pool, files) = compile(protos, include)?;
        let found = pool
            .get_service_by_name(service)
            .ok_or_else(|| ContractError::NoService {
                name: service.to_string(),
                files: protos
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                found: {
                    let names: Vec<String> =
                        pool.services().map(|s| s.full_name().to_string()).collect();
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                },
            })?;
        Ok(Contract {
            pool,
            files,
            service: found,
        })
    }
}

/// Compiles `.proto` files into a pool and a descriptor set (imports included).
pub fn compile(
    protos: &[PathBuf],
    include: &[PathBuf],
) -> Result<(DescriptorPool, FileDescriptorSet), ContractError> {
    let first = protos.first().cloned().unwrap_or_default();
    let mut compiler = protox::Compiler::new(include).map_err(|e| ContractError::Compile {
        file: first.clone(),
        message: e.to_string(),
    })?;
    compiler.include_imports(true);
    for proto in protos {
        compiler
            .open_file(proto)
            .map_err(|e| ContractError::Compile {
                file: proto.clone(),
                message: hint(proto, include, e.to_string()),
            })?;
    }
    Ok((compiler.descriptor_pool(), compiler.file_descriptor_set()))
}

fn hint(proto: &Path, include: &[PathBuf], message: String) -> String {
    if include.iter().any(|dir| proto.starts_with(dir)) {
        message
    } else {
        let dirs: Vec<String> = include.iter().map(|d| d.display().to_string()).collect();
        format!(
            "{message} (the file must lie under an include path: {})",
            dirs.join(", ")
        )
    }
}
