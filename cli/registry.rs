//! `exemesh registry`: the embedded discovery registry.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use exemesh::mesh::registry::server::serve_registry;
use exemesh::services::mesh_file::DEFAULT_REGISTRY;

/// Run the embedded discovery registry (exemesh.v1.Registry, in memory).
///
/// Services register with a lease and keep it alive; instances whose lease lapses are removed and
/// watchers are told at once. Prints `listening on ADDR` on stdout once bound.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Listen address (127.0.0.1:0 picks a free port).
    #[arg(long, default_value = DEFAULT_REGISTRY, value_name = "ADDR")]
    listen: SocketAddr,
    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on this address.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    tracing::info!("registry serving on {bound}");
    let admin = super::admin::start(args.admin, true).await?;
    println!("listening on {bound}{}", admin.banner());
    serve_registry(listener, super::signal::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
