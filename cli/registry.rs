//! `exemesh registry`: the embedded discovery registry.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use exemesh::mesh::introspection::{set_status, with_introspection};
use exemesh::mesh::registry::service::{RegistryService, run_expiry};
use exemesh::mesh::registry::store::Store;
use exemesh::mesh::transport::{Http2Settings, serve_h2c};
use exemesh::pb::v1::registry_server::RegistryServer;
use prost::Message as _;
use tonic::service::Routes;
use tonic_health::ServingStatus;

/// The default registry address.
pub const DEFAULT_REGISTRY: &str = "127.0.0.1:7700";

/// Run the embedded discovery registry (exemesh.v1.Registry, in memory).
///
/// Services register with a lease and keep it alive; instances whose lease lapses are removed and
/// watchers are told at once. Prints `listening on ADDR` on stdout once bound.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Listen address (127.0.0.1:0 picks a free port).
    #[arg(long, default_value = DEFAULT_REGISTRY, value_name = "ADDR")]
    listen: SocketAddr,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    let store = Arc::new(Store::default());
    let own = prost_types::FileDescriptorSet::decode(exemesh::pb::FILE_DESCRIPTOR_SET)?;
    let routes = Routes::new(RegistryServer::new(RegistryService::new(store.clone())));
    let (routes, health) = with_introspection(routes, vec![own])?;
    set_status(&health, "exemesh.v1.Registry", ServingStatus::Serving).await;
    tracing::info!("registry serving on {bound}");
    println!("listening on {bound}");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let expiry = tokio::spawn(run_expiry(store, async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    }));
    let signal = async move {
        super::signal::shutdown_signal().await;
        set_status(&health, "exemesh.v1.Registry", ServingStatus::NotServing).await;
    };
    serve_h2c(
        listener,
        routes.prepare().into_axum_router(),
        Http2Settings::default(),
        signal,
        Duration::from_secs(2),
    )
    .await;
    stop_tx.send_replace(true);
    let _ = expiry.await;
    Ok(ExitCode::SUCCESS)
}
