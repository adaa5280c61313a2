//! `exemesh bench`: a gRPC load generator (like ghz) for any method, through discovery or against an
//! address.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::descriptors::{self, ProtoArgs};
use anyhow::{Context as _, bail};
use exemesh::mesh::channel::{CallPolicy, MeshChannel};
use exemesh::mesh::dynamic_client;
use exemesh::mesh::status_code::code_name;
use hdrhistogram::Histogram;
use prost_reflect::{DeserializeOptions, DynamicMessage, MethodDescriptor};
use serde::Serialize;
use tonic::transport::Endpoint;

/// Load-test a method: N calls in flight for a number of requests or a duration, after a warm-up.
/// Reports throughput, latency percentiles and errors by status.
///
/// Examples: `exemesh bench 127.0.0.1:50051 grpc.health.v1.Health/Check -c 16 -z 10s`,
/// `exemesh bench shop.v1.ProductService/GetProduct '{"id":"p1"}' -c 8 -n 2000` (through discovery).
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
    /// Discovery for calls without an address.
    #[arg(
        long,
        env = "EXEMESH_DISCOVERY",
        default_value = "127.0.0.1:7700",
        value_name = "ADDR"
    )]
    discovery: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    protos: ProtoArgs,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    target: String,
    method: String,
    concurrency: usize,
    calls: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    seconds: f64,
    rps: f64,
    latency_us: Latency,
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
            let discovery = exemesh::mesh::discovery::connect(&args.discovery)?;
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

/// Runs the workers; each takes calls from a shared counter until the run ends.
async fn drive<T>(
    channels: Vec<T>,
    method: &MethodDescriptor,
    json: &str,
    args: &Args,
) -> anyhow::Result<Report>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    T::Future: Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
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
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let limit = args.total.unwrap_or(u64::MAX);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.concurrency.max(1) {
        let channel = channels[i % channels.len()].clone();
        let (method, request, measuring, stop, issued, done) = (
            method.clone(),
            request.clone(),
            measuring.clone(),
            stop.clone(),
            issued.clone(),
            done.clone(),
        );
        let timeout = args.timeout;
        tasks.spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("histogram"));
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                let counted = measuring.load(Ordering::Relaxed);
                if counted && issued.fetch_add(1, Ordering::Relaxed) >= limit {
                    break;
                }
                let mut call = tonic::Request::new(tokio_stream::once(request.clone()));
                call.set_timeout(timeout);
                let start = Instant::now();
                let outcome = async {
                    let mut replies = dynamic_client::call(channel.clone(), &method, call)
                        .await?
                        .into_inner();
                    while replies.message().await?.is_some() {}
                    Ok::<_, tonic::Status>(())
                }
                .await;
                if counted {
                    match outcome {
                        Ok(()) => {
                            let _ = histogram.record(start.elapsed().as_micros().max(1) as u64);
                        }
                        Err(status) => {
                            *errors
                                .entry(code_name(status.code()).to_string())
                                .or_insert(0) += 1
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            (histogram, errors)
        });
    }
    tokio::time::sleep(args.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let progress = std::io::stderr().is_terminal() && !args.json;
    let duration = if args.total.is_some() {
        None
    } else {
        Some(args.duration.unwrap_or(Duration::from_secs(10)))
    };
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = done.load(Ordering::Relaxed);
        if progress {
            let shown = match (duration, args.total) {
                (Some(d), _) => format!(
                    "{:>5.1}/{:.0}s",
                    started.elapsed().as_secs_f64(),
                    d.as_secs_f64()
                ),
                (None, Some(t)) => format!("{n}/{t}"),
                _ => String::new(),
            };
            eprint!(
                "\r{shown}  {n} calls, {:.0} calls/s   ",
                n as f64 / started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
        let finished = match (duration, args.total) {
            (Some(d), _) => started.elapsed() >= d,
            (None, Some(t)) => n >= t,
            _ => true,
        };
        if finished || tasks.is_empty() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut histogram = Histogram::<u64>::new(3).context("histogram")?;
    let mut errors = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (h, e) = joined.context("bench worker")?;
        histogram.add(h).context("merging histograms")?;
        for (code, n) in e {
            *errors.entry(code).or_insert(0) += n;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if progress {
        eprintln!();
    }
    let ok = histogram.len();
    let calls = ok + errors.values().sum::<u64>();
    let q = |p: f64| histogram.value_at_quantile(p);
    let latency_us = Latency {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p99_9: q(0.999),
        max: histogram.max(),
    };
    Ok(Report {
        target: String::new(),
        method: String::new(),
        concurrency: args.concurrency,
        calls,
        ok,
        errors,
        seconds,
        rps: calls as f64 / seconds,
        latency_us,
    })
}

fn print_report(r: &Report) {
    println!("target      {}", r.target);
    println!("method      {}   concurrency {}", r.method, r.concurrency);
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
}
