//! `exemesh serve`: serve a contract by running executables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use exemesh::mesh::discovery::Instance;
use exemesh::services::manifest::Manifest;
use exemesh::services::server::{Announce, Plan, serve};

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
    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on this address.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    #[command(flatten)]
    mesh: MeshArgs,
}

impl Args {
    /// The service the manifest serves, if it can be read (for naming spans before serving starts).
    pub fn service_name(&self) -> Option<String> {
        Manifest::load(&self.manifest).ok().map(|m| m.service)
    }

    /// The manifest's `[telemetry]` section, if it can be read.
    pub fn telemetry(&self) -> Option<exemesh::services::manifest::TelemetrySection> {
        Manifest::load(&self.manifest).ok().map(|m| m.telemetry)
    }
}

/// How a server joins the mesh.
#[derive(Debug, clap::Args)]
pub struct MeshArgs {
    /// Register in this discovery backend: HOST:PORT of an embedded registry (`exemesh registry`).
    /// Without it the server does not register.
    #[arg(long, env = "EXEMESH_DISCOVERY", value_name = "ADDR")]
    discovery: Option<String>,
    /// The address callers should use (default: the bound address; 127.0.0.1 when bound to 0.0.0.0).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// The instance id (default: SERVICE-HOST-PID).
    #[arg(long)]
    instance_id: Option<String>,
    /// Lease time to live: a crashed instance disappears from discovery after at most this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    lease_ttl: std::time::Duration,
    /// Instance metadata, KEY=VALUE (repeatable), e.g. --meta version=1.4 --meta zone=a.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
}

impl MeshArgs {
    fn announce(&self, service: &str, bound: SocketAddr) -> anyhow::Result<Option<Announce>> {
        let Some(spec) = &self.discovery else {
            return Ok(None);
        };
        let discovery = exemesh::mesh::discovery::connect(spec)?;
        let address = match &self.advertise {
            Some(a) => a.clone(),
            None if bound.ip().is_unspecified() => format!("127.0.0.1:{}", bound.port()),
            None => bound.to_string(),
        };
        let mut metadata: std::collections::HashMap<String, String> =
            std::collections::HashMap::new();
        metadata.insert("pid".into(), std::process::id().to_string());
        metadata.insert("exemesh".into(), env!("CARGO_PKG_VERSION").into());
        for pair in &self.meta {
            let Some((k, v)) = pair.split_once('=') else {
                anyhow::bail!("--meta {pair:?} must be KEY=VALUE")
            };
            metadata.insert(k.trim().to_string(), v.trim().to_string());
        }
        let short = service
            .rsplit('.')
            .next()
            .unwrap_or(service)
            .to_ascii_lowercase();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let id = self
            .instance_id
            .clone()
            .unwrap_or_else(|| format!("{short}-{host}-{}", std::process::id()));
        let instance = Instance {
            id,
            services: vec![service.to_string()],
            address,
            metadata,
            ..Default::default()
        };
        Ok(Some(Announce {
            discovery,
            instance,
            ttl: self.lease_ttl,
        }))
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(&args.manifest)?;
    let plan = Plan::new(manifest)?;
    let addr = args.listen.unwrap_or(plan.manifest.listen);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(
        service = %plan.contract.service.full_name(),
        "serving {} methods on {bound} (runtime threads: {threads})",
        plan.methods.len()
    );
    if std::env::var_os("EXEMESH_NO_GUARD_FOR_TESTS").is_none()
        && let Err(e) = exemesh::services::reaper::start()
    {
        tracing::warn!(
            "cannot start the orphan guard ({e}); grandchildren may outlive a kill -9 of exemesh"
        );
    }
    let admin = match args.admin {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--admin)"))?,
        ),
        None => None,
    };
    // One write for both lines: a reader that stops after the first must not break the second.
    let mut banner = format!("listening on {bound}\n");
    if let Some(admin) = &admin {
        banner.push_str(&format!("admin listening on {}\n", admin.local_addr()?));
    }
    print!("{banner}");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let announce = args
        .mesh
        .announce(plan.contract.service.full_name(), bound)?;
    let served = serve(
        plan,
        listener,
        super::signal::shutdown_signal(),
        announce,
        admin,
    )
    .await;
    exemesh::services::reaper::stop();
    served?;
    Ok(ExitCode::SUCCESS)
}
