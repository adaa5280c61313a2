//! `exemesh certs`: a mesh CA and the certificates of its members.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use exemesh::mesh::tls::authority::{Authority, CA_CERT, CA_KEY, LeafRequest};
use exemesh::mesh::tls::identity::{DEFAULT_TRUST_DOMAIN, SpiffeId};

/// Create a mesh CA, and issue certificates whose identity is a SPIFFE ID
/// (spiffe://<trust-domain>/svc/<service>) for servers, clients and the CLI.
///
/// Example: `exemesh certs init --dir ca` then
/// `exemesh certs issue shop.v1.OrderService --ca ca --out tls/order`, and run
/// `exemesh serve order.toml --tls-dir tls/order`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertsCommand {
    Init(InitArgs),
    Issue(IssueArgs),
}

/// Create a new mesh CA: DIR/ca.pem (share it) and DIR/ca.key (keep it secret, mode 0600).
#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Where to write the CA.
    #[arg(long, default_value = "exemesh-ca")]
    dir: PathBuf,
    /// The mesh's trust domain: the host part of every identity.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// How long the CA is valid.
    #[arg(long, default_value = "10y", value_parser = humantime::parse_duration)]
    lifetime: Duration,
    /// Replace an existing CA (every certificate it issued stops being trusted).
    #[arg(long)]
    force: bool,
}

/// Issue a certificate for one or more services into an identity directory: OUT/ca.pem,
/// OUT/cert.pem and OUT/key.pem (0600), ready for `--tls-dir OUT`.
#[derive(Debug, clap::Args)]
struct IssueArgs {
    /// The services this certificate may act as (e.g. shop.v1.OrderService, or exemesh-cli for an
    /// operator). A server may register only under these names.
    #[arg(required = true)]
    services: Vec<String>,
    /// The CA directory (from `exemesh certs init`).
    #[arg(long, default_value = "exemesh-ca")]
    ca: PathBuf,
    /// The identity directory to write (default: the first service's name).
    #[arg(long)]
    out: Option<PathBuf>,
    /// How long the certificate is valid. Rotate by issuing again into the same directory: servers
    /// and clients pick the new files up without a restart.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    lifetime: Duration,
    /// Extra DNS names (for clients that check host names, such as grpcurl; localhost is included).
    #[arg(long = "dns", value_name = "NAME")]
    dns: Vec<String>,
    /// Extra IP addresses (127.0.0.1 and ::1 are included).
    #[arg(long = "ip", value_name = "IP")]
    ips: Vec<IpAddr>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        CertsCommand::Init(args) => init(args),
        CertsCommand::Issue(args) => issue(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    if args.dir.join(CA_KEY).exists() && !args.force {
        bail!(
            "{} already holds a CA; use --force to replace it (every certificate it issued would stop being trusted)",
            args.dir.display()
        );
    }
    let ca = Authority::create(&args.trust_domain, args.lifetime)?;
    ca.save(&args.dir)?;
    println!(
        "created the CA of trust domain {} in {} ({CA_CERT}, {CA_KEY})",
        ca.trust_domain(),
        args.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn issue(args: IssueArgs) -> anyhow::Result<ExitCode> {
    for service in &args.services {
        SpiffeId::validate_part("service", service).map_err(anyhow::Error::msg)?;
    }
    let ca = Authority::load(&args.ca).with_context(|| {
        format!(
            "cannot load the CA (create one with `exemesh certs init --dir {}`)",
            args.ca.display()
        )
    })?;
    let out = args.out.unwrap_or_else(|| PathBuf::from(&args.services[0]));
    ca.write_identity(
        &out,
        &LeafRequest {
            services: args.services.clone(),
            lifetime: args.lifetime,
            dns: args.dns,
            ips: args.ips,
            not_before: None,
        },
    )?;
    let ids: Vec<String> = args
        .services
        .iter()
        .map(|s| SpiffeId::new(ca.trust_domain(), s).to_string())
        .collect();
    println!(
        "issued {} (valid {}) in {}",
        ids.join(", "),
        humantime::format_duration(args.lifetime),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
