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
    /// Where the mesh keeps its state: the CA (tls/ca, created on first use; put your own ca.pem
    /// and ca.key there to use your own) and the certificates issued at each start. Default:
    /// .exemesh next to the mesh file.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Plaintext h2c instead of mTLS (anyone who can reach the ports can call and register).
    #[arg(long)]
    insecure: bool,
}

/// Lifetime of the certificates `up` issues at each start.
const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Sets up the mesh's mTLS: loads (or creates) the CA in the state directory, issues identities
/// for `up` itself (registry, trace view), the CLI and every instance, and installs `up`'s own.
/// Returns the directory holding the identities.
fn setup_tls(state: &std::path::Path) -> anyhow::Result<PathBuf> {
    use exemesh::mesh::tls::authority::{Authority, CA_KEY, LeafRequest};
    use exemesh::mesh::tls::identity::DEFAULT_TRUST_DOMAIN;
    let tls = state.join("tls");
    let ca_dir = tls.join("ca");
    let ca = if ca_dir.join(CA_KEY).exists() {
        Authority::load(&ca_dir)?
    } else {
        let ca = Authority::create(
            DEFAULT_TRUST_DOMAIN,
            Duration::from_secs(10 * 365 * 24 * 3600),
        )?;
        ca.save(&ca_dir)?;
        ca
    };
    let leaf = |services: &[&str]| LeafRequest {
        services: services.iter().map(|s| s.to_string()).collect(),
        lifetime: LEAF_LIFETIME,
        dns: Vec::new(),
        ips: Vec::new(),
        not_before: None,
    };
    let own = ca.write_identity(
        &tls.join("up"),
        &leaf(&["exemesh.v1.Registry", "exemesh.v1.Traces", "exemesh-up"]),
    )?;
    ca.write_identity(&tls.join("cli"), &leaf(&["exemesh-cli"]))?;
    super::install_identity(&own)?;
    Ok(tls)
}

/// Issues the identity of one instance serving `manifest`.
fn issue_instance(
    tls: &std::path::Path,
    name: &str,
    manifest: &std::path::Path,
) -> anyhow::Result<PathBuf> {
    use exemesh::mesh::tls::authority::{Authority, LeafRequest};
    let service = exemesh::services::manifest::Manifest::load(manifest)?.service;
    let ca = Authority::load(&tls.join("ca"))?;
    Ok(ca.write_identity(
        &tls.join("instances").join(name),
        &LeafRequest {
            services: vec![service],
            lifetime: LEAF_LIFETIME,
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: None,
        },
    )?)
}

/// Runs `exemesh up`; its `serve` processes poll for up to `busy_poll` µs before sleeping, as it
/// does, and run `threads` runtime threads if that was given (their own default otherwise).
pub async fn run(args: Args, busy_poll: u64, threads: Option<u16>) -> anyhow::Result<ExitCode> {
    let mesh = MeshFile::load(&args.mesh)?;
    let state = args.state_dir.clone().unwrap_or_else(|| {
        mesh.file
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(".exemesh")
    });
    let tls = if args.insecure {
        None
    } else {
        Some(
            setup_tls(&state)
                .with_context(|| format!("cannot set up mTLS in {}", state.display()))?,
        )
    };
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
            let mut child_args = vec![
                "serve".to_string(),
                service.manifest.display().to_string(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--discovery".into(),
                registry_addr.clone(),
                "--instance-id".into(),
                name.clone(),
            ];
            if let Some(tls) = &tls {
                let dir = issue_instance(tls, &name, &service.manifest)?;
                child_args.extend(["--tls-dir".to_string(), dir.display().to_string()]);
            }
            children.push(ChildSpec {
                name: name.clone(),
                program: exe.clone(),
                args: child_args,
                env: service
                    .env
                    .iter()
                    .cloned()
                    .chain(trace_env.iter().cloned())
                    .chain([("EXEMESH_BUSY_POLL".to_string(), busy_poll.to_string())])
                    .chain(threads.map(|n| ("EXEMESH_THREADS".to_string(), n.to_string())))
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
        match &tls {
            Some(tls) => println!(
                "mesh up: {total} instances, mTLS on. Try: export EXEMESH_TLS_DIR={}\n         exemesh call --discovery {registry_addr} <pkg.Service/Method> '{{...}}'",
                tls.join("cli").display()
            ),
            None => println!(
                "mesh up: {total} instances (plaintext). Try: exemesh call --discovery {registry_addr} <pkg.Service/Method> '{{...}}'"
            ),
        }
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
    // The instances this `up` started (their names are their instance ids): other registrations,
    // such as `up`'s own trace view, do not count.
    let ours: std::collections::HashSet<&str> = supervisor
        .states()
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    while start.elapsed() < Duration::from_secs(120) {
        let listening = supervisor
            .states()
            .iter()
            .filter(|(_, s)| matches!(*s.borrow(), ChildState::Listening(_)))
            .count();
        if listening == total
            && let Ok(rows) = super::status::gather(registry, None).await
            && rows
                .iter()
                .filter(|r| r.health == "SERVING" && ours.contains(r.instance.as_str()))
                .map(|r| r.instance.as_str())
                .collect::<std::collections::HashSet<_>>()
                .len()
                == total
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("exemesh up: not every instance became SERVING within 120 s; see the logs above");
    true
}

/// The running trace view: an OTLP receiver (plaintext, on 127.0.0.1, for the exporters of the
/// mesh's processes) and the `exemesh.v1.Traces` query service (mTLS like every other service),
/// registered in the mesh's registry.
struct TraceView {
    addr: std::net::SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    registration: Option<exemesh::mesh::discovery::registration::Registration>,
}

impl Drop for TraceView {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(registration) = self.registration.take() {
            tokio::spawn(registration.stop());
        }
    }
}

fn serve_forever(
    listener: tokio::net::TcpListener,
    routes: exemesh::mesh::router::GrpcRouter,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        exemesh::mesh::transport::serve_h2c(
            listener,
            routes,
            Default::default(),
            tls,
            std::future::pending(),
            Duration::from_secs(1),
        )
        .await;
    })
}

async fn start_trace_view(registry: &str) -> anyhow::Result<TraceView> {
    use exemesh::mesh::trace_view::receiver::Receiver;
    use exemesh::mesh::trace_view::service::Query;
    use exemesh::mesh::trace_view::store::TraceStore;
    use exemesh::pb::v1::traces_server::TracesServer;
    let store = std::sync::Arc::new(TraceStore::default());
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = otlp.local_addr()?;
    let receiver = exemesh::mesh::router::GrpcRouter::new().add_service(Receiver(store.clone()));
    let query_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let query_addr = query_listener.local_addr()?;
    let query =
        exemesh::mesh::router::GrpcRouter::new().add_service(TracesServer::new(Query(store)));
    let own = prost::Message::decode(exemesh::pb::FILE_DESCRIPTOR_SET)?;
    let (query, health) = exemesh::mesh::introspection::with_introspection(query, vec![own])?;
    exemesh::mesh::introspection::set_status(
        &health,
        "exemesh.v1.Traces",
        tonic_health::ServingStatus::Serving,
    )
    .await;
    let tasks = vec![
        serve_forever(otlp, receiver, None),
        serve_forever(
            query_listener,
            query,
            exemesh::mesh::tls::installed_server_config(),
        ),
    ];
    let discovery = exemesh::mesh::discovery::connect(registry)?;
    let instance = exemesh::mesh::discovery::Instance {
        id: "exemesh-up-traces".into(),
        services: vec!["exemesh.v1.Traces".into()],
        address: query_addr.to_string(),
        ..Default::default()
    };
    let registration = exemesh::mesh::discovery::registration::Registration::start(
        discovery,
        instance,
        Duration::from_secs(5),
    );
    Ok(TraceView {
        addr,
        tasks,
        registration: Some(registration),
    })
}
