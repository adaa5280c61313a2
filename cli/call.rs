//! `exemesh call`: call any method with JSON in and JSON out.

use super::discovery_arg::DiscoveryArg;
use exemesh::mesh::dynamic_client::GrpcChannel;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::descriptors::{self, ProtoArgs};
use exemesh::mesh::channel::{CallPolicy, MeshChannel};
use exemesh::mesh::dynamic_client;
use exemesh::mesh::status_code::code_name;
use exemesh::mesh::telemetry::propagation;
use exemesh::mesh::telemetry::rpc_span::{client_span, record_status};
use exemesh::services::json::write_json;
use opentelemetry::trace::TraceContextExt as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, MethodDescriptor};
use tonic::transport::Endpoint;

/// Call a method: JSON in, JSON out.
///
/// The request is the JSON argument, `-d @FILE`, or `-d -` for stdin; streaming methods take several
/// JSON values (e.g. one per line). Each reply is printed as one JSON line. The contract is fetched
/// through server reflection unless --proto is given. Without an address the service is resolved
/// through discovery (--discovery) and the call goes through the balanced mesh channel, which
/// retries a method its contract marks idempotent on another instance. On an error
/// status, prints `CODE: message` on stderr and exits with 100 + the status code (e.g. 105 for
/// NOT_FOUND).
///
/// Examples: `exemesh call 127.0.0.1:50051 shop.v1.ProductService/GetProduct '{"id":"p1"}'`,
/// `exemesh call shop.v1.ProductService/GetProduct '{"id":"p1"}'` (through discovery).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// [ADDR] METHOD [JSON]: an optional server address (HOST:PORT), the method
    /// (pkg.Service/Method), and the request as JSON (default `{}`).
    #[arg(num_args = 1..=3, required = true, value_name = "ARGS")]
    positional: Vec<String>,
    /// The request: JSON text, @FILE, or - for stdin.
    #[arg(short = 'd', long = "data")]
    data: Option<String>,
    #[command(flatten)]
    discovery: DiscoveryArg,
    /// Request metadata, `key: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Deadline for the call, e.g. 500ms or 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    #[command(flatten)]
    protos: ProtoArgs,
}

/// The positional arguments, sorted out.
struct Target {
    addr: Option<String>,
    method: String,
    json: Option<String>,
}

fn target(args: &Args) -> anyhow::Result<Target> {
    let mut rest = args.positional.iter();
    let first = rest.next().cloned().unwrap_or_default();
    // A method has a '/' (and no "://"); anything else in first place is an address.
    let (addr, method) = if first.contains('/') && !first.contains("://") {
        (None, first)
    } else {
        let method = rest.next().cloned().with_context(|| {
            format!("after the address {first:?}, name the method: pkg.Service/Method")
        })?;
        (Some(first), method)
    };
    let json = rest.next().cloned();
    if rest.next().is_some() {
        bail!("too many arguments: [ADDR] METHOD [JSON]");
    }
    if json.is_some() && args.data.is_some() {
        bail!("give the request either as the JSON argument or with -d, not both");
    }
    Ok(Target { addr, method, json })
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let target = target(&args)?;
    let Some((service, method_name)) = target.method.trim_start_matches('/').split_once('/') else {
        bail!(
            "the method must be pkg.Service/Method, got {:?}",
            target.method
        );
    };
    match &target.addr {
        Some(addr) => {
            let uri = if addr.contains("://") {
                addr.clone()
            } else {
                format!("http://{addr}")
            };
            let channel = Endpoint::from_shared(uri.clone())
                .with_context(|| format!("invalid address {addr:?}"))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true);
            let channel = exemesh::mesh::tls::client::connect(channel, None)
                .await
                .with_context(|| format!("cannot connect to {uri}"))?;
            let method =
                descriptors::find(channel.clone(), &args.protos, service, method_name).await?;
            call_with(channel, &method, &args, &target).await
        }
        None => {
            let discovery = args.discovery.connect()?;
            // Fail fast (and say why) when discovery itself cannot be asked, instead of waiting for
            // instances until the deadline.
            discovery
                .resolve(service)
                .await
                .with_context(|| format!("cannot ask discovery at {}", args.discovery.addr))?;
            let policy = CallPolicy {
                timeout: args.timeout.unwrap_or(Duration::from_secs(30)),
                ..CallPolicy::default()
            };
            let channel = MeshChannel::new(discovery, service, policy);
            let method =
                descriptors::find(channel.clone(), &args.protos, service, method_name).await?;
            // A method the contract marks idempotent is retried on another instance, as the
            // mesh's own callers do.
            call_with(channel.for_method(&method), &method, &args, &target).await
        }
    }
}

async fn call_with<T>(
    channel: T,
    method: &MethodDescriptor,
    args: &Args,
    target: &Target,
) -> anyhow::Result<ExitCode>
where
    T: GrpcChannel,
{
    let requests = read_requests(args, target, method)?;
    let mut request = tonic::Request::new(tokio_stream::iter(requests));
    // The call's own span (exported when tracing is on); without tracing, a fresh trace context so
    // that the servers' spans still share one printed trace id.
    let span = client_span(&dynamic_client::path_text(method), None);
    let traceparent = if span.span().span_context().is_valid() {
        propagation::to_strings(&span).0
    } else {
        Some(fresh_traceparent())
    };
    if let Some(value) = traceparent.as_deref().and_then(|t| t.parse().ok()) {
        request.metadata_mut().insert("traceparent", value);
    }
    let trace_id = traceparent
        .as_deref()
        .and_then(|t| t.split('-').nth(1))
        .unwrap_or_default()
        .to_string();
    if let Some(timeout) = args.timeout {
        request.set_timeout(timeout);
    }
    for header in &args.headers {
        let Some((key, value)) = header.split_once(':') else {
            bail!("header {header:?} must be `key: value`")
        };
        let key: tonic::metadata::MetadataKey<_> = key
            .trim()
            .to_ascii_lowercase()
            .parse()
            .with_context(|| format!("invalid header name in {header:?}"))?;
        request.metadata_mut().insert(
            key,
            value
                .trim()
                .parse()
                .with_context(|| format!("invalid header value in {header:?}"))?,
        );
    }
    let outcome = opentelemetry::context::FutureExt::with_context(
        async {
            let mut replies = dynamic_client::Method::new(method)?
                .call(channel, request)
                .await?
                .into_inner();
            let mut stdout = std::io::stdout().lock();
            while let Some(reply) = replies.message().await? {
                let mut line = Vec::new();
                if let Err(e) = write_json(&reply, &mut line) {
                    return Err(tonic::Status::internal(format!("the reply: {e}")));
                }
                line.push(b'\n');
                let _ = stdout.write_all(&line);
                let _ = stdout.flush();
            }
            Ok::<_, tonic::Status>(())
        },
        span.clone(),
    )
    .await;
    if let Err(status) = &outcome {
        record_status(&span, status.code() as i32, Some(status.message()));
    }
    let result = match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(status) => {
            let status = client_deadline(status);
            eprintln!("{}: {}", code_name(status.code()), status.message());
            Ok(ExitCode::from(100 + status.code() as u8))
        }
    };
    eprintln!("trace {trace_id}");
    result
}

fn read_requests(
    args: &Args,
    target: &Target,
    method: &MethodDescriptor,
) -> anyhow::Result<Vec<DynamicMessage>> {
    let text = match (&target.json, args.data.as_deref()) {
        (Some(json), _) => json.clone(),
        (None, Some("-")) => read_stdin()?,
        (None, Some(data)) if data.starts_with('@') => std::fs::read_to_string(&data[1..])
            .with_context(|| format!("cannot read {}", &data[1..]))?,
        (None, Some(data)) => data.to_string(),
        (None, None) if method.is_client_streaming() && !std::io::stdin().is_terminal() => {
            read_stdin()?
        }
        (None, None) => "{}".to_string(),
    };
    let input = method.input();
    let options = DeserializeOptions::new();
    let mut messages = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>();
    while let Some(value) = stream.next() {
        let value = value.with_context(|| {
            format!(
                "the request is not valid JSON (at byte {})",
                stream.byte_offset()
            )
        })?;
        let message = DynamicMessage::deserialize_with_options(input.clone(), value, &options)
            .with_context(|| format!("the request is not a valid {}", input.full_name()))?;
        messages.push(message);
    }
    if messages.is_empty() && !method.is_client_streaming() {
        messages.push(DynamicMessage::new(input));
    }
    if messages.len() > 1 && !method.is_client_streaming() {
        bail!(
            "{} takes one request message, got {}",
            method.full_name(),
            messages.len()
        );
    }
    Ok(messages)
}

fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read stdin")?;
    Ok(text)
}

/// A new W3C traceparent with random ids (sampled).
fn fresh_traceparent() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish().max(1)
    };
    format!(
        "00-{:016x}{:016x}-{:016x}-01",
        random(1),
        random(2),
        random(3)
    )
}

/// tonic's client enforces the deadline itself and reports it as CANCELLED "Timeout expired"; gRPC
/// (and the server) call that DEADLINE_EXCEEDED.
fn client_deadline(status: tonic::Status) -> tonic::Status {
    if status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired" {
        tonic::Status::deadline_exceeded("deadline exceeded (client-side timer)")
    } else {
        status
    }
}
