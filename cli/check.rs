//! `exemesh check`: validate a manifest against its contract without serving it.

use std::path::PathBuf;
use std::process::ExitCode;

use exemesh::services::manifest::{Execution, Manifest};
use exemesh::services::server::{Plan, ServeError};

/// Check a manifest: parse its .proto files, verify that every method is mapped, that every
/// placeholder names a scalar request field and that every executable exists. Exits 1 and lists
/// every problem (file and key) when something is wrong.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest (TOML), see docs/manifest.md.
    manifest: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let plan = Manifest::load(&args.manifest)
        .map_err(ServeError::from)
        .and_then(Plan::new);
    match plan {
        Ok(plan) => {
            println!(
                "ok: {} ({} methods)",
                plan.contract.service.full_name(),
                plan.methods.len()
            );
            for method in &plan.methods {
                let how = match &method.spec.execution {
                    Execution::Spawn(spec) => format!("spawn {}", spec.program.display()),
                    Execution::Worker { pool } => format!("worker pool {pool}"),
                };
                println!(
                    "  {:<24} {:<17} {how}",
                    method.desc.name(),
                    method.kind.as_str()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
