//! Service discovery: where the instances of a service are.
//!
//! [`Discovery`] is the backend trait: the embedded registry ([`registry_client`]) or an etcd cluster
//! ([`etcd`]). On top of it: [`registration`] keeps one instance registered for the life of a server, and
//! [`watcher`] follows a service's instances for callers, keeping the last known set when discovery
//! is unreachable (static stability).

pub mod etcd;
pub mod registration;
pub mod registry_client;
pub mod watcher;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

pub use crate::pb::v1::Instance;

/// Why discovery failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscoveryError {
    /// The backend cannot be reached (or answered with a transient error).
    #[error("discovery unavailable: {0}")]
    Unavailable(String),
    /// The lease expired or the backend forgot it (it restarted): register again.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// The request was refused as invalid.
    #[error("discovery refused the request: {0}")]
    Invalid(String),
    /// The discovery address is not understood.
    #[error(
        "invalid discovery address {0:?}: use HOST:PORT (the embedded registry) or registry://HOST:PORT"
    )]
    BadAddress(String),
    /// TLS material for the backend cannot be used.
    #[error("discovery TLS: {0}")]
    Tls(String),
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The backend's lease id.
    pub id: u64,
    /// Its time to live.
    pub ttl: Duration,
}

/// A change seen by a watcher.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// The complete current set.
    Snapshot(Vec<Instance>),
    /// Added or changed.
    Upsert(Vec<Instance>),
    /// Removed.
    Remove(Vec<Instance>),
}

/// A discovery backend.
pub trait Discovery: Send + Sync + std::fmt::Debug + 'static {
    /// Registers `instance` with a lease of `ttl`.
    fn register(
        &self,
        instance: Instance,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Lease, DiscoveryError>>;
    /// Renews the lease of `instance_id`.
    fn keep_alive(
        &self,
        lease: u64,
        instance_id: &str,
    ) -> BoxFuture<'_, Result<(), DiscoveryError>>;
    /// Removes an instance.
    fn deregister(&self, instance_id: &str) -> BoxFuture<'_, Result<(), DiscoveryError>>;
    /// The instances of `service` ("" for all).
    fn resolve(&self, service: &str) -> BoxFuture<'_, Result<Vec<Instance>, DiscoveryError>>;
    /// A snapshot then the changes of `service` ("" for all); ends or fails when the backend goes away.
    fn watch(
        &self,
        service: &str,
    ) -> BoxFuture<
        '_,
        Result<BoxStream<'static, Result<WatchUpdate, DiscoveryError>>, DiscoveryError>,
    >;
}

/// Connects to the backend named by `spec`: `HOST:PORT` or `registry://HOST:PORT` for the embedded
/// registry, `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` for an etcd cluster. Connection is lazy: an
/// unreachable backend shows up as errors on use.
pub fn connect(spec: &str) -> Result<Arc<dyn Discovery>, DiscoveryError> {
    if spec.starts_with("etcd://") {
        return Ok(Arc::new(etcd::EtcdDiscovery::new(spec)?));
    }
    let addr = spec.strip_prefix("registry://").unwrap_or(spec);
    if addr.contains("://") || addr.is_empty() {
        return Err(DiscoveryError::BadAddress(spec.to_string()));
    }
    Ok(Arc::new(registry_client::RegistryDiscovery::new(addr)?))
}
