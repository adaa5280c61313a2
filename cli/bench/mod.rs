//! `exemesh bench`: a gRPC load generator (like ghz) for any method, through discovery or against an
//! address.

pub mod discovery;
mod load;
mod percentile;
mod timeline;

use super::discovery_arg::DiscoveryArg;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::descriptors::{self, ProtoArgs};
use anyhow::{Context as _, bail};
use exemesh::mesh::channel::link::Link;
use exemesh::mesh::channel::{CallPolicy, MeshChannel};
use exemesh::mesh::dynamic_client::{self, GrpcChannel};
use load::Plan;
use prost_reflect::{DeserializeOptions, DynamicMessage, MethodDescriptor};
use serde::Serialize;
use tonic::transport::Endpoint;

/// Load-test a method: N calls in flight for a number of requests or a duration, after a warm-up.
/// Reports throughput, latency percentiles and errors by status.
///
/// By default each of the -c slots calls again as soon as its call ends (the most the target can
/// do). With --rate the calls are paced at a fixed rate instead (the latency a steady load sees).
/// Through discovery, methods the contract marks idempotent are retried on another instance.
///
/// Examples: `exemesh bench 127.0.0.1:50051 grpc.health.v1.Health/Check -c 16 -z 10s`,
/// `exemesh bench shop.v1.ProductService/GetProduct '{"id":"p1"}' -c 8 -n 2000` (through discovery),
/// `exemesh bench shop.v1.ProductService/GetProduct '{"id":"p1"}' --rate 1000 -z 10s --timeline 1s`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// [ADDR] METHOD [JSON]: an optional server address, the method (pkg.Service/Method), and the
    /// request as JSON (default `{}`). Without an address, the balanced mesh channel is used.
    #[arg(num_args = 1..=3, required = true, value_name = "ARGS")]
    positional: Vec<String>,
    /// Calls in flight at once.
    #[arg(short = 'c', long, default_value_t = 16)]
    concurrency: usize,
    /// Connections to open (address mode; calls are spread over them).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// The client in address mode: `tonic`, a plain tonic channel (the reference gRPC client), or
    /// `exemesh`, the HTTP/2 connection the mesh channel opens to each endpoint (no balancing or
    /// retries; lighter on the client's CPU, so more of the machine is left to the server).
    #[arg(long, value_enum, default_value_t = Client::Tonic)]
    client: Client,
    /// Total calls to make (after the warm-up); exclusive with --duration.
    #[arg(short = 'n', long, conflicts_with = "duration")]
    total: Option<u64>,
    /// How long to run (after the warm-up), e.g. 10s.
    #[arg(short = 'z', long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Warm-up, not measured.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Deadline of each call.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Through discovery: resolve this service instead of the method's own (e.g. to load-test
    /// `grpc.health.v1.Health/Check` on the replicas of `shop.v1.ProductService`).
    #[arg(long, value_name = "SERVICE")]
    service: Option<String>,
    #[command(flatten)]
    discovery: DiscoveryArg,
    /// Pace the calls at this many per second in total (open loop) instead of calling as fast as
    /// the slots allow. A call due while all -c slots are busy waits for one, and that wait counts
    /// in its latency (no coordinated omission).
    #[arg(long, value_name = "CALLS_PER_S", value_parser = positive_rate)]
    rate: Option<f64>,
    /// Also report the run cut into slices of this length (calls, errors, p50 and p99 of each),
    /// e.g. 100ms.
    #[arg(long, value_name = "INTERVAL", value_parser = positive_duration)]
    timeline: Option<Duration>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    protos: ProtoArgs,
}

/// The client `exemesh bench` calls one address with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Client {
    /// A plain tonic channel.
    Tonic,
    /// The mesh channel's connection to one endpoint.
    Exemesh,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    target: String,
    method: String,
    concurrency: usize,
    /// The pace asked for (calls per second), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    calls: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    /// When the measured run started (Unix time, ms), to line it up with outside events.
    started_unix_ms: u64,
    seconds: f64,
    rps: f64,
    latency_us: Latency,
    /// The run slice by slice, with --timeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    timeline: Option<Vec<timeline::Slice>>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    p50: u64,
    p90: u64,
    p99: u64,
    #[serde(rename = "p99.9")]
    p99_9: u64,
    max: u64,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (addr, method_name, json) = split(&args.positional)?;
    let Some((service, name)) = method_name.split_once('/') else {
        bail!("the method must be pkg.Service/Method, got {method_name:?}")
    };
    let (report, target) = match &addr {
        Some(addr) if args.client == Client::Exemesh => {
            let links = (0..args.connections.max(1))
                .map(|_| Link::new(addr, None))
                .collect::<Result<Vec<_>, _>>()?;
            let method = descriptors::find(links[0].clone(), &args.protos, service, name).await?;
            (drive(links, &method, &json, &args).await?, addr.clone())
        }
        Some(addr) => {
            let mut channels = Vec::new();
            for _ in 0..args.connections.max(1) {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
                let channel = exemesh::mesh::tls::client::connect(endpoint, None)
                    .await
                    .with_context(|| format!("cannot connect to {addr}"))?;
                channels.push(channel);
            }
            let method =
                descriptors::find(channels[0].clone(), &args.protos, service, name).await?;
            (drive(channels, &method, &json, &args).await?, addr.clone())
        }
        None => {
            let discovery = args.discovery.connect()?;
            let target = args.service.as_deref().unwrap_or(service);
            let channel = MeshChannel::new(
                discovery,
                target,
                CallPolicy {
                    timeout: args.timeout,
                    ..CallPolicy::default()
                },
            );
            let method = descriptors::find(channel.clone(), &args.protos, service, name).await?;
            // A method the contract marks idempotent may be retried on another instance, as the
            // mesh's own callers do.
            let channel = channel.for_method(&method);
            (
                drive(vec![channel], &method, &json, &args).await?,
                format!("mesh:{target}"),
            )
        }
    };
    let report = Report {
        target,
        method: method_name,
        ..report
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn split(positional: &[String]) -> anyhow::Result<(Option<String>, String, String)> {
    let mut rest = positional.iter();
    let first = rest.next().cloned().unwrap_or_default();
    let (addr, method) = if first.contains('/') {
        (None, first)
    } else {
        (
            Some(first),
            rest.next()
                .cloned()
                .context("name the method after the address")?,
        )
    };
    let json = rest.next().cloned().unwrap_or_else(|| "{}".into());
    Ok((addr, method.trim_start_matches('/').to_string(), json))
}

/// Parses the request, runs the load plan and summarises it.
async fn drive<T>(
    channels: Vec<T>,
    method: &MethodDescriptor,
    json: &str,
    args: &Args,
) -> anyhow::Result<Report>
where
    T: GrpcChannel + Sync,
{
    if method.is_client_streaming() {
        bail!("bench drives unary and server-streaming methods");
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let request = DynamicMessage::deserialize_with_options(
        method.input(),
        &mut de,
        &DeserializeOptions::new(),
    )
    .with_context(|| format!("the request is not a valid {}", method.input().full_name()))?;
    let plan = Plan {
        concurrency: args.concurrency,
        total: args.total,
        duration: args.duration.unwrap_or(Duration::from_secs(10)),
        warmup: args.warmup,
        timeout: args.timeout,
        rate: args.rate,
        keep_samples: args.timeline.is_some(),
        progress: load::interactive() && !args.json,
    };
    // Encoded once: every call of the run sends the same bytes.
    let request = bytes::Bytes::from(prost::Message::encode_to_vec(&request));
    let method = dynamic_client::Method::new(method)?;
    let outcome = load::run(channels, &method, request, &plan).await?;
    let histogram = &outcome.histogram;
    let ok = histogram.len();
    let calls = ok + outcome.errors.values().sum::<u64>();
    let q = |p: f64| histogram.value_at_quantile(p);
    let latency_us = Latency {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p99_9: q(0.999),
        max: histogram.max(),
    };
    let started_unix_ms = SystemTime::now()
        .checked_sub(outcome.started.elapsed())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Report {
        target: String::new(),
        method: String::new(),
        concurrency: args.concurrency,
        rate: args.rate,
        calls,
        ok,
        errors: outcome.errors,
        started_unix_ms,
        seconds: outcome.seconds,
        rps: calls as f64 / outcome.seconds.max(1e-9),
        latency_us,
        timeline: args
            .timeline
            .map(|width| timeline::slices(&outcome.samples, outcome.started, width)),
    })
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("expected calls per second above 0, got {text:?}")),
    }
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("the interval must be longer than 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn print_report(r: &Report) {
    println!("target      {}", r.target);
    match r.rate {
        Some(rate) => println!(
            "method      {}   concurrency {}   paced at {rate} calls/s",
            r.method, r.concurrency
        ),
        None => println!("method      {}   concurrency {}", r.method, r.concurrency),
    }
    println!(
        "calls       {} in {:.2}s: {:.0} calls/s",
        r.calls, r.seconds, r.rps
    );
    let l = &r.latency_us;
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "latency     p50 {:.3}ms  p90 {:.3}ms  p99 {:.3}ms  p99.9 {:.3}ms  max {:.3}ms",
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p99_9),
        ms(l.max)
    );
    if r.errors.is_empty() {
        println!("errors      none");
    } else {
        let errs: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("errors      {}", errs.join(", "));
    }
    if let Some(slices) = &r.timeline {
        println!("timeline    from     calls  errors    calls/s     p50ms     p99ms");
        for s in slices {
            println!(
                "        {:>8.1}s {:>9} {:>7} {:>10.0} {:>9.3} {:>9.3}",
                s.start_ms as f64 / 1000.0,
                s.calls,
                s.errors,
                s.rps,
                s.p50_us as f64 / 1000.0,
                s.p99_us as f64 / 1000.0
            );
        }
    }
}
