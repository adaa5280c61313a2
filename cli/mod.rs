//! The subcommands, one file each.

mod admin;
mod bench;
mod call;
mod certs;
mod check;
mod descriptors;
mod discovery_arg;
mod init;
mod registry;
mod serve;
mod signal;
mod status;
mod trace;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Turn existing executables into gRPC services, from their .proto contracts.
#[derive(Debug, Parser)]
#[command(name = "exemesh", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// mTLS identity directory (ca.pem, cert.pem, key.pem from `exemesh certs issue`): every
    /// connection this command makes or serves is then mutually authenticated. Without it,
    /// connections are plaintext (`exemesh up` manages its own unless --insecure).
    #[arg(long, global = true, env = "EXEMESH_TLS_DIR", value_name = "DIR")]
    tls_dir: Option<std::path::PathBuf>,
    /// At most how long, in microseconds, a thread that runs out of work keeps polling for the next
    /// request or reply before it sleeps (up to 1000). Each thread adapts it to its traffic: it
    /// polls only while its work comes back sooner than this, so a process with sparse calls does
    /// not poll. Saves waking a sleeping CPU for each call when calls come close together, at the
    /// price of CPU time spent polling (docs/benchmarks.md, "Busy polling"). 0 turns it off.
    #[arg(
        long,
        global = true,
        env = "EXEMESH_BUSY_POLL",
        value_name = "MICROSECONDS",
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(0..=1000)
    )]
    busy_poll: u64,
    /// Runtime threads for this process. By default a service (`serve`, `registry`, `up` and the
    /// `serve` processes it starts) takes half the CPUs it may use, at least one, as it shares the
    /// machine with the executables it runs and with other services; other commands (`bench`,
    /// `call`...) take every CPU. `up` passes an explicit value on to its `serve` processes.
    #[arg(
        long,
        global = true,
        env = "EXEMESH_THREADS",
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    threads: Option<u16>,
}

#[derive(Debug, Subcommand)]
enum Command {
    Serve(serve::Args),
    Check(check::Args),
    Init(init::Args),
    Call(call::Args),
    Registry(registry::Args),
    Status(status::Args),
    Up(up::Args),
    Bench(bench::Args),
    BenchDiscovery(bench::discovery::Args),
    Trace(trace::Args),
    Certs(certs::Args),
}

/// Parses the command line, runs the subcommand and turns its outcome into an exit code.
pub fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == exemesh::services::reaper::GUARD_SUBCOMMAND)
    {
        exemesh::services::reaper::run_guard();
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    let busy_poll = std::time::Duration::from_micros(cli.busy_poll);
    let threads = runtime_threads(&cli);
    let runtime = match exemesh::mesh::busy_poll::BusyPoll::build_runtime(busy_poll, threads) {
        Ok((rt, _)) => rt,
        Err(e) => {
            eprintln!("exemesh: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let telemetry = match init_telemetry(&cli.command) {
            Ok(telemetry) => telemetry,
            Err(e) => return Err(e),
        };
        if let Some(dir) = &cli.tls_dir
            && !matches!(cli.command, Command::Up(_) | Command::Certs(_))
        {
            install_identity(dir)?;
        }
        let result = match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Check(args) => check::run(args),
            Command::Init(args) => init::run(args),
            Command::Call(args) => call::run(args).await,
            Command::Registry(args) => registry::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Up(args) => up::run(args, cli.busy_poll, cli.threads).await,
            Command::Bench(args) => bench::run(args).await,
            Command::BenchDiscovery(args) => bench::discovery::run(args).await,
            Command::Trace(args) => trace::run(args).await,
            Command::Certs(args) => certs::run(args),
        };
        if let Some(telemetry) = telemetry {
            // Flushing blocks: off the async threads, while the runtime still drives the exporter.
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
        result
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            let text = format!("{e:#}");
            eprintln!("exemesh: {text}");
            if let Some(hint) = exemesh::mesh::tls::client::mismatch_hint(&text)
                && !text.contains(hint)
            {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The runtime threads for this command: `--threads`, or its role's default
/// ([`exemesh::mesh::threads`]).
fn runtime_threads(cli: &Cli) -> std::num::NonZeroUsize {
    use exemesh::mesh::threads::{Role, available_cpus, default_threads};
    if let Some(n) = cli
        .threads
        .and_then(|n| std::num::NonZeroUsize::new(n.into()))
    {
        return n;
    }
    let role = match cli.command {
        Command::Serve(_) | Command::Registry(_) | Command::Up(_) => Role::Service,
        _ => Role::Tool,
    };
    default_threads(role, available_cpus())
}

/// Loads an identity directory and makes it this process's mTLS identity.
fn install_identity(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let identity = exemesh::mesh::tls::material::IdentityDir::load(dir)
        .with_context(|| format!("--tls-dir {}", dir.display()))?;
    exemesh::mesh::tls::install(identity)?;
    Ok(())
}

/// The service name spans carry when `OTEL_SERVICE_NAME` is unset: the served contract for `serve`,
/// `exemesh-<command>` otherwise.
fn default_service_name(command: &Command) -> String {
    match command {
        Command::Serve(args) => args.service_name().unwrap_or_else(|| "exemesh".into()),
        Command::Call(_) => "exemesh-call".into(),
        Command::Bench(_) => "exemesh-bench".into(),
        Command::Up(_) => "exemesh-up".into(),
        Command::Registry(_) => "exemesh-registry".into(),
        _ => "exemesh".into(),
    }
}

/// Logging (stderr, `EXEMESH_LOG`) and, when configured by the OTEL_* variables, span export.
fn init_telemetry(
    command: &Command,
) -> anyhow::Result<Option<exemesh::mesh::telemetry::tracer::Telemetry>> {
    use exemesh::mesh::telemetry::config::TelemetryConfig;
    use exemesh::mesh::telemetry::tracer::{Telemetry, install_propagator};
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    install_propagator();
    // The manifest's [telemetry] keys are defaults for the standard variables, which win when set.
    let manifest_telemetry = match command {
        Command::Serve(args) => args.telemetry(),
        _ => None,
    };
    let get = |k: &str| {
        std::env::var(k)
            .ok()
            .or_else(|| manifest_telemetry.as_ref().and_then(|t| t.value_for(k)))
    };
    let config = TelemetryConfig::from_env(get, &default_service_name(command), None)?;
    let telemetry = Telemetry::start(&config)?;
    let filter = EnvFilter::try_from_env("EXEMESH_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,tower=warn"));
    // Log lines are events only: a log layer that saw spans would format every call's span fields
    // (most of tracing's cost per call) for lines that never show them.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(filter.and(tracing_subscriber::filter::filter_fn(|m| m.is_event())));
    // Spans are not `tracing` spans (see exemesh::mesh::telemetry::span): the subscriber only
    // logs, and no layer wants a span, so h2's and hyper's per-poll spans are never created.
    let _ = tracing_subscriber::registry().with(logs).try_init();
    if let Some(endpoint) = &config.endpoint {
        tracing::info!("exporting spans to {endpoint} as {}", config.service_name);
    }
    Ok(telemetry)
}
