//! `exemesh up`: a whole local mesh from one command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use exemesh::mesh::registry::server::serve_registry;
use exemesh::services::mesh_file::MeshFile;
use exemesh::services::supervisor::{ChildSpec, ChildState, Supervisor};

/// Run a whole mesh locally: the embedded registry plus every service of a mesh file with its
/// replicas, each an `exemesh serve` on an ephemeral port registered in the registry.
///
/// Prints a table of services, instances, addresses and health once everything is up, streams every
/// instance's log prefixed with its name, restarts crashed instances with backoff, and stops
/// everything (draining calls, no process left behind) on Ctrl-C or SIGTERM.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The mesh file (see docs/mesh-file.md).
    #[arg(default_value = "mesh.toml")]
    mesh: PathBuf,
    /// The registry's listen address, overriding the mesh file's (127.0.0.1:0 for any port).
    #[arg(long, value_name = "ADDR")]
    registry_listen: Option<SocketAddr>,
    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on this address (the registry's
    /// and `up`'s own metrics; each instance can have its own through its manifest's process).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// How long instances get to drain at shutdown before they are killed.
    #[arg(long, default_value = "35s", value_parser = humantime::parse_duration)]
    grace: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mesh = MeshFile::load(&args.mesh)?;
    let listen = args.registry_listen.unwrap_or(mesh.registry);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot start the registry on {listen} (is another `exemesh up` or `exemesh registry` running? use --registry-listen 127.0.0.1:0)"))?;
    let registry_addr = listener.local_addr()?.to_string();
    if let Err(e) = exemesh::services::reaper::start() {
        tracing::warn!("cannot start the orphan guard ({e})");
    }
    let (stop_registry, mut registry_stopped) = tokio::sync::watch::channel(false);
    let registry = tokio::spawn(serve_registry(listener, async move {
        let _ = registry_stopped.wait_for(|s| *s).await;
    }));
    let admin = super::admin::start(args.admin, false).await?;
    println!("registry listening on {registry_addr}{}", admin.banner());

    // The embedded trace view: unless spans already go to a backend, collect them here.
    let collecting = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none();
    let (trace_env, _trace_view) = if collecting {
        let view = start_trace_view(&registry_addr).await?;
        println!(
            "traces collected on {} (exemesh trace --discovery {registry_addr})",
            view.addr
        );
        let env = vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
                format!("http://{}", view.addr),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string()),
        ];
        (env, Some(view))
    } else {
        (Vec::new(), None)
    };
    let exe = std::env::current_exe().context("cannot find the exemesh binary")?;
    let mut children = Vec::new();
    for service in &mesh.services {
        for n in 1..=service.replicas {
            let name = format!("{}-{n}", service.name);
            children.push(ChildSpec {
                name: name.clone(),
                program: exe.clone(),
                args: vec![
                    "serve".into(),
                    service.manifest.display().to_string(),
                    "--listen".into(),
                    "127.0.0.1:0".into(),
                    "--discovery".into(),
                    registry_addr.clone(),
                    "--instance-id".into(),
                    name,
                ],
                env: service
                    .env
                    .iter()
                    .cloned()
                    .chain(trace_env.iter().cloned())
                    .collect(),
            });
        }
    }
    let total = children.len();
    let supervisor = Supervisor::start(children, args.grace);
    let shutdown = super::signal::shutdown_signal();
    tokio::pin!(shutdown);
    let ready = tokio::select! {
        ready = wait_all_serving(&supervisor, &registry_addr, total) => ready,
        () = &mut shutdown => false,
    };
    if ready {
        admin.set_ready(true);
        let rows = super::status::gather(&registry_addr, None).await?;
        println!();
        super::status::print_table(&rows);
        println!();
        println!(
            "mesh up: {total} instances. Try: exemesh call --discovery {registry_addr} <pkg.Service/Method> '{{...}}'"
        );
        println!(
            "         exemesh status --discovery {registry_addr}      (Ctrl-C stops everything)"
        );
        shutdown.await;
    }
    println!("stopping {total} instances...");
    supervisor.stop().await;
    stop_registry.send_replace(true);
    let _ = registry.await;
    exemesh::services::reaper::stop();
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Waits until every instance is listening and registered as SERVING (bounded: 120 s).
async fn wait_all_serving(supervisor: &Supervisor, registry: &str, total: usize) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        let listening = supervisor
            .states()
            .iter()
            .filter(|(_, s)| matches!(*s.borrow(), ChildState::Listening(_)))
            .count();
        if listening == total
            && let Ok(rows) = super::status::gather(registry, None).await
            && rows.iter().filter(|r| r.health == "SERVING").count() >= total
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("exemesh up: not every instance became SERVING within 120 s; see the logs above");
    true
}

/// The running trace view: an OTLP receiver and the `exemesh.v1.Traces` query service on one port,
/// registered in the mesh's registry.
struct TraceView {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
    registration: Option<exemesh::mesh::discovery::registration::Registration>,
}

impl Drop for TraceView {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(registration) = self.registration.take() {
            tokio::spawn(registration.stop());
        }
    }
}

async fn start_trace_view(registry: &str) -> anyhow::Result<TraceView> {
    use exemesh::mesh::trace_view::service::{Query, Receiver};
    use exemesh::mesh::trace_view::store::TraceStore;
    use exemesh::pb::v1::traces_server::TracesServer;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let store = std::sync::Arc::new(TraceStore::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let routes = tonic::service::Routes::new(
        TraceServiceServer::new(Receiver(store.clone())).max_decoding_message_size(64 << 20),
    )
    .add_service(TracesServer::new(Query(store)));
    let own = prost::Message::decode(exemesh::pb::FILE_DESCRIPTOR_SET)?;
    let (routes, health) = exemesh::mesh::introspection::with_introspection(routes, vec![own])?;
    exemesh::mesh::introspection::set_status(
        &health,
        "exemesh.v1.Traces",
        tonic_health::ServingStatus::Serving,
    )
    .await;
    let task = tokio::spawn(async move {
        exemesh::mesh::transport::serve_h2c(
            listener,
            routes.prepare().into_axum_router(),
            Default::default(),
            std::future::pending(),
            Duration::from_secs(1),
        )
        .await;
    });
    let discovery = exemesh::mesh::discovery::connect(registry)?;
    let instance = exemesh::mesh::discovery::Instance {
        id: "exemesh-up-traces".into(),
        services: vec!["exemesh.v1.Traces".into()],
        address: addr.to_string(),
        ..Default::default()
    };
    let registration = exemesh::mesh::discovery::registration::Registration::start(
        discovery,
        instance,
        Duration::from_secs(5),
    );
    Ok(TraceView {
        addr,
        task,
        registration: Some(registration),
    })
}
