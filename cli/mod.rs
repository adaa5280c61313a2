//! The subcommands, one file each.

mod bench;
mod call;
mod check;
mod init;
mod registry;
mod serve;
mod signal;
mod status;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Turn existing executables into gRPC services, from their .proto contracts.
#[derive(Debug, Parser)]
#[command(name = "exemesh", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("exemesh: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Check(args) => check::run(args),
            Command::Init(args) => init::run(args),
            Command::Call(args) => call::run(args).await,
            Command::Registry(args) => registry::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Up(args) => up::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("exemesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("EXEMESH_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,tower=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
