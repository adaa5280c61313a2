//! `exemesh trace`: the recent traces of a local mesh, as a waterfall in the terminal.

use super::discovery_arg::DiscoveryArg;
use std::process::ExitCode;

use anyhow::Context as _;
use exemesh::mesh::channel::{CallPolicy, MeshChannel};
use exemesh::mesh::trace_view::waterfall;
use exemesh::pb::v1::traces_client::TracesClient;
use exemesh::pb::v1::{GetTraceRequest, ListTracesRequest};

/// Show traces collected by `exemesh up`: without an id, the recent ones; with an id (or a unique
/// prefix, e.g. as printed by `exemesh call`), the trace as a waterfall of spans with their service,
/// duration, time line and status.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A trace id or a unique prefix of one.
    trace_id: Option<String>,
    /// How many recent traces to list.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    #[command(flatten)]
    discovery: DiscoveryArg,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let discovery = args.discovery.connect()?;
    let channel = MeshChannel::new(
        discovery,
        "exemesh.v1.Traces",
        CallPolicy {
            timeout: std::time::Duration::from_secs(5),
            ..CallPolicy::default()
        },
    );
    let mut client = TracesClient::new(channel);
    let unreachable = || {
        format!(
            "no trace view found through {} (is `exemesh up` running with its own trace collection?)",
            args.discovery.addr
        )
    };
    match &args.trace_id {
        None => {
            let traces = client
                .list_traces(ListTracesRequest { limit: args.limit })
                .await
                .with_context(unreachable)?
                .into_inner()
                .traces;
            if traces.is_empty() {
                println!(
                    "no traces yet: make a call, e.g. exemesh call --discovery {} <pkg.Service/Method> '{{...}}'",
                    args.discovery.addr
                );
            }
            println!(
                "{:<32}  {:>9}  {:>5}  {:<5}  ROOT",
                "TRACE", "DURATION", "SPANS", ""
            );
            for t in traces {
                let root = if t.root_service.is_empty() {
                    t.root_name
                } else {
                    format!("{} {}", t.root_service, t.root_name)
                };
                println!(
                    "{:<32}  {:>7.2}ms  {:>5}  {:<5}  {root}",
                    t.trace_id,
                    t.duration_nanos as f64 / 1e6,
                    t.span_count,
                    if t.error { "ERROR" } else { "" }
                );
            }
        }
        Some(id) => {
            let spans = match client
                .get_trace(GetTraceRequest {
                    trace_id: id.clone(),
                })
                .await
            {
                Ok(reply) => reply.into_inner().spans,
                Err(status) if status.code() == tonic::Code::NotFound => {
                    eprintln!("{}", status.message());
                    return Ok(ExitCode::from(105));
                }
                Err(status) => return Err(anyhow::anyhow!("{status}")).with_context(unreachable),
            };
            print!("{}", waterfall::render(&spans));
        }
    }
    Ok(ExitCode::SUCCESS)
}
