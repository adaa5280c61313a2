//! Serving the embedded registry: the gRPC service, health, reflection and the expiry loop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use super::service::{RegistryService, run_expiry};
use super::store::Store;
use crate::mesh::introspection::{ReflectionSetupError, set_status, with_introspection};
use crate::mesh::router::GrpcRouter;
use crate::mesh::transport::{Http2Settings, serve_h2c};
use crate::pb::v1::registry_server::RegistryServer;

/// Serves an in-memory registry on `listener` until `shutdown` completes.
pub async fn serve_registry(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ReflectionSetupError> {
    let store = Arc::new(Store::default());
    let own = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
        .map_err(|e| ReflectionSetupError::new(e.to_string()))?;
    let routes =
        GrpcRouter::new().add_service(RegistryServer::new(RegistryService::new(store.clone())));
    let (routes, health) = with_introspection(routes, vec![own])?;
    set_status(&health, "exemesh.v1.Registry", ServingStatus::Serving).await;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let expiry = tokio::spawn(run_expiry(store, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let signal = async move {
        shutdown.await;
        set_status(&health, "exemesh.v1.Registry", ServingStatus::NotServing).await;
    };
    serve_h2c(
        listener,
        routes,
        Http2Settings::default(),
        crate::mesh::tls::installed_server_config(),
        signal,
        Duration::from_secs(2),
    )
    .await;
    stop_tx.send_replace(true);
    let _ = expiry.await;
    Ok(())
}
