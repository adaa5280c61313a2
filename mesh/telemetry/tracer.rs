//! What makes and exports spans: batched OTLP export (gRPC with exemesh's own spans, batches and
//! exporter, or HTTP/protobuf with the SDK's spans, batch processor and opentelemetry-otlp's exporter)
//! that never blocks a call, and a flush at shutdown. Off (no exporter at all) unless an endpoint is
//! configured.

use opentelemetry::InstrumentationScope;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};

use super::batch::BatchExporter;
use super::config::{Protocol, TelemetryConfig};
use super::exporter::GrpcExporter;
use super::mesh_tracer::MeshTracer;
use super::on_runtime::OnRuntime;
use super::otlp::SCOPE_NAME;
use super::span::Tracer;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the OTLP exporter for {endpoint}: {detail}")]
pub struct TelemetryError {
    endpoint: String,
    detail: String,
}

/// Running export; [`Telemetry::shutdown`] flushes the spans still queued.
#[derive(Debug)]
pub struct Telemetry {
    export: Export,
    flush_timeout: std::time::Duration,
}

/// What exports the spans.
#[derive(Debug)]
enum Export {
    /// exemesh's batches, sent over OTLP/gRPC.
    Mesh(BatchExporter),
    /// The SDK's provider and batch processor, sent over OTLP/HTTP.
    Sdk(SdkTracerProvider),
}

/// Installs the W3C trace-context and baggage propagators (always: context is propagated even when
/// this process exports nothing).
pub fn install_propagator() {
    let propagator = opentelemetry::propagation::TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]);
    opentelemetry::global::set_text_map_propagator(propagator);
}

impl Telemetry {
    /// Starts exporting per `config` and makes exemesh's spans from then on; `None` when tracing is
    /// off. Must run inside a tokio runtime.
    pub fn start(config: &TelemetryConfig) -> Result<Option<Telemetry>, TelemetryError> {
        let Some((tracer, export)) = tracer(config)? else {
            return Ok(None);
        };
        super::span::install(tracer);
        Ok(Some(Telemetry {
            export,
            flush_timeout: config.flush_timeout,
        }))
    }

    /// Flushes queued spans and stops the exporter. Blocking: call it off the async threads.
    pub fn shutdown(self) {
        let outcome = match self.export {
            Export::Mesh(exporter) => exporter.shutdown(self.flush_timeout),
            Export::Sdk(provider) => provider.shutdown_with_timeout(self.flush_timeout),
        };
        if let Err(e) = outcome {
            eprintln!("exemesh: flushing spans failed: {e}");
        }
    }
}

/// The tracer `config` asks for and what exports its spans, not yet making exemesh's spans;
/// `None` when tracing is off.
fn tracer(config: &TelemetryConfig) -> Result<Option<(Tracer, Export)>, TelemetryError> {
    let Some(endpoint) = config.endpoint.clone() else {
        return Ok(None);
    };
    let error = |detail: String| TelemetryError {
        endpoint: endpoint.clone(),
        detail,
    };
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let sampler = match &config.sampler {
        Some((name, arg)) => sampler(name, arg.as_deref()).map_err(error)?,
        None => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
    };
    Ok(Some(match config.protocol {
        Protocol::Grpc => {
            let exporter = GrpcExporter::new(&endpoint, &config.headers, config.export_timeout)
                .map_err(error)?;
            let (exporter, batches) = BatchExporter::start(exporter, config.batch, resource);
            (
                Tracer::Mesh(MeshTracer::new(sampler, batches)),
                Export::Mesh(exporter),
            )
        }
        Protocol::HttpProtobuf => {
            // The base endpoint gets the signal path; a traces-specific endpoint is used as is.
            let url = if std::env::var_os(super::config::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
                .is_some()
                || endpoint.ends_with("/v1/traces")
            {
                endpoint.clone()
            } else {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            };
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .build()
                .map_err(|e| error(e.to_string()))?;
            let batch = BatchConfigBuilder::default()
                .with_max_queue_size(config.batch.max_queue_size)
                .with_max_export_batch_size(config.batch.max_export_batch_size)
                .with_scheduled_delay(config.batch.schedule_delay)
                .build();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(
                    BatchSpanProcessor::builder(OnRuntime::new(exporter))
                        .with_batch_config(batch)
                        .build(),
                )
                .with_resource(resource)
                .with_sampler(sampler)
                .build();
            let scope = InstrumentationScope::builder(SCOPE_NAME)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build();
            (
                Tracer::Sdk(provider.tracer_with_scope(scope)),
                Export::Sdk(provider),
            )
        }
    }))
}

/// The sampler named like `OTEL_TRACES_SAMPLER` (with its `..._ARG`).
fn sampler(name: &str, arg: Option<&str>) -> Result<Sampler, String> {
    let ratio = || -> Result<f64, String> {
        arg.unwrap_or("1.0")
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| format!("sampler argument {arg:?} must be a ratio between 0 and 1"))
    };
    Ok(match name.trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
        }
        other => {
            return Err(format!(
                "unknown sampler {other:?} (always_on, always_off, traceidratio, parentbased_*)"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    use opentelemetry::trace::Tracer as _;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::sync::mpsc;

    use crate::mesh::telemetry::config::{
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_SCHEDULE_DELAY, OTEL_EXPORTER_OTLP_ENDPOINT,
        OTEL_EXPORTER_OTLP_PROTOCOL,
    };

    /// One OTLP/HTTP request: its request line's path and its decoded body.
    type Received = (String, ExportTraceServiceRequest);

    /// An OTLP/HTTP collector on an ephemeral port that answers every request with 200 and hands
    /// it over (HTTP/1.1, one request per connection).
    async fn http_collector() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Received>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("an address");
        let (exports, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let exports = exports.clone();
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        data.extend_from_slice(&chunk[..n]);
                        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        let Some(body) = data.get(end + 4..end + 4 + len) else {
                            continue;
                        };
                        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                        let request = ExportTraceServiceRequest::decode(body).expect("OTLP");
                        let _ = exports.send((path, request));
                        let _ = socket
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n\
                                  content-length: 0\r\nconnection: close\r\n\r\n",
                            )
                            .await;
                        return;
                    }
                });
            }
        });
        (addr, received)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_protobuf_export_reaches_a_collector_in_batches_of_the_configured_size() {
        let (addr, mut exports) = http_collector().await;
        let vars: HashMap<&str, String> = HashMap::from([
            (OTEL_EXPORTER_OTLP_ENDPOINT, format!("http://{addr}")),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf".to_string()),
            (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, "2".to_string()),
            (OTEL_BSP_SCHEDULE_DELAY, "3600000".to_string()),
        ]);
        let config = TelemetryConfig::from_env(|k| vars.get(k).cloned(), "orders", None)
            .expect("a configuration");
        let Some((Tracer::Sdk(tracer), Export::Sdk(provider))) =
            super::tracer(&config).expect("a tracer")
        else {
            panic!("http/protobuf uses the SDK's tracer and provider");
        };
        for name in ["first", "second", "third"] {
            tracer.in_span(name, |_| {});
        }
        tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .expect("joined")
            .expect("flushed");
        let mut names = Vec::new();
        while names.len() < 3 {
            let (path, request) = tokio::time::timeout(Duration::from_secs(10), exports.recv())
                .await
                .expect("an export within 10 s")
                .expect("the collector runs");
            assert_eq!(path, "/v1/traces");
            let resource_spans = &request.resource_spans[0];
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| v.value.as_ref());
            assert!(
                matches!(service, Some(Value::StringValue(name)) if name == "orders"),
                "{service:?}"
            );
            let spans: Vec<String> = resource_spans
                .scope_spans
                .iter()
                .flat_map(|s| s.spans.iter().map(|span| span.name.clone()))
                .collect();
            assert!(spans.len() <= 2, "a batch holds at most 2 spans: {spans:?}");
            names.extend(spans);
        }
        assert_eq!(names, ["first", "second", "third"]);
    }
}
