//! `exemesh serve`: serve a contract by running executables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use exemesh::services::manifest::Manifest;
use exemesh::services::server::{Plan, serve};

/// Serve the gRPC service a manifest describes, running its executables for each call.
///
/// Prints `listening on ADDR` on stdout once the port is bound; logs go to stderr (set EXEMESH_LOG,
/// e.g. EXEMESH_LOG=debug, to see more). SIGTERM or SIGINT drains in-flight calls and stops every
/// worker process.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest (TOML), see docs/manifest.md.
    manifest: PathBuf,
    /// Listen address, overriding the manifest's `service.listen` (use 127.0.0.1:0 for any free port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(&args.manifest)?;
    let plan = Plan::new(manifest)?;
    let addr = args.listen.unwrap_or(plan.manifest.listen);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(service = %plan.contract.service.full_name(), "serving {} methods on {bound}", plan.methods.len());
    if std::env::var_os("EXEMESH_NO_GUARD_FOR_TESTS").is_none()
        && let Err(e) = exemesh::services::reaper::start()
    {
        tracing::warn!(
            "cannot start the orphan guard ({e}); grandchildren may outlive a kill -9 of exemesh"
        );
    }
    println!("listening on {bound}");
    let served = serve(plan, listener, shutdown_signal()).await;
    exemesh::services::reaper::stop();
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
