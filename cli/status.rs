//! `exemesh status`: what discovery knows, and whether each instance answers its health check.

use super::discovery_arg::DiscoveryArg;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use exemesh::mesh::discovery::{Instance, connect};
use serde::Serialize;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// List the services in discovery with their instances, addresses, health and lease age.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    discovery: DiscoveryArg,
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One instance of one service.
#[derive(Debug, Serialize)]
pub struct Row {
    pub service: String,
    pub instance: String,
    pub address: String,
    pub health: String,
    pub lease_age_ms: u64,
    pub uptime_ms: u64,
    pub metadata: std::collections::BTreeMap<String, String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rows = gather(&args.discovery.addr, args.service.as_deref()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks discovery for the instances (of one service, or all) and checks each one's health.
pub async fn gather(discovery_addr: &str, only: Option<&str>) -> anyhow::Result<Vec<Row>> {
    let discovery = connect(discovery_addr)?;
    let instances = discovery
        .resolve(only.unwrap_or(""))
        .await
        .with_context(|| format!("cannot ask discovery at {discovery_addr}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let checks = instances.iter().map(|i| health(i.clone()));
    let healths = futures_util::future::join_all(checks).await;
    let mut rows = Vec::new();
    for (instance, health) in instances.iter().zip(healths) {
        for service in &instance.services {
            if only.is_some_and(|s| s != service) {
                continue;
            }
            rows.push(Row {
                service: service.clone(),
                instance: instance.id.clone(),
                address: instance.address.clone(),
                health: health.clone(),
                lease_age_ms: now.saturating_sub(instance.renewed_unix_ms),
                uptime_ms: now.saturating_sub(instance.registered_unix_ms),
                metadata: instance
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
        }
    }
    rows.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    Ok(rows)
}

/// Prints rows as an aligned table.
pub fn print_table(rows: &[Row]) {
    {
        println!(
            "{:<32} {:<28} {:<22} {:<12} {:>9} {:>9}",
            "SERVICE", "INSTANCE", "ADDRESS", "HEALTH", "LEASE", "UPTIME"
        );
        for r in rows {
            println!(
                "{:<32} {:<28} {:<22} {:<12} {:>8.1}s {:>8.0}s",
                r.service,
                r.instance,
                r.address,
                r.health,
                r.lease_age_ms as f64 / 1000.0,
                r.uptime_ms as f64 / 1000.0
            );
        }
        if rows.is_empty() {
            println!("(no instances registered)");
        }
    }
}

async fn health(instance: Instance) -> String {
    let check = async {
        let endpoint = Endpoint::from_shared(format!("http://{}", instance.address))
            .ok()?
            .connect_timeout(Duration::from_secs(1));
        let channel = exemesh::mesh::tls::client::connect(endpoint, None)
            .await
            .ok()?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Some(match reply.get_ref().status {
            1 => "SERVING",
            2 => "NOT_SERVING",
            _ => "UNKNOWN",
        })
    };
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Some(status)) => status.to_string(),
        _ => "UNREACHABLE".to_string(),
    }
}
