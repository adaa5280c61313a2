//! `exemesh init`: write a starter manifest for a contract.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use exemesh::services::contract::compile;
use exemesh::services::rpc_kind::RpcKind;
use prost_reflect::{Kind, ServiceDescriptor};

/// Write a starter manifest mapping every method of a service to a spawned program. Edit the
/// `argv` lines (they point at ./CHANGE-ME), then run `exemesh check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .proto file defining the service.
    proto: PathBuf,
    /// The fully-qualified service to map (needed when the file defines several).
    #[arg(long, short)]
    service: Option<String>,
    /// Import path (repeatable); defaults to the .proto file's directory.
    #[arg(long, short = 'I')]
    include: Vec<PathBuf>,
    /// Write the manifest here instead of stdout (an existing file is not overwritten).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let proto_dir = args
        .proto
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let include = if args.include.is_empty() {
        vec![proto_dir]
    } else {
        args.include.clone()
    };
    let (pool, _) = compile(std::slice::from_ref(&args.proto), &include)?;
    let file_name = args
        .proto
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let services: Vec<ServiceDescriptor> = pool
        .services()
        .filter(|s| s.parent_file().name().ends_with(&file_name))
        .collect();
    let service = match (&args.service, services.as_slice()) {
        (Some(name), _) => pool
            .get_service_by_name(name)
            .with_context(|| format!("{} defines no service {name}", args.proto.display()))?,
        (None, [only]) => only.clone(),
        (None, []) => bail!("{} defines no service", args.proto.display()),
        (None, many) => bail!(
            "{} defines several services; choose one with --service ({})",
            args.proto.display(),
            many.iter()
                .map(|s| s.full_name().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let base = match &args.output {
        Some(out) => out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf(),
        None => PathBuf::from("."),
    };
    let text = render(
        &service,
        &relative(&args.proto, &base),
        &include
            .iter()
            .map(|i| relative(i, &base))
            .collect::<Vec<_>>(),
    );
    match &args.output {
        Some(out) => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            std::io::Write::write_all(&mut file, text.as_bytes())?;
            eprintln!(
                "wrote {}; edit the argv lines, then run: exemesh check {}",
                out.display(),
                out.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn render(service: &ServiceDescriptor, proto: &Path, include: &[PathBuf]) -> String {
    let mut out = String::new();
    let list = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "# exemesh manifest for {} (see docs/manifest.md)",
        service.full_name()
    );
    let _ = writeln!(
        out,
        "[service]\nname = {:?}\nprotos = [{}]\ninclude = [{}]",
        service.full_name(),
        list(&[proto.to_path_buf()]),
        list(include)
    );
    let _ = writeln!(
        out,
        "listen = \"127.0.0.1:50051\"\ninherit_env = [\"PATH\"]\n\n[defaults]\ntimeout = \"30s\""
    );
    for method in service.methods() {
        let kind = RpcKind::of(&method);
        let input = method.input();
        let _ = writeln!(
            out,
            "\n# rpc {}({}) returns ({}) [{kind}]",
            method.name(),
            input.full_name(),
            method.output().full_name()
        );
        let fields: Vec<String> = input
            .fields()
            .filter(|f| {
                !f.is_list() && !f.is_map() && !matches!(f.kind(), Kind::Message(_) | Kind::Bytes)
            })
            .map(|f| format!("{{{}}}", f.name()))
            .collect();
        if kind.single_request() && !fields.is_empty() {
            let _ = writeln!(out, "# placeholders: {}", fields.join(" "));
        }
        let _ = writeln!(out, "[methods.{}]\nmode = \"spawn\"", method.name());
        let snake = snake_case(method.name());
        let args = if kind.single_request() {
            fields
                .iter()
                .take(1)
                .map(|f| format!(", {f:?}"))
                .collect::<String>()
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "argv = [\"./CHANGE-ME\", {snake:?}{args}]\noutput = \"json\""
        );
    }
    out
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// `path` relative to `base` when both resolve; otherwise `path` as given.
fn relative(path: &Path, base: &Path) -> PathBuf {
    let (Ok(path_abs), Ok(base_abs)) = (std::path::absolute(path), std::path::absolute(base))
    else {
        return path.to_path_buf();
    };
    let (p, b) = (clean(&path_abs), clean(&base_abs));
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c.as_os_str());
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

fn clean(path: &Path) -> Vec<Component<'_>> {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}
